"""helpers.reference and helpers.viz: no cluster needed (they run in the notebook kernel on
tensors already pulled back from the engines)."""

import matplotlib

matplotlib.use("Agg")

import ast
import io
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import viz
from helpers.reference import (
    ComparisonError,
    NotebookDisplay,
    Result,
    compare,
    compare_grads,
    error_heatmap,
    reassemble,
    set_display,
)
from helpers.viz import RANK_COLORS, count_rank_colors

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_leaked_figures():
    plt.close("all")
    yield
    assert plt.get_fignums() == [], "a helper left a pyplot figure open"


class FakeShell:
    """Stands in for a notebook kernel (its execution_count names the cell)."""

    def __init__(self):
        self.execution_count = 5


@pytest.fixture
def notebook():
    """compare()'s display as in a notebook, injected: what it shows is collected in ``shown``."""
    shown = []
    shell = FakeShell()
    previous = set_display(NotebookDisplay(shell=shell, emit=lambda obj, **kw: shown.append(obj)))
    yield shell, shown
    set_display(previous)


def _texts(fig):
    out = [t.get_text() for t in fig.texts]
    if fig._suptitle is not None:
        out.append(fig._suptitle.get_text())
    for ax in fig.axes:
        out += [t.get_text() for t in ax.texts] + [ax.get_title()]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------
# reassemble
# ------------------------------------------------------------------------------------------


def test_reassemble_shard_dims():
    t = torch.arange(48.0).reshape(4, 12)
    assert torch.equal(reassemble(list(t.chunk(3, dim=1)), "Shard(-1)"), t.double())
    assert torch.equal(reassemble(list(t.chunk(3, dim=1)), "Shard(1)"), t.double())
    assert torch.equal(reassemble(list(t.chunk(2, dim=0)), "Shard(0)"), t.double())
    assert torch.equal(reassemble(list(t.chunk(2, dim=0)), " Shard( 0 ) "), t.double())


def test_reassemble_numpy_dict_and_dtype():
    t = torch.randn(4, 6, dtype=torch.float32)
    parts = [c.numpy() for c in t.chunk(2, dim=0)]
    out = reassemble(parts, "Shard(0)")
    assert out.dtype == torch.float64 and out.device.type == "cpu"
    assert torch.equal(out, t.double())
    out = reassemble({1: parts[1], 0: parts[0]}, "Shard(0)")
    assert torch.equal(out, t.double())
    bf = reassemble([t.bfloat16(), t.bfloat16()], "Replicate()")
    assert bf.dtype == torch.float64


def test_reassemble_replicate_and_partial():
    t = torch.randn(3, 5)
    assert torch.equal(reassemble([t, t.clone(), t.clone()], "Replicate()"), t.double())
    parts = [torch.randn(3, 5) for _ in range(4)]
    assert torch.allclose(reassemble(parts, "Partial()"), sum(p.double() for p in parts))


def test_reassemble_replicate_disagreement_names_ranks_and_diff():
    t = torch.zeros(2, 3)
    bad1 = t.clone()
    bad1[0, 0] = 0.5
    bad3 = t.clone()
    bad3[1, 2] = -2.0
    with pytest.raises(AssertionError) as ei:
        reassemble([t, bad1, t, bad3], "Replicate()")
    msg = str(ei.value)
    assert "rank(s) 1, 3" in msg
    assert "2.0e+00 on rank 3" in msg
    assert "Partial()" in msg  # points at the likely cause
    # a tolerance lets float noise through
    noisy = t + 1e-9
    reassemble([t, noisy], "Replicate()", atol=1e-6)


