"""DistributedDataParallel set-up from the environment ``torchrun`` provides.

``torchrun --nproc-per-node N -m flowtriton train ...`` sets RANK, WORLD_SIZE, LOCAL_RANK and
MASTER_ADDR/PORT; the backend is nccl on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..checks import check_int


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


DEVICE_HELP = "'auto' (cuda when available), 'cpu', 'cuda' or 'cuda:N'"


def resolve_device(name, local_rank: int = 0, argument: str = "device") -> torch.device:
    """The torch device for ``name`` (see :data:`DEVICE_HELP`); ValueError naming ``argument`` for
    anything else, before any work is done (a CPU has no index; a CUDA index must exist)."""
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str):
        raise ValueError(f"{argument} must be {DEVICE_HELP}, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"{argument} must be {DEVICE_HELP}, got {name!r}") from None
    if device.type == "cpu":
        if device.index not in (None, 0):
            raise ValueError(f"{argument} {name!r}: a CPU has no numbered devices; use 'cpu'")
        return torch.device("cpu")
    if device.type != "cuda":
        raise ValueError(f"{argument} must be {DEVICE_HELP}, got {name!r} (flowtriton trains on CPUs and CUDA GPUs)")
    if not torch.cuda.is_available():
        raise ValueError(f"{argument} {name!r} requested but CUDA is not available")
    count = torch.cuda.device_count()
    if device.index is None:
        device = torch.device("cuda", local_rank % count)
    elif device.index >= count:
        raise ValueError(f"{argument} {name!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    torch.cuda.set_device(device)
    return device


def set_threads(threads, argument: str = "threads") -> None:
    """``torch.set_num_threads(threads)``; 0 keeps torch's default. TypeError / ValueError naming
    ``argument`` for anything but a whole number >= 0."""
    threads = check_int(threads, argument, minimum=0)
    if threads:
        torch.set_num_threads(threads)


def init_distributed(device_name: str = "auto") -> DistContext:
    """Join the process group when WORLD_SIZE > 1 (and none is joined yet); else single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size <= 1:
        return DistContext(device=device)
    created = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
        created = True
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, created)


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True when ``flag`` is true on any rank (a collective: every rank must call it)."""
    if not ctx.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def shutdown(ctx: DistContext) -> None:
    if ctx.initialized_here and dist.is_initialized():
        dist.destroy_process_group()
