"""Vocab-parallel embedding, the TP + SP tiny GPT and their refusals, on 4 processes (gloo).

    python -m torch.distributed.run --standalone --nproc_per_node=4 tests/torchrun/vocab_torchrun_worker.py

The functions are plain and take their numbers as arguments: ``tests/cluster/test_vocab_parallel_cluster.py``
also calls them on the session's ipyparallel engines (by reference; this file's folder is added
to the engines' ``sys.path``). Each one builds the dense reference from the same seed on every
rank. Exit code 0 means every check passed.
"""

from __future__ import annotations

import copy
import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.testing import assert_close

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from helpers.models import GPTConfig, TinyGPT, lm_loss  # noqa: E402
from helpers.models.plans import parallelize_tiny_gpt  # noqa: E402
from helpers.tp import VocabParallelEmbedding  # noqa: E402
from helpers.tp.dtensor_local import to_local  # noqa: E402

LOSS_TOL = 1e-4


def _mesh():
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cpu", (dist.get_world_size(),), mesh_dim_names=("tp",))


def dense_embedding(V: int, D: int, seed: int) -> nn.Embedding:
    torch.manual_seed(seed)
    return nn.Embedding(V, D)


def upstream_grad(shape, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randn(*shape, generator=g)


def vocab_parallel_forward_backward(ids: torch.Tensor, V: int, D: int, seed: int) -> dict:
    """This rank's output, table shard and its gradient, for the hand-made VocabParallelEmbedding."""
    emb = VocabParallelEmbedding.from_embedding(dense_embedding(V, D, seed))
    out = emb(ids)                                            # (…, D) on every rank
    out.backward(upstream_grad(out.shape, seed))
    return {"out": out.detach(), "dW": emb.weight.grad.detach(), "start": emb.start, "stop": emb.stop}


def dtensor_forward_backward(ids: torch.Tensor, V: int, D: int, seed: int) -> dict:
    """The same with parallelize_module(RowwiseParallel) on an nn.Embedding."""
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import RowwiseParallel, parallelize_module

    emb = parallelize_module(dense_embedding(V, D, seed), _mesh(),
                             RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate()))
    out = to_local(emb(ids))
    out.backward(upstream_grad(out.shape, seed))
    return {"out": out.detach().clone(), "dW": emb.weight.grad.full_tensor().detach()}


def dense_forward_backward(ids: torch.Tensor, V: int, D: int, seed: int) -> dict:
    emb = dense_embedding(V, D, seed)
    out = emb(ids)
    out.backward(upstream_grad(out.shape, seed))
    return {"out": out.detach(), "dW": emb.weight.grad.detach()}


def check_embedding(ids: torch.Tensor, V: int, D: int, seed: int = 0) -> None:
    ref = dense_forward_backward(ids, V, D, seed)
    mine = vocab_parallel_forward_backward(ids, V, D, seed)
    assert_close(mine["out"], ref["out"])
    assert_close(mine["dW"], ref["dW"][mine["start"]:mine["stop"]])
    dt = dtensor_forward_backward(ids, V, D, seed)
    assert_close(dt["out"], ref["out"])
    assert_close(dt["dW"], ref["dW"])


def refusals() -> dict:
    """Every bad input raises ValueError with the numbers, and no collective runs before it.

    Returns {case: message}. Raises AssertionError when a case is accepted or a collective ran.
    """
    from torch.distributed.tensor.debug import CommDebugMode

    p = dist.get_world_size()
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=8 * p)
    model = parallelize_tiny_gpt(TinyGPT(cfg), _mesh())
    emb = VocabParallelEmbedding.from_embedding(nn.Embedding(4 * p, 8))
    h = p + 1
    cases = {
        "vocab": lambda: VocabParallelEmbedding.from_embedding(nn.Embedding(4 * p + 1, 8)),
        "model vocab": lambda: parallelize_tiny_gpt(TinyGPT(GPTConfig(vocab_size=8 * p + 1)), _mesh()),
        "heads": lambda: parallelize_tiny_gpt(TinyGPT(GPTConfig(vocab_size=8 * p, d_model=8 * h, n_heads=h)),
                                              _mesh()),
        "seq len": lambda: model(torch.zeros(2, cfg.seq_len + 1, dtype=torch.long)),
        "id too large": lambda: model(torch.full((2, cfg.seq_len), cfg.vocab_size, dtype=torch.long)),
        "id negative": lambda: model(torch.full((2, cfg.seq_len), -1, dtype=torch.long)),
        "id by hand": lambda: emb(torch.tensor([[0, 4 * p]])),
    }
    messages = {}
    for name, fn in cases.items():
        with CommDebugMode() as comm:
            try:
                fn()
            except ValueError as e:
                messages[name] = str(e)
            else:
                raise AssertionError(f"{name}: accepted")
        if comm.get_total_counts():
            raise AssertionError(f"{name}: {comm.get_comm_counts()} ran before the refusal")
    return messages


