"""Draw one figure (PDF + PNG) from a reductions table, evolution tables (Fig. 4) or statistics tables.

Figures: ``entropy`` (Fig. 1), ``magnitude`` (Fig. 2), ``spectra`` (Fig. 3, six layers) and
``spectra_all`` (every layer's spectrum), from ``--reductions``; ``evolution`` (Fig. 4: the students'
entropy at every checkpoint, one panel per configuration), from the evolution step's tables::

    python -m pipeline_steps figures --params params.yaml --figure evolution \
        --evolution results/evolution/softkd-s0.parquet results/evolution/spectralkd_f1-s0.parquet ... \
        --reductions results/reductions/teacher.parquet \
        --out results/figures/fig4_evolution.pdf

``--labels-json '{"softkd": "SoftKD", ...}'`` maps a configuration (run id without ``-s<seed>``) to its panel
title and sets the panel order (the workflow passes ``figures.evolution_panels``' entries,
:func:`pipeline_steps.config.evolution_panels`); without it, every configuration of the tables, by name. The
seeds of a configuration are averaged. ``--reductions`` (the teacher) is optional for Fig. 4.

``evolution_published`` draws the paper's own Fig. 4 from the authors' tables with the same function::

    python -m pipeline_steps figures --params params.yaml --figure evolution_published \
        --published-entropy reference/entropy --published-logs reference/logs \
        --out results/figures/paper_fig4_published.pdf

The statistics figures are drawn from statistics tables (docs/artifacts.md section 4b; the statistics step's
``--out`` for the teacher, the evolution step's ``--statistics`` for each run). ``cka`` (linear CKA of every
student layer to every teacher layer at the best checkpoint, one heatmap per configuration) and ``cka_match``
(each student layer's most similar teacher layer over the epochs) from the distillation runs' tables::

    python -m pipeline_steps figures --params params.yaml --figure cka \
        --statistics results/evolution/softkd-s0_statistics.parquet \
            results/evolution/spectralkd_f1-s0_statistics.parquet ... \
        --out results/figures/fig5_cka.pdf
    python -m pipeline_steps figures --params params.yaml --figure cka_match \
        --statistics results/evolution/softkd-s0_statistics.parquet ... --out results/figures/fig6_cka_match.pdf

``statistics`` (ranks, SEP bandwidth, low-frequency share, massive activations across relative depth: the
teacher, and each configuration's best checkpoint when ``--statistics`` is given)::

    python -m pipeline_steps figures --params params.yaml --figure statistics \
        --teacher-statistics results/statistics/teacher.parquet \
        [--statistics results/evolution/softkd-s0_statistics.parquet ...] --out results/figures/fig7_statistics.pdf

``robustness`` (the teacher's entropy with the global range, per-layer ranges and without massive-activation
tokens, each with its shape reading; ``--teacher-summary`` is the statistics step's ``--summary``, else the
readings are computed with ``analysis.shape_tolerance``)::

    python -m pipeline_steps figures --params params.yaml --figure robustness \
        --teacher-statistics results/statistics/teacher.parquet \
        [--teacher-summary results/statistics/teacher_summary.parquet] --out results/figures/fig8_robustness.pdf

``teacher_evolution`` (the teacher's entropy at every checkpoint of its own training and the shape reading
over the epochs), from the evolution step's statistics table of the teacher's run (``--run-dir results/teacher
--model-key teacher``)::

    python -m pipeline_steps figures --params params.yaml --figure teacher_evolution \
        --statistics results/teacher/evolution_statistics.parquet --out results/figures/fig9_teacher_evolution.pdf

``--labels-json`` sets the panels (cka, cka_match) or lines (statistics) as for Fig. 4; without it every
configuration, sorted. ``entropy`` and ``magnitude`` draw the teacher's bootstrap interval as a band when
``--teacher-statistics`` is given (without it they are as before).

Titles name the models as configured (:func:`pipeline_steps.models.describe_model`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from pipeline_steps.analysis.reductions import read_values_table
from pipeline_steps.errors import UserError

#: The evolution step's tables: a values table plus these columns (see :func:`read_values_table`).
EVOLUTION_COLUMNS = {"run_id": "str", "epoch": "int"}

FIGURES = ("entropy", "magnitude", "spectra", "spectra_all")
#: Drawn from the evolution step's tables (:func:`run_evolution`), not from one reductions table.
EVOLUTION = "evolution"
#: Drawn from statistics tables (:func:`run_statistics_figure`).
STATISTICS_FIGURES = ("cka", "cka_match", "statistics", "robustness", "teacher_evolution")
#: The paper's Fig. 4 from the authors' published tables (:func:`run_published_evolution`).
EVOLUTION_PUBLISHED = "evolution_published"
#: Title of the published Fig. 4: the setting of the authors' tables (reference/README.md).
PUBLISHED_TITLE = "The authors' published tables: DeiT-Tiny students of a CaiT-S24 teacher, ImageNet"


def model_title(label: str, spec: Mapping[str, Any] | None, arch: str) -> str:
    """``"<label>: ViT, 12 blocks, width 128, patch 8"`` from the configured model spec; ``"<label> (<arch>)"``
    when there is no spec or it is of another architecture than the table's (``arch``)."""
    from pipeline_steps.models.build import describe_model

    if spec is None or spec.get("arch") != arch:
        return f"{label} ({arch})"
    return f"{label}: {describe_model(spec)}"


