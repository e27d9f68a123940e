"""Input conventions shared by the per-layer statistics: activations ``[L, B, C, H, W]`` (layers, images,
channels, token grid) as numpy arrays or torch tensors, float32 or float64; one layer's chunk ``[b, C, H, W]``;
0-based layer indices. Every violation is a one-line :class:`~pipeline_steps.errors.UserError`."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch

from pipeline_steps.errors import UserError

__all__ = ["as_acts", "as_chunk", "as_tensor", "check_layer"]


def as_tensor(x: Any, what: str) -> torch.Tensor:
    """A CPU torch view of ``x`` (no copy for CPU tensors and most numpy arrays)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.device.type != "cpu":
            t = t.cpu()
    elif isinstance(x, np.ndarray):
        if any(s < 0 for s in x.strides):  # torch cannot view negative strides
            x = np.ascontiguousarray(x)
        with warnings.catch_warnings():
            # Read-only arrays (e.g. memory-mapped .npy files) are fine: nothing here writes to its input.
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(x)
    else:
        raise UserError(f"{what} must be a numpy array or a torch tensor, got {type(x).__name__}; "
                        "convert it with np.asarray(...)")
    if t.dtype not in (torch.float32, torch.float64):
        raise UserError(f"{what} must be float32 or float64, got {t.dtype}; cast it with .float() first")
    return t


def as_acts(acts: Any) -> torch.Tensor:
    t = as_tensor(acts, "activations")
    if t.ndim != 5 or t.numel() == 0:
        raise UserError(f"activations must be a non-empty [L, B, C, H, W] array, got shape {tuple(t.shape)}; "
                        "stack the per-layer [B, C, H, W] outputs along a new first axis")
    return t


def as_chunk(chunk: Any) -> torch.Tensor:
    t = as_tensor(chunk, "chunk")
    if t.ndim != 4 or t.numel() == 0:
        raise UserError(f"a chunk must be a non-empty [b, C, H, W] array of one layer, got shape "
                        f"{tuple(t.shape)}; pass acts[layer] or a slice of its images")
    return t


def check_layer(layer: int, n_layers: int | None) -> int:
    """A 0-based layer index, below ``n_layers`` when that is known."""
    upper = math.inf if n_layers is None else n_layers
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 0 <= layer < upper:
        where = "a non-negative integer" if n_layers is None else f"an integer in [0, {n_layers - 1}]"
        raise UserError(f"layer must be {where}, got {layer!r}")
    return int(layer)
