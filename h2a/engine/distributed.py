"""The few collectives a DDP run needs, so the loop and the callbacks never call torch.distributed."""

from __future__ import annotations

import torch
import torch.distributed as dist

from h2a.engine.config import TrainConfig


def init_distributed(cfg: TrainConfig, enabled: bool) -> None:
    """Join torchrun's process group (gloo on CPU, nccl on GPUs)."""
    if enabled and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
        dist.init_process_group(backend=backend)


def all_reduce_max(value: float, device: torch.device) -> float:
    """The largest value over the ranks (one stop flag per rank -> everyone's verdict)."""
    flag = torch.tensor([value], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag.item()


def broadcast_from_main(values: list[float], device: torch.device) -> list[float]:
    """Rank 0's values on every rank (only rank 0 validates)."""
    shared = torch.tensor(values, device=device)
    dist.broadcast(shared, src=0)
    return [float(v) for v in shared]


def barrier() -> None:
    dist.barrier()


def leave_together(enabled: bool) -> None:
    """Barrier then teardown: a rank that tears gloo down while rank 0 still writes the
    run's metadata can abort the whole job at exit."""
    if enabled and dist.is_initialized():
        try:
            dist.barrier()
        except Exception:  # noqa: BLE001, S110 - a peer already gone; nothing left to sync
            pass
        dist.destroy_process_group()
