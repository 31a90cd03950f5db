"""Dense-vs-TP comparison, run in the learner's notebook kernel (or a batch job's ranks).

The engines compute shards; the notebook pulls them back by rank (a list, rank 0 first) and
checks them against a dense reference computed from the same seed::

    Y_shards = cluster.pull("Y")            # [(B, H/p) from rank 0, (B, H/p) from rank 1, ...]
    compare("Y", Y_shards, Y_dense, layout="Shard(-1)")
    # ✅ Y matches dense  shape (8, 16)  max|Δ| 2.4e-07  (layout Shard(-1), 4 ranks)

Layouts are placements, spelled as DTensor writes them (:mod:`helpers.common.placements`):

``"Replicate()"``  every rank holds the full tensor (checked: all copies must agree)
``"Shard(d)"``     rank r holds the r-th block along dim d; blocks are concatenated in rank order
``"Partial()"``    every rank holds a full-size partial sum; the tensor is their sum

Nothing here runs a collective or imports ipyparallel / torch.distributed: it works on tensors
(or numpy arrays) that are already in this process. Comparisons are done in float64 on the CPU.
How a result is shown (IPython, printed, saved by a batch job) is :mod:`.display`'s, injected.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..common.placements import parse_placement, placement_text
from . import display

__all__ = ["Result", "ComparisonError", "reassemble", "compare", "compare_grads", "error_heatmap",
           "to_f64", "as_shard_list"]

# Denominator guard for the relative error |tp - dense| / (|dense| + _TINY).
_TINY = 1e-12


# ------------------------------------------------------------------------------ conversion
def to_f64(x: Any, what: str) -> torch.Tensor:
    """Any tensor / ndarray / number -> float64 CPU tensor (detached); complex values refused."""
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            raise TypeError(f"{what}: complex tensors are not supported")
        return x.detach().to(device="cpu", dtype=torch.float64)
    if isinstance(x, (np.ndarray, list, tuple)) or np.isscalar(x):
        a = np.asarray(x)
        if a.dtype.kind not in "biuf":  # bool, int, unsigned, float: not complex, object or text
            raise TypeError(f"{what}: cannot compare values of dtype {a.dtype}")
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))
    raise TypeError(f"{what}: expected a torch.Tensor or numpy array, got {type(x).__name__}")


def as_shard_list(shards: Any) -> list:
    """Accept a list/tuple by rank, or a {rank: tensor} dict with keys 0..p-1."""
    if isinstance(shards, dict):
        keys = sorted(shards)
        if keys != list(range(len(keys))):
            raise ValueError(f"shards dict must be keyed by rank 0..{len(keys) - 1}, got keys {keys}")
        return [shards[k] for k in keys]
    if isinstance(shards, (torch.Tensor, np.ndarray)) or not hasattr(shards, "__iter__"):
        raise TypeError("shards must be a list with one tensor per rank (rank 0 first), "
                        f"got a single {type(shards).__name__}; wrap it as [t] for one rank")
    return list(shards)


def _max(t: torch.Tensor) -> float:
    return float(t.max()) if t.numel() else 0.0


def _argmax(t: torch.Tensor) -> tuple:
    """The index (a tuple) of ``t``'s largest element; () when ``t`` is empty or 0-d."""
    return tuple(int(i) for i in np.unravel_index(int(t.argmax()), t.shape)) if t.numel() else ()


def _same_except(shape, other, d: int) -> bool:
    """Do two shapes agree in every dim but ``d`` (can they be concatenated along ``d``)?"""
    return [s for i, s in enumerate(shape) if i != d] == [s for i, s in enumerate(other) if i != d]


def _shape_summary(ts: Sequence[torch.Tensor]) -> str:
    shapes = [tuple(t.shape) for t in ts]
    if len(set(shapes)) == 1:
        return f"{shapes[0]}×{len(shapes)}"
    return ", ".join(f"rank {r}: {s}" for r, s in enumerate(shapes))


