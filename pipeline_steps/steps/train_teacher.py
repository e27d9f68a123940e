"""Train the teacher from scratch (teacher.model.weights.source = train).

Writes the run directory of :func:`pipeline_steps.training.loop.train` into ``<out-dir>``: ``model.safetensors``
(weights + the model spec as metadata), ``log.txt`` (one JSON line per epoch, DeiT log format), checkpoints
and the resume state. Rerunning an interrupted run resumes it.
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path
from typing import Any, Mapping

from pipeline_steps.config import SYNTHETIC_PATH, select
from pipeline_steps.dependencies import RULE_PARAMS
from pipeline_steps.errors import UserError


def run(out_dir: str | Path, *, spec: Mapping[str, Any], recipe: "Recipe", dataset: Mapping[str, Any],  # noqa: F821
        name: str, fingerprint: str, synthetic_path: str | os.PathLike = SYNTHETIC_PATH,
        progress: bool = True) -> list[dict[str, Any]]:
    """Train the teacher ``spec`` from a random initialisation (seeded by ``recipe.seed``) and save it.

    Args:
        out_dir: The run directory (receives ``model.safetensors``, ``log.txt``, checkpoints).
        spec: The teacher's model spec (``teacher.model``, ``weights.source: train``).
        recipe: The training recipe (``teacher.train``).
        dataset: The ``dataset`` params section; training and scoring use its evaluation transform.
        name: The teacher's name (``teacher.name``), recorded in its weight files.
        fingerprint: Identifies the run's configuration, data and code; a saved state resumes only under it.
        synthetic_path: The generated dataset artifact (synthetic data only).
        progress: Show progress bars.

    Returns:
        The per-epoch log rows.
    """
    from pipeline_steps.data.datasets import open_dataset
    from pipeline_steps.models.build import create_model
    from pipeline_steps.models.layers import check_num_classes
    from pipeline_steps.training.loop import train

    if spec["weights"]["source"] != "train":
        raise UserError(f"teacher.model.weights.source is '{spec['weights']['source']}', not 'train'; "
                        "the train-teacher step only runs for a teacher trained by this pipeline")
    train_set = open_dataset(dataset, "train", synthetic_path=synthetic_path, preprocessing="evaluation")
    test_set = open_dataset(dataset, "test", synthetic_path=synthetic_path, preprocessing="evaluation")
    init = copy.deepcopy(dict(spec))
    init["weights"] = {"source": "random", "seed": recipe.seed, "tag": None, "path": None}
    model = create_model(init)
    check_num_classes(model, len(train_set.classes), where="teacher.model.kwargs.num_classes")
    return train(model, train_set, test_set, recipe, out_dir, fingerprint=fingerprint, progress=progress,
                 metadata={"arch": spec["arch"], "kwargs": spec["kwargs"], "run_id": name})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out-dir", required=True, help="run directory (model.safetensors, log.txt, checkpoints)")
    parser.add_argument("--data", default=SYNTHETIC_PATH, help="generated dataset artifact (synthetic data)")


def main(args: argparse.Namespace, params: dict[str, Any]) -> None:
    from pipeline_steps.training.recipe import Recipe
    from pipeline_steps.training.run_dir import run_fingerprint

    teacher = params["teacher"]
    data_files = [args.data] if params["dataset"]["kind"] == "synthetic" else []
    fingerprint = run_fingerprint(select(params, RULE_PARAMS["train_teacher"]), data_files, step="train_teacher")
    run(args.out_dir, spec=teacher["model"], recipe=Recipe.from_params(teacher["train"]), dataset=params["dataset"],
        name=teacher["name"], fingerprint=fingerprint, synthetic_path=args.data)
