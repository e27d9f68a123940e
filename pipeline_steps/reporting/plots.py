"""Figures in one clean style: per-layer profiles (Fig. 1-2), channel spectra (Fig. 3), evolution (Fig. 4).

All functions take the long-format reductions table (see :mod:`pipeline_steps.analysis.reductions`; Fig. 4
the evolution step's tables, the same columns plus ``run_id``, or the authors' published tables read into
that format by :func:`pipeline_steps.analysis.published.read_published_entropy`) and return a matplotlib ``Figure``;
:func:`save_figure` writes it as PDF and PNG atomically.
Layers are 1-based, as in the paper. A CNN's layers are its stages (the table's ``layer_name`` says so:
:func:`pipeline_steps.models.layers.kind_of_layer_names`); its axes and panel titles say "stage".
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
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402

from pipeline_steps.config import run_name
from pipeline_steps.errors import UserError  # noqa: E402

__all__ = ["METRIC_LABELS", "SPECTRA_SCALES", "TEACHER_SHAPE_LABEL", "choose_spectra_layers", "figure_evolution",
           "figure_profile", "figure_spectra", "figure_spectra_grid", "profile", "rescale_to_range", "save_figure",
           "style"]

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
    """Write ``fig`` as ``<stem>.pdf`` and ``<stem>.png`` (both or neither: ``artifacts.atomic_outputs``), then
    close it."""
    from pipeline_steps.artifacts import atomic_outputs

    out = Path(out)
    written = [out.with_suffix(suffix) for suffix in (".pdf", ".png")]
    try:
        with atomic_outputs(*written) as temporaries:
            for path, tmp in zip(written, temporaries):
                fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix[1:])
    finally:
        plt.close(fig)
    return written


def profile(values: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per (model, checkpoint, layer) for a scalar metric, sorted by layer."""
    rows = values[values["metric"] == metric]
    if rows.empty:
        raise UserError(f"the reductions table has no '{metric}' rows; re-run the reduce step")
    return rows.sort_values(["model", "checkpoint", "layer"])[["model", "checkpoint", "layer", "value"]]


def _layer_word(values: pd.DataFrame) -> str:
    """``"stage"`` for a CNN's table, ``"layer"`` otherwise (a ViT's blocks, or a table without names)."""
    if "layer_name" not in values.columns:
        return "layer"
    from pipeline_steps.models.layers import kind_of_layer_names

    return "stage" if kind_of_layer_names(values["layer_name"].dropna().unique()) == "stage" else "layer"


def _integer_layer_axis(ax: plt.Axes, n_layers: int, word: str = "layer") -> None:
    step = 1 if n_layers <= 16 else 2
    ax.set_xticks(range(1, n_layers + 1, step))
    ax.set_xlim(0.5, n_layers + 0.5)
    ax.set_xlabel(word.capitalize())


def figure_profile(values: pd.DataFrame, metric: str, title: str | None = None) -> plt.Figure:
    """Fig. 1 (entropy) / Fig. 2 (magnitude): the metric per layer, minimum marked."""
    prof = profile(values, metric)
    word = _layer_word(values)
    with style():
        fig, ax = plt.subplots(figsize=(5.0, 3.2))
        groups = list(prof.groupby(["model", "checkpoint"], sort=False))
        for (model, checkpoint), g in groups:
            label = model if len(groups) == 1 or checkpoint == "final" else f"{model} ({checkpoint})"
            (line,) = ax.plot(g["layer"], g["value"], marker="o", label=label)
            i = int(np.argmin(g["value"].to_numpy()))
            x, y = g["layer"].iloc[i], g["value"].iloc[i]
            ax.plot([x], [y], marker="o", ms=9, mfc="none", mec=line.get_color(), mew=1.2)
            ax.annotate(f"min: {word} {int(x)}", (x, y), textcoords="offset points", xytext=(8, 4),
                        ha="left", va="bottom", fontsize=8)
        _integer_layer_axis(ax, int(prof["layer"].max()), word)
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


#: ``figures.spectra_scale``: ``log`` = one log intensity axis shared by all panels (levels comparable across
#: layers); ``linear`` = each layer on its own linear axis, as the authors' released plots.
SPECTRA_SCALES = ("log", "linear")


