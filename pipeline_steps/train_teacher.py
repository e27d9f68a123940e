"""Train the teacher from scratch (teacher.model.weights.source = train).

Writes ``<out-dir>/model.safetensors`` (weights + the model spec as metadata) and
``<out-dir>/log.txt`` (one JSON line per epoch, DeiT log format).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

from .config import SYNTHETIC_PATH
from .errors import UserError


def run(params: dict[str, Any], out_dir: str | Path, *, synthetic_path: str | Path = SYNTHETIC_PATH,
        progress: bool = True) -> list[dict[str, Any]]:
    """Train ``params["teacher"]["model"]`` on the training split and save it.

    Args:
        params: Validated config (sections ``dataset``, ``teacher``).
        out_dir: Receives ``model.safetensors`` and ``log.txt``.
        synthetic_path: The generated dataset artifact (synthetic data only).
        progress: Show progress bars.

    Returns:
        The per-epoch log rows.
    """
    import torch

    from .data import open_dataset
    from .models import create_model, save_weights
    from .train import Recipe, train_model

    teacher = params["teacher"]
    spec = copy.deepcopy(teacher["model"])
    if spec["weights"]["source"] != "train":
        raise UserError(f"teacher.model.weights.source is '{spec['weights']['source']}', not 'train'; "
                        "the train-teacher step only runs for a teacher trained by this pipeline")
    recipe = Recipe.from_params(teacher["train"])
    train_set = open_dataset(params, "train", synthetic_path=synthetic_path)
    test_set = open_dataset(params, "test", synthetic_path=synthetic_path)
    init = copy.deepcopy(spec)
    init["weights"] = {"source": "random", "seed": recipe.seed, "tag": None, "path": None}
    model = create_model(init)
    num_classes = getattr(model, "num_classes", None)
    if num_classes is not None and num_classes != len(train_set.classes):
        raise UserError(f"teacher.model.kwargs.num_classes is {num_classes} but the dataset has "
                        f"{len(train_set.classes)} classes; make them equal")
    torch.manual_seed(recipe.seed)
    out_dir = Path(out_dir)
    rows = train_model(model, train_set, test_set, recipe, out_dir / "log.txt", progress=progress)
    save_weights(model.eval(), out_dir / "model.safetensors",
                 {"arch": spec["arch"], "kwargs": spec["kwargs"], "epochs": recipe.epochs,
                  "test_acc1": rows[-1]["test_acc1"]})
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out-dir", required=True, help="output directory (model.safetensors, log.txt)")
    parser.add_argument("--data", default=SYNTHETIC_PATH, help="generated dataset artifact (synthetic data)")


def main(args: argparse.Namespace, params: dict[str, Any]) -> None:
    run(params, args.out_dir, synthetic_path=args.data)
