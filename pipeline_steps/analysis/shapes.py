"""Shape readings of a per-layer profile, with a stated tolerance (docs/method.md section 6).

:func:`profile_shape` classifies a profile as flat, increasing, decreasing, U-shaped, inverted U or other:
a change counts only when it exceeds the tolerance ``tol`` (on the profile's own scale, e.g. bits, or log2
for magnitudes). :func:`profile_summary` adds where the profile bottoms out and how much it falls and rises.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from pipeline_steps.errors import UserError

__all__ = ["SHAPE_SCALES", "SHAPES", "profile_shape", "profile_summary"]

#: The shape classes of :func:`profile_summary`, in the order its docstring defines them.
SHAPES = ("flat", "increasing", "decreasing", "u_shaped", "inverted_u", "other")


#: How :func:`profile_summary` may read a profile before classifying it.
SHAPE_SCALES = ("linear", "log2")


def _profile_array(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """A profile as a float64 vector, or a one-line error (no array repr: it could span lines)."""
    try:
        v = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError("a profile must be a non-empty 1-D sequence of finite numbers; got non-numeric "
                        f"{type(values).__name__}") from None
    if v.ndim != 1 or v.size == 0 or not np.all(np.isfinite(v)):
        raise UserError(f"a profile must be a non-empty 1-D sequence of finite values; got shape {v.shape} "
                        f"with {int(np.sum(~np.isfinite(v)))} NaN or inf")
    return v


def _largest_descent(w: np.ndarray) -> float:
    """max over i <= j of w[i] - w[j] (0 for a non-decreasing sequence): the deepest fall anywhere."""
    return float(np.max(np.maximum.accumulate(w) - w))


def _largest_ascent(w: np.ndarray) -> float:
    """max over i <= j of w[j] - w[i] (0 for a non-increasing sequence): the highest climb anywhere."""
    return float(np.max(w - np.minimum.accumulate(w)))


def profile_shape(values: Sequence[float] | np.ndarray, *, tol: float) -> str:
    """Classify a per-layer profile with tolerance ``tol``: one of :data:`SHAPES`.

    A change "counts" when it is strictly larger than ``tol`` (same unit as ``values``); changes of at most
    ``tol`` are read as noise. With ``m`` the first layer holding the minimum and ``p`` the first layer
    holding the maximum, the classes are:

    * ``flat``: the range ``max - min`` is at most ``tol``.
    * ``increasing``: not flat, and no fall anywhere counts (``max over i <= j of v[i] - v[j] <= tol``):
      monotone up to ``tol``. Since the range counts, the profile ends well above where it starts.
    * ``decreasing``: the mirror image (no rise anywhere counts).
    * ``u_shaped``: both ``drop = first - min`` and ``rise = last - min`` count (so ``m`` is an interior
      layer), no rise counts from the first layer to ``m`` and no fall counts from ``m`` to the last: down
      to one minimum, then up.
    * ``inverted_u`` (peaked): the mirror image about the maximum ``p``.
    * ``other``: everything else (e.g. W or N shapes: two changes of direction that count).

    The classes are mutually exclusive (an increasing profile has no fall that counts, a U has one, ...),
    and ``other`` makes the definition total.

    Args:
        values: L finite floats, layer 1 first.
        tol: Non-negative tolerance, same unit as ``values``.

    Returns:
        The class name.

    Raises:
        UserError: Empty or non-finite ``values``, negative or non-finite ``tol``.
    """
    w = _profile_array(values)
    if not (math.isfinite(tol) and tol >= 0):
        raise UserError(f"a shape tolerance must be a finite number >= 0, got {tol!r}")
    if float(w.max() - w.min()) <= tol:
        return "flat"
    if _largest_descent(w) <= tol:
        return "increasing"
    if _largest_ascent(w) <= tol:
        return "decreasing"
    m, p = int(np.argmin(w)), int(np.argmax(w))
    if (w[0] - w[m] > tol and w[-1] - w[m] > tol
            and _largest_ascent(w[:m + 1]) <= tol and _largest_descent(w[m:]) <= tol):
        return "u_shaped"
    if (w[p] - w[0] > tol and w[p] - w[-1] > tol
            and _largest_descent(w[:p + 1]) <= tol and _largest_ascent(w[p:]) <= tol):
        return "inverted_u"
    return "other"


def profile_summary(values: Sequence[float] | np.ndarray, *, tol: float, scale: str = "linear") -> dict[str, Any]:
    """Shape of a per-layer profile (entropy, magnitude, ...): where it bottoms out, by how much, and its class.

    The paper's reading of entropy profiles is compression (falling from layer 1 to a minimum) followed
    by expansion (rising to the last layer): a U shape. ``shape`` is :func:`profile_shape` with tolerance
    ``tol``; ``u_shaped`` is ``shape == "u_shaped"``. Ties resolve to the earliest layer.

    The tolerance is absolute on the scale the profile is read on, so that one number serves every
    profile: entropy is read as it is (bits; a difference of ``tol`` bits is a factor ``2**tol`` in the
    effective number of occupied histogram bins, ``2**H``), magnitude on ``log2`` (a difference of
    ``tol`` is a factor ``2**tol`` in mean |activation|). Either way a change counts when the quantity
    changes by more than a factor ``2**tol``, whatever the profile's units, level or range. A tolerance
    relative to the level would move with the histogram range (a global range shifts every layer's
    entropy by about the same number of bits), and one relative to the range would let one extreme
    layer (massive activations) hide every other feature.

    Args:
        values: L finite floats, layer 1 first.
        tol: The shape tolerance (params ``analysis.shape_tolerance``), on the scale given by ``scale``.
        scale: ``"linear"`` (classify ``values`` as they are; entropy in bits) or ``"log2"`` (classify
            ``log2(values)``; positive quantities such as magnitude).

    Returns:
        Dict with ``argmin_layer`` and ``argmax_layer`` (1-based), ``first``, ``min``, ``max``, ``last``,
        ``drop`` (first - min, the compression), ``rise`` (last - min, the expansion), all in the units of
        ``values``; ``shape`` (one of :data:`SHAPES`), ``u_shaped``, and the ``shape_tolerance`` and
        ``shape_scale`` it was read with.

    Raises:
        UserError: Empty or non-finite ``values``; ``scale="log2"`` with a value <= 0; a bad ``tol``
            or ``scale``.
    """
    v = _profile_array(values)
    if scale not in SHAPE_SCALES:
        raise UserError(f"shape scale must be one of {', '.join(SHAPE_SCALES)}, got {scale!r}")
    if scale == "log2" and not np.all(v > 0):
        raise UserError(f"a profile read on a log2 scale must be positive; its minimum is {v.min():g}")
    shape = profile_shape(np.log2(v) if scale == "log2" else v, tol=tol)
    i_min, i_max = int(np.argmin(v)), int(np.argmax(v))
    first, low, last = float(v[0]), float(v[i_min]), float(v[-1])
    return {
        "argmin_layer": i_min + 1,
        "argmax_layer": i_max + 1,
        "first": first,
        "min": low,
        "max": float(v[i_max]),
        "last": last,
        "drop": first - low,
        "rise": last - low,
        "shape": shape,
        "u_shaped": shape == "u_shaped",
        "shape_tolerance": float(tol),
        "shape_scale": scale,
    }
