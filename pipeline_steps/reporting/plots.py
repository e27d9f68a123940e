"""Figures in one clean style: per-layer profiles (Fig. 1-2), channel spectra (Fig. 3), evolution (Fig. 4),
and the per-layer statistics beyond entropy.

All functions take the long-format reductions table (see :mod:`pipeline_steps.analysis.reductions`; Fig. 4
the evolution step's tables, the same columns plus ``run_id``, or the authors' published tables read into
that format by :func:`pipeline_steps.analysis.published.read_published_entropy`) and return a matplotlib ``Figure``;
:func:`save_figure` writes it as PDF and PNG atomically.
Layers are 1-based, as in the paper. A CNN's layers are its stages (the table's ``layer_name`` says so:
:func:`pipeline_steps.models.layers.kind_of_layer_names`); its axes and panel titles say "stage".

The statistics figures take statistics tables (:data:`~pipeline_steps.analysis.layer_statistics.STATISTICS_COLUMNS`,
docs/artifacts.md section 4b): :func:`figure_cka` and :func:`figure_cka_match` (CKA of the students' layers to
the teacher's), :func:`figure_statistics` (ranks, SEP, spectral share, massive activations across depth),
:func:`figure_robustness` (the teacher's entropy profile three ways) and :func:`figure_teacher_evolution` (the
teacher's entropy during its own training); :func:`figure_profile` draws the teacher's bootstrap interval
from one as a band.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from pipeline_steps.config import run_name
from pipeline_steps.errors import UserError  # noqa: E402

__all__ = ["BAND_LABEL", "BEST_MATCH_LABEL", "METRIC_LABELS", "ROBUSTNESS_PROFILES", "SPECTRA_SCALES",
           "STATISTICS_PANELS", "TEACHER_SHAPE_LABEL", "cka_best_match", "choose_spectra_layers", "figure_cka",
           "figure_cka_match", "figure_evolution", "figure_profile", "figure_robustness", "figure_spectra",
           "figure_spectra_grid", "figure_statistics", "figure_teacher_evolution", "profile", "rescale_to_range",
           "save_figure", "style"]

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


#: Legend label of the band :func:`figure_profile` draws from a statistics table (its coverage is the
#: table's ``analysis.statistics.confidence``, which the table does not record).
BAND_LABEL = "bootstrap interval over images"


def _band(band: pd.DataFrame, metric: str, layers: Sequence[int], word: str) -> pd.DataFrame:
    """The rows of ``metric`` in the statistics table ``band``, one per layer of the profile (``layers``),
    sorted by layer; a one-line error for another model's table or one without intervals."""
    rows = band[band["metric"] == metric] if "metric" in band else band.iloc[0:0]
    if rows.empty:
        raise UserError(f"the teacher statistics table has no '{metric}' rows; re-run the statistics step")
    n = rows.groupby(["model", "checkpoint"]).ngroups
    if n != 1:
        raise UserError(f"the teacher statistics table holds {n} '{metric}' profiles; give the table of one model "
                        "(results/statistics/teacher.parquet)")
    rows = rows.sort_values("layer")
    have, want = [int(v) for v in rows["layer"]], [int(v) for v in layers]
    if have != want:
        raise UserError(f"the teacher statistics table has {len(have)} {word}s ({have[0]}..{have[-1]}) but the "
                        f"profile {len(want)} ({want[0]}..{want[-1]}); give the statistics of the same model")
    if rows["ci_low"].isna().all() or rows["ci_high"].isna().all():
        raise UserError(f"the teacher statistics table has no bootstrap interval for '{metric}' "
                        "(analysis.statistics.bootstrap was 0); re-run the statistics step with bootstrap > 0, "
                        "or leave the band out")
    return rows