def run(figure: str, reductions: str | Path, out: str | Path, figures_params: dict[str, Any],
        title: str | None = None, model_spec: Mapping[str, Any] | None = None,
        statistics: str | Path | None = None) -> list[Path]:
    """Draw ``figure`` from the reductions table into ``out`` (``.pdf``; a ``.png`` is written beside it).

    Args:
        figure: One of :data:`FIGURES`.
        reductions: Parquet written by the reduce step.
        out: PDF path.
        figures_params: The validated ``figures`` params section.
        title: Figure title (defaults to ``figures.title``, else :func:`model_title` of the table's model).
        model_spec: The analysed model's params spec (``teacher.model``), for the default title.
        statistics: The same model's statistics table (the statistics step's ``--out``): for ``entropy`` and
            ``magnitude``, its bootstrap interval drawn as a band; ``None`` (or another figure): not used.

    Returns:
        The written paths (PDF, PNG).
    """
    from pipeline_steps.reporting import plots

    values = read_values_table(reductions, "reductions table", "run the reduce step first")
    if title is None:
        title = figures_params.get("title") or model_title(str(values["model"].iloc[0]), model_spec,
                                                           str(values["arch"].iloc[0]))
    scale = figures_params.get("spectra_scale", "log")
    if figure in ("entropy", "magnitude"):
        band = _read_statistics(statistics, TEACHER_STATISTICS) if statistics is not None else None
        fig = plots.figure_profile(values, figure, title, band)
    elif figure == "spectra":
        entropy = plots.profile(values, "entropy")["value"].to_numpy()
        layers = plots.choose_spectra_layers(entropy, figures_params["spectra_layers"])
        fig = plots.figure_spectra(values, layers, title, scale)
    elif figure == "spectra_all":
        fig = plots.figure_spectra_grid(values, title, scale)
    else:
        raise UserError(f"unknown figure '{figure}'; choose one of {', '.join(FIGURES)}")
    return plots.save_figure(fig, out, dpi=figures_params["dpi"])


#: What a teacher statistics table is and how to get one, for messages.
TEACHER_STATISTICS = ("teacher statistics table", "run the statistics step first")
#: The same for a distillation run's (or the teacher training's) statistics table.
RUN_STATISTICS = ("statistics table", "pass the evolution step's --statistics files (run the evolution step for "
                  "this run first)")
#: The columns a shape-reading summary must have (:func:`~pipeline_steps.analysis.layer_statistics.statistics_summary`).
SUMMARY_COLUMNS = ("metric", "shape", "argmin_layer", "drop", "rise")


def _read_statistics(path: str | Path, what: tuple[str, str]) -> pd.DataFrame:
    from pipeline_steps.analysis.layer_statistics import read_statistics_table

    return read_statistics_table(path, *what)