def train_losses(steps: int = 20, seed: int = 0, max_norm: float = 0.5) -> tuple[list, list, list, list]:
    """(dense losses, TP + SP losses, dense grad norms, TP + SP grad norms) over ``steps`` AdamW
    steps on the shipped corpus, gradients clipped at ``max_norm`` (clip_grad_norm_ on DTensors)."""
    from torch.distributed.tensor.parallel import loss_parallel

    from helpers.data import CharTokenizer, get_batch, load_corpus

    text = load_corpus()
    tok = CharTokenizer(text, pad_to_multiple=8)
    ids = tok.encode(text)
    cfg = GPTConfig(vocab_size=tok.vocab_size)
    torch.manual_seed(seed)
    dense = TinyGPT(cfg)
    tp = parallelize_tiny_gpt(copy.deepcopy(dense), _mesh())
    opt_d = torch.optim.AdamW(dense.parameters(), lr=3e-3)
    opt_t = torch.optim.AdamW(tp.parameters(), lr=3e-3)
    ld, lt, nd, nt = [], [], [], []
    for step in range(steps):
        x, y = get_batch(ids, 8, cfg.seq_len, step, seed)
        for model, opt, out, norms in ((dense, opt_d, ld, nd), (tp, opt_t, lt, nt)):
            opt.zero_grad()
            with loss_parallel():
                loss = lm_loss(model(x), y)
                loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            norms.append(float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm))
            opt.step()
            out.append(float(to_local(loss).detach()))
    return ld, lt, nd, nt


def checks(rank, world):
    V, D = 4 * world * 3, 8                                  # 48 rows: 12 per rank
    g = torch.Generator().manual_seed(123)                    # the same ids on every rank
    for trial in range(5):
        ids = torch.randint(0, V, (3, 7), generator=g)
        ids[0, :4] = torch.tensor([0, V // world - 1, V // world, V - 1])   # shard boundaries
        check_embedding(ids, V, D, seed=trial)
    if rank == 0:
        print("vocab-parallel embedding (by hand and RowwiseParallel) vs dense: ok", flush=True)
    msgs = refusals()
    if rank == 0:
        for k, m in msgs.items():
            print(f"refused {k}: {m}", flush=True)
    ld, lt, nd, nt = train_losses()
    worst = max(abs(a - b) for a, b in zip(ld, lt))
    if worst > LOSS_TOL:
        raise AssertionError(f"loss curves differ by {worst:.1e} > {LOSS_TOL:.0e}: {ld} vs {lt}")
    assert_close(torch.tensor(nt), torch.tensor(nd), rtol=1e-4, atol=1e-5)   # the norm over all shards
    clipped = sum(n > 0.5 for n in nd)
    if clipped == 0:
        raise AssertionError(f"clipping never acted (grad norms {nd}); the check proves nothing")
    if rank == 0:
        print(f"clip_grad_norm_ on DTensors: same total norm as dense at every step, "
              f"clipped {clipped} of {len(nd)} steps", flush=True)
    if rank == 0:
        print(f"loss curves: {ld[0]:.3f} → {ld[-1]:.3f}, max |TP+SP − dense| {worst:.1e}", flush=True)


if __name__ == "__main__":
    from worker import run_checks  # beside this script; torchrun puts its folder on sys.path

    run_checks(checks, "vocab/lm")
