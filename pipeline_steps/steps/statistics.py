"""Every per-layer statistic beyond entropy of one activations file, and the shape reading of its profiles.

Usage::

    python -m pipeline_steps statistics --params params.yaml --activations results/activations/teacher.npz \\
        --out results/statistics/teacher.parquet --summary results/statistics/teacher_summary.parquet

``--out`` is :func:`~pipeline_steps.analysis.layer_statistics.layer_statistics`'s long table (docs/artifacts.md
section 4b: bootstrap intervals of entropy and magnitude, entropy with per-layer range and without
massive-activation tokens, effective rank, participation ratio, per-image SVD ranks, PCA dimension, SEP
bandwidth, spectral indices, massive activations; CKA rows with ``--reference``); ``--summary`` the shape
reading of each profile (:func:`~pipeline_steps.analysis.layer_statistics.statistics_summary`). Both are written
together or not at all. The settings are ``analysis`` and ``analysis.statistics``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping

from pipeline_steps.analysis.layer_statistics import layer_statistics, statistics_settings, statistics_summary


def run(activations: str | Path, out: str | Path, summary_out: str | Path, *, analysis: Mapping[str, Any],
        reference: str | Path | None = None, model_label: str = "teacher", progress: bool = True,
        ) -> tuple["pd.DataFrame", "pd.DataFrame"]:  # noqa: F821
    """Compute the statistics table of ``activations`` and its profile summary; write both, or neither.

    Args:
        activations: Written by the extract step.
        out: Statistics table (Parquet).
        summary_out: Shape readings (Parquet).
        analysis: The validated ``analysis`` params section.
        reference: Another activations file on the same images, for CKA rows.
        model_label: Value of the ``model`` and ``run_id`` columns.
        progress: Progress bars over layers (stderr).
    """
    from pipeline_steps.artifacts import atomic_outputs

    # Opened first, so an output that cannot be written stops the step before the work.
    with atomic_outputs(out, summary_out) as (table_tmp, summary_tmp):
        table = layer_statistics(activations, reference=reference, model_label=model_label, progress=progress,
                                 **statistics_settings(analysis))
        summary = statistics_summary(table, analysis["shape_tolerance"])
        table.to_parquet(table_tmp, index=False)
        summary.to_parquet(summary_tmp, index=False)
    return table, summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--activations", required=True, help="activations NPZ from the extract step")
    parser.add_argument("--reference", default=None, metavar="NPZ",
                        help="activations of another model on the same images, for CKA rows (default none)")
    parser.add_argument("--out", required=True, help="statistics table (Parquet)")
    parser.add_argument("--summary", required=True, help="shape reading of each profile (Parquet)")
    parser.add_argument("--model-label", default="teacher", help="value of the model column")


def main(args: argparse.Namespace, params: dict[str, Any]) -> None:
    table, summary = run(args.activations, args.out, args.summary, analysis=params["analysis"],
                         reference=args.reference, model_label=args.model_label)
    readings = "; ".join(f"{r.metric}: {r.shape}, min at {int(r.argmin_layer)}" for r in summary.itertuples())
    print(f"{len(table)} rows -> {args.out} ({readings})")
