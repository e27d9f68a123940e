"""Compute the teacher's logits and paired-block features once over the training set (torchdistill style).

Usage::

    python -m pipeline_steps teacher-cache --params params.yaml \\
        [--teacher-weights results/teacher/model.safetensors] [--data results/data/synthetic.npz] \\
        --out results/teacher/cache.safetensors

Holds ``logits`` ``[N, K]`` and ``features.<i>`` ``[N, C, H, W]`` (float32, training-set order) for every
teacher block any run of the grid pairs with, and in its metadata what it was made from (the training set's
identity and size, the teacher's weights hash, the blocks; :func:`cache_metadata`), which the distill step
checks before using it. Valid only for a recipe without augmentation, where the
student sees the same images every epoch; the distill step then reads rows instead of running the teacher.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from .config import SYNTHETIC_PATH


def run(params: dict, out: str | os.PathLike, *, teacher_weights: str | os.PathLike | None = None,
        synthetic_path: str | os.PathLike = SYNTHETIC_PATH, progress: bool = True) -> list[int]:
    """Write the cache; returns the teacher blocks it holds."""
    import torch

    from ._io import write_safetensors
    from .data import open_dataset
    from .distill import build_student, teacher_layers_of_grid, teacher_spec
    from .models import create_model, num_blocks
    from .train import compute_teacher_cache

    teacher = create_model(teacher_spec(params, teacher_weights), weights_path=teacher_weights)
    student = build_student(params, 0)
    layers = teacher_layers_of_grid(params, num_blocks(student), num_blocks(teacher))
    train_set = open_dataset(params, "train", synthetic_path=synthetic_path, preprocessing="evaluation")
    device = "cuda" if params["distill"]["train"]["device"] != "cpu" and torch.cuda.is_available() else "cpu"
    cache = compute_teacher_cache(teacher, train_set, layers, device=device, progress=progress)
    write_safetensors(out, cache, cache_metadata(train_set, teacher, layers))
    return layers


#: ``format`` in the cache's metadata; a file without it (or another value) is not a cache of this version.
CACHE_FORMAT = "distillation-dynamics/teacher-cache/2"


def cache_metadata(train_set: Any, teacher: Any, layers: list[int]) -> dict[str, str]:
    """What a teacher cache was made from, stored in its safetensors metadata and compared by the distill
    step: the training set's identity and size, the teacher's weights hash, and the cached blocks.

    Args:
        train_set: The training split (a dataset of :mod:`pipeline_steps.data`, with ``identity()``).
        teacher: The teacher model.
        layers: The teacher blocks whose outputs are cached.
    """
    from .models import weights_hash

    return {"format": CACHE_FORMAT, "layers": json.dumps(sorted(layers)), "n_images": str(len(train_set)),
            "dataset_identity": train_set.identity(), "teacher_weights_hash": weights_hash(teacher)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher-weights", default=None, metavar="FILE", help="teacher weight file")
    parser.add_argument("--data", default=SYNTHETIC_PATH, help="generated dataset artifact (synthetic data)")
    parser.add_argument("--out", required=True, help="output .safetensors")


def main(args: argparse.Namespace, params: dict[str, Any]) -> None:
    run(params, args.out, teacher_weights=args.teacher_weights, synthetic_path=args.data)