def test_reassemble_bad_inputs():
    t = torch.zeros(2, 4)
    with pytest.raises(ValueError) as ei:
        reassemble([t, t], "colwise")
    msg = str(ei.value)
    for valid in ("'Replicate()'", "'Shard(d)'", "'Partial()'", "Shard(-1)"):
        assert valid in msg
    with pytest.raises(ValueError, match="out of range"):
        reassemble([t, t], "Shard(2)")
    with pytest.raises(ValueError, match="empty"):
        reassemble([], "Shard(0)")
    with pytest.raises(AssertionError, match="every dim except"):
        reassemble([torch.zeros(2, 4), torch.zeros(3, 4)], "Shard(1)")
    with pytest.raises(AssertionError, match="shapes differ"):
        reassemble([torch.zeros(2, 4), torch.zeros(2, 5)], "Partial()")
    with pytest.raises(TypeError, match="one tensor per rank"):
        reassemble(t, "Replicate()")


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 7), min_size=1, max_size=4),
    degree=st.integers(1, 8),
    dim_seed=st.integers(0, 100),
    negative=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_chunk_then_reassemble_roundtrips(shape, degree, dim_seed, negative, seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(*shape, generator=g)
    d = dim_seed % len(shape)
    chunks = list(torch.chunk(t, degree, dim=d))
    layout = f"Shard({d - len(shape) if negative else d})"
    assert torch.equal(reassemble(chunks, layout), t.double())
    # and the comparison agrees
    assert compare("T", chunks, t, layout, show=False).passed


# ------------------------------------------------------------------------------------------
# compare
# ------------------------------------------------------------------------------------------


def _y():
    torch.manual_seed(0)
    return torch.randn(8, 16)


def test_compare_pass_prints_one_line(capsys):
    y = _y()
    res = compare("Y", list(y.chunk(4, dim=-1)), y, layout="Shard(-1)")
    assert isinstance(res, Result) and res.passed and res.matches and bool(res)
    assert res.shape == (8, 16) and res.layout == "Shard(-1)" and res.n_ranks == 4
    assert res.max_abs == 0.0 and res.figure is None
    line = str(res)
    assert line.startswith("✅ Y matches dense  shape (8, 16)  max|Δ| 0.0e+00")
    assert line.endswith("(layout Shard(-1), 4 ranks)")
    assert capsys.readouterr().out.strip() == line
    html = res._repr_html_()
    assert 'data-passed="true"' in html and "Y matches dense" in html


def test_compare_fail_message_numbers(capsys):
    y = _y()
    tp = y.clone()
    tp[2, 7] += 0.31
    shards = list(tp.chunk(4, dim=-1))
    with pytest.raises(AssertionError) as ei:
        compare("Y", shards, y, layout="Shard(-1)")
    msg = str(ei.value)
    assert msg.startswith("Y (layout Shard(-1)): max abs err 3.1e-01 > atol 1e-05 at index (2, 7); max rel err")
    assert "1 of 128 elements fail" in msg
    res = ei.value.result
    assert isinstance(ei.value, ComparisonError)
    assert not res.passed and not res.matches and res.argmax == (2, 7)
    assert res.max_abs == pytest.approx(0.31, rel=1e-5)
    assert res.figure is not None  # heatmap was built for display
    assert str(res).startswith("❌ Y differs from dense")
    out = capsys.readouterr().out
    assert "❌ Y differs from dense" in out
    # tolerances are honoured
    assert compare("Y", shards, y, layout="Shard(-1)", atol=0.5, show=False).passed


def test_compare_shape_mismatch_names_shapes_and_layout():
    y = _y()
    with pytest.raises(AssertionError) as ei:
        compare("Y", list(y.chunk(4, dim=-1)), y, layout="Shard(0)", show=False)
    msg = str(ei.value)
    assert "(32, 4)" in msg and "(8, 16)" in msg and "Shard(0)" in msg
    assert "Shard(1)" in msg  # suggests the layout that would fit


def test_compare_hints_partial_sums():
    y = _y()
    parts = [y / 4] * 4
    with pytest.raises(AssertionError, match="disagree|partial"):
        compare("Y", [y / 4, y / 2, y / 8, y / 8], y, show=False)
    with pytest.raises(AssertionError, match="x|×"):
        compare("Y", [y, y, y, y], 4 * y / 16, layout="Partial()", show=False)
    assert compare("Y", parts, y, layout="Partial()", show=False).passed


def test_compare_expect_mismatch(capsys):
    y = _y()
    broken = [c * 0 for c in y.chunk(2, dim=0)]
    res = compare("Y", broken, y, layout="Shard(0)", expect="mismatch")
    assert res.passed and not res.matches
    out = capsys.readouterr().out
    assert "✅ Y differs from dense, as expected" in out
    assert "mismatch, as expected: Y (layout Shard(0)): max abs err" in out
    with pytest.raises(AssertionError, match="expected a mismatch"):
        compare("Y", list(y.chunk(2, dim=0)), y, layout="Shard(0)", expect="mismatch", show=False)
    with pytest.raises(ValueError):
        compare("Y", [y], y, expect="maybe", show=False)


def test_compare_replicate_copies_that_disagree_are_a_mismatch(capsys):
    """A missing all-reduce leaves each rank a different partial sum: a mismatch, not a crash."""
    dense = torch.arange(6.0).reshape(2, 3)
    parts = [dense / 4 + r for r in range(4)]  # four different 'copies'
    res = compare("Y", parts, dense, layout="Replicate()", expect="mismatch", show=False)
    assert res.passed and not res.matches
    assert "worst copy: rank" in res.message
    with pytest.raises(ComparisonError, match="worst copy: rank 0"):
        compare("Y", parts, dense, layout="Replicate()", show=False)


def test_compare_nan_is_a_failure():
    y = _y()
    tp = y.clone()
    tp[1, 1] = float("nan")
    with pytest.raises(AssertionError, match="max abs err inf"):
        compare("Y", [tp], y, show=False)


def test_compare_in_notebook_displays_result_and_heatmap(notebook):
    shell, shown = notebook
    y = _y()
    res = compare("Y", [y, y], y)
    assert len(shown) == 1 and "text/html" in shown[0] and "Y matches dense" in shown[0]["text/plain"]
    # the cell ends with compare(...): the displayhook must not show the same line again
    res._ipython_display_()
    assert len(shown) == 1
    # a later cell showing the result does display it
    shell.execution_count += 1
    res._ipython_display_()
    assert len(shown) == 2
    tp = y.clone()
    tp[0, 0] += 1
    with pytest.raises(AssertionError):
        compare("Y", [tp], y)
    from IPython.display import Image

    figs = [o for o in shown if isinstance(o, Image)]
    assert len(figs) == 1 and figs[0].data.startswith(b"\x89PNG")
    shown.clear()
    compare("Y", [tp], y, expect="mismatch")
    assert any(isinstance(o, Image) for o in shown)


def test_compare_grads_reports_every_failure(capsys):
    y = _y()
    w = torch.randn(16, 4)
    bad = w.clone()
    bad[3, 1] += 1.0
    pairs = [
        ("dY", list(y.chunk(4, dim=-1)), y, "Shard(-1)"),
        ("dW", list(bad.chunk(2, dim=0)), w, "Shard(0)"),
        ("db", [w, w], w),
        ("dX", [y[:, :3]], y, "Replicate()"),
    ]
    with pytest.raises(AssertionError) as ei:
        compare_grads(pairs)
    msg = str(ei.value)
    assert msg.startswith("2 of 4 comparisons failed")
    assert "dW (layout Shard(0)): max abs err 1.0e+00 > atol 1e-05 at index (3, 1)" in msg
    assert "dX (layout Replicate()): reassembled shape (8, 3)" in msg
    out = capsys.readouterr().out
    assert out.count("✅") == 2 and out.count("❌") == 2
    ok = compare_grads([("a", [y], y), ("b", list(w.chunk(4, 1)), w, "Shard(1)")], show=False)
    assert [r.passed for r in ok] == [True, True]


# ------------------------------------------------------------------------------------------
# error heatmap
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(16,), (6, 10), (2, 3, 5), ()])
def test_error_heatmap_shapes(shape):
    dense = torch.zeros(shape)
    tp = dense.clone()
    if dense.dim():
        tp.view(-1)[-1] = 0.25
    fig = error_heatmap(tp, dense, title="Y")
    fig.canvas.draw()
    title = fig.axes[0].get_title()
    assert title.startswith("Y") and ("2.5e-01" in title or not dense.dim())
    img = fig.axes[0].images[0].get_array()
    assert img.ndim == 2 and img.size == max(dense.numel(), 1)
    if len(shape) == 1:
        assert img.shape == (1, 16)


