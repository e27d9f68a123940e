"""Processes and numerics of a training run: the torchrun process group (gloo on CPU, NCCL on GPU), mixed
precision, and the per-epoch seeding and RNG state that make a resumed run continue bit for bit.

Distributed state comes from torchrun's environment variables only (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``); a plain ``python -m pipeline_steps`` run is one process.
"""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist

from pipeline_steps.errors import UserError
from pipeline_steps.training.recipe import Recipe

__all__ = ["amp_dtype", "Processes", "rng_state", "seed_epoch", "set_rng_state", "start_processes"]


@dataclass
class Processes:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        """Where this rank runs, for the step's log: rank, host, device, backend, and the GPUs the scheduler
        made visible (``CUDA_VISIBLE_DEVICES``, set by SLURM for a job with GPUs, also when the step falls
        back to the CPU)."""
        backend = dist.get_backend() if self.world > 1 else "none"
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        return (f"rank {self.rank} of {self.world} (local rank {self.local_rank}) on {socket.gethostname()}: "
                f"device {self.device}, process group backend {backend}, CUDA_VISIBLE_DEVICES={visible}")

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], device=self.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())


def start_processes(device: str) -> Processes:
    """Join the torchrun process group when launched by torchrun, and choose this rank's device."""
    cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device is cuda but no CUDA device is available; set device: auto or cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Processes(rank=rank, world=world, device=torch.device("cuda", local) if cuda else torch.device("cpu"),
                     local_rank=local)


def amp_dtype(recipe: Recipe, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 / fp16 on CUDA as asked (auto = bf16), none on CPU (fp32 there)."""
    if device.type != "cuda" or recipe.amp == "none":
        return None
    return torch.float16 if recipe.amp == "fp16" else torch.bfloat16


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed every RNG the step uses (dropout, augmentation) from (seed, epoch, rank) alone."""
    s = (seed * 1_000_003 + epoch) * 1_009 + rank
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % 2**32)


def rng_state() -> dict[str, Any]:
    state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
            "numpy": [state[0], torch.from_numpy(state[1].astype(np.int64)), *state[2:]]}


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy = state["numpy"]
    np.random.set_state((numpy[0], numpy[1].numpy().astype(np.uint32), *numpy[2:]))
