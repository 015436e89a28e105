"""torchrun / DistributedDataParallel support.

``labelfix train`` started under ``torchrun --nproc_per_node=W -m labelfix.cli train ...``
(or ``torchrun $(which labelfix) train ...``) runs W processes. Each trains on its shard
of every global batch (see ``sampler.py``); per-cell statistics are all-gathered so the
sampler weights and the GMM fits see the whole dataset on every rank; rank 0 writes the
run directory. Backend: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else the CPU; otherwise the named torch device
    (one clear line for a bad name or a CUDA device on a machine without one)."""
    from labelfix.errors import LabelfixError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise LabelfixError(f"--device: {name!r} is not a torch device (auto, cpu, cuda, cuda:1 ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LabelfixError(f"--device: {name}: CUDA is not available on this machine")
    return dev


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group that torchrun describes in the environment (if any)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        # with CUDA: NCCL for GPU tensors and gloo for the CPU-side collectives (the
        # loss sums, the mixers' counters); an NCCL-only group refuses CPU tensors
        backend = "cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return DistInfo(world_size=world, rank=rank, local_rank=local)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_gather_tensor(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate ``t`` (same shape on every rank) from all ranks along dim 0, rank order."""
    if not info.enabled:
        return t
    parts = [torch.empty_like(t) for _ in range(info.world_size)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, 0)


def all_reduce_sum(values, info: DistInfo, device=None) -> np.ndarray:
    """Sum a float64 vector over ranks (returns numpy)."""
    arr = torch.as_tensor(np.asarray(values, dtype=np.float64), device=device)
    if info.enabled:
        dist.all_reduce(arr)
    return arr.cpu().numpy()


def all_gather_object(obj, info: DistInfo) -> list:
    """Every rank's ``obj``, in rank order (``[obj]`` without torchrun)."""
    if not info.enabled:
        return [obj]
    parts = [None] * info.world_size
    dist.all_gather_object(parts, obj)
    return parts


def broadcast_object(obj, info: DistInfo):
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