def test_error_heatmap_into_axes_and_shape_check():
    fig, ax = plt.subplots()
    try:
        assert error_heatmap(np.ones((3, 3)), np.zeros((3, 3)), ax=ax) is fig
    finally:
        plt.close(fig)
    with pytest.raises(ValueError, match=r"\(3, 3\).*\(3, 4\)"):
        error_heatmap(np.ones((3, 3)), np.zeros((3, 4)))


# ------------------------------------------------------------------------------------------
# colours
# ------------------------------------------------------------------------------------------


def test_rank_colors_are_distinct_and_not_grey():
    assert len(RANK_COLORS) == 8 and len(set(RANK_COLORS)) == 8
    for r, g, b in RANK_COLORS:
        assert max(r, g, b) - min(r, g, b) > 60  # saturated: never confusable with the greys


def test_count_rank_colors_inputs_and_threshold():
    img = np.full((40, 40, 3), 255, np.uint8)
    img[:10, :10] = RANK_COLORS[2]  # 100 px
    img[20:22, 20:22] = RANK_COLORS[5]  # 4 px: anti-aliasing-sized, ignored
    assert count_rank_colors(img) == {2}
    assert count_rank_colors(img, min_pixels=4) == {2, 5}
    assert count_rank_colors(img.astype(np.float32) / 255.0) == {2}
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    assert count_rank_colors(buf.getvalue()) == {2}
    near = img.copy()
    near[:10, :10] = np.asarray(RANK_COLORS[2]) + 1
    assert count_rank_colors(near) == set()
    assert count_rank_colors(near, tol=2) == {2}


