"""TP inside a node, FSDP across nodes: notebook 03's small transformer, its plans and its data.

Torch only (runs on engines and under torchrun). The pieces:

* :class:`TinyTransformer` -- pre-norm blocks with explicit-matmul attention (see
  :class:`Attention` for why not ``F.scaled_dot_product_attention``) and a GELU MLP;
* :func:`check_tp_in_node` -- refuses, before any collective, a mesh whose TP groups would
  straddle a node boundary;
* :func:`tp_plan` and :func:`apply_fsdp` -- the two plans: Megatron-style TP on the mesh's "tp"
  dim (``parallelize_module``), FSDP2 (``fully_shard``) on its "fsdp" dim;
* :func:`micro_batch` -- this rank's slice of the global batch: one slice per FSDP rank, the
  same slice for every rank of a TP group (refuses a batch the FSDP ranks cannot share);
* :func:`clip_grad_norm_` -- gradient clipping whose norm is taken over the whole 2-D mesh.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = ["Attention", "MLP", "Block", "TinyTransformer", "check_tp_in_node", "tp_plan", "apply_fsdp",
           "micro_batch", "clip_grad_norm_", "local_param_shapes"]


# ------------------------------------------------------------------------------ the model
class Attention(nn.Module):
    """Multi-head self-attention written as two matmuls and a softmax.

    Why not ``F.scaled_dot_product_attention``: on CPU it runs the flash-attention kernel for
    CPU, and in torch 2.13 DTensor has no sharding rule for that kernel, so SDPA on DTensors fails
    on CPU engines (on GPUs it works). The explicit form is the math SDPA computes, runs the same
    on CPU and GPU, and lets the dense reference use the very same code.

    Under TP the column layers return this rank's heads only, so the head count is read from
    the tensors (``view(B, S, -1, head_dim)``), never from the module.
    """

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.head_dim = d_model // n_heads
        self.wq = nn.Linear(d_model, d_model)
        self.wk = nn.Linear(d_model, d_model, bias=False)   # a key bias shifts every score of a query
        # equally; softmax ignores that, so its gradient is 0 (up to rounding, which Adam would amplify)
        self.wv = nn.Linear(d_model, d_model)
        self.wo = nn.Linear(d_model, d_model)

    def forward(self, x):                                        # x: (B, S, D)
        B, S, _ = x.shape
        q, k, v = (w(x).view(B, S, -1, self.head_dim).transpose(1, 2)   # (B, heads on this rank, S, hd)
                   for w in (self.wq, self.wk, self.wv))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))  # (B, h, S, S)
        y = att.softmax(dim=-1) @ v                              # (B, h, S, hd)
        return self.wo(y.transpose(1, 2).reshape(B, S, -1))      # (B, S, D)


class MLP(nn.Module):
    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.w1 = nn.Linear(d_model, d_ff)
        self.act = nn.GELU()
        self.w2 = nn.Linear(d_ff, d_model)

    def forward(self, x):
        return self.w2(self.act(self.w1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then h + mlp(norm(h))."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int):
        super().__init__()
        self.attn_norm = nn.LayerNorm(d_model)
        self.attn = Attention(d_model, n_heads)
        self.mlp_norm = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, d_ff)

    def forward(self, x):
        h = x + self.attn(self.attn_norm(x))
        return h + self.mlp(self.mlp_norm(h))


class TinyTransformer(nn.Module):
    """``n_layers`` blocks on inputs of shape (B, S, d_model); no embedding (the inputs are vectors)."""

    def __init__(self, d_model: int = 32, n_heads: int = 4, d_ff: int = 128, n_layers: int = 2):
        super().__init__()
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_ff) for _ in range(n_layers))

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


# ------------------------------------------------------------------------------ checks
def check_tp_in_node(mesh_shape, dim_names, ranks_per_node: int, tp_dim: str = "tp") -> None:
    """Refuse a mesh whose TP groups would not fit inside a node, before any rank builds it.

    Ranks fill the mesh row-major (as ``init_device_mesh`` does), so the TP groups stay inside the
    nodes exactly when "tp" is the last (fastest-varying) dim and its size divides the ranks per node.

    >>> check_tp_in_node((2, 2), ("fsdp", "tp"), ranks_per_node=2)
    >>> check_tp_in_node((1, 4), ("fsdp", "tp"), ranks_per_node=2)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: TP degree 4 does not divide the 2 ranks per node: ... pick a TP degree in {1, 2}
    >>> check_tp_in_node((2, 2), ("tp", "fsdp"), ranks_per_node=2)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: the TP group of ranks [0, 2] would span nodes [0, 1] ... put it last: mesh_dim_names=('fsdp', 'tp')
    """
    shape, names = tuple(int(s) for s in mesh_shape), tuple(dim_names)
    if len(shape) != len(names):
        raise ValueError(f"mesh shape {shape} and dim names {names} differ in length")
    if tp_dim not in names:
        raise ValueError(f"the mesh has no {tp_dim!r} dim: {names}")
    if not isinstance(ranks_per_node, int) or ranks_per_node < 1:
        raise ValueError(f"ranks_per_node must be a positive whole number, got {ranks_per_node!r}")
    i = names.index(tp_dim)
    tp = shape[i]
    if ranks_per_node % tp:
        ok = ", ".join(str(k) for k in range(1, ranks_per_node + 1) if ranks_per_node % k == 0)
        raise ValueError(f"TP degree {tp} does not divide the {ranks_per_node} ranks per node: some TP groups "
                         f"would cross a node boundary; pick a TP degree in {{{ok}}}")
    stride = math.prod(shape[i + 1:])
    for start in range(math.prod(shape)):
        group = [start + k * stride for k in range(tp)]
        if (start // stride) % tp == 0 and len({r // ranks_per_node for r in group}) > 1:
            order = tuple(n for n in names if n != tp_dim) + (tp_dim,)
            raise ValueError(
                f"the TP group of ranks {group} would span nodes {sorted({r // ranks_per_node for r in group})} "
                f"({ranks_per_node} ranks per node): ranks fill the mesh's last dim first, and \"{tp_dim}\" is "
                f"dim {i} of {names}; put it last: mesh_dim_names={order}")


# ------------------------------------------------------------------------------ the plans
def tp_plan(model: TinyTransformer) -> dict:
    """Megatron-style TP for every block, as a plan for ``parallelize_module`` on the "tp" mesh.

    q, k, v and the MLP's first layer are column-parallel, wo and w2 row-parallel (one all-reduce
    each in the forward: the paper's g). ``PrepareModuleInput`` turns each sub-block's input into
    one replicated DTensor, so the three column layers' input gradients are summed locally and
    all-reduced once in the backward (the paper's f). Norms stay whole on every TP rank.
    """
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, PrepareModuleInput, RowwiseParallel

    plan = {}
    for i in range(len(model.blocks)):
        b = f"blocks.{i}"
        plan[f"{b}.attn"] = PrepareModuleInput(input_layouts=(Replicate(),), desired_input_layouts=(Replicate(),))
        plan[f"{b}.attn.wq"] = ColwiseParallel()
        plan[f"{b}.attn.wk"] = ColwiseParallel()
        plan[f"{b}.attn.wv"] = ColwiseParallel()
        plan[f"{b}.attn.wo"] = RowwiseParallel()
        plan[f"{b}.mlp"] = PrepareModuleInput(input_layouts=(Replicate(),), desired_input_layouts=(Replicate(),))
        plan[f"{b}.mlp.w1"] = ColwiseParallel()
        plan[f"{b}.mlp.w2"] = RowwiseParallel()
    return plan


def apply_fsdp(model: TinyTransformer, fsdp_mesh, **kw) -> TinyTransformer:
    """FSDP2 on the "fsdp" mesh: each block is one unit (gathered just before it runs, freed
    after), then the root. Call it after ``parallelize_module``: FSDP then shards each TP shard."""
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks:
        fully_shard(block, mesh=fsdp_mesh, **kw)
    fully_shard(model, mesh=fsdp_mesh, **kw)
    return model


# ------------------------------------------------------------------------------ data
def micro_batch(x: torch.Tensor, fsdp_rank: int, fsdp_size: int) -> torch.Tensor:
    """A copy of rows ``fsdp_rank·b … (fsdp_rank+1)·b`` of the global batch ``x`` (b = len(x) / fsdp_size).

    Every rank of one TP group has the same FSDP rank, so they get the same micro-batch. A copy,
    so that the micro-batch owns its memory, as a data loader's batch would.

    >>> micro_batch(torch.arange(8), 1, 4)
    tensor([2, 3])
    >>> micro_batch(torch.arange(6), 0, 4)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: the global batch of 6 samples is not divisible by the FSDP degree 4: ... use a batch of 8
    """
    n = x.shape[0]
    if fsdp_size < 1 or not 0 <= fsdp_rank < fsdp_size:
        raise ValueError(f"fsdp_rank {fsdp_rank} is outside 0..{fsdp_size - 1}")
    if n % fsdp_size:
        raise ValueError(f"the global batch of {n} samples is not divisible by the FSDP degree {fsdp_size}: "
                         f"each FSDP rank needs the same micro-batch size; use a batch of "
                         f"{math.ceil(n / fsdp_size) * fsdp_size}")
    b = n // fsdp_size
    return x[fsdp_rank * b:(fsdp_rank + 1) * b].clone()


# ------------------------------------------------------------------------------ clipping
@torch.no_grad()
def clip_grad_norm_(parameters, max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for parameters that live on different meshes.

    After TP and FSDP, the norms' weights are DTensors on the 1-D "fsdp" mesh and the linear
    layers' on the 2-D ("fsdp", "tp") mesh; torch's version stacks the per-tensor norms and
    refuses mixed meshes. Here each gradient's norm is completed over its own mesh
    (``full_tensor()`` sums the shards' squares; replicated copies count once), then combined:
    the same total norm and the same clipping factor as on one device. Returns the total norm.
    """
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    squares = []
    for g in grads:
        n = torch.linalg.vector_norm(g, 2.0)
        if isinstance(n, DTensor):
            n = n.full_tensor()
        squares.append(n.float() ** 2)
    total = torch.stack(squares).sum().sqrt()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef.to(g.device))
    return total


def local_param_shapes(model: nn.Module) -> dict[str, tuple]:
    """``{name: shape of this rank's piece}`` (a DTensor's local tensor, or the tensor itself)."""
    out = {}
    for name, p in model.named_parameters():
        t = p.to_local() if hasattr(p, "to_local") else p
        out[name] = tuple(t.shape)
    return out