def figure_profile(values: pd.DataFrame, metric: str, title: str | None = None,
                   band: pd.DataFrame | None = None) -> plt.Figure:
    """Fig. 1 (entropy) / Fig. 2 (magnitude): the metric per layer, minimum marked.

    Args:
        values: Reductions table with ``metric`` rows.
        metric: ``"entropy"`` or ``"magnitude"`` (:data:`METRIC_LABELS`).
        title: Figure title.
        band: The same model's statistics table (the statistics step's ``--out``), or ``None``: its bootstrap
            interval of ``metric`` (``ci_low`` .. ``ci_high`` per layer) is drawn as a shaded band in the
            first line's colour, labelled :data:`BAND_LABEL`. Without a band the figure is as it always was.

    Raises:
        UserError: No ``metric`` rows; a band of another model (other layers), of several profiles, or
            without intervals.
    """
    prof = profile(values, metric)
    word = _layer_word(values)
    band_rows = _band(band, metric, sorted(prof["layer"].unique()), word) if band is not None else None
    with style():
        fig, ax = plt.subplots(figsize=(5.0, 3.2))
        groups = list(prof.groupby(["model", "checkpoint"], sort=False))
        colors = []
        for (model, checkpoint), g in groups:
            label = model if len(groups) == 1 or checkpoint == "final" else f"{model} ({checkpoint})"
            (line,) = ax.plot(g["layer"], g["value"], marker="o", label=label)
            colors.append(line.get_color())
            i = int(np.argmin(g["value"].to_numpy()))
            x, y = g["layer"].iloc[i], g["value"].iloc[i]
            ax.plot([x], [y], marker="o", ms=9, mfc="none", mec=line.get_color(), mew=1.2)
            ax.annotate(f"min: {word} {int(x)}", (x, y), textcoords="offset points", xytext=(8, 4),
                        ha="left", va="bottom", fontsize=8)
        if band_rows is not None:
            ax.fill_between(band_rows["layer"].to_numpy(), band_rows["ci_low"].to_numpy(),
                            band_rows["ci_high"].to_numpy(), color=colors[0], alpha=0.25, lw=0, label=BAND_LABEL)
        _integer_layer_axis(ax, int(prof["layer"].max()), word)
        ax.set_ylabel(METRIC_LABELS[metric])
        if title:
            ax.set_title(title)
        if len(groups) > 1 or band_rows is not None:
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
    nrows, ncols = _grid(n)
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


# ---------------------------------------------------------------------------------------------------------
# Statistics tables (pipeline_steps.analysis.layer_statistics): CKA, ranks and spectra across depth,
# the robustness of the entropy profile, the teacher's own training
# ---------------------------------------------------------------------------------------------------------

#: The panels of :func:`figure_statistics`: ``(metric, level, y label)``; ``level`` ``None`` takes the metric's
#: rows whatever their level, a number the level of the table closest to it (ENERGY_LEVELS 0.8 .. 0.99 of
#: :mod:`~pipeline_steps.analysis.rank`; SEP_RATIOS 0.5 .. 0.9 of :mod:`~pipeline_steps.analysis.spectral`).
STATISTICS_PANELS = (
    ("effective_rank", None, "Effective rank"),
    ("participation_ratio", None, "Participation ratio"),
    ("svd_rank_p99", 0.9, "SVD rank (p99 over images)"),
    ("pca_dimension", 0.9, "PCA dimension"),
    ("sep_bandwidth", 0.5, "SEP bandwidth (share of bins)"),
    ("low_frequency_share", None, "Low-frequency share"),
    ("massive_max_ratio", None, "max |A| / median |A|"),
)
#: :data:`STATISTICS_PANELS` drawn on a log y axis.
_LOG_PANELS = ("massive_max_ratio",)

#: The entropy profiles of :func:`figure_robustness`, each with its panel title: one histogram range shared by
#: all layers (the paper's), each layer's own range, and the tokens without a massive activation.
ROBUSTNESS_PROFILES = (
    ("entropy", "global histogram range"),
    ("entropy_per_layer_range", "per-layer histogram range"),
    ("entropy_without_massive", "without massive-activation tokens"),
)

#: The y label of :func:`figure_cka_match`.
BEST_MATCH_LABEL = "Most similar teacher layer (argmax CKA)"


def _grid(n: int) -> tuple[int, int]:
    """``(rows, columns)`` of ``n`` panels (Fig. 4 and the per-configuration figures): one row up to three, 2 x 2
    for four, then rows of three."""
    ncols = n if n <= 3 else (2 if n == 4 else 3)
    return int(np.ceil(n / ncols)), ncols


