"""Scalar summaries of how a token's energy spreads over channel frequencies (method.md section 9.3).

* :func:`sep_curve`, :func:`sep_bandwidth` -- the follow-up paper's token-level Spectral Energy Pattern
  (Tian, Xu, Li, arXiv 2511.15572, released ``analyze_ecg_spectral.py``): the cumulative share of each token's
  channel-FFT energy, averaged over all tokens of all images, and the fraction of bins needed to reach a
  ratio ``r``. Computed here for every layer (the follow-up: last layer only).
* :func:`low_frequency_share`, :func:`spectral_slope` -- two scalars per layer from the predecessor's mean
  magnitude spectrum ``channel_spectrum(acts)`` ``[L, C]`` (method.md section 2).

As everywhere, the FFT runs along the channel axis of each token; "frequency" ``k / C`` is a frequency over
channel index, meaningful only relative to the model's fixed channel order.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from pipeline_steps.analysis._inputs import as_acts
from pipeline_steps.errors import UserError

__all__ = ["SEP_MODES", "SEP_RATIOS", "low_frequency_share", "sep_bandwidth", "sep_curve", "spectral_slope"]

#: ``full``: all C bins in natural FFT order, ``b = d / C`` (the follow-up's released numbers, its Table 8);
#: ``folded``: ``C // 2 + 1`` one-sided bins, conjugate pairs folded, ``b = d / (C // 2 + 1)`` (the
#: definition the follow-up's Section 2.5 states, per the authors' own note).
SEP_MODES = ("full", "folded")

#: The follow-up's reported ratios r (50 .. 90 %).
SEP_RATIOS = (0.5, 0.6, 0.7, 0.8, 0.9)


def _check_mode(mode: str) -> str:
    if mode not in SEP_MODES:
        raise UserError(f"unknown SEP mode {mode!r}; use one of {', '.join(SEP_MODES)}")
    return mode


def sep_curve(acts: Any, mode: str = "full") -> np.ndarray:
    """Mean cumulative spectral energy curve of the tokens' channel vectors (the follow-up's SEP curve).

    Each token ``x = A[l, b, :, h, w]`` is used raw (no centring, no normalisation, DC kept). With
    ``S_k = |X_k|^2`` the energy of its DFT over channels::

        c(d) = sum_{k < d} S_k / sum_k S_k,   d = 1 .. D

    and the curve is the arithmetic mean of ``c`` over all tokens of all images (pooled). ``full`` mode runs
    over all ``D = C`` bins in natural FFT order (DC, 1, ..., Nyquist, then the negative frequencies back to
    -1); ``folded`` over the ``D = C // 2 + 1`` rFFT bins with every bin other than DC and Nyquist (for even
    C) doubled, i.e. each conjugate pair folded into one. The follow-up reports percent; this is a fraction.

    All-zero tokens have no spectrum and are left out of the mean (the follow-up's
    ``analyze_ecg_spectral_zero_safe.py``; its plain script would turn the mean into NaN).

    Args:
        acts: ``[L, B, C, H, W]`` float32 or float64 array or tensor.
        mode: ``"full"`` or ``"folded"`` (:data:`SEP_MODES`).

    Returns:
        ``[L, D]`` float64, ``curve[:, d - 1] = c(d)``, rising to 1; NaN rows for all-zero layers.
    """
    mode = _check_mode(mode)
    t = as_acts(acts)
    curves = []
    for layer in range(t.shape[0]):
        if not bool(torch.isfinite(t[layer]).all()):
            raise UserError(f"layer {layer} holds NaN or inf; check the model and its inputs")
        curve_sum, n_tokens = _sep_sums(t[layer], (mode,))[mode]
        curves.append(curve_sum / n_tokens if n_tokens else np.full(curve_sum.shape, np.nan))
    return np.stack(curves)


def _sep_sums(layer_acts: torch.Tensor, modes: Sequence[str]) -> dict[str, tuple[np.ndarray, int]]:
    """Per mode, the sum of the cumulative curves of the nonzero tokens of ``[B, C, H, W]`` and their number
    (one FFT for all modes: the full spectrum of a real token is its one-sided spectrum mirrored)."""
    b, c = layer_acts.shape[:2]
    x = layer_acts.to(torch.float64).reshape(b, c, -1).transpose(1, 2).reshape(-1, c)  # [tokens, C]
    half = torch.fft.rfft(x, dim=1).abs() ** 2
    out = {}
    for mode in modes:
        if mode == "full":
            k = torch.arange(c)
            energy = half[:, torch.minimum(k, c - k)]
        else:
            energy = half.clone()
            last = energy.shape[1] if c % 2 else energy.shape[1] - 1  # the Nyquist bin has no pair
            energy[:, 1:last] *= 2.0
        total = energy.sum(1, keepdim=True)
        keep = total.squeeze(1) > 0
        cum = torch.cumsum(energy[keep], 1) / total[keep]
        out[mode] = (cum.sum(0).numpy(), int(keep.sum()))
    return out


def sep_bandwidth(acts: Any, ratios: Sequence[float] = SEP_RATIOS, mode: str = "full") -> np.ndarray:
    """SEP bandwidth ``b_r = d_r / D`` per layer and ratio (the follow-up's Table 8 quantity).

    ``d_r`` is the smallest 1-based ``d`` with ``c_bar(d) >= r`` on the pooled mean curve of
    :func:`sep_curve` (``D`` if never reached, as can happen by rounding at ``r = 1``).

    Reading it (the follow-up's convention, ``full`` mode): for real tokens ``S_k = S_{C-k}``, so ``b_50`` is
    close to 0.5 whatever the spectrum; ``b_r = r`` for a flat (white) spectrum; a low-pass token has
    ``b_r`` near 1 for ``r > 0.5`` because the second half of the natural order walks back from Nyquist.

    Args:
        acts: ``[L, B, C, H, W]`` float32 or float64 array or tensor.
        ratios: Energy ratios ``r`` in ``(0, 1]`` (the follow-up: 0.5 .. 0.9).
        mode: ``"full"`` (the released numbers) or ``"folded"`` (the paper text's definition).

    Returns:
        ``[L, len(ratios)]`` float64 in ``(0, 1]``; NaN for all-zero layers.
    """
    r = np.asarray(ratios, dtype=np.float64)
    if r.ndim != 1 or r.size == 0 or not np.all((r > 0) & (r <= 1)):
        raise UserError(f"ratios must be a non-empty list of fractions in (0, 1], got {list(np.ravel(r))}")
    return _bandwidth(sep_curve(acts, mode), r)


def _bandwidth(curve: np.ndarray, ratios: np.ndarray) -> np.ndarray:
    """``b_r`` of each row of ``[L, D]`` mean SEP curves (:func:`sep_bandwidth`); NaN for a NaN row."""
    d_total = curve.shape[1]
    out = np.full((curve.shape[0], ratios.size), np.nan)
    for layer, row in enumerate(curve):
        if not np.isnan(row).any():
            out[layer] = np.minimum(np.searchsorted(row, ratios, side="left") + 1, d_total) / d_total
    return out


def _as_spectrum(spectrum: Any) -> np.ndarray:
    s = spectrum.detach().cpu().numpy() if isinstance(spectrum, torch.Tensor) else np.asarray(spectrum)
    if s.ndim != 2 or s.shape[1] < 4 or not np.issubdtype(s.dtype, np.floating):
        raise UserError(f"spectrum must be a float [L, C] array from channel_spectrum with C >= 4, got shape "
                        f"{s.shape} and dtype {s.dtype}")
    if not np.all(np.isfinite(s)) or np.any(s < 0):
        raise UserError("spectrum must hold finite non-negative magnitudes; pass channel_spectrum(acts)")
    return s.astype(np.float64)


def low_frequency_share(spectrum: Any, cutoff: float = 1 / 8) -> np.ndarray:
    """Share of the channel spectrum's energy at frequencies below ``cutoff`` (a spectral index per layer).

    With ``S[k]`` the mean magnitude spectrum of method.md section 2 (all ``C`` bins) and ``|k| = min(k, C - k)``
    the unsigned frequency index::

        share = sum_{k : |k| / C < cutoff} S[k]^2 / sum_k S[k]^2

    ``S[k]^2`` is the energy of the mean-magnitude spectrum (the square of a mean, not the mean energy of
    the tokens). DC (``k = 0``) is included, as in the predecessor's Fig. 3. A flat spectrum gives about
    ``2 cutoff``.

    Args:
        spectrum: ``[L, C]`` from :func:`pipeline_steps.analysis.metrics.channel_spectrum`.
        cutoff: Normalised frequency in ``(0, 0.5]``; default 1/8.

    Returns:
        ``[L]`` float64 in ``[0, 1]``; NaN for an all-zero spectrum.
    """
    s = _as_spectrum(spectrum)
    if not 0 < cutoff <= 0.5:
        raise UserError(f"cutoff must be a normalised frequency in (0, 0.5], got {cutoff!r}")
    c = s.shape[1]
    k = np.arange(c)
    low = np.minimum(k, c - k) / c < cutoff
    energy = s ** 2
    with np.errstate(invalid="ignore"):
        return energy[:, low].sum(1) / energy.sum(1)


def spectral_slope(spectrum: Any) -> np.ndarray:
    """Least-squares slope of ``ln S[k]`` against ``ln k`` over ``k = 1 .. C // 2`` (a power-law exponent).

    Fits ``ln S[k] = a + slope ln k`` on the one-sided spectrum without DC (``ln 0`` is undefined), Nyquist
    included; the bins above ``C / 2`` mirror these and add nothing. The slope is the same in any log base.
    Negative: energy falls with channel frequency (smooth over channels); 0: flat.

    Args:
        spectrum: ``[L, C]`` from :func:`pipeline_steps.analysis.metrics.channel_spectrum`.

    Returns:
        ``[L]`` float64; NaN for a layer with a zero magnitude among the fitted bins.
    """
    s = _as_spectrum(spectrum)
    k = np.arange(1, s.shape[1] // 2 + 1)
    log_k = np.log(k)
    centred_k = log_k - log_k.mean()
    out = np.full(s.shape[0], np.nan)
    for layer, row in enumerate(s[:, 1:s.shape[1] // 2 + 1]):
        if np.all(row > 0):
            log_s = np.log(row)
            out[layer] = centred_k @ (log_s - log_s.mean()) / (centred_k @ centred_k)
    return out
