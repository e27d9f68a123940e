"""Straightforward transcriptions of method.md Eq. 1-6, for cross-checking :mod:`pipeline_steps.analysis.metrics`.

Deliberately literal and slow (the entropy loop calls ``np.histogram`` once per token vector, as the
authors' released code does): these define what the fast implementations must reproduce. Not part of the
public API; used by tests and benchmarks only.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _to_numpy(acts: Any) -> np.ndarray:
    if hasattr(acts, "detach"):  # torch tensor
        acts = acts.detach().cpu().numpy()
    return np.asarray(acts)


def channel_spectrum(acts: Any) -> np.ndarray:
    """Eq. 1-2: ``|FFT along C / C|`` averaged over (b, h, w); ``[L, C]`` float64 (numpy FFT precision)."""
    acts = _to_numpy(acts)
    c = acts.shape[2]
    f = np.fft.fft(acts, axis=2) / c
    return np.abs(f).mean(axis=(1, 3, 4)).astype(np.float64)


def channel_entropy(acts: Any, bins: int = 100, range_policy: str = "global",
                    value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Eq. 3-5: per-vector ``np.histogram`` entropy (bits), averaged over (b, h, w); ``[L]`` float64.

    The range is ``acts.min(), acts.max()`` as numpy scalars of the data's dtype ("global"), each layer's
    own min / max ("per_layer"), or ``value_range`` cast to the data's dtype.
    """
    acts = _to_numpy(acts)
    n_layers, n_images, c, height, width = acts.shape
    if value_range is not None:
        ranges = [(acts.dtype.type(value_range[0]), acts.dtype.type(value_range[1]))] * n_layers
    elif range_policy == "global":
        ranges = [(acts.min(), acts.max())] * n_layers
    elif range_policy == "per_layer":
        ranges = [(acts[layer].min(), acts[layer].max()) for layer in range(n_layers)]
    else:
        raise ValueError(f"unknown range_policy {range_policy!r}")
    out = np.empty(n_layers)
    for layer in range(n_layers):
        lo, hi = ranges[layer]
        entropies = []
        for b in range(n_images):
            for h in range(height):
                for w in range(width):
                    vec = acts[layer, b, :, h, w]
                    hist, _ = np.histogram(vec, bins=bins, range=(lo, hi))
                    p = hist / c
                    p = p[p > 0]
                    entropies.append(-np.sum(p * np.log2(p)))
        out[layer] = np.mean(entropies)
    return out


def activation_magnitude(acts: Any) -> np.ndarray:
    """Eq. 6: mean of ``|A|`` over (b, c, h, w); ``[L]`` float64 (numpy's own accumulation)."""
    acts = _to_numpy(acts)
    return np.abs(acts).mean(axis=(1, 2, 3, 4)).astype(np.float64)