def _panel_labels(configurations: Sequence[str], labels: dict[str, str] | None, what: str,
                  fix: str) -> dict[str, str]:
    """The panels: ``labels`` checked against the configurations present, or every one, sorted, by name."""
    have = sorted(set(configurations))
    if labels is None:
        labels = {name: name for name in have}
    missing = [name for name in labels if name not in have]
    if missing:
        raise UserError(f"no {what} for configuration '{missing[0]}' (tables given: {', '.join(have) or 'none'}); "
                        f"{fix} or drop it from the labels")
    if not labels:
        raise UserError(f"no configurations to plot; pass at least one table with {what}")
    return dict(labels)


def _cka_rows(stats: pd.DataFrame, best: bool) -> pd.DataFrame:
    """The CKA rows of the best checkpoint (``best``) or of the epoch checkpoints, with ``configuration``."""
    from pipeline_steps.analysis.checkpoints import BEST_CHECKPOINT

    rows = stats[stats["metric"] == "cka"] if "metric" in stats else stats.iloc[0:0]
    rows = rows[(rows["checkpoint"] == BEST_CHECKPOINT) == best]
    if rows.empty:
        which = "the best checkpoint" if best else "an epoch checkpoint"
        raise UserError(f"the statistics tables have no 'cka' rows of {which}; run the evolution step with "
                        "--reference results/activations/teacher.npz")
    return rows.assign(configuration=rows["run_id"].map(run_name))


def _cka_matrix(rows: pd.DataFrame) -> pd.DataFrame:
    """Seed-mean CKA, teacher layers (index) x student layers (columns), both sorted."""
    mean = rows.groupby(["teacher_layer", "layer"])["value"].mean()
    matrix = mean.unstack("layer").sort_index().sort_index(axis=1)
    matrix.index = matrix.index.astype(int)
    matrix.columns = matrix.columns.astype(int)
    return matrix


def _layer_ticks(layers: Sequence[int]) -> tuple[list[int], list[str]]:
    """Tick positions (0-based cell indices) and 1-based layer labels, every second one past 16 layers."""
    step = 1 if len(layers) <= 16 else 2
    positions = list(range(0, len(layers), step))
    return positions, [str(int(layers[i])) for i in positions]


def figure_cka(stats: pd.DataFrame, labels: dict[str, str] | None = None, title: str | None = None) -> plt.Figure:
    """Linear CKA between every student layer and every teacher layer at the best checkpoint, one heatmap
    per configuration.

    CKA (:mod:`pipeline_steps.analysis.similarity`: unbiased HSIC over the sample's images, token-mean
    features) is 1 for the same representation up to rotation and isotropic scale, 0 for unrelated ones. One
    shared colour scale 0 .. 1 and one colorbar; NaN cells (fewer than 4 images) stay blank.

    Args:
        stats: The distillation runs' statistics tables (the evolution step's ``--statistics``), concatenated;
            rows ``metric == "cka"`` and ``checkpoint == "best"`` are drawn, the seeds of a configuration
            (:func:`pipeline_steps.config.run_name` of ``run_id``) averaged.
        labels: Configuration -> panel title, in panel order; ``None``: every configuration, sorted, by name.
        title: Figure title.

    Returns:
        The figure; its panels are the axes with a title (``(a) <label>``, ...), each holding one image whose
        array is the seed-mean matrix (rows: teacher layers, columns: student layers, both ascending).

    Raises:
        UserError: No CKA rows of a best checkpoint, or a labelled configuration without them.
    """
    rows = _cka_rows(stats, best=True)
    labels = _panel_labels(rows["configuration"], labels, "best-checkpoint CKA rows",
                           "pass its results/evolution/<run_id>_statistics.parquet")
    word = _layer_word(stats)
    n = len(labels)
    nrows, ncols = _grid(n)
    with style():
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols + 0.9, 3.2 * nrows), squeeze=False,
                                 layout="constrained")
        image = None
        for i, (ax, (name, label)) in enumerate(zip(axes.flat, labels.items())):
            g = rows[rows["configuration"] == name]
            matrix = _cka_matrix(g)
            image = ax.imshow(matrix.to_numpy(), origin="lower", aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0,
                              interpolation="nearest")
            xt, xl = _layer_ticks(list(matrix.columns))
            yt, yl = _layer_ticks(list(matrix.index))
            ax.set_xticks(xt, xl)
            ax.set_yticks(yt, yl)
            ax.grid(False)
            n_seeds = g["run_id"].nunique()
            ax.set_title(f"({chr(97 + i)}) {label}" + (f", {n_seeds} seeds" if n_seeds > 1 else ""))
            ax.set_xlabel(f"Student {word}")
            if i % ncols == 0:
                ax.set_ylabel(f"Teacher {word}")
        for ax in axes.flat[n:]:
            ax.set_visible(False)
        bar = fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.04, pad=0.02, aspect=30)
        bar.set_label("Linear CKA")
        if title:
            fig.suptitle(title)
    return fig