def _check_scale(scale: str) -> bool:
    """Whether ``scale`` is log (shared axis); a one-line error for anything but :data:`SPECTRA_SCALES`."""
    if scale not in SPECTRA_SCALES:
        raise UserError(f"figures.spectra_scale is '{scale}'; choose one of {', '.join(SPECTRA_SCALES)}")
    return scale == "log"


def figure_spectra(values: pd.DataFrame, layers: Sequence[int], title: str | None = None,
                   scale: str = "log") -> plt.Figure:
    """Fig. 3: channel-axis spectra of the chosen layers, one panel each.

    Args:
        values: Reductions table with ``spectrum`` rows.
        layers: 1-based layers, one panel each.
        title: Figure title.
        scale: ``log`` (one shared log intensity axis) or ``linear`` (each panel its own linear axis).
    """
    shared_log = _check_scale(scale)
    spectra = values[values["metric"] == "spectrum"]
    if spectra.empty:
        raise UserError("the reductions table has no 'spectrum' rows; re-run the reduce step")
    word = _layer_word(values)
    ncols = 3
    nrows = int(np.ceil(len(layers) / ncols))
    with style():
        fig, axes = plt.subplots(nrows, ncols, figsize=(10, 2.8 * nrows), sharex=True, sharey=shared_log,
                                 squeeze=False)
        for i, (ax, layer) in enumerate(zip(axes.flat, layers)):
            freq, s = _spectrum(spectra, layer)
            ax.plot(freq, s, color=f"C{i // 2}")
            phase = _phase(layer, layers)
            ax.set_title(f"({chr(97 + i)}) {word} {layer}" + (f" - {phase}" if phase else ""))
            ax.set_yscale("log" if shared_log else "linear")
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


def figure_spectra_grid(values: pd.DataFrame, title: str | None = None, scale: str = "log") -> plt.Figure:
    """Fig. 3 companion: every layer's spectrum, small multiples with a shared log y-axis (``scale="log"``)
    or each on its own linear axis (``"linear"``)."""
    shared_log = _check_scale(scale)
    spectra = values[values["metric"] == "spectrum"]
    if spectra.empty:
        raise UserError("the reductions table has no 'spectrum' rows; re-run the reduce step")
    layers = sorted(spectra["layer"].unique())
    word = _layer_word(values)
    ncols = min(6, len(layers))
    nrows = int(np.ceil(len(layers) / ncols))
    with style():
        fig, axes = plt.subplots(nrows, ncols, figsize=(1.9 * ncols, 1.6 * nrows), sharex=True, sharey=shared_log,
                                 squeeze=False)
        for ax, layer in zip(axes.flat, layers):
            freq, s = _spectrum(spectra, layer)
            ax.plot(freq, s, lw=1.0)
            ax.set_title(f"{word} {layer}", fontsize=8)
            ax.set_yscale("log" if shared_log else "linear")
            ax.tick_params(labelsize=7)
        for ax in axes.flat[len(layers):]:
            ax.set_visible(False)
        fig.supxlabel("Normalised channel frequency k/C", fontsize=9)
        fig.supylabel("Mean |F|", fontsize=9)
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
    return fig


def _teacher_profile(teacher: pd.DataFrame) -> np.ndarray:
    prof = profile(teacher, "entropy")
    groups = prof.groupby(["model", "checkpoint"], sort=False)
    if groups.ngroups != 1:
        raise UserError(f"the teacher reductions table holds {groups.ngroups} entropy profiles; give the table of "
                        "one model (results/reductions/teacher.parquet)")
    return prof["value"].to_numpy()


#: Legend label of the teacher's profile in Fig. 4 (only its shape is comparable; see figure_evolution).
TEACHER_SHAPE_LABEL = "teacher (shape only, rescaled)"
#: The best checkpoint's curve in Fig. 4: black, solid, on top of the epoch curves.
_BEST_STYLE = {"color": "black", "ls": "-", "lw": 1.8, "marker": "s", "ms": 3, "zorder": 5}


def rescale_to_range(values: Sequence[float], lo: float, hi: float) -> np.ndarray:
    """``values`` min-max normalised onto ``[lo, hi]`` (a flat profile goes to the middle)."""
    v = np.asarray(values, dtype=float)
    span = v.max() - v.min()
    if span == 0:
        return np.full_like(v, (lo + hi) / 2)
    return lo + (v - v.min()) / span * (hi - lo)


def _best_label(epochs: Sequence) -> str:
    known = sorted({int(e) for e in epochs if not pd.isna(e)})
    if not known:
        return "best (epoch not published)"
    return f"best (epoch {known[0]})" if len(known) == 1 else f"best (epochs {', '.join(map(str, known))})"


