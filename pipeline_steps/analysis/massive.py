"""Massive activations per layer: the few values far larger than the rest (method.md section 9.4).

Sun, Chen, Kolter and Liu (2024, "Massive activations in large language models", Sec. 2) call an activation
massive when its magnitude exceeds 100 and is about 1,000 times the median magnitude of its hidden state
(the layer's output for that one input); they also find them in ViTs. Both thresholds are
parameters here (:data:`MIN_MAGNITUDE`, :data:`MIN_RATIO`): the absolute 100 is a statement about LLM
scales, so a ratio-only reading (``min_magnitude=0``) is often the useful one for small models.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from pipeline_steps.analysis._inputs import as_acts
from pipeline_steps.errors import UserError

__all__ = ["MIN_MAGNITUDE", "MIN_RATIO", "MassiveActivations", "massive_activations"]

#: Sun et al.'s absolute threshold on |value|.
MIN_MAGNITUDE = 100.0

#: Sun et al.'s threshold on |value| / median |value| of the same image's layer output.
MIN_RATIO = 1000.0


@dataclasses.dataclass(frozen=True)
class MassiveActivations:
    """The ``k`` largest-magnitude activations of each layer, where they sit, and which are massive.

    Arrays are ``[L, k]`` in descending ``|value|`` order (ties: lowest flat index ``(b, c, h, w)`` first)
    unless stated otherwise.

    Attributes:
        values: The signed activations, float64.
        ratios: ``|value| / median``, the median of its own image's layer output, float64.
        image: 0-based image index ``b``.
        channel: 0-based channel ``c``.
        token: 0-based token ``n = h * W + w`` in the ``H x W`` grid.
        massive: Whether ``|value| > min_magnitude`` and ``ratio > min_ratio``.
        median: ``[L, B]`` median ``|A[l, b]|`` over channels and tokens, float64.
        n_massive: ``[L]`` number of massive activations in the whole layer (all images), not only among the
            top ``k``.
    """

    values: np.ndarray
    ratios: np.ndarray
    image: np.ndarray
    channel: np.ndarray
    token: np.ndarray
    massive: np.ndarray
    median: np.ndarray
    n_massive: np.ndarray


def massive_activations(acts: Any, top_k: int = 10, min_ratio: float = MIN_RATIO,
                        min_magnitude: float = MIN_MAGNITUDE) -> MassiveActivations:
    """The top-``k`` activations by magnitude per layer, their ratio to the median, and which are massive.

    For layer ``l`` and image ``b``, ``m[l, b] = median_{c,h,w} |A[l, b, c, h, w]|`` (numpy's median: the
    mean of the two middle values for an even count). Over all images of the layer, the ``k`` values of
    largest ``|A|`` are returned with their positions and ``ratio = |A| / m[l, b]`` (inf where the median is
    0 and ``|A| > 0``). A value is massive when ``|A| > min_magnitude`` and ``ratio > min_ratio``.

    Args:
        acts: ``[L, B, C, H, W]`` float32 or float64 array or tensor.
        top_k: How many values to report per layer, ``1 <= k <= B C H W``.
        min_ratio: Ratio threshold (Sun et al.: about 1,000).
        min_magnitude: Absolute threshold on ``|A|`` (Sun et al.: 100); 0 for the ratio alone.

    Returns:
        A :class:`MassiveActivations`.
    """
    t = as_acts(acts)
    n_layers, n_images, c, h, w = t.shape
    per_layer = n_images * c * h * w
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= per_layer:
        raise UserError(f"top_k must be an integer in [1, {per_layer}] (values per layer), got {top_k!r}")
    for name, value in (("min_ratio", min_ratio), ("min_magnitude", min_magnitude)):
        if not np.isfinite(value) or value < 0:
            raise UserError(f"{name} must be a finite non-negative number, got {value!r}")
    fields: dict[str, list[np.ndarray]] = {f.name: [] for f in dataclasses.fields(MassiveActivations)}
    for layer in range(n_layers):
        a = t[layer].to(torch.float64).numpy().reshape(n_images, -1)
        mag = np.abs(a)
        if not np.all(np.isfinite(mag)):
            raise UserError(f"layer {layer} holds NaN or inf; check the model and its inputs")
        median = np.median(mag, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = mag / median[:, None]
        ratio[mag == 0] = 0.0  # 0 / 0: a zero value is not large relative to anything
        is_massive = (mag > min_magnitude) & (ratio > min_ratio)
        flat = mag.reshape(-1)
        # Top k by |value|, ties broken by position: a stable sort of the k-candidates.
        candidates = np.argpartition(-flat, top_k - 1)[:top_k] if top_k < flat.size else np.arange(flat.size)
        threshold = flat[candidates].min()
        pool = np.flatnonzero(flat >= threshold)
        order = pool[np.argsort(-flat[pool], kind="stable")][:top_k]
        image, rest = np.divmod(order, c * h * w)
        channel, token = np.divmod(rest, h * w)
        fields["values"].append(a.reshape(-1)[order])
        fields["ratios"].append(ratio.reshape(-1)[order])
        fields["image"].append(image)
        fields["channel"].append(channel)
        fields["token"].append(token)
        fields["massive"].append(is_massive.reshape(-1)[order])
        fields["median"].append(median)
        fields["n_massive"].append(np.int64(is_massive.sum()))
    return MassiveActivations(**{name: np.stack(parts) for name, parts in fields.items()})