# ------------------------------------------------------------------------------------------
# layout figure
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", viz.MODES)
@pytest.mark.parametrize("degree", range(1, 9))
def test_layout_figure_shows_one_colour_per_rank(degree, mode):
    fig = viz.layout_figure(degree, in_features=8 * degree, out_features=4 * degree, mode=mode)
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    assert count_rank_colors(rgba) == set(range(degree))
    text = _texts(fig)
    if degree == 1:
        assert "no communication" in text
    elif mode == "column":
        assert "all-gather" in text and "(p−1)·B·out/p·bytes" in text
    else:
        assert "all-reduce" in text and "2(p−1)/p" in text
    if mode == "column+row" and degree > 1:
        assert "no communication in between" in text


def test_figures_show_themselves_as_png_in_a_notebook():
    fig = viz.layout_figure(2, 16, 16, "column")
    png = fig._repr_png_()  # what IPython uses when no matplotlib formatter is registered yet
    assert png.startswith(b"\x89PNG") and count_rank_colors(png) == {0, 1}


def test_layout_figure_byte_numbers():
    col = _texts(viz.layout_figure(4, 16, 32, "column", batch=4, dtype_bytes=4))
    assert "4·32/4·4 = 128 B" in col and "= 384 B" in col
    row = _texts(viz.layout_figure(4, 16, 32, "row", batch=4, dtype_bytes=2))
    assert "4·32·2 = 256 B" in row and "384 B" in row  # 2·3/4·256


@pytest.mark.parametrize("mode,kw,msg", [
    ("column", dict(in_features=16, out_features=10), "out_features=10 is not divisible by 4"),
    ("row", dict(in_features=10, out_features=16), "in_features=10 is not divisible by 4"),
    ("column+row", dict(in_features=16, out_features=10), "out_features=10 is not divisible by 4"),
])
def test_layout_figure_uneven_split_draws_no_shards(mode, kw, msg):
    fig = viz.layout_figure(4, mode=mode, **kw)
    text = _texts(fig)
    assert msg in text and "{1, 2, 5}" in text and "pad" in text
    assert count_rank_colors(viz.figure_to_rgba(fig), min_pixels=1) == set()