def run_statistics_figure(figure: str, out: str | Path, figures_params: dict[str, Any],
                          statistics: Sequence[str | Path] = (), teacher_statistics: str | Path | None = None,
                          teacher_summary: str | Path | None = None, labels: dict[str, str] | None = None,
                          title: str | None = None, shape_tolerance: float = 0.1) -> list[Path]:
    """Draw one of :data:`STATISTICS_FIGURES` into ``out`` (``.pdf``; a ``.png`` is written beside it).

    Args:
        figure: ``cka``, ``cka_match`` (from ``statistics``), ``statistics`` (``teacher_statistics``, and
            ``statistics`` for the students' lines), ``robustness`` (``teacher_statistics``, ``teacher_summary``)
            or ``teacher_evolution`` (``statistics``: the teacher training's table).
        out: PDF path.
        figures_params: The validated ``figures`` params section (``dpi``; ``title``, the teacher figures'
            title, for ``statistics`` and ``robustness``).
        statistics: Statistics tables of the distillation runs (the evolution step's ``--statistics``, any
            number; seeds of a configuration are averaged), or of the teacher's training.
        teacher_statistics: The teacher's statistics table (the statistics step's ``--out``).
        teacher_summary: Its shape readings (the statistics step's ``--summary``); ``None``: computed.
        labels: Configuration -> panel title (cka, cka_match) or line label (statistics), in order.
        title: Figure title (default: ``figures.title`` for the teacher's figures, else none).
        shape_tolerance: ``analysis.shape_tolerance``, for readings computed here.

    Returns:
        The written paths (PDF, PNG).

    Raises:
        UserError: An unknown figure, a missing input (the message names the flag), or a bad table.
    """
    from pipeline_steps.artifacts import read_parquet
    from pipeline_steps.reporting import plots

    if figure not in STATISTICS_FIGURES:
        raise UserError(f"unknown figure '{figure}'; choose one of {', '.join(STATISTICS_FIGURES)}")
    if figure in ("cka", "cka_match") and not statistics:
        raise UserError(f"figure {figure} needs the distillation runs' statistics tables; pass --statistics "
                        "results/evolution/<run_id>_statistics.parquet ...")
    if figure == "teacher_evolution" and not statistics:
        raise UserError("figure teacher_evolution needs the teacher training's statistics table; pass --statistics "
                        "<the evolution step's --statistics of results/teacher>")
    if figure in ("statistics", "robustness") and teacher_statistics is None:
        raise UserError(f"figure {figure} needs the teacher's statistics table; pass --teacher-statistics "
                        "results/statistics/teacher.parquet")
    runs = (pd.concat([_read_statistics(p, RUN_STATISTICS) for p in statistics], ignore_index=True)
            if statistics else None)
    teacher = _read_statistics(teacher_statistics, TEACHER_STATISTICS) if teacher_statistics is not None else None
    if title is None and figure in ("statistics", "robustness"):
        title = figures_params.get("title")
    if figure == "cka":
        fig = plots.figure_cka(runs, labels, title)
    elif figure == "cka_match":
        fig = plots.figure_cka_match(runs, labels, title)
    elif figure == "statistics":
        fig = plots.figure_statistics(teacher, runs, labels, title)
    elif figure == "robustness":
        summary = None
        if teacher_summary is not None:
            fix = "pass the statistics step's --summary file"
            summary = read_parquet(teacher_summary, "teacher summary", fix)
            missing = [c for c in SUMMARY_COLUMNS if c not in summary.columns]
            if missing:
                raise UserError(f"teacher summary {teacher_summary} lacks column(s) {', '.join(missing)} (not a "
                                f"statistics summary of this pipeline); {fix}")
        fig = plots.figure_robustness(teacher, summary, shape_tolerance, title)
    else:
        fig = plots.figure_teacher_evolution(runs, title, shape_tolerance)
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
                  title: str | None = None,
                  models: tuple[Mapping[str, Any], Mapping[str, Any]] | None = None) -> list[Path]:
    """Draw Fig. 4 into ``out`` (``.pdf``; a ``.png`` is written beside it).

    Args:
        evolution: Parquet tables of the evolution step, any number of runs (seeds of one configuration
            are averaged).
        reductions: The teacher's reductions table (dashed reference line), or ``None``.
        out: PDF path.
        figures_params: The validated ``figures`` params section (``dpi``; ``title`` is the teacher
            figures' and is not used here).
        labels: Configuration name -> panel title, in panel order (default: every configuration, by name).
        title: Figure title (default: :func:`students_title` of ``models``, else none).
        models: The configured ``(student.model, teacher.model)`` specs, for the default title.

    Returns:
        The written paths (PDF, PNG).
    """
    from pipeline_steps.reporting import plots

    if not evolution:
        raise UserError("figure evolution needs the evolution tables; pass --evolution "
                        "results/evolution/<run_id>.parquet ...")
    values = pd.concat([read_values_table(p, "evolution table", "pass the evolution step's --out files (run the "
                                          "evolution step for this run first)", extra=EVOLUTION_COLUMNS)
                        for p in evolution], ignore_index=True)
    teacher = None
    if reductions is not None:
        teacher = read_values_table(reductions, "reductions table", "run the reduce step first")
    if title is None and models is not None and "arch" in values.columns:
        title = students_title(*models, values["arch"].unique())
    fig = plots.figure_evolution(values, teacher, labels, title)
    return plots.save_figure(fig, out, dpi=figures_params["dpi"])