def figure_evolution(values: pd.DataFrame, teacher: pd.DataFrame | None = None,
                     labels: dict[str, str] | None = None, title: str | None = None) -> plt.Figure:
    """Fig. 4: the student's entropy profile at every saved checkpoint, one panel per configuration.

    Curves are coloured by epoch (sequential colormap) and averaged over the seeds of a configuration; with
    more than one seed a light band spans the seeds' minimum to maximum. Each panel's colour scale spans its
    own run's epochs (a 500-epoch run reaches the top colour at 500, a 300-epoch one at 300): one colorbar
    when every panel has the same range, else one per panel. Epoch 0 (the random init) is dotted and labelled
    ``init (epoch 0)``; the best checkpoint (rows with ``checkpoint`` = ``"best"``) is black and solid,
    labelled ``best (epoch E)``.

    The teacher's profile is not on the student's scale (another width, so another number of values per
    histogram and another global range), so only its shape is drawn: min-max normalised onto the range of the
    panel's student curves (dashed grey, :data:`TEACHER_SHAPE_LABEL`), with its own values in bits on the
    right axis. Its first and last layers sit at the student's first and last (depth-aligned, the F/L
    pairing of the distillation); when the depths differ the top axis of the first row gives the teacher's
    own layer numbers.

    Args:
        values: Evolution tables (the evolution step's ``--out``, or
            :func:`pipeline_steps.analysis.published.read_published_entropy`), concatenated: ``run_id``, ``epoch``,
            ``layer``, ``metric``, ``value``; ``checkpoint`` marks the best rows.
        teacher: The teacher's reductions table (reduce step), or ``None`` for no reference line.
        labels: Configuration name (run id without ``-s<seed>``) -> panel title, in panel order. ``None``:
            every configuration in ``values`` in order of appearance, titled by its name.
        title: Figure title.

    Returns:
        The figure; its panels are the axes with a title (``(a) <label>``, ...). Epoch curves carry the
        (legend-hidden) label ``_epoch <E>``, except epoch 0's ``init (epoch 0)``.

    Raises:
        UserError: No entropy rows, or a labelled configuration without data.
    """
    from pipeline_steps.analysis.checkpoints import BEST_CHECKPOINT

    entropy = values[values["metric"] == "entropy"] if "metric" in values else values.iloc[0:0]
    if entropy.empty:
        raise UserError("the evolution tables have no 'entropy' rows; re-run the evolution step")
    is_best = (entropy["checkpoint"] == BEST_CHECKPOINT) if "checkpoint" in entropy else False
    entropy = entropy.assign(config=entropy["run_id"].map(run_name), is_best=is_best)
    if labels is None:
        labels = {name: name for name in entropy["config"].unique()}
    missing = [name for name in labels if name not in set(entropy["config"])]
    if missing:
        have = ", ".join(sorted(entropy["config"].unique()))
        raise UserError(f"no evolution table for configuration '{missing[0]}' (tables given: {have}); pass its "
                        "results/evolution/<run_id>.parquet or drop it from the labels")
    if not labels:
        raise UserError("no configurations to plot; pass at least one evolution table")
    entropy = entropy[entropy["config"].isin(list(labels))]
    teacher_e = _teacher_profile(teacher) if teacher is not None else None

    # Each panel's own epoch range (its run's length), for its colour scale.
    norms = {}
    for name in labels:
        epochs = entropy.loc[(entropy["config"] == name) & ~entropy["is_best"], "epoch"].astype(int)
        lo, hi = (int(epochs.min()), int(epochs.max())) if len(epochs) else (0, 1)
        norms[name] = Normalize(vmin=lo, vmax=max(hi, lo + 1))
    shared_scale = len({(nm.vmin, nm.vmax) for nm in norms.values()}) == 1
    cmap = matplotlib.colormaps["viridis"]
    n = len(labels)
    ncols = n if n <= 3 else (2 if n == 4 else 3)
    nrows = int(np.ceil(n / ncols))
    with style():
        # Constrained layout: it makes room for the colorbars (tight_layout does not).
        width = 3.6 * ncols + (0.8 if shared_scale else 0.9 * ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(width, 2.9 * nrows), sharex=True, sharey=True,
                                 squeeze=False, layout="constrained")
        for i, (ax, (name, label)) in enumerate(zip(axes.flat, labels.items())):
            rows = entropy[entropy["config"] == name]
            depth = int(rows["layer"].max())
            norm = norms[name]
            n_seeds = rows["run_id"].nunique()
            curves = rows[~rows["is_best"]]
            # Per (epoch, layer): mean over the seeds (run ids) and their range.
            stats = curves.groupby(["epoch", "layer"])["value"].agg(["mean", "min", "max"]).reset_index()
            drawn = [stats["mean"].to_numpy()]
            for epoch, g in stats.groupby("epoch", sort=True):
                color = cmap(norm(int(epoch)))
                if n_seeds > 1:
                    ax.fill_between(g["layer"], g["min"], g["max"], color=color, alpha=0.15, lw=0)
                init = int(epoch) == 0
                ax.plot(g["layer"], g["mean"], color=color, marker="o", ms=2.5, lw=1.3, ls=":" if init else "-",
                        label="init (epoch 0)" if init else f"_epoch {int(epoch)}")
            best = rows[rows["is_best"]]
            if not best.empty:
                b = best.groupby("layer")["value"].mean()
                ax.plot(b.index, b.to_numpy(), label=_best_label(best["epoch"].unique()), **_BEST_STYLE)
                drawn.append(b.to_numpy())
            if teacher_e is not None:
                _draw_teacher_shape(ax, teacher_e, depth, np.concatenate(drawn), top_axis=i < ncols)
            seeds = f", {n_seeds} seeds" if n_seeds > 1 else ""
            ax.set_title(f"({chr(97 + i)}) {label}{seeds}")
            _integer_layer_axis(ax, depth)
            ax.set_xlabel("Student layer" if i + ncols >= n else "")  # the lowest panel of each column
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="best", fontsize=7)
            if not shared_scale:
                bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.05, pad=0.02, aspect=25)
                bar.set_label("Epoch", fontsize=8)
                bar.ax.tick_params(labelsize=7)
        for ax in axes.flat[n:]:
            ax.set_visible(False)
        for ax in axes[:, 0]:
            ax.set_ylabel(METRIC_LABELS["entropy"])
        if shared_scale:
            norm = next(iter(norms.values()))
            bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes.ravel().tolist(), fraction=0.04,
                               pad=0.02, aspect=30)
            bar.set_label("Epoch (checkpoint)")
            epochs = sorted(int(e) for e in entropy.loc[~entropy["is_best"], "epoch"].unique())
            if len(epochs) <= 6:  # else matplotlib's own ticks: every epoch would crowd a one-row figure
                bar.set_ticks(epochs)
        if title:
            fig.suptitle(title)
    return fig


