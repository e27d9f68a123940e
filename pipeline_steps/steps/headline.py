"""The run's headline numbers in one small Markdown file (results/headline.md), written by the pipeline.

What a README, a paper draft or a lab notebook quotes: the teacher's top-1 and profile shapes, Table 1's rows,
each configuration's paired (same-seed) difference to SoftKD with its interval, and the shape of every student's
final and best entropy profile, the teacher's profiles beyond entropy (robustness of the entropy reading, ranks,
massive activations), the shape of the teacher's entropy over its own training, and each configuration's CKA to
the teacher, each read from the artifact that defines it (the teacher's log, the reduce, statistics and evolution
tables, Table 1's CSV, the runs' logs), plus what the training runs computed with
(library versions, CPU model and vector ISA, threads: bitwise reproducibility holds only for the same settings). The
file holds no timestamps or paths, so a repeated run on the same settings writes the same bytes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from pipeline_steps.analysis.checkpoints import BEST_CHECKPOINT
from pipeline_steps.artifacts import read_json, read_parquet, write_text
from pipeline_steps.environment import summarise
from pipeline_steps.errors import UserError


def _read_parquet(path: str | Path, what: str, columns: Sequence[str]) -> pd.DataFrame:
    df = read_parquet(path, what, "re-run the step that writes it")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise UserError(f"{what} {path} lacks column(s) {', '.join(missing)}; re-run the step that writes it")
    return df


def _profile_line(row: pd.Series, unit: str, digits: int) -> str:
    """``increasing (tolerance 0.1 on a linear scale): layer 1 3.944 -> last 4.665 bits, minimum 3.944 at layer 1,
    drop 0.000, rise 0.721``."""
    f = f"{{:.{digits}f}}"
    return (f"{row['shape']} (tolerance {row['shape_tolerance']:g} on a {row['shape_scale']} scale): "
            f"layer 1 {f.format(row['first'])} -> last {f.format(row['last'])}{' ' + unit if unit else ''}, minimum "
            f"{f.format(row['min'])} at layer {int(row['argmin_layer'])}, drop {f.format(row['drop'])}, "
            f"rise {f.format(row['rise'])}")


def _environment_lines(environments: Sequence[str | Path]) -> list[str]:
    """One line per distinct setting the training attempts used, with the runs that used it."""
    used: dict[str, list[str]] = {}
    for path in environments:
        record = read_json(path, "environment record", "re-run the training step that writes it")
        for attempt in record.get("attempts", []):
            runs = used.setdefault(summarise(attempt), [])
            if record["run_id"] not in runs:
                runs.append(record["run_id"])
    lines = []
    for setting, runs in used.items():
        shown = ", ".join(runs) if len(runs) <= 3 else f"{len(runs)} runs"
        lines.append(f"- {setting} ({shown})")
    return lines


#: The teacher's profiles beyond entropy that the headline reads, with their unit and digits.
_STATISTICS_PROFILES = (("entropy_per_layer_range", "bits", 3), ("entropy_without_massive", "bits", 3),
                        ("effective_rank", "", 2), ("participation_ratio", "", 2))


def _statistics_lines(summary_path: str | Path, table_path: str | Path | None,
                      thresholds: tuple[float, float] | None) -> list[str]:
    """The teacher's robustness readings and massive activations."""
    from pipeline_steps.analysis.layer_statistics import read_statistics_table

    summary = _read_parquet(summary_path, "teacher statistics summary", ("metric", "shape", "argmin_layer", "first"))
    lines = ["## Teacher: beyond entropy", "",
             "The entropy profile read again with each layer's own histogram range and without the tokens that",
             "carry a massive activation (docs/method.md section 9), and the rank profiles:", ""]
    for metric, unit, digits in _STATISTICS_PROFILES:
        rows = summary[summary["metric"] == metric]
        lines.append(f"- {metric}: " + (_profile_line(rows.iloc[0], unit, digits) if len(rows)
                                        else "undefined (a layer keeps no token)"))
    if table_path is not None:
        table = read_statistics_table(table_path, "teacher statistics", "re-run the statistics step")
        value = table.set_index(["metric", "layer"])["value"]
        count, share = value["massive_count"], value["massive_token_share"]
        ratio = value["massive_max_ratio"]
        top = int(ratio.idxmax())
        rule = (f"|A| > {thresholds[1]:g} and > {thresholds[0]:g} x the image's median |A|" if thresholds
                else "analysis.statistics' thresholds")
        lines.append(f"- massive activations ({rule}): "
                     f"{int(count.sum())} values in all layers, at most {100 * share.max():.2f}% of a layer's tokens; "
                     f"largest ratio to the image's median |A|: {ratio.max():.1f} at layer {top}")
    lines.append("")
    return lines


