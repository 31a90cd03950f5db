"""The shard-GEMM efficiency table of notebook 06 and helpers.costmodel.hardware.REFERENCE, on any GPU.

    python benchmarks/bench_shard_gemm.py                  # the reference's shapes on a GPU
    python benchmarks/bench_shard_gemm.py --cpu            # CPU fallback: 16x smaller, fp32 (~1 min)
    python benchmarks/bench_shard_gemm.py --json out.json  # also every rate, for a notebook or a diff

One matmul X·W_p: X (tokens × 8192), W_p (8192 × 28672/p), the column shard of a Llama-70B-sized
MLP's first weight that one of p TP ranks multiplies. Per (dtype, tokens, p): the best of
``--repeats`` timings, each repeating the matmul until it lasts ``--min-time`` seconds, device
synchronised (``torch.cuda.synchronize()``) before and after; rate = 2·tokens·8192·(28672/p) FLOPs
over that time. The table prints the rate at p = 1 in TFLOP/s and, for p > 1, the rate relative to
p = 1 (the e(p) of notebook 06), as in shared/gpu/README.md's "Shard-GEMM efficiency".

Measured on an H100 (80 GB), torch 2.11, 2026-11-25: helpers.costmodel.hardware.REFERENCE. Without a
GPU (or with --cpu) the shapes are 16x smaller in both dimensions (512 × 1792/p), fp32 only, tokens
16 and 256: a CPU's table says little about a GPU (notebook 06 explains why). Not a test: exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # the repo: helpers
from helpers.measure.timer import matmul_tflops  # noqa: E402  (the course's one matmul timer)

GPU_ROWS = [("bf16", 16), ("bf16", 512), ("bf16", 4096), ("bf16", 16384), ("fp32", 16), ("fp32", 4096)]
CPU_ROWS = [("fp32", 16), ("fp32", 256)]
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def measure(rows, d_model: int, d_ff: int, degrees, device, repeats: int, min_time: float) -> dict:
    """{(dtype, tokens): {p: TFLOP/s}}."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False       # fp32 means fp32, as in the reference
    return {(dt, t): {p: matmul_tflops(t, d_model, d_ff // p, DTYPES[dt], device, repeats, min_time)
                      for p in degrees} for dt, t in rows}


def table(rates: dict, degrees) -> str:
    """The markdown table: rate at p = 1 in TFLOP/s, then % of it at each p."""
    head = "| dtype | tokens | p=1 TFLOP/s | " + " | ".join(f"p={p}" for p in degrees[1:]) + " |"
    lines = [head, "|" + "---|" * (len(degrees) + 2)]
    for (dt, t), by_p in rates.items():
        base = by_p[degrees[0]]
        cells = " | ".join(f"{100 * by_p[p] / base:.0f} %" for p in degrees[1:])
        lines.append(f"| {dt} | {t} | {base:.1f} | {cells} |" if base >= 1 else f"| {dt} | {t} | {base:.3g} | {cells} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu", action="store_true", help="CPU fallback even when a GPU is present")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.05, help="seconds one timing must last")
    ap.add_argument("--degrees", default="1,2,4,8,16")
    ap.add_argument("--json", help="write the rates here as JSON")
    args = ap.parse_args(argv)
    degrees = [int(p) for p in args.degrees.split(",")]
    on_gpu = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if on_gpu else "cpu")
    d_model, d_ff, rows = (8192, 28672, GPU_ROWS) if on_gpu else (512, 1792, CPU_ROWS)
    name = torch.cuda.get_device_name(device) if on_gpu else "CPU"
    print(f"# shard-GEMM efficiency on {name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    print(f"# one (tokens × {d_model})·({d_model} × {d_ff}/p) matmul; % = rate relative to p=1\n")
    rates = measure(rows, d_model, d_ff, degrees, device, args.repeats, args.min_time)
    print(table(rates, degrees))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "d_model": d_model, "d_ff": d_ff,
                       "rates": [{"dtype": dt, "tokens": t, "tflops": {str(p): r for p, r in by_p.items()}}
                                 for (dt, t), by_p in rates.items()]}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
