"""Train the teacher from scratch (teacher.model.weights.source = train).

Writes the run directory of :func:`pipeline_steps.train.train` into ``<out-dir>``: ``model.safetensors``
(weights + the model spec as metadata), ``log.txt`` (one JSON line per epoch, DeiT log format), checkpoints
and the resume state. Rerunning an interrupted run resumes it.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

from .config import SYNTHETIC_PATH, TRAINING_DATA_PARAMS, select
from .errors import UserError


def run(params: dict[str, Any], out_dir: str | Path, *, synthetic_path: str | Path = SYNTHETIC_PATH,
        progress: bool = True) -> list[dict[str, Any]]:
    """Train ``params["teacher"]["model"]`` on the training split and save it.

    Args:
        params: Validated config (sections ``dataset``, ``teacher``).
        out_dir: The run directory (receives ``model.safetensors`` and ``log.txt``).
        synthetic_path: The generated dataset artifact (synthetic data only).
        progress: Show progress bars.

    Returns:
        The per-epoch log rows.
    """
    from .data import open_dataset
    from .models import check_num_classes, create_model
    from .train import Recipe, run_fingerprint, train

    teacher = params["teacher"]
    spec = copy.deepcopy(teacher["model"])
    if spec["weights"]["source"] != "train":
        raise UserError(f"teacher.model.weights.source is '{spec['weights']['source']}', not 'train'; "
                        "the train-teacher step only runs for a teacher trained by this pipeline")
    recipe = Recipe.from_params(teacher["train"])
    train_set = open_dataset(params, "train", synthetic_path=synthetic_path, preprocessing="evaluation")
    test_set = open_dataset(params, "test", synthetic_path=synthetic_path, preprocessing="evaluation")
    init = copy.deepcopy(spec)
    init["weights"] = {"source": "random", "seed": recipe.seed, "tag": None, "path": None}
    model = create_model(init)
    check_num_classes(model, len(train_set.classes), where="teacher.model.kwargs.num_classes")
    data_files = [synthetic_path] if params["dataset"]["kind"] == "synthetic" else []
    fingerprint = run_fingerprint(select(params, (*TRAINING_DATA_PARAMS, "teacher.model", "teacher.train")), data_files)
    return train(model, train_set, test_set, recipe, out_dir, fingerprint=fingerprint, progress=progress,
                 metadata={"arch": spec["arch"], "kwargs": spec["kwargs"], "run_id": teacher["name"]})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out-dir", required=True, help="run directory (model.safetensors, log.txt, checkpoints)")
    parser.add_argument("--data", default=SYNTHETIC_PATH, help="generated dataset artifact (synthetic data)")


def main(args: argparse.Namespace, params: dict[str, Any]) -> None:
    run(params, args.out_dir, synthetic_path=args.data)
