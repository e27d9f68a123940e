"""Write Table 1 (CSV, Markdown, LaTeX and a dvc-metrics JSON) from the grid's training logs and/or the
authors' published logs.

Usage::

    python -m pipeline_steps table1 --params params.yaml --runs-dir results/runs --out results/tables/table1
    python -m pipeline_steps table1 --published-logs reference/logs --out results/tables/table1_published

The table's columns and statistics: :mod:`pipeline_steps.reporting.tables`.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Sequence

from pipeline_steps.errors import UserError
from pipeline_steps.reporting.tables import RunSpec, grid_runs, published_table1_runs, table1, write_table1


def run(runs: Sequence[RunSpec], out: str | os.PathLike) -> "pd.DataFrame":  # noqa: F821
    """Tabulate ``runs`` (the grid's and/or the authors' published ones) and write STEM.csv/.md/.tex/.json."""
    if not runs:
        raise UserError("no runs to tabulate; pass --runs-dir results/runs (the config's grid) and/or "
                        "--published-logs DIR")
    df = table1(runs)
    write_table1(df, out, metrics=True)  # the metrics are computed before anything is committed
    return df


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-dir", default=None, metavar="DIR",
                        help="tabulate the config's distill grid from DIR/<run id>/log.txt (results/runs)")
    parser.add_argument("--published-logs", default=None, metavar="DIR",
                        help="also tabulate the authors' published logs found in DIR (reference/logs), as rows "
                             "of source \"authors' released\", never pooled with the grid's runs")
    parser.add_argument("--out", required=True, metavar="STEM",
                        help="output stem: writes STEM.csv, STEM.md, STEM.tex and STEM.json (dvc metrics)")


def main(args: argparse.Namespace, params: dict[str, Any]) -> None:
    runs = grid_runs(params, args.runs_dir) if args.runs_dir else []
    if args.published_logs:
        runs += published_table1_runs(args.published_logs)
    run(runs, args.out)