def cka_best_match(stats: pd.DataFrame) -> pd.DataFrame:
    """Each student layer's most similar teacher layer at every epoch checkpoint.

    Args:
        stats: The distillation runs' statistics tables, concatenated (rows ``metric == "cka"``, ``checkpoint``
            other than ``"best"``).

    Returns:
        One row per (configuration, epoch, student layer), sorted so: ``configuration``
        (:func:`pipeline_steps.config.run_name` of ``run_id``), ``epoch``, ``layer``, ``teacher_layer`` (the argmax
        over teacher layers of the seed-mean CKA, the lowest teacher layer on ties; ``<NA>`` where every value
        is NaN) and ``cka`` (that maximum).

    Raises:
        UserError: No CKA rows of an epoch checkpoint.
    """
    rows = _cka_rows(stats, best=False)
    keys = ["configuration", "epoch", "layer"]
    mean = (rows.groupby([*keys, "teacher_layer"], dropna=False)["value"].mean().reset_index()
            .sort_values([*keys, "teacher_layer"], kind="stable"))
    top = mean.groupby(keys, dropna=False)["value"].transform("max")
    best = mean[mean["value"] == top].drop_duplicates(keys, keep="first")  # the first (lowest) teacher layer
    groups = mean[keys].drop_duplicates()
    out = groups.merge(best, on=keys, how="left").rename(columns={"value": "cka"})
    out = out.sort_values(keys, kind="stable").reset_index(drop=True)
    return out.astype({"epoch": "Int64", "layer": "int64", "teacher_layer": "Int64", "cka": "float64"})[
        [*keys, "teacher_layer", "cka"]]


def figure_cka_match(stats: pd.DataFrame, labels: dict[str, str] | None = None,
                     title: str | None = None) -> plt.Figure:
    """Which teacher layer each student layer resembles most, over training: one panel per configuration.

    x = epoch, y = :func:`cka_best_match`'s teacher layer, one line per student layer coloured by its depth
    (viridis, one colorbar). A flat line: the student layer settled on one teacher layer.

    Args:
        stats: The distillation runs' statistics tables, concatenated (see :func:`cka_best_match`).
        labels: Configuration -> panel title, in panel order; ``None``: every configuration, sorted, by name.
        title: Figure title.

    Returns:
        The figure; its panels are the axes with a title; each line is labelled ``<word> <layer>``.

    Raises:
        UserError: No CKA rows of an epoch checkpoint, or a labelled configuration without them.
    """
    match = cka_best_match(stats)
    labels = _panel_labels(match["configuration"], labels, "epoch-checkpoint CKA rows",
                           "pass its results/evolution/<run_id>_statistics.parquet")
    word = _layer_word(stats)
    layers = sorted(int(v) for v in match["layer"].unique())
    norm = Normalize(vmin=layers[0], vmax=max(layers[-1], layers[0] + 1))
    cmap = matplotlib.colormaps["viridis"]
    teacher_layers = [int(v) for v in stats.loc[stats["metric"] == "cka", "teacher_layer"].dropna().unique()]
    n = len(labels)
    nrows, ncols = _grid(n)
    with style():
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols + 0.9, 2.9 * nrows), sharey=True, squeeze=False,
                                 layout="constrained")
        for i, (ax, (name, label)) in enumerate(zip(axes.flat, labels.items())):
            g = match[match["configuration"] == name]
            for k, (layer, curve) in enumerate(g.groupby("layer", sort=True)):
                # Deeper layers thinner, on top: lines on the same teacher layer show as nested stripes.
                lw = 3.2 - 2.2 * k / max(len(layers) - 1, 1)
                ax.plot(curve["epoch"].astype(float), curve["teacher_layer"].astype(float), marker="o", ms=2.5,
                        lw=lw, color=cmap(norm(int(layer))), label=f"{word} {int(layer)}")
            ax.set_title(f"({chr(97 + i)}) {label}")
            ax.set_xlabel("Epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if i % ncols == 0:
                ax.set_ylabel(BEST_MATCH_LABEL)
        if teacher_layers:
            lo, hi = min(teacher_layers), max(teacher_layers)
            axes.flat[0].set_ylim(lo - 0.5, hi + 0.5)
            axes.flat[0].yaxis.set_major_locator(MaxNLocator(integer=True))
        for ax in axes.flat[n:]:
            ax.set_visible(False)
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes.ravel().tolist(), fraction=0.04, pad=0.02,
                           aspect=30)
        bar.set_label(f"Student {word}")
        if len(layers) <= 16:
            bar.set_ticks(layers)
        if title:
            fig.suptitle(title)
    return fig