def test_layout_figure_rejects_bad_arguments():
    for bad in (0, 9):
        with pytest.raises(ValueError, match=f"degree={bad}"):
            viz.layout_figure(bad, 16, 16, "column")
    with pytest.raises(ValueError, match="'column', 'row', 'column\\+row'"):
        viz.layout_figure(2, 16, 16, "diagonal")


# ------------------------------------------------------------------------------------------
# explorer widget
# ------------------------------------------------------------------------------------------


def test_layout_explorer_redraws_once_per_change():
    import ipywidgets as widgets

    ex = viz.layout_explorer()
    assert isinstance(ex, widgets.VBox) and "tp-layout-explorer" in ex._dom_classes
    assert isinstance(ex.image, widgets.Image) and "tp-layout-image" in ex.image._dom_classes
    assert ex.degree.description == "TP degree" and not ex.degree.continuous_update
    assert (ex.in_features.description, ex.out_features.description, ex.mode.description) == (
        "in_features", "out_features", "layout")
    assert ex.redraw_count == 1 and count_rank_colors(ex.image.value) == {0, 1, 2, 3}

    before = ex.image.value
    ex.degree.value = 2
    assert ex.redraw_count == 2
    assert ex.image.value != before
    assert count_rank_colors(ex.image.value) == {0, 1}

    ex.degree.value = 2  # no change, no redraw
    assert ex.redraw_count == 2
    ex.mode.value = "row"
    assert ex.redraw_count == 3 and count_rank_colors(ex.image.value) == {0, 1}
    ex.degree.value = 8
    ex.in_features.value = 64
    assert ex.redraw_count == 5 and count_rank_colors(ex.image.value) == set(range(8))
    ex.degree.value = 3  # 64 not divisible by 3: message, no shards
    assert ex.redraw_count == 6 and count_rank_colors(ex.image.value) == set()
    assert not ex.messages.outputs


# ------------------------------------------------------------------------------------------
# shard figure, flops, cluster map
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout,split", [("Shard(-1)", 1), ("Shard(0)", 0), ("Replicate()", None),
                                          ("Partial()", None)])
def test_shard_figure_renders_each_rank(layout, split):
    w = torch.randn(8, 16)
    if split is not None:
        shards = list(w.chunk(4, dim=split))
    elif layout == "Replicate()":
        shards = [w] * 4
    else:
        shards = [w / 4] * 4
    fig = viz.shard_figure(shards, layout, name="W", dense_shape=(8, 16))
    assert count_rank_colors(viz.figure_to_rgba(fig)) == {0, 1, 2, 3}
    text = _texts(fig)
    assert "W" in text and ("rank 3: (8, 4)" in text or split != 1)
    if split == 0:
        assert "rank 0: (2, 16)" in text
    if layout == "Partial()":
        assert "Σ over ranks" in text


def test_shard_figure_1d_3d_and_mismatch():
    b = torch.randn(12)
    fig = viz.shard_figure(list(b.chunk(3)), "Shard(0)", name="b", dense_shape=(12,))
    assert count_rank_colors(viz.figure_to_rgba(fig)) == {0, 1, 2}
    t = torch.randn(2, 3, 8)
    fig = viz.shard_figure(list(t.chunk(2, dim=-1)), "Shard(-1)", dense_shape=(2, 3, 10))
    assert "≠ dense (2, 3, 10)" in _texts(fig)
    with pytest.raises(ValueError, match="first or last"):
        viz.shard_figure(list(t.chunk(3, dim=1)), "Shard(1)")


