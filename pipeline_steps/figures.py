"""Draw one paper figure (PDF + PNG) from a reductions table.

Figures: ``entropy`` (Fig. 1), ``magnitude`` (Fig. 2), ``spectra`` (Fig. 3, six layers) and
``spectra_all`` (every layer's spectrum).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import UserError

FIGURES = ("entropy", "magnitude", "spectra", "spectra_all")


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

    path = Path(reductions)
    if not path.is_file():
        raise UserError(f"reductions table not found: {path}; run the reduce step first")
    values = pd.read_parquet(path)
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--figure", required=True, choices=FIGURES)
    parser.add_argument("--reductions", required=True, help="reductions Parquet from the reduce step")
    parser.add_argument("--out", required=True, help="output PDF path (a PNG is written beside it)")
    parser.add_argument("--title", default=None, help="figure title (default: figures.title)")


def main(args: argparse.Namespace, params: dict[str, Any]) -> None:
    for path in run(args.figure, args.reductions, args.out, params["figures"], args.title):
        print(path)