def _level_rows(rows: pd.DataFrame, level: float | None) -> tuple[pd.DataFrame, float | None]:
    """``rows`` at the table's level closest to ``level`` (all of them for ``None``), and that level."""
    if level is None:
        return rows, None
    present = np.unique(rows["level"].dropna().to_numpy(dtype=float))
    if present.size == 0:
        return rows.iloc[0:0], None
    chosen = float(present[int(np.argmin(np.abs(present - level)))])
    return rows[np.isclose(rows["level"].to_numpy(dtype=float), chosen)], chosen


def _one_profile(table: pd.DataFrame, what: str) -> None:
    """A one-line error unless ``table`` holds one model at one checkpoint."""
    n = table.groupby(["model", "checkpoint"]).ngroups
    if n != 1:
        raise UserError(f"the {what} holds {n} profiles (model, checkpoint); give the table of one model "
                        "(results/statistics/teacher.parquet)")


def figure_statistics(teacher: pd.DataFrame, students: pd.DataFrame | None = None,
                      labels: dict[str, str] | None = None, title: str | None = None) -> plt.Figure:
    """The per-layer statistics beyond entropy across depth: one panel per entry of :data:`STATISTICS_PANELS`.

    x is the relative depth ``layer / L`` (``L`` the last analysed layer of that model), so a teacher and
    students of other depths share an axis. The teacher's profile is black; each configuration's best
    checkpoint (seeds averaged) a coloured line (``C0``, ``C1``, ... in panel order). The legend fills the
    grid's last cell.

    Args:
        teacher: The teacher's statistics table (the statistics step's ``--out``).
        students: The distillation runs' statistics tables, concatenated (rows ``checkpoint == "best"`` are
            drawn), or ``None`` for the teacher only.
        labels: Configuration -> legend label, in order; ``None``: every configuration, sorted, by name.
        title: Figure title.

    Returns:
        The figure; its panels are the axes with a title (``(a) <metric>``, with ``at <level>`` for a
        levelled metric); the teacher's line is labelled ``teacher``.

    Raises:
        UserError: A teacher table of several profiles or without a panel's metric; a labelled configuration
            without best-checkpoint rows.
    """
    from pipeline_steps.analysis.checkpoints import BEST_CHECKPOINT

    _one_profile(teacher, "teacher statistics table")
    present = set(teacher["metric"])
    absent = [metric for metric, _, _ in STATISTICS_PANELS if metric not in present]
    if absent:
        raise UserError(f"the teacher statistics table has no '{absent[0]}' rows; re-run the statistics step")
    lines = [("teacher", teacher, {"color": "black", "lw": 1.8, "zorder": 5})]
    if students is not None:
        best = students[students["checkpoint"] == BEST_CHECKPOINT]
        best = best.assign(configuration=best["run_id"].map(run_name))
        labels = _panel_labels(best["configuration"], labels, "best-checkpoint statistics",
                               "pass its results/evolution/<run_id>_statistics.parquet")
        lines += [(label, best[best["configuration"] == name], {"color": f"C{k}"})
                  for k, (name, label) in enumerate(labels.items())]
    word = _layer_word(teacher)
    ncols = 4
    nrows = int(np.ceil((len(STATISTICS_PANELS) + 1) / ncols))
    with style():
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows), sharex=True, squeeze=False,
                                 layout="constrained")
        for i, (ax, (metric, level, ylabel)) in enumerate(zip(axes.flat, STATISTICS_PANELS)):
            chosen = None
            for k, (label, table, kwargs) in enumerate(lines):
                rows, at = _level_rows(table[table["metric"] == metric], level)
                chosen = at if k == 0 else chosen  # the teacher's level names the panel
                if rows.empty:
                    continue
                curve = rows.groupby("layer")["value"].mean().sort_index()
                depth = int(table["layer"].max())
                ax.plot(curve.index.to_numpy() / depth, curve.to_numpy(), marker="o", ms=2.5, label=label, **kwargs)
            ax.set_title(f"({chr(97 + i)}) {metric}" + (f" at {chosen:g}" if chosen is not None else ""), fontsize=9)
            ax.set_ylabel(ylabel, fontsize=8)
            if metric in _LOG_PANELS:
                ax.set_yscale("log")
            ax.tick_params(which="both", labelsize=7)
        # The legend fills the first free cell: every line once, in drawing order.
        entries: dict[str, Any] = {}
        for ax in axes.flat[:len(STATISTICS_PANELS)]:
            for handle, name in zip(*ax.get_legend_handles_labels()):
                entries.setdefault(name, handle)
        cell = len(STATISTICS_PANELS)
        legend_ax = axes.flat[cell]
        legend_ax.axis("off")
        legend_ax.legend(list(entries.values()), list(entries), loc="center", fontsize=8)
        for ax in axes.flat[cell + 1:]:
            ax.set_visible(False)
        xlabel = f"Relative depth ({word} / L)"
        for ax in axes[-1]:
            ax.set_xlabel(xlabel, fontsize=8)
        row, col = divmod(cell, ncols)
        if row > 0:  # the panel above the legend is the lowest of its column
            axes[row - 1, col].xaxis.set_tick_params(labelbottom=True)
            axes[row - 1, col].set_xlabel(xlabel, fontsize=8)
        if title:
            fig.suptitle(title)
    return fig


