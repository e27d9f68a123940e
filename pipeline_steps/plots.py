"""Figures in one clean style: per-layer profiles (Fig. 1-2) and channel spectra (Fig. 3).

All functions take the long-format reductions table (see :mod:`pipeline_steps.reduce`) and
return a matplotlib ``Figure``; :func:`save_figure` writes it as PDF and PNG atomically.
Layers are 1-based, as in the paper.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .errors import UserError  # noqa: E402

METRIC_LABELS = {
    "entropy": "Shannon entropy (bits)",
    "magnitude": "Mean |activation|",
}

_STYLE = {
    "figure.dpi": 100,
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "legend.frameon": False,
    "lines.linewidth": 1.6,
    "lines.markersize": 4,
    "pdf.fonttype": 42,  # embed TrueType so the PDF text stays editable/searchable
}


@contextlib.contextmanager
def style() -> Iterator[None]:
    """The pipeline's figure style, scoped."""
    with matplotlib.rc_context(_STYLE):
        yield


def save_figure(fig: plt.Figure, out: str | Path, dpi: int = 150) -> list[Path]:
    """Write ``fig`` as ``<stem>.pdf`` and ``<stem>.png`` (atomic), then close it."""
    from ._io import atomic_path

    out = Path(out)
    written = []
    for suffix in (".pdf", ".png"):
        path = out.with_suffix(suffix)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=suffix[1:])
        written.append(path)
    plt.close(fig)
    return written