def _draw_teacher_shape(ax: plt.Axes, teacher_e: np.ndarray, depth: int, student: np.ndarray,
                        top_axis: bool) -> None:
    """The teacher's profile min-max normalised onto the student curves' range, depth-aligned; its own
    values (bits) on a right axis, its own layers on a top axis (``top_axis`` and different depths)."""
    t_depth = len(teacher_e)
    x = 1 + np.arange(t_depth) * (depth - 1) / max(t_depth - 1, 1)
    s_lo, s_hi = float(np.min(student)), float(np.max(student))
    ax.plot(x, rescale_to_range(teacher_e, s_lo, s_hi), ls="--", color="0.45", lw=1.2, label=TEACHER_SHAPE_LABEL)
    t_lo, t_hi = float(teacher_e.min()), float(teacher_e.max())
    if s_hi > s_lo and t_hi > t_lo:
        k = (t_hi - t_lo) / (s_hi - s_lo)
        right = ax.secondary_yaxis("right", functions=(lambda s, k=k: t_lo + (s - s_lo) * k,
                                                       lambda t, k=k: s_lo + (t - t_lo) / k))
        right.set_ylabel("teacher (bits)", fontsize=7, color="0.45")
        right.tick_params(labelsize=6, colors="0.45")
    if t_depth != depth and top_axis:
        scale = (t_depth - 1) / max(depth - 1, 1)
        top = ax.secondary_xaxis("top", functions=(lambda s, k=scale: 1 + (s - 1) * k,
                                                   lambda t, k=scale: 1 + (t - 1) / k))
        top.set_xticks(np.unique(np.linspace(1, t_depth, 5).round().astype(int)))
        top.set_xlabel("Teacher layer", fontsize=8)
        top.tick_params(labelsize=7)