def students_title(student: Mapping[str, Any], teacher: Mapping[str, Any], archs: Sequence[str]) -> str | None:
    """Fig. 4's title: the students and the teacher as configured (:func:`pipeline_steps.models.describe_model`);
    ``None`` when the tables' architectures (``archs``) are not the configured student's."""
    from pipeline_steps.models.build import describe_model

    if set(archs) != {student["arch"]}:
        return None
    return f"Students: {describe_model(student)}; teacher: {describe_model(teacher)}"


def run_published_evolution(entropy_dir: str | Path, logs_dir: str | Path | None, out: str | Path,
                            figures_params: dict[str, Any]) -> list[Path]:
    """The paper's Fig. 4 from the authors' tables, drawn by :func:`pipeline_steps.reporting.plots.figure_evolution`
    (the same function as our Fig. 4), into ``out`` (``.pdf`` and ``.png``).

    Args:
        entropy_dir: ``reference/entropy`` (:data:`pipeline_steps.analysis.published.PUBLISHED_ENTROPY`).
        logs_dir: ``reference/logs``, for the epoch of each ``model_best``; ``None``: not given.
        out: PDF path.
        figures_params: The validated ``figures`` params section (``dpi``).
    """
    from pipeline_steps.analysis.published import read_published
    from pipeline_steps.reporting import plots

    values, labels = read_published(entropy_dir, logs_dir)
    fig = plots.figure_evolution(values, None, labels, PUBLISHED_TITLE)
    return plots.save_figure(fig, out, dpi=figures_params["dpi"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--figure", required=True, choices=(*FIGURES, EVOLUTION, EVOLUTION_PUBLISHED,
                                                            *STATISTICS_FIGURES))
    parser.add_argument("--reductions", default=None,
                        help="reductions Parquet from the reduce step (required; for evolution: the teacher's, "
                             "optional)")
    parser.add_argument("--evolution", nargs="+", default=None, metavar="PARQUET",
                        help="for --figure evolution: the evolution step's tables (one per run)")
    parser.add_argument("--labels-json", default=None, metavar="JSON",
                        help="for --figure evolution, cka, cka_match, statistics: {configuration: panel title}, in "
                             "panel order (default: every configuration in the tables)")
    parser.add_argument("--statistics", nargs="+", default=None, metavar="PARQUET",
                        help="statistics tables: for cka, cka_match, statistics the distillation runs' (the "
                             "evolution step's --statistics, one per run); for teacher_evolution the teacher "
                             "training's")
    parser.add_argument("--teacher-statistics", default=None, metavar="PARQUET",
                        help="the teacher's statistics table (the statistics step's --out): a bootstrap band for "
                             "entropy and magnitude, the teacher line of statistics, the input of robustness")
    parser.add_argument("--teacher-summary", default=None, metavar="PARQUET",
                        help="for --figure robustness: the teacher's shape readings (the statistics step's "
                             "--summary; default: computed with analysis.shape_tolerance)")
    parser.add_argument("--published-entropy", default=None, metavar="DIR",
                        help="for --figure evolution_published: the authors' entropy tables (reference/entropy)")
    parser.add_argument("--published-logs", default=None, metavar="DIR",
                        help="for --figure evolution_published: the authors' logs (reference/logs), for the "
                             "best checkpoints' epochs")
    parser.add_argument("--out", required=True, help="output PDF path (a PNG is written beside it)")
    parser.add_argument("--title", default=None,
                        help="figure title (default: figures.title, else the model as configured; for evolution: "
                             "the configured student and teacher)")


def main(args: argparse.Namespace, params: dict[str, Any]) -> None:
    if args.figure == EVOLUTION:
        written = run_evolution(args.evolution or [], args.reductions, args.out, params["figures"],
                                parse_labels(args.labels_json), args.title,
                                (params["student"]["model"], params["teacher"]["model"]))
    elif args.figure in STATISTICS_FIGURES:
        written = run_statistics_figure(args.figure, args.out, params["figures"], args.statistics or (),
                                        args.teacher_statistics, args.teacher_summary, parse_labels(args.labels_json),
                                        args.title, params["analysis"]["shape_tolerance"])
    elif args.figure == EVOLUTION_PUBLISHED:
        if args.published_entropy is None:
            raise UserError("figure evolution_published needs --published-entropy reference/entropy")
        written = run_published_evolution(args.published_entropy, args.published_logs, args.out, params["figures"])
    else:
        if args.reductions is None:
            raise UserError(f"figure {args.figure} needs --reductions results/reductions/<model>.parquet")
        written = run(args.figure, args.reductions, args.out, params["figures"], args.title,
                      params["teacher"]["model"], args.teacher_statistics)
    for path in written:
        print(path)