# ------------------------------------------------------------------------------ reassemble
def reassemble(shards, layout: str, *, atol: float = 0.0, rtol: float = 0.0) -> torch.Tensor:
    """Rebuild the full tensor (float64, CPU) from the per-rank pieces.

    shards: one tensor / ndarray per rank, rank 0 first (or a ``{rank: tensor}`` dict).
    layout: ``"Replicate()"``, ``"Shard(d)"`` or ``"Partial()"`` (see the module docstring).
    atol, rtol: how closely replicated copies must agree (default: exactly).

    Raises ValueError for a bad layout string / empty list / dim out of range, and
    AssertionError (naming the ranks and numbers) when the pieces are inconsistent: replicas
    that disagree, or shards whose shapes cannot be concatenated / summed.
    """
    kind, dim = parse_placement(layout)
    ts = [to_f64(p, f"shard of rank {r}") for r, p in enumerate(as_shard_list(shards))]
    if not ts:
        raise ValueError("shards is empty: expected one tensor per rank")
    ref = ts[0]
    if kind != "shard" and any(t.shape != ref.shape for t in ts):
        what = "the same full tensor" if kind == "replicate" else "a full-size partial sum of the same shape"
        raise AssertionError(f"layout '{placement_text(kind, dim)}': every rank should hold {what}, but shapes "
                             f"differ: {_shape_summary(ts)}. If each rank holds a block, use 'Shard(d)'.")
    if kind == "partial":
        return torch.stack(ts).sum(0)
    if kind == "replicate":
        off = {r: _max(_errors(t, ref)[0]) for r, t in enumerate(ts)
               if not torch.allclose(t, ref, atol=atol, rtol=rtol, equal_nan=True)}
        if off:
            worst_r = max(off, key=off.get)
            raise AssertionError(f"layout 'Replicate()': rank(s) {', '.join(map(str, off))} disagree with rank 0 "
                                 f"(max |Δ| {off[worst_r]:.1e} on rank {worst_r}, tolerance atol {atol:.0e} rtol "
                                 f"{rtol:.0e}). If these are partial sums (e.g. the output of a row-parallel matmul "
                                 "before its all-reduce), use layout 'Partial()' -- or add the missing all-reduce.")
        return ref.clone()

    # Shard(d); shards with a different number of dims fail the "every dim except d" check
    ndim = ref.dim()
    if ndim == 0:
        raise ValueError(f"layout 'Shard({dim})' needs shards with at least 1 dim; got 0-d scalars")
    if not -ndim <= dim < ndim:
        raise ValueError(f"layout 'Shard({dim})': dim {dim} is out of range for {ndim}-d shards "
                         f"(valid: {-ndim}..{ndim - 1})")
    d = dim % ndim
    if not all(_same_except(t.shape, ref.shape, d) for t in ts):
        raise AssertionError(f"layout 'Shard({dim})': shards must match in every dim except {dim}, "
                             f"but got {_shape_summary(ts)}")
    return torch.cat(ts, dim=d)


# ------------------------------------------------------------------------------ Result
@dataclass
class Result:
    """Outcome of one dense-vs-TP comparison.

    passed:  the outcome was the expected one (``matches`` when expect="match",
             ``not matches`` when expect="mismatch").
    matches: torch.allclose(tp, dense, atol, rtol).
    """

    name: str
    passed: bool
    max_abs: float
    max_rel: float
    shape: tuple
    layout: str
    n_ranks: int = 1
    matches: bool = True
    expect: str = "match"
    atol: float = 1e-5
    rtol: float = 1e-4
    argmax: tuple = ()
    message: str = ""
    figure: Any = field(default=None, repr=False, compare=False)
    shown_in: Any = field(default=None, repr=False, compare=False)  # the cell that showed it

    # -- text ---------------------------------------------------------------------------
    def __str__(self) -> str:
        verb = "matches dense" if self.matches else "differs from dense"
        if self.expect == "mismatch":
            verb += " (expected a mismatch!)" if self.matches else ", as expected"
        mark = "✅" if self.passed else "❌"
        err = f"max|Δ| {self.max_abs:.1e}"
        if not self.matches and self.argmax:
            err += f" at {self.argmax}"
        ranks = f"{self.n_ranks} rank" + ("s" if self.n_ranks != 1 else "")
        return f"{mark} {self.name} {verb}  shape {self.shape}  {err}  (layout {self.layout}, {ranks})"

    def _repr_html_(self) -> str:
        colour = "#1a7f37" if self.passed else "#cf222e"
        return (f'<div class="tp-compare-result" data-passed="{str(self.passed).lower()}" '
                f'style="font-family: monospace; white-space: pre; color: {colour};">{html.escape(str(self))}</div>')

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(str(self))

    def _ipython_display_(self) -> None:
        display.show_again(self)  # a cell ending with compare(...): not shown twice

    def __bool__(self) -> bool:
        return bool(self.passed)


class ComparisonError(AssertionError):
    """AssertionError raised by :func:`compare`; ``.result`` holds the :class:`Result`."""

    def __init__(self, message: str, result: Result | None = None):
        super().__init__(message)
        self.result = result


# ------------------------------------------------------------------------------ compare
def _errors(tp: torch.Tensor, dense: torch.Tensor):
    """abs and rel error tensors; a NaN/inf where dense is finite counts as an infinite error."""
    same = (tp == dense) | (tp.isnan() & dense.isnan())          # equal (infinities too), or both NaN
    diff = torch.where(same, 0.0, (tp - dense).abs().nan_to_num(nan=math.inf, posinf=math.inf))
    rel = diff / (dense.abs().nan_to_num(nan=0.0, posinf=0.0) + _TINY)
    return diff, rel