def _teacher_evolution_lines(path: str | Path) -> list[str]:
    """The shape of the teacher's entropy profile at every checkpoint of its own training."""
    ev = _read_parquet(path, "teacher evolution summary", ("checkpoint", "epoch", "metric", "shape"))
    ev = ev[(ev["metric"] == "entropy") & (ev["checkpoint"] != BEST_CHECKPOINT)].sort_values("epoch")
    tol = ev["shape_tolerance"].iloc[0]
    lines = ["## Teacher: entropy profile over its own training (bits)", "",
             f"Is the U-shape learned? A U needs both drop and rise above the tolerance ({tol:g} bits).", "",
             "| epoch | shape | layer 1 | last layer | minimum at layer | drop | rise |", "|--:|---|--:|--:|--:|--:|--:|"]
    lines += [f"| {int(r['epoch'])} | {r['shape']} | {r['first']:.3f} | {r['last']:.3f} | {int(r['argmin_layer'])} "
              f"| {r['drop']:.3f} | {r['rise']:.3f} |" for _, r in ev.iterrows()]
    return lines + [""]


def _cka_lines(paths: Sequence[str | Path]) -> list[str]:
    """Per configuration (seeds averaged), at the best checkpoint: the teacher layer most similar to the student's
    first and last layer, and the CKA of the two last layers."""
    from pipeline_steps.analysis.layer_statistics import read_statistics_table
    from pipeline_steps.config import run_name

    tables = [read_statistics_table(p, "evolution statistics", "re-run the evolution step") for p in paths]
    cka = pd.concat([t[(t["metric"] == "cka") & (t["checkpoint"] == BEST_CHECKPOINT)] for t in tables])
    if cka.empty or cka["value"].isna().all():
        return []
    cka = cka.assign(configuration=cka["run_id"].map(run_name))
    mean = cka.groupby(["configuration", "teacher_layer", "layer"])["value"].mean()
    lines = ["## Students: linear CKA to the teacher at the best checkpoint (seeds averaged)", "",
             "| configuration | seeds | student layer 1: closest teacher layer (CKA) | last layer: closest teacher "
             "layer (CKA) | CKA(last, last) |", "|---|--:|---|---|--:|"]
    for configuration in sorted(cka["configuration"].unique()):
        m = mean[configuration].unstack("layer")  # [teacher layer, student layer]
        first, last = m.columns.min(), m.columns.max()
        seeds = cka[cka["configuration"] == configuration]["run_id"].nunique()
        cells = [f"{int(m[c].idxmax())} ({m[c].max():.3f})" for c in (first, last)]
        lines.append(f"| {configuration} | {seeds} | {cells[0]} | {cells[1]} | {m.loc[m.index.max(), last]:.3f} |")
    return lines + [""]


