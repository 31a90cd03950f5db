"""What the torchrun check workers share: a 4-rank gloo group, the checks, one exit code.

Lives beside the workers (they are scripts run by torchrun, so their folder is on ``sys.path``).
"""

import sys
import traceback

import torch
import torch.distributed as dist


def run_checks(checks, what: str, world: int = 4) -> None:
    """Run ``checks(rank, world)`` on a new gloo group of ``world`` ranks; exit 0 when it passed.

    A failing rank prints its traceback and exits 1 with no barrier: it may have left its peers
    in a collective, and torchrun ends them.
    """
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, n = dist.get_rank(), dist.get_world_size()
    if n != world:
        raise SystemExit(f"run with --nproc_per_node={world}, got world size {n}")
    try:
        checks(rank, n)
    except Exception:
        print(f"rank {rank} FAILED:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        sys.exit(1)
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        print(f"all {what} checks passed", flush=True)
    sys.exit(0)