def _hint(tp_pieces: list[torch.Tensor], kind: str, tp: torch.Tensor, dense: torch.Tensor,
          atol: float, rtol: float) -> str:
    p = len(tp_pieces)
    if p > 1 and torch.allclose(tp, p * dense, atol=atol, rtol=rtol):   # a mismatch: same shape, not empty
        return (f" Hint: the TP result is {p}× dense (p = {p}): something was summed over "
                "ranks once too often (an all-reduce on a value that was already complete).")
    if (kind != "partial" and p > 1 and all(t.shape == dense.shape for t in tp_pieces)
            and torch.allclose(torch.stack(tp_pieces).sum(0), dense, atol=atol, rtol=rtol)):
        return (" Hint: the shards sum to dense: they are partial sums. Either the all-reduce is missing, "
                "or the layout is 'Partial()'.")
    return ""


def _layout_suggestions(ts: list[torch.Tensor], dense_shape) -> list[str]:
    out = ["Replicate()", "Partial()"] if all(t.shape == dense_shape for t in ts) else []
    nd = ts[0].dim()
    if nd and all(t.dim() == nd for t in ts) and len(dense_shape) == nd:
        out += [f"Shard({d})" for d in range(nd)
                if all(_same_except(t.shape, dense_shape, d) for t in ts)
                and sum(t.shape[d] for t in ts) == dense_shape[d]]
    return out


def _compare(name, shards, dense, layout, atol, rtol, expect, show) -> Result:
    """Compare without raising on a (mis)match; returns the Result (figure attached on failure)."""
    if expect not in ("match", "mismatch"):
        raise ValueError(f"expect must be 'match' or 'mismatch', got {expect!r}")
    kind, dim = parse_placement(layout)
    canon = placement_text(kind, dim)
    ts = [to_f64(p, f"shard of rank {r}") for r, p in enumerate(as_shard_list(shards))]
    dense_t = to_f64(dense, f"{name}: dense reference")
    n = len(ts)
    worst_rank = None
    if ts and kind == "replicate" and all(c.shape == dense_t.shape for c in ts):
        # Every rank should hold the dense answer: judge the worst copy, so a
        # missing all-reduce (copies that disagree) is a mismatch, not a crash.
        worst_rank = max(range(n), key=lambda r: _max(_errors(ts[r], dense_t)[0]))
        tp = ts[worst_rank]
    else:
        tp = reassemble(ts, layout, atol=atol, rtol=rtol)

    if tp.shape != dense_t.shape:
        sugg = _layout_suggestions(ts, dense_t.shape)
        hint = f" Layouts that would give the dense shape: {', '.join(sugg)}." if sugg else ""
        raise ComparisonError(f"{name} (layout {canon}): reassembled shape {tuple(tp.shape)} from {n} shard(s) "
                              f"[{_shape_summary(ts)}] != dense shape {tuple(dense_t.shape)}.{hint}")

    diff, rel = _errors(tp, dense_t)
    max_abs, argmax = _max(diff), _argmax(diff)
    n_bad = int((~(diff <= atol + rtol * dense_t.abs().nan_to_num(nan=0.0, posinf=math.inf))).sum())
    matches = n_bad == 0

    numbers = (f"{name} (layout {canon}): max abs err {max_abs:.1e} {'>' if max_abs > atol else '<='} atol {atol:.0e} "
               f"at index {argmax}; max rel err {_max(rel):.1e} at index {_argmax(rel)}; "
               f"{n_bad} of {diff.numel()} elements fail |tp - dense| <= atol + rtol*|dense| "
               f"(atol {atol:.0e}, rtol {rtol:.0e})")
    res = Result(name=name, passed=matches if expect == "match" else not matches, max_abs=max_abs, max_rel=_max(rel),
                 shape=tuple(tp.shape), layout=canon, n_ranks=n, matches=matches,
                 expect=expect, atol=atol, rtol=rtol, argmax=argmax, message=numbers)
    if not matches:
        if worst_rank is not None and n > 1:
            res.message += f"; worst copy: rank {worst_rank}"
        res.message += _hint(ts, kind, tp, dense_t, atol, rtol)
        if show:
            res.figure = error_heatmap(tp, dense_t, title=f"{name}: |TP − dense|")
    if show:
        display.show_result(res, show)
    return res


