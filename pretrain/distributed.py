"""Process-group setup from torchrun's environment and the few collectives the engine needs.

``torchrun --nproc_per_node N pretrain/run.py ...`` (multi-node: ``--nnodes``, ``--node_rank``,
``--rdzv_endpoint`` / ``--master_addr`` as usual) sets RANK / WORLD_SIZE / LOCAL_RANK; without them the
run is a single process. Backend: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistEnv", "init_distributed", "all_reduce_sum", "all_gather_objects", "barrier", "shutdown"]


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistEnv:
    """Join the process group torchrun describes (if any) and pick this process's device."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda requested but CUDA is not available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return DistEnv(rank, world, local, dev)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place for CPU tensors on gloo; NCCL gets a CUDA copy). Returns the result."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl" and t.device.type != "cuda":
            c = t.cuda()
            dist.all_reduce(c)
            t.copy_(c.cpu())
        else:
            dist.all_reduce(t)
    return t


def all_gather_objects(obj) -> list:
    if dist.is_initialized() and dist.get_world_size() > 1:
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def barrier():
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def shutdown():
    if dist.is_initialized():
        dist.destroy_process_group()