def headline(*, teacher_summary: str | Path, table1_csv: str | Path | None = None,
             teacher_log: str | Path | None = None, runs: Sequence["RunSpec"] = (),  # noqa: F821
             evolution_summaries: Sequence[str | Path] = (), environments: Sequence[str | Path] = (),
             teacher_statistics_summary: str | Path | None = None, teacher_statistics: str | Path | None = None,
             teacher_evolution: str | Path | None = None, evolution_statistics: Sequence[str | Path] = (),
             massive_thresholds: tuple[float, float] | None = None) -> str:
    """The headline Markdown of one pipeline run.

    Args:
        teacher_summary: The reduce step's summary table (teacher profile shapes).
        table1_csv: Table 1 (CSV), when the run trained students.
        teacher_log: The teacher's training log, when the pipeline trained it.
        runs: The grid's runs (:func:`~pipeline_steps.reporting.tables.grid_runs`), for the paired differences
            to SoftKD.
        evolution_summaries: The evolution step's summary tables (one per student run).
        environments: ``environment.json`` of the teacher and student runs.
        teacher_statistics_summary: The statistics step's summary (the teacher's profiles beyond entropy).
        teacher_statistics: The statistics step's table (massive activations).
        teacher_evolution: The teacher's own evolution summary, when the pipeline trained it.
        evolution_statistics: The evolution step's statistics tables (CKA to the teacher).
        massive_thresholds: ``(massive_min_ratio, massive_min_magnitude)``, for the text.

    Returns:
        The Markdown text (deterministic: numbers at fixed precision, rows in a fixed order).
    """
    from pipeline_steps.reporting.tables import paired_differences, read_run_log, read_table1, run_summary

    lines = ["# Headline numbers", "",
             "Written by the pipeline (`python -m pipeline_steps headline`) from its own artifacts; README quotes",
             "this file. A rerun with the same settings writes the same bytes.", ""]
    if environments:
        lines += ["Training computed with (bitwise reproducible only with the same versions, CPU model, vector",
                  "ISA and threads; see BENCHMARKS.md, \"CPU determinism\"):", *_environment_lines(environments), ""]

    lines += ["## Teacher", ""]
    if teacher_log is not None:
        s = run_summary(read_run_log(teacher_log))
        lines.append(f"- test top-1: {s['final_top1']:.2f}% after {s['n_epochs']} epochs (best {s['best_top1']:.2f}% "
                     f"at epoch {s['best_epoch'] + 1})")
    summary = _read_parquet(teacher_summary, "teacher summary", ("metric", "shape", "argmin_layer", "first"))
    for metric, unit, digits in (("entropy", "bits", 3), ("magnitude", "", 3)):
        rows = summary[summary["metric"] == metric]
        if len(rows):
            lines.append(f"- {metric}: {_profile_line(rows.iloc[0], unit, digits)}")
    lines.append("")
    if teacher_statistics_summary is not None:
        lines += _statistics_lines(teacher_statistics_summary, teacher_statistics, massive_thresholds)
    if teacher_evolution is not None:
        lines += _teacher_evolution_lines(teacher_evolution)

    if table1_csv is not None:
        df = read_table1(table1_csv)
        lines += ["## Students: Table 1 (best test top-1 over seeds, %)", "",
                  "| source | configuration | seeds | mean | std | 95% interval | delta vs SoftKD |",
                  "|---|---|--:|--:|--:|--:|--:|"]
        for _, r in df.iterrows():
            name = r["label"] if r["layers"] == "-" or r["layers"] in r["label"] else f"{r['label']} {r['layers']}"
            interval = ("-" if pd.isna(r["best_top1_ci_low"])
                        else f"[{r['best_top1_ci_low']:.2f}, {r['best_top1_ci_high']:.2f}]")
            std = "-" if pd.isna(r["best_top1_std"]) else f"{r['best_top1_std']:.2f}"
            delta = "-" if pd.isna(r["delta_vs_softkd"]) else f"{r['delta_vs_softkd']:+.2f}"
            lines.append(f"| {r['source']} | {name} | {r['n_seeds']} | {r['best_top1']:.2f} | {std} | {interval} "
                         f"| {delta} |")
        lines.append("")

    if runs:
        paired = paired_differences(runs)
        lines += ["## Students: paired difference to SoftKD (same seed, best test top-1, points)", "",
                  "Runs with the same seed share initialisation and data order; the interval is a 95% Student-t",
                  "interval over the seeds' differences.", "",
                  "| configuration | pairs | mean difference | 95% interval | interval contains 0 |",
                  "|---|--:|--:|--:|---|"]
        for _, r in paired.iterrows():
            name = r["label"] if r["layers"] == "-" or r["layers"] in r["label"] else f"{r['label']} {r['layers']}"
            single = pd.isna(r["diff_ci_low"])
            interval = "-" if single else f"[{r['diff_ci_low']:+.2f}, {r['diff_ci_high']:+.2f}]"
            zero = "- (one seed)" if single else ("yes" if r["ci_contains_zero"] else "no")
            lines.append(f"| {name} | {r['n_pairs']} | {r['diff_mean']:+.2f} | {interval} | {zero} |")
        lines.append("")

    if evolution_summaries:
        lines += ["## Students: entropy profile of the final and the best checkpoint (bits)", "",
                  "| run | checkpoint | epoch | shape | layer 1 | last layer | minimum at layer | drop | rise |",
                  "|---|---|--:|---|--:|--:|--:|--:|--:|"]
        for path in sorted(map(str, evolution_summaries)):
            ev = _read_parquet(path, "evolution summary", ("run_id", "checkpoint", "epoch", "metric", "shape"))
            ev = ev[ev["metric"] == "entropy"]
            epochs = ev[ev["checkpoint"] != BEST_CHECKPOINT]
            shown = [("final", epochs.loc[epochs["epoch"].idxmax()])]
            shown += [("best", row) for _, row in ev[ev["checkpoint"] == BEST_CHECKPOINT].iterrows()]
            for name, r in shown:
                lines.append(f"| {r['run_id']} | {name} | {int(r['epoch'])} | {r['shape']} | {r['first']:.3f} "
                             f"| {r['last']:.3f} | {int(r['argmin_layer'])} | {r['drop']:.3f} | {r['rise']:.3f} |")
        lines.append("")
    if evolution_statistics:
        lines += _cka_lines(sorted(map(str, evolution_statistics)))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher-summary", required=True, metavar="PARQUET",
                        help="the reduce step's summary table (results/reductions/teacher_summary.parquet)")
    parser.add_argument("--teacher-log", metavar="TXT", help="the teacher's training log, if the pipeline trained it")
    parser.add_argument("--table1", metavar="CSV", help="Table 1 (results/tables/table1.csv)")
    parser.add_argument("--runs-dir", metavar="DIR",
                        help="the grid's run directories (results/runs), for the paired differences to SoftKD")
    parser.add_argument("--evolution", nargs="*", default=[], metavar="PARQUET",
                        help="evolution summary tables (results/evolution/<run>_summary.parquet)")
    parser.add_argument("--environments", nargs="*", default=[], metavar="JSON",
                        help="environment.json of the teacher and student runs")
    parser.add_argument("--teacher-statistics-summary", metavar="PARQUET",
                        help="the statistics step's summary (results/statistics/teacher_summary.parquet)")
    parser.add_argument("--teacher-statistics", metavar="PARQUET",
                        help="the statistics step's table (results/statistics/teacher.parquet)")
    parser.add_argument("--teacher-evolution", metavar="PARQUET",
                        help="the teacher's own evolution summary (results/teacher/evolution_summary.parquet)")
    parser.add_argument("--statistics", nargs="*", default=[], metavar="PARQUET",
                        help="the evolution step's statistics tables (results/evolution/<run>_statistics.parquet)")
    parser.add_argument("--out", required=True, metavar="MD", help="output Markdown (results/headline.md)")


def main(args: argparse.Namespace, params: dict[str, Any]) -> None:
    from pipeline_steps.reporting.tables import grid_runs

    runs = grid_runs(params, args.runs_dir) if args.runs_dir else []
    text = headline(teacher_summary=args.teacher_summary, table1_csv=args.table1, teacher_log=args.teacher_log,
                    runs=runs, evolution_summaries=args.evolution, environments=args.environments,
                    teacher_statistics_summary=args.teacher_statistics_summary,
                    teacher_statistics=args.teacher_statistics, teacher_evolution=args.teacher_evolution,
                    evolution_statistics=args.statistics,
                    massive_thresholds=(params["analysis"]["statistics"]["massive_min_ratio"],
                                        params["analysis"]["statistics"]["massive_min_magnitude"]))
    write_text(args.out, text)
    print(f"headline -> {args.out}")
