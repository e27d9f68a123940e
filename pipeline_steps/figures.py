"""Draw one paper figure (PDF + PNG) from a reductions table, or Fig. 4 from evolution tables.

Figures: ``entropy`` (Fig. 1), ``magnitude`` (Fig. 2), ``spectra`` (Fig. 3, six layers) and
``spectra_all`` (every layer's spectrum), from ``--reductions``; ``evolution`` (Fig. 4: the students'
entropy at every checkpoint, one panel per configuration), from the evolution step's tables::

    python -m pipeline_steps figures --params params.yaml --figure evolution \
        --evolution results/evolution/softkd-s0.parquet results/evolution/spectralkd_f1-s0.parquet ... \
        --reductions results/reductions/teacher.parquet \
        --labels-json '{"softkd": "SoftKD", "spectralkd_f1": "SpectralKD F1"}' \
        --out results/figures/fig4_evolution.pdf

``--labels-json`` maps a configuration (run id without ``-s<seed>``) to its panel title and sets the panel
order; the seeds of a configuration are averaged. ``--reductions`` (the teacher) is optional for Fig. 4.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from .errors import UserError
from .reduce import read_values_table

#: The evolution step's tables: a values table plus these columns (see :func:`read_values_table`).
EVOLUTION_COLUMNS = {"run_id": "str", "epoch": "int"}

FIGURES = ("entropy", "magnitude", "spectra", "spectra_all")
#: Drawn from the evolution step's tables (:func:`run_evolution`), not from one reductions table.
EVOLUTION = "evolution"


def run(figure: str, reductions: str | Path, out: str | Path, figures_params: dict[str, Any],
        title: str | None = None) -> list[Path]:
    """Draw ``figure`` from the reductions table into ``out`` (``.pdf``; a ``.png`` is written beside it).

    Args:
        figure: One of :data:`FIGURES`.
        reductions: Parquet written by the reduce step.
        out: PDF path.
        figures_params: The validated ``figures`` params section.
        title: Figure title (defaults to ``figures.title``, else "<model> (<arch>)").

    Returns:
        The written paths (PDF, PNG).
    """
    from . import plots

    values = read_values_table(reductions, "reductions table", "run the reduce step first")
    if title is None:
        title = figures_params.get("title") or f"{values['model'].iloc[0]} ({values['arch'].iloc[0]})"
    if figure in ("entropy", "magnitude"):
        fig = plots.figure_profile(values, figure, title)
    elif figure == "spectra":
        entropy = plots.profile(values, "entropy")["value"].to_numpy()
        layers = plots.choose_spectra_layers(entropy, figures_params["spectra_layers"])
        fig = plots.figure_spectra(values, layers, title)
    elif figure == "spectra_all":
        fig = plots.figure_spectra_grid(values, title)
    else:
        raise UserError(f"unknown figure '{figure}'; choose one of {', '.join(FIGURES)}")
    return plots.save_figure(fig, out, dpi=figures_params["dpi"])


def parse_labels(text: str | None) -> dict[str, str] | None:
    """``--labels-json``: a JSON object mapping configuration name -> panel title (its order = panel order)."""
    if text is None:
        return None
    try:
        labels = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"--labels-json is not valid JSON ({exc.msg}); quote it as one argument, e.g. "
                        "'{\"softkd\": \"SoftKD\"}'") from None
    if not isinstance(labels, dict) or not labels or not all(isinstance(v, str) for v in labels.values()):
        raise UserError("--labels-json must be a non-empty JSON object of configuration name -> panel title, e.g. "
                        "'{\"softkd\": \"SoftKD\"}'")
    return labels


def run_evolution(evolution: Sequence[str | Path], reductions: str | Path | None, out: str | Path,
                  figures_params: dict[str, Any], labels: dict[str, str] | None = None,
                  title: str | None = None) -> list[Path]:
    """Draw Fig. 4 into ``out`` (``.pdf``; a ``.png`` is written beside it).

    Args:
        evolution: Parquet tables of the evolution step, any number of runs (seeds of one configuration
            are averaged).
        reductions: The teacher's reductions table (dashed reference line), or ``None``.
        out: PDF path.
        figures_params: The validated ``figures`` params section (``dpi``; ``title`` is the teacher
            figures' and is not used here).
        labels: Configuration name -> panel title, in panel order (default: every configuration, by name).
        title: Figure title (default none).

    Returns:
        The written paths (PDF, PNG).
    """
    from . import plots

    if not evolution:
        raise UserError("figure evolution needs the evolution tables; pass --evolution "
                        "results/evolution/<run_id>.parquet ...")
    values = pd.concat([read_values_table(p, "evolution table", "pass the evolution step's --out files (run the "
                                          "evolution step for this run first)", extra=EVOLUTION_COLUMNS)
                        for p in evolution], ignore_index=True)
    teacher = None
    if reductions is not None:
        teacher = read_values_table(reductions, "reductions table", "run the reduce step first")
    fig = plots.figure_evolution(values, teacher, labels, title)
    return plots.save_figure(fig, out, dpi=figures_params["dpi"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--figure", required=True, choices=(*FIGURES, EVOLUTION))
    parser.add_argument("--reductions", default=None,
                        help="reductions Parquet from the reduce step (required; for evolution: the teacher's, "
                             "optional)")
    parser.add_argument("--evolution", nargs="+", default=None, metavar="PARQUET",
                        help="for --figure evolution: the evolution step's tables (one per run)")
    parser.add_argument("--labels-json", default=None, metavar="JSON",
                        help="for --figure evolution: {configuration: panel title}, in panel order")
    parser.add_argument("--out", required=True, help="output PDF path (a PNG is written beside it)")
    parser.add_argument("--title", default=None, help="figure title (default: figures.title; none for evolution)")


def main(args: argparse.Namespace, params: dict[str, Any]) -> None:
    if args.figure == EVOLUTION:
        written = run_evolution(args.evolution or [], args.reductions, args.out, params["figures"],
                                parse_labels(args.labels_json), args.title)
    else:
        if args.reductions is None:
            raise UserError(f"figure {args.figure} needs --reductions results/reductions/<model>.parquet")
        written = run(args.figure, args.reductions, args.out, params["figures"], args.title)
    for path in written:
        print(path)