def compare(name: str, shards, dense, layout: str = "Replicate()", *, atol: float = 1e-5,
            rtol: float = 1e-4, expect: str = "match", show=True) -> Result:
    """Reassemble ``shards`` with ``layout`` and check them against ``dense``.

    Pass criterion: ``torch.allclose(tp, dense, atol=atol, rtol=rtol)`` in float64.
    max_rel is ``max |tp - dense| / (|dense| + 1e-12)``.

    expect="match" (default): returns a passing Result; on a mismatch shows the error heatmap
    (if show) and raises :class:`ComparisonError` (an AssertionError) with the numbers, e.g.
    ``Y (layout Shard(-1)): max abs err 3.1e-01 > atol 1e-05 at index (2, 7); max rel err ...``.

    expect="mismatch" (for deliberate "break it" cells): passes when they differ (shows the
    heatmap and prints ``mismatch, as expected: ...``) and raises if they unexpectedly match.

    Shape mismatches raise an AssertionError naming both shapes and the layout. show=True shows the
    Result through the current display (:func:`helpers.reference.display.set_display`: inside
    IPython a line and the heatmap, elsewhere a printed line); show=False shows nothing; a
    function ``show(result)`` shows it that way.
    """
    res = _compare(name, shards, dense, layout, atol, rtol, expect, show)
    if not res.passed:
        if expect == "match":
            raise ComparisonError(res.message, res)
        raise ComparisonError(f"{name} (layout {res.layout}): expected a mismatch (this cell breaks the TP "
                              f"computation on purpose), but TP matches dense: max abs err {res.max_abs:.1e} "
                              f"<= atol {atol:.0e}. Did the cell that breaks it run?", res)
    return res


def compare_grads(pairs, *, atol: float = 1e-5, rtol: float = 1e-4, show=True) -> list[Result]:
    """Compare several tensors (typically gradients) and report all of them.

    pairs: ``[(name, shards, dense, layout), ...]`` (layout may be omitted: "Replicate()").
    Every Result is shown; after the last one, a single AssertionError lists every failure.
    Returns the list of Results when all match.
    """
    results: list[Result] = []
    failures: list[str] = []
    for i, item in enumerate(pairs):
        if not isinstance(item, (tuple, list)) or len(item) not in (3, 4):
            raise ValueError(f"compare_grads: item {i} must be (name, shards, dense[, layout]), got {item!r:.80}")
        name, shards, dense, layout = (*item, "Replicate()")[:4]
        try:
            res = _compare(name, shards, dense, layout, atol, rtol, "match", show)
        except AssertionError as e:  # shape / replica problems: keep going, report at the end
            failures.append(str(e))
            if show:
                print(f"❌ {e}")
            continue
        results.append(res)
        if not res.passed:
            failures.append(res.message)
    if failures:
        raise ComparisonError(f"{len(failures)} of {len(pairs)} comparisons failed:\n"
                              + "\n".join(f"  - {f}" for f in failures))
    return results


# ------------------------------------------------------------------------------ error heatmap
def error_heatmap(tp, dense, title: str | None = None, ax=None):
    """Draw |tp - dense| as an image and return the matplotlib Figure.

    1-D tensors are drawn as 1×N, >2-D tensors flattened to (prod(leading dims), last dim).
    A colorbar gives the scale, the worst element is outlined, and a cell grid is drawn when
    the tensor is small (≤ 32 × 32). Draws into ``ax`` when given (returns ``ax.figure``).
    """
    from matplotlib.patches import Rectangle

    from ..viz.figure import grid_lines, new_figure, to_2d

    tp_t = to_f64(tp, "tp")
    dense_t = to_f64(dense, "dense")
    if tp_t.shape != dense_t.shape:
        raise ValueError(f"error_heatmap: tp shape {tuple(tp_t.shape)} != dense shape {tuple(dense_t.shape)}")
    diff, _ = _errors(tp_t, dense_t)                  # no NaN: a wrong NaN counts as inf
    finite_max = _max(diff[torch.isfinite(diff)])
    img = to_2d(diff.nan_to_num(posinf=finite_max)).numpy()
    rows, cols = img.shape
    max_err = _max(diff)

    if ax is None:
        w = min(10.0, max(4.0, 0.25 * cols + 2.0))
        h = min(8.0, max(1.8, 0.25 * rows + 1.4))
        ax = new_figure(w, h, dpi=100, layout="constrained").add_subplot()
    fig = ax.figure

    im = ax.imshow(img, cmap="magma", vmin=0.0, vmax=finite_max or 1.0, aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="|TP − dense|", fraction=0.05)
    if rows <= 32 and cols <= 32:
        grid_lines(ax, -0.5, -0.5, rows, cols, color="#808080")
    if max_err > 0:
        r2, c2 = np.unravel_index(int(diff.argmax()), img.shape)
        ax.add_patch(Rectangle((c2 - 0.5, r2 - 0.5), 1, 1, fill=False, edgecolor="#00e5ff", linewidth=2))
    shape_note = "" if tp_t.dim() in (1, 2) else f" (shape {tuple(tp_t.shape)} flattened)"
    ax.set_title(f"{title or '|TP − dense|'}\nmax {max_err:.1e} at {_argmax(diff)}{shape_note}", fontsize=10)
    ax.set_xlabel("column")
    ax.set_ylabel("row")
    return fig
