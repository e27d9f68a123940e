"""Compute the teacher's logits and paired-block features once over the training set.

Usage::

    python -m pipeline_steps teacher-cache --params params.yaml \\
        [--teacher-weights results/teacher/model.safetensors] [--data results/data/synthetic.npz] \\
        --out results/teacher/cache.safetensors

The cache holds every teacher block any run of the grid pairs with; its format and the checks the distill
step makes before using it: :mod:`pipeline_steps.training.teacher_targets`.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Mapping, Sequence

from pipeline_steps.config import SYNTHETIC_PATH, DistillRun, distill_runs, teacher_spec


def run(out: str | os.PathLike, *, teacher: Mapping[str, Any], student: Mapping[str, Any], runs: Sequence[DistillRun],
        dataset: Mapping[str, Any], teacher_weights: str | os.PathLike | None = None,
        synthetic_path: str | os.PathLike = SYNTHETIC_PATH, device: str = "cpu", progress: bool = True) -> list[int]:
    """Write the cache of every teacher block some run of ``runs`` pairs with; returns those blocks.

    Args:
        out: The cache file (``.safetensors``).
        teacher: The teacher's model spec; ``teacher_weights`` is its weight file.
        student: The students' model spec (only its depth is read, to resolve the layer pairs).
        runs: The distillation grid.
        dataset: The ``dataset`` params section (the training split, evaluation transform).
        synthetic_path: The generated dataset, for ``dataset.kind: synthetic``.
        device: ``cuda`` or ``cpu``.
        progress: Progress bar.
    """
    from pipeline_steps.data.datasets import open_dataset
    from pipeline_steps.distillation.layer_pairs import grid_teacher_layers
    from pipeline_steps.models.build import create_model, model_depth
    from pipeline_steps.models.layers import num_blocks
    from pipeline_steps.training.teacher_targets import write_teacher_cache

    model = create_model(teacher, weights_path=teacher_weights)
    layers = grid_teacher_layers(runs, model_depth(student), num_blocks(model))
    train_set = open_dataset(dataset, "train", synthetic_path=synthetic_path, preprocessing="evaluation")
    write_teacher_cache(out, model, train_set, layers, device=device, progress=progress)
    return layers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher-weights", default=None, metavar="FILE", help="teacher weight file")
    parser.add_argument("--data", default=SYNTHETIC_PATH, help="generated dataset artifact (synthetic data)")
    parser.add_argument("--out", required=True, help="output .safetensors")


def main(args: argparse.Namespace, params: dict[str, Any]) -> None:
    import torch

    device = "cuda" if params["distill"]["train"]["device"] != "cpu" and torch.cuda.is_available() else "cpu"
    run(args.out, teacher=teacher_spec(params, args.teacher_weights), student=params["student"]["model"],
        runs=distill_runs(params), dataset=params["dataset"], teacher_weights=args.teacher_weights,
        synthetic_path=args.data, device=device)