def profile(values: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per (model, checkpoint, layer) for a scalar metric, sorted by layer."""
    rows = values[values["metric"] == metric]
    if rows.empty:
        raise UserError(f"the reductions table has no '{metric}' rows; re-run the reduce step")
    return rows.sort_values(["model", "checkpoint", "layer"])[["model", "checkpoint", "layer", "value"]]


def _integer_layer_axis(ax: plt.Axes, n_layers: int) -> None:
    step = 1 if n_layers <= 16 else 2
    ax.set_xticks(range(1, n_layers + 1, step))
    ax.set_xlim(0.5, n_layers + 0.5)
    ax.set_xlabel("Layer")


def figure_profile(values: pd.DataFrame, metric: str, title: str | None = None) -> plt.Figure:
    """Fig. 1 (entropy) / Fig. 2 (magnitude): the metric per layer, minimum marked."""
    prof = profile(values, metric)
    with style():
        fig, ax = plt.subplots(figsize=(5.0, 3.2))
        groups = list(prof.groupby(["model", "checkpoint"], sort=False))
        for (model, checkpoint), g in groups:
            label = model if len(groups) == 1 or checkpoint == "final" else f"{model} ({checkpoint})"
            (line,) = ax.plot(g["layer"], g["value"], marker="o", label=label)
            i = int(np.argmin(g["value"].to_numpy()))
            x, y = g["layer"].iloc[i], g["value"].iloc[i]
            ax.plot([x], [y], marker="o", ms=9, mfc="none", mec=line.get_color(), mew=1.2)
            ax.annotate(f"min: layer {int(x)}", (x, y), textcoords="offset points", xytext=(8, 4),
                        ha="left", va="bottom", fontsize=8)
        _integer_layer_axis(ax, int(prof["layer"].max()))
        ax.set_ylabel(METRIC_LABELS[metric])
        if title:
            ax.set_title(title)
        if len(groups) > 1:
            ax.legend()
        fig.tight_layout()
    return fig


def choose_spectra_layers(entropy: Sequence[float], override: Sequence[int] | str = "auto") -> list[int]:
    """Six 1-based layers for Fig. 3: two early, two around the entropy minimum, two late.

    Args:
        entropy: Per-layer entropy profile (layer 1 first).
        override: ``"auto"`` or explicit 1-based layers (validated against the depth).

    Returns:
        Sorted, distinct 1-based layer indices (fewer than six only for models under six layers).
    """
    n = len(entropy)
    if override != "auto":
        bad = [layer for layer in override if not 1 <= layer <= n]
        if bad:
            raise UserError(f"figures.spectra_layers contains {bad[0]} but the model has {n} layers (valid 1..{n})")
        return sorted(override)
    if n <= 6:
        return list(range(1, n + 1))
    early, late = [1, 2], [n - 1, n]
    # Around the minimum: the argmin and its lower neighbour, kept clear of the early/late pairs.
    m = int(np.argmin(entropy)) + 1
    m = min(max(m, 3), n - 2)
    neighbours = [c for c in (m - 1, m + 1) if 3 <= c <= n - 2]
    second = min(neighbours, key=lambda c: entropy[c - 1]) if neighbours else m
    middle = sorted({m, second})
    chosen = sorted(set(early + middle + late))
    # Fill up to six with the layers nearest the middle if the minimum sat at the border.
    for c in sorted(range(3, n - 1), key=lambda c: abs(c - m)):
        if len(chosen) >= 6:
            break
        if c not in chosen:
            chosen = sorted(chosen + [c])
    return chosen


def _spectrum(values: pd.DataFrame, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised frequency k/C for k = 0..C/2-1 (DC kept, Nyquist dropped) and S[layer, k]."""
    rows = values[(values["metric"] == "spectrum") & (values["layer"] == layer)].sort_values("k")
    s = rows["value"].to_numpy()
    c = len(s)
    half = c // 2
    return np.arange(half) / c, s[:half]


def _phase(layer: int, chosen: Sequence[int]) -> str:
    i = sorted(chosen).index(layer)
    return ("early", "early", "middle", "middle", "late", "late")[i] if len(chosen) == 6 else ""


def figure_spectra(values: pd.DataFrame, layers: Sequence[int], title: str | None = None) -> plt.Figure:
    """Fig. 3: channel-axis spectra of the chosen layers, one panel each (log intensity)."""
    spectra = values[values["metric"] == "spectrum"]
    if spectra.empty:
        raise UserError("the reductions table has no 'spectrum' rows; re-run the reduce step")
    ncols = 3
    nrows = int(np.ceil(len(layers) / ncols))
    with style():
        fig, axes = plt.subplots(nrows, ncols, figsize=(10, 2.8 * nrows), sharex=True, sharey=True, squeeze=False)
        for i, (ax, layer) in enumerate(zip(axes.flat, layers)):
            freq, s = _spectrum(spectra, layer)
            ax.plot(freq, s, color=f"C{i // 2}")
            phase = _phase(layer, layers)
            ax.set_title(f"({chr(97 + i)}) layer {layer}" + (f" - {phase}" if phase else ""))
            ax.set_yscale("log")
        for ax in axes.flat[len(layers):]:
            ax.set_visible(False)
        for ax in axes[-1]:
            ax.set_xlabel("Normalised channel frequency k/C")
        for ax in axes[:, 0]:
            ax.set_ylabel("Mean |F| (intensity)")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
    return fig


def figure_spectra_grid(values: pd.DataFrame, title: str | None = None) -> plt.Figure:
    """Fig. 3 companion: every layer's spectrum, small multiples with a shared log y-axis."""
    spectra = values[values["metric"] == "spectrum"]
    if spectra.empty:
        raise UserError("the reductions table has no 'spectrum' rows; re-run the reduce step")
    layers = sorted(spectra["layer"].unique())
    ncols = min(6, len(layers))
    nrows = int(np.ceil(len(layers) / ncols))
    with style():
        fig, axes = plt.subplots(nrows, ncols, figsize=(1.9 * ncols, 1.6 * nrows), sharex=True, sharey=True,
                                 squeeze=False)
        for ax, layer in zip(axes.flat, layers):
            freq, s = _spectrum(spectra, layer)
            ax.plot(freq, s, lw=1.0)
            ax.set_title(f"layer {layer}", fontsize=8)
            ax.set_yscale("log")
            ax.tick_params(labelsize=7)
        for ax in axes.flat[len(layers):]:
            ax.set_visible(False)
        fig.supxlabel("Normalised channel frequency k/C", fontsize=9)
        fig.supylabel("Mean |F|", fontsize=9)
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
    return fig