def test_plot_flops_renders():
    fig = viz.plot_flops([1, 2, 4], [10.0, 18.0, 30.0], title="matmul 4096")
    fig.canvas.draw()
    assert fig.axes[0].get_title() == "matmul 4096"
    assert "75%" in _texts(fig)
    fig = viz.plot_flops([1, 2], {"n=1024": [5, 9], "n=4096": [20, 39]})
    fig.canvas.draw()
    with pytest.raises(ValueError):
        viz.plot_flops([1, 2, 4], [1.0])


def test_cluster_map_renders_hosts_and_ranks():
    infos = [dict(rank=r, host=f"dec{r // 4:04d}", device=f"cuda:{r % 4}", backend="nccl")
             for r in range(6)]
    fig = viz.cluster_map(list(reversed(infos)))
    assert count_rank_colors(viz.figure_to_rgba(fig)) == set(range(6))
    text = _texts(fig)
    assert "dec0000" in text and "dec0001" in text and "cuda:3" in text
    assert "6 ranks on 2 hosts" in text and "nccl" in text
    fig = viz.cluster_map([dict(rank=0, host="laptop", device="cpu", backend="gloo")])
    assert "1 rank on 1 host" in _texts(fig)


# ------------------------------------------------------------------------------------------
# hygiene
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["helpers/reference/compare.py", "helpers/reference/display.py",
                                  "helpers/reference/dtensor.py", "helpers/viz/figure.py",
                                  "helpers/viz/schematic.py", "helpers/viz/data.py"])
def test_no_cluster_imports(path):
    tree = ast.parse((ROOT / path).read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    assert not [n for n in names if n.startswith(("ipyparallel", "torch.distributed"))]
    shows = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Attribute) and n.func.attr == "show"]
    assert not shows, "figure functions must return the Figure, not call plt.show()"


# ------------------------------------------------------------------------------------------
# one spelling of placements; the display injected; a DTensor view keeps its dtype
# ------------------------------------------------------------------------------------------


def test_placements_have_one_spelling_dtensors():
    from helpers.common.placements import parse_placement, placement_text

    for text, parsed in [("Shard(0)", ("shard", 0)), ("Shard(-1)", ("shard", -1)),
                         ("Replicate()", ("replicate", None)), ("Partial()", ("partial", None)),
                         ("Partial(sum)", ("partial", None))]:
        assert parse_placement(text) == parsed
        assert placement_text(*parsed) == text.replace("(sum)", "()")
    for old, new in [("shard(0)", "Shard(0)"), ("replicate", "Replicate()"), ("partial", "Partial()")]:
        with pytest.raises(ValueError, match=rf"did you mean '{re.escape(new)}'"):
            compare("Y", [torch.ones(2)], torch.ones(2), layout=old, show=False)
    res = compare("Y", [torch.ones(2)] * 2, torch.ones(2), show=False)
    assert res.layout == "Replicate()"


def test_compare_shows_through_the_injected_display(capsys):
    shown = []
    res = compare("Y", [torch.ones(2)], torch.ones(2), show=shown.append)
    assert shown == [res] and capsys.readouterr().out == ""
    previous = set_display(shown.append)
    try:
        with pytest.raises(ComparisonError):
            compare("Y", [torch.zeros(2)], torch.ones(2))
    finally:
        set_display(previous)
    assert len(shown) == 2 and not shown[1].passed and shown[1].figure is not None
    plt.close(shown[1].figure)


def test_dtensor_view_full_keeps_the_dtype():
    from helpers.reference.dtensor import views_from_descriptions

    t = torch.arange(12, dtype=torch.bfloat16).reshape(4, 3)
    descs = [{"kind": "dtensor", "placements": ["Shard(0)"], "shape": (4, 3), "local": t.chunk(2)[r],
              "mesh": {"shape": (2,), "dim_names": None, "ranks": [0, 1], "coordinate": (r,)}}
             for r in range(2)]
    view = views_from_descriptions("T", descs)
    assert view.full().dtype == torch.bfloat16 and torch.equal(view.full(), t)
    with pytest.raises(NameError, match="'T' is not defined on rank 1"):
        views_from_descriptions("T", [descs[0], {"kind": "missing", "rank": 1}])
