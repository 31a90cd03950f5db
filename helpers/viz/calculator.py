"""Notebook 06's TP calculator widget: inputs on the left, the plan of
:func:`helpers.costmodel.calculator.plan` on the right, recomputed on every change.

Nothing here computes a result: the widget reads its fields into
:class:`~helpers.costmodel.calculator.CalculatorInputs`, asks :func:`~helpers.costmodel.calculator.check_inputs`
for problems (shown as sentences, never a traceback), and shows the :class:`Plan`.

Browser tests: ``.tp-calculator`` is the widget; each field has a class ``tp-calc-<name>``
(``tp-calc-tp``, ``tp-calc-gpu_memory_gb``, ...) with an ``<input>`` inside; ``.tp-calc-gpu`` picks
the GPU (A100 40GB, Derecho's, by default; H100 80GB), which sets the GPU memory and the achieved
matmul rate; ``.tp-calc-message`` holds the problems (empty when there are none), ``.tp-calc-result``
the plan (its first line is ``TP calculator: <n> updates``), ``img.tp-calc-image`` the bar chart.
"""

from __future__ import annotations

import html
from dataclasses import replace

import ipywidgets as widgets

from ..costmodel.calculator import DTYPES, CalculatorInputs, Plan, check_inputs, derecho_inputs, plan
from ..costmodel.dims import PRESETS
from ..costmodel.hardware import GPUS
from .figure import TEXT, new_axes, render_png, stacked_bars
from .timing import PART_COLORS

__all__ = ["TPCalculator", "tp_calculator", "plan_html", "plan_figure"]

# the number fields, in the order shown: the model (the first six), the batch (two), the hardware
_LABELS = {
    "d_model": "d_model", "n_layers": "layers", "n_heads": "heads", "n_kv_heads": "kv heads (0: =heads)",
    "d_ff": "d_ff", "vocab": "vocab (0: none)", "batch": "sequences", "seq_len": "seq length",
    "gpu_memory_gb": "GPU memory (GB)", "gpus_per_node": "GPUs per node",
    "intra_node_gb_s": "NVLink GB/s per GPU", "inter_node_gb_s": "GB/s per NIC",
    "nics_per_node": "NICs per node in use", "tp": "TP degree to try", "matmul_tflops": "your TFLOP/s at TP=1 (0: GPU's)",
}
_INTS = ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "vocab", "batch", "seq_len",
         "gpus_per_node", "tp", "nics_per_node")
_MODEL_FIELDS = tuple(_LABELS)[:6]


def _gb(x: float) -> str:
    return f"{x / 1e9:,.1f} GB"


def plan_html(pl: Plan) -> str:
    """The plan as HTML: the verdicts, the recommendation, a row per TP degree."""
    inp = pl.inputs
    r1 = pl.row(1)
    yes = {True: "<b style='color:#1a7f37'>fits</b>", False: "<b style='color:#a40000'>does not fit</b>"}
    head = [
        f"<b>Without TP</b> ({_gb(inp.gpu_memory_gb * 1e9)} per GPU): one layer {_gb(r1.layer_bytes)} {yes[r1.layer_fits]}; "
        f"the whole model {_gb(r1.model_bytes)} {yes[r1.model_fits]}.",
        "<b>Smallest TP degree that fits</b>: one layer "
        f"{pl.smallest_tp_for_layer or 'none'}; the whole model on the TP group alone "
        f"{pl.smallest_tp_for_model or 'none'}; with FSDP across the rest {pl.smallest_tp_with_fsdp or 'none'}.",
    ]
    rec = "".join(f"<li>{html.escape(line)}</li>" for line in pl.recommendation)
    rows = []
    for r in pl.rows:
        style = " style='background:#fff3d6'" if r.tp == inp.tp else ""
        rows.append(
            f"<tr{style}><td>{r.tp}</td><td>{'yes' if r.within_node else 'no'}</td><td>{_gb(r.layer_bytes)}</td>"
            f"<td>{_gb(r.model_bytes)}</td><td>{_gb(r.fsdp_floor_bytes)}</td>"
            f"<td>{1e3 * r.compute_s:.2f}</td><td>{1e3 * r.comm_s:.2f} ({1e3 * r.comm_s_slow:.2f})</td>"
            f"<td><b>{r.comm_share:.0%}</b></td>"
            f"<td>{r.efficiency:.0%}</td></tr>")
    table = ("<table class='tp-calc-table'><tr><th>TP</th><th>in one node</th><th>layer / GPU</th>"
             "<th>model / GPU (TP only)</th><th>FSDP floor / GPU</th><th>compute ms</th>"
             "<th>comm ms (1 NIC, 1 NVLink pair)</th>"
             "<th>comm share</th><th>matmul eff.</th></tr>" + "".join(rows) + "</table>")
    note = (f"<small>Per layer and training step; no overlap of communication and compute. Efficiency: "
            f"{html.escape(pl.efficiency_source)}. Memory: notebook 03's model (AdamW, no activation "
            f"checkpointing, no allocator overhead). Links: Derecho's, cited in helpers.costmodel.hardware; comm ms: "
            f"rings over {inp.nics_per_node} NIC(s) per node and all of a GPU's NVLinks, in brackets the slow "
            f"bound (one NIC, one NVLink pair).</small>")
    return "<br>".join(head) + f"<ul>{rec}</ul>" + table + note


