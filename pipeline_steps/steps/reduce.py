"""Reduce an activations NPZ to the entropy / spectrum / magnitude table and its profile summary (Parquet).

Usage::

    python -m pipeline_steps reduce --params params.yaml --activations results/activations/teacher.npz \\
        --out results/reductions/teacher.parquet --summary results/reductions/teacher_summary.parquet

The tables' columns: :mod:`pipeline_steps.analysis.reductions`. Both are written together or not at all.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipeline_steps.analysis.reductions import reduce_activations


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--activations", required=True, help="activations NPZ from the extract step")
    parser.add_argument("--out", required=True, help="values table (Parquet)")
    parser.add_argument("--summary", required=True, help="profile summary table (Parquet)")
    parser.add_argument("--model-label", default="teacher", help="value of the model column")
    parser.add_argument("--checkpoint", default="final", help="value of the checkpoint column")
    parser.add_argument("--epoch", type=int, default=None, help="value of the epoch column")


def run(activations: str | Path, out: str | Path, summary_out: str | Path, **settings: Any
        ) -> tuple["pd.DataFrame", "pd.DataFrame"]:  # noqa: F821
    """Reduce ``activations`` (:func:`reduce_activations`, which takes ``settings``) and write the values and
    summary tables, both or neither."""
    from pipeline_steps.artifacts import atomic_outputs

    # Opened first, so an output that cannot be written stops the step before the work.
    with atomic_outputs(out, summary_out) as (values_tmp, summary_tmp):
        values, summary = reduce_activations(activations, **settings)
        values.to_parquet(values_tmp, index=False)
        summary.to_parquet(summary_tmp, index=False)
    return values, summary


def main(args: argparse.Namespace, params: dict[str, Any]) -> None:
    analysis = params["analysis"]
    values, summary = run(args.activations, args.out, args.summary, bins=analysis["bins"],
                          range_policy=analysis["range_policy"], shape_tolerance=analysis["shape_tolerance"],
                          chunk_images=analysis["chunk_images"], model_label=args.model_label,
                          checkpoint=args.checkpoint, epoch=args.epoch)
    from pipeline_steps.models.layers import kind_of_layer_names

    entropy = summary.set_index("metric").loc["entropy"]
    word = "stage" if kind_of_layer_names(values["layer_name"].unique()) == "stage" else "layer"
    print(f"{len(values)} rows -> {args.out}; entropy minimum at {word} {entropy['argmin_layer']}, "
          f"drop {entropy['drop']:.3f}, rise {entropy['rise']:.3f}, shape: {entropy['shape']} "
          f"(tolerance {entropy['shape_tolerance']:g} bits)")