def _summary_rows(summary: pd.DataFrame, teacher: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``summary`` that belong to the teacher's profile (its model and checkpoint, where the
    summary has those columns)."""
    keep = np.ones(len(summary), dtype=bool)
    for column in ("model", "checkpoint"):
        if column in summary.columns:
            keep &= (summary[column] == teacher[column].iloc[0]).to_numpy()
    return summary[keep]


def _reading(row: pd.Series, layers: Sequence[int], word: str) -> str:
    """``u_shaped (tol 0.1): min at layer 5, drop 0.83, rise 1.20``: the summary's reading of one profile,
    its argmin (a position in the profile) mapped to the layer number."""
    position = int(row["argmin_layer"])
    layer = int(layers[position - 1]) if 1 <= position <= len(layers) else position
    tol = f" (tol {float(row['shape_tolerance']):g})" if "shape_tolerance" in row and pd.notna(
        row["shape_tolerance"]) else ""
    return f"{row['shape']}{tol}: min at {word} {layer}, drop {float(row['drop']):.2f}, rise {float(row['rise']):.2f}"


def figure_robustness(teacher: pd.DataFrame, summary: pd.DataFrame | None = None, shape_tolerance: float = 0.1,
                      title: str | None = None) -> plt.Figure:
    """The teacher's entropy profile three ways (:data:`ROBUSTNESS_PROFILES`), side by side on one y axis.

    Each panel is titled with its shape reading (``shape``, the minimum's layer, ``drop`` and ``rise`` in
    bits) from ``summary``; the minimum is ringed as in :func:`figure_profile`. A profile with a layer that
    keeps no token (``entropy_without_massive`` where every token holds a massive activation) has no reading:
    its panel says which layers are undefined and draws the rest.

    Args:
        teacher: The teacher's statistics table.
        summary: Its shape readings (the statistics step's ``--summary``,
            :func:`~pipeline_steps.analysis.layer_statistics.statistics_summary`), or ``None`` to compute them
            with ``shape_tolerance``.
        shape_tolerance: ``analysis.shape_tolerance`` (bits), used when ``summary`` is ``None``.
        title: Figure title.

    Returns:
        The figure; three panels (the axes with a title).

    Raises:
        UserError: A table of several profiles or without one of the three metrics; a summary without the
            reading of a fully defined profile.
    """
    from pipeline_steps.analysis.layer_statistics import statistics_summary

    _one_profile(teacher, "teacher statistics table")
    absent = [metric for metric, _ in ROBUSTNESS_PROFILES if not (teacher["metric"] == metric).any()]
    if absent:
        raise UserError(f"the teacher statistics table has no '{absent[0]}' rows; re-run the statistics step")
    if summary is None:
        summary = statistics_summary(teacher, shape_tolerance)
    missing = [c for c in ("metric", "shape", "argmin_layer", "drop", "rise") if c not in summary.columns]
    if missing:
        raise UserError(f"the teacher summary lacks column '{missing[0]}' (not a statistics summary of this "
                        "pipeline); pass the statistics step's --summary file")
    summary = _summary_rows(summary, teacher)
    word = _layer_word(teacher)
    with style():
        fig, axes = plt.subplots(1, len(ROBUSTNESS_PROFILES), figsize=(4.0 * len(ROBUSTNESS_PROFILES), 3.4),
                                 sharey=True, squeeze=False, layout="constrained")
        for i, (ax, (metric, description)) in enumerate(zip(axes.flat, ROBUSTNESS_PROFILES)):
            rows = teacher[teacher["metric"] == metric].sort_values("layer")
            layers, values = rows["layer"].to_numpy(dtype=int), rows["value"].to_numpy(dtype=float)
            (line,) = ax.plot(layers, values, marker="o", color=f"C{i}")
            undefined = layers[~np.isfinite(values)]
            reading = summary[summary["metric"] == metric]
            if undefined.size:
                listed = ", ".join(str(v) for v in undefined[:6]) + (", ..." if undefined.size > 6 else "")
                text = f"undefined at {word}{'s' if undefined.size > 1 else ''} {listed} (no token kept)"
            elif reading.empty:
                raise UserError(f"the teacher summary has no '{metric}' reading; pass the statistics step's "
                                "--summary file of the same table, or leave it out")
            else:
                row = reading.iloc[0]
                text = _reading(row, layers, word)
                position = int(row["argmin_layer"])
                if 1 <= position <= len(layers):
                    ax.plot([layers[position - 1]], [values[position - 1]], marker="o", ms=9, mfc="none",
                            mec=line.get_color(), mew=1.2)
            ax.set_title(f"({chr(97 + i)}) {description}\n{text}", fontsize=9)
            _integer_layer_axis(ax, int(layers.max()), word)
        axes[0, 0].set_ylabel(METRIC_LABELS["entropy"])
        if title:
            fig.suptitle(title)
    return fig


def figure_teacher_evolution(stats: pd.DataFrame, title: str | None = None,
                             shape_tolerance: float = 0.1) -> plt.Figure:
    """The teacher's own training: is the U-shape of its entropy profile learned?

    Left: the entropy profile of every epoch checkpoint, coloured by epoch (viridis, colorbar ``Epoch``;
    epoch 0 dotted), the best checkpoint black and solid. Right: the shape reading of each epoch's profile
    (:func:`~pipeline_steps.analysis.layer_statistics.statistics_summary` with ``shape_tolerance``): ``drop``
    (first layer - minimum) and ``rise`` (last layer - minimum) against the epoch, the tolerance dashed; the
    panel's title counts the U-shaped epochs.

    Args:
        stats: The statistics table of the teacher's training run (the evolution step with ``--model-key
            teacher``): epoch checkpoints ``epoch_NNNN`` with their ``epoch``, plus ``best``.
        title: Figure title.
        shape_tolerance: ``analysis.shape_tolerance`` (bits).

    Returns:
        The figure: two panels (the axes with a title) and the colorbar. Epoch curves are labelled
        ``_epoch <E>`` (hidden from the legend), except epoch 0's ``init (epoch 0)``; the right panel's lines
        ``drop`` and ``rise``.

    Raises:
        UserError: No entropy rows, tables of several runs, or no epoch checkpoint.
    """
    from pipeline_steps.analysis.checkpoints import BEST_CHECKPOINT
    from pipeline_steps.analysis.layer_statistics import statistics_summary

    entropy = stats[stats["metric"] == "entropy"] if "metric" in stats else stats.iloc[0:0]
    if entropy.empty:
        raise UserError("the teacher training's statistics table has no 'entropy' rows; re-run the evolution step "
                        "on results/teacher")
    runs = entropy["run_id"].nunique()
    if runs != 1:
        raise UserError(f"the teacher training's statistics tables hold {runs} runs; give the table of one run "
                        "(the evolution step's --statistics for results/teacher)")
    is_best = entropy["checkpoint"] == BEST_CHECKPOINT
    curves = entropy[~is_best]
    if curves.empty or curves["epoch"].isna().any():
        raise UserError("the teacher training's statistics table has no epoch checkpoints with an epoch; re-run "
                        "the evolution step on a teacher trained with checkpoint_every > 0")
    summary = statistics_summary(curves, shape_tolerance)
    summary = summary[summary["metric"] == "entropy"].sort_values("epoch")
    epochs = sorted(int(e) for e in curves["epoch"].unique())
    norm = Normalize(vmin=epochs[0], vmax=max(epochs[-1], epochs[0] + 1))
    cmap = matplotlib.colormaps["viridis"]
    word = _layer_word(stats)
    with style():
        fig, (left, right) = plt.subplots(1, 2, figsize=(10.0, 3.6), layout="constrained")
        for epoch, g in curves.groupby("epoch", sort=True):
            g = g.sort_values("layer")
            init = int(epoch) == 0
            left.plot(g["layer"], g["value"], color=cmap(norm(int(epoch))), marker="o", ms=2.5, lw=1.2,
                      ls=":" if init else "-", label="init (epoch 0)" if init else f"_epoch {int(epoch)}")
        best = entropy[is_best].sort_values("layer")
        if not best.empty:
            left.plot(best["layer"], best["value"], label=_best_label(best["epoch"].unique()), **_BEST_STYLE)
        _integer_layer_axis(left, int(entropy["layer"].max()), word)
        left.set_ylabel(METRIC_LABELS["entropy"])
        left.set_title("(a) entropy profile per checkpoint")
        if left.get_legend_handles_labels()[0]:
            left.legend(loc="best", fontsize=7)
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=left, fraction=0.05, pad=0.02, aspect=25)
        bar.set_label("Epoch")
        if len(epochs) <= 6:
            bar.set_ticks(epochs)
        x = summary["epoch"].to_numpy(dtype=float)
        right.plot(x, summary["drop"].to_numpy(), marker="o", ms=3, color="C0", label="drop")
        right.plot(x, summary["rise"].to_numpy(), marker="s", ms=3, color="C1", label="rise")
        right.axhline(shape_tolerance, ls="--", color="0.45", lw=1.0, label=f"tolerance ({shape_tolerance:g} bits)")
        u = summary.loc[summary["u_shaped"].astype(bool), "epoch"]
        reading = (f"U-shaped at {len(u)} of {len(summary)} epochs, first at epoch {int(u.min())}" if len(u)
                   else f"U-shaped at none of {len(summary)} epochs")
        right.set_title(f"(b) shape reading: {reading}", fontsize=9)
        right.set_xlabel("Epoch")
        right.xaxis.set_major_locator(MaxNLocator(integer=True))
        right.set_ylabel("bits (first - min, last - min)")
        right.legend(loc="best", fontsize=7)
        if title:
            fig.suptitle(title)
    return fig