def plan_figure(pl: Plan):
    """One layer's step time per TP degree: compute and communication, labelled with communication's share."""
    fig, ax = new_axes(5.6, 2.9)
    xs = list(range(len(pl.rows)))
    tops, bars = stacked_bars(ax, xs, [[1e3 * r.compute_s for r in pl.rows], [1e3 * r.comm_s for r in pl.rows]],
                              [PART_COLORS["matmul"], PART_COLORS["communication"]], width=0.6)
    ax.bar_label(bars, [f"{r.comm_share:.0%}" for r in pl.rows], fontsize=8, color=TEXT)
    ax.set_xticks(xs, [f"{r.tp}" + ("" if r.within_node else "\n(2+ nodes)") for r in pl.rows])
    ax.set_xlabel("TP degree")
    ax.set_ylabel("ms per layer-step")
    ax.set_ylim(0, tops.max() * 1.25)
    ax.legend(ax.containers, ["compute", "TP all-reduces"], fontsize=8, frameon=False)
    ax.set_title("One layer's training step (% = communication share)", fontsize=10)
    return fig


class TPCalculator(widgets.HBox):
    """The calculator widget (see the module docstring), starting from ``inputs`` (default: Llama 2
    70B on Derecho). ``measured``: an efficiency curve {p: rate relative to p=1} offered next to the
    reference.

    Attributes: ``fields`` ({name: widget}), ``preset``, ``dtype``, ``efficiency`` (Dropdowns),
    ``message``, ``result`` (HTML), ``image`` (Image), ``plan`` (the last Plan or None),
    ``updates`` (int).
    """

    def __init__(self, inputs: CalculatorInputs | None = None, measured: dict | None = None,
                 measured_label: str = "measured here"):
        inputs = self._inputs = inputs or derecho_inputs()
        self._measured = dict(measured) if measured else None
        self._measured_label = measured_label
        kw = dict(style={"description_width": "160px"}, layout=widgets.Layout(width="310px"))
        preset = next((name for name, m in PRESETS.items()  # the preset whose shape these inputs have
                       if all(getattr(inputs, k) == getattr(m, k) for k in ("d_model", "n_layers", "n_heads", "d_ff"))),
                      "custom")
        self.preset = widgets.Dropdown(options=[*PRESETS, "custom"], value=preset, description="model",
                                       **kw).add_class("tp-calc-preset")
        self.fields = {}
        for name, label in _LABELS.items():
            text, kind = (widgets.IntText, int) if name in _INTS else (widgets.FloatText, float)
            self.fields[name] = text(value=kind(getattr(inputs, name) or 0), description=label,
                                     **kw).add_class(f"tp-calc-{name}")
        self.gated = widgets.Checkbox(value=inputs.gated_mlp, description="SwiGLU MLP", **kw)
        self.flash = widgets.Checkbox(value=inputs.flash_attention, description="flash attention",
                                      **kw).add_class("tp-calc-flash")
        self.dtype = widgets.Dropdown(options=sorted(DTYPES), value=inputs.dtype, description="dtype",
                                      **kw).add_class("tp-calc-dtype")
        self.gpu = widgets.Dropdown(options=list(GPUS), value=inputs.gpu, description="GPU", **kw).add_class("tp-calc-gpu")
        options = ["e(p): H100 table (bench_shard_gemm.py)"] + ([measured_label] if self._measured else [])
        self.efficiency = widgets.Dropdown(options=options, value=options[0], description="efficiency curve",
                                           **kw).add_class("tp-calc-efficiency")
        self.message = widgets.HTML("").add_class("tp-calc-message")
        self.result = widgets.HTML("").add_class("tp-calc-result")
        self.image = widgets.Image(format="png").add_class("tp-calc-image")
        self.updates = 0
        n = list(self.fields.values())
        left = [self.preset, *n[:6], self.gated, *n[6:8], self.flash, self.dtype, self.gpu, *n[8:], self.efficiency]
        super().__init__([widgets.VBox(left),
                          widgets.VBox([self.message, self.result, self.image], layout=widgets.Layout(width="760px"))])
        self.add_class("tp-calculator")
        self._filling = False
        self.update()
        self.preset.observe(self._on_preset, names="value")
        self.gpu.observe(self._on_gpu, names="value")
        for w in (*self.fields.values(), self.gated, self.flash, self.dtype, self.efficiency):
            w.observe(self._on_change, names="value")

    # ---------------------------------------------------------------- reading the fields
    def inputs(self) -> CalculatorInputs:
        """The fields as :class:`CalculatorInputs` (0 means "none" for kv heads and TFLOP/s)."""
        vals = {k: w.value for k, w in self.fields.items()}
        vals["n_kv_heads"] = vals["n_kv_heads"] or None
        vals["matmul_tflops"] = vals["matmul_tflops"] or None
        bias = PRESETS.get(self.preset.value, self._inputs).bias  # a preset's, or (custom) the starting inputs'
        return replace(self._inputs, **vals, dtype=self.dtype.value, gated_mlp=self.gated.value, bias=bias,
                       flash_attention=self.flash.value, gpu=self.gpu.value)

    # ---------------------------------------------------------------- events
    def _fill(self, values: dict) -> None:
        """Set several widgets ({widget: value}) with exactly one update, not one per change."""
        self._filling = True
        try:
            for w, v in values.items():
                w.value = v
        finally:
            self._filling = False
        self.update()

    def _on_preset(self, change) -> None:
        model = PRESETS.get(change["new"])
        if model is not None:
            self._fill({**{self.fields[k]: int(getattr(model, k) or 0) for k in _MODEL_FIELDS},
                        self.gated: model.gated_mlp})

    def _on_gpu(self, change) -> None:
        """A GPU brings its memory (its rate comes with it in the plan)."""
        self._fill({self.fields["gpu_memory_gb"]: GPUS[change["new"]].memory / 1e9})

    def _on_change(self, change) -> None:
        if not self._filling:
            self.update()

    def update(self) -> None:
        """Recompute the plan from the fields; problems become a message, never a traceback."""
        self.updates += 1
        self.plan: Plan | None = None
        try:
            inp = self.inputs()
            problems = check_inputs(inp)
            if not problems:
                use_measured = self._measured and self.efficiency.value == self._measured_label
                pl = plan(inp, efficiency=self._measured if use_measured else None,
                          efficiency_source=self._measured_label if use_measured else None)
                self.image.value = render_png(plan_figure(pl))
                self.plan = pl
        except Exception as e:  # keep the widget alive and say what went wrong
            problems = [f"could not compute this plan: {type(e).__name__}: {e}"]
        items = "".join(f"<li>{html.escape(p)}</li>" for p in problems)
        self.message.value = (f"<div style='color:#a40000'><b>Please check the inputs:</b>"
                              f"<ul>{items}</ul></div>") if problems else ""
        self.result.value = (f"<small>TP calculator: {self.updates} updates</small><br>"
                             + (plan_html(self.plan) if self.plan else "(no plan until the inputs make sense)"))


tp_calculator = TPCalculator  # the notebook's name for it
