"""Generate the synthetic shape dataset (one NPZ; a pure function of dataset.synthetic).

``python -m pipeline_steps generate-data --params params.yaml --out results/data/synthetic.npz``
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipeline_steps.errors import UserError


def run(out: str | Path, *, num_classes: int, image_size: int, train_size: int, test_size: int, seed: int,
        progress: bool = True) -> Path:
    """Generate the dataset and write it atomically to ``out``.

    Args:
        out: Destination NPZ (see :func:`pipeline_steps.data.generate_synthetic` for its members).
        num_classes: Number of shape classes (2-10).
        image_size: Square image side in pixels.
        train_size: Training images.
        test_size: Test images.
        seed: Generator seed (>= 0).
        progress: Show a progress bar on stderr.

    Returns:
        The written path.
    """
    # torch and friends load only when a step runs, not for `--help`
    from pipeline_steps.data.synthetic import write_synthetic

    return write_synthetic(out, num_classes=num_classes, image_size=image_size, train_size=train_size,
                           test_size=test_size, seed=seed, progress=progress)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output NPZ, e.g. results/data/synthetic.npz")


def main(args: argparse.Namespace, params: dict[str, Any]) -> None:
    dataset = params["dataset"]
    if dataset["kind"] != "synthetic":
        raise UserError(f"dataset.kind is '{dataset['kind']}'; the generate-data step is only for "
                        "dataset.kind: synthetic (imagefolder data is read in place)")
    settings = dataset["synthetic"]
    run(args.out, num_classes=settings["num_classes"], image_size=settings["image_size"],
        train_size=settings["train_size"], test_size=settings["test_size"], seed=settings["seed"])
