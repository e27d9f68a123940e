"""Choose the analysis images and write the sample manifest (Parquet).

``python -m pipeline_steps sample --params params.yaml [--data results/data/synthetic.npz]
--out results/samples/manifest.parquet``

The manifest has one row per image: ``position`` (the order fed to the model), ``index`` (in the
dataset), ``id`` (``synthetic/<split>/<index>`` or the image path relative to the dataset root),
``label``, ``class_name``, ``split``, ``strategy``, ``seed`` and ``content_hash`` (SHA-256 of the image
file, or of the generated uint8 pixels). Every sampled image is read and decoded here, so a broken
image fails this step.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline_steps.config import SYNTHETIC_PATH

if TYPE_CHECKING:
    import pandas as pd

    from pipeline_steps.data.datasets import AnalysisDataset



def run(out: str | Path, dataset: AnalysisDataset, *, n_images: int, strategy: str, seed: int, split: str,
        progress: bool | None = None) -> pd.DataFrame:
    """Sample ``dataset`` and write the manifest atomically (nothing is written on error).

    Args:
        out: Destination Parquet file.
        dataset: An opened dataset (:func:`pipeline_steps.data.open_dataset`).
        n_images: Number of images.
        strategy: ``random``, ``stratified`` or ``first``.
        seed: Sampling seed.
        split: Name of the split ``dataset`` holds (recorded in the manifest).
        progress: Progress bar while hashing; ``None`` shows it only on a terminal.

    Returns:
        The manifest.
    """
    from pipeline_steps.artifacts import write_parquet
    from pipeline_steps.data.manifest import sample_manifest

    manifest = sample_manifest(dataset, n_images, strategy, seed, split, progress=progress)
    write_parquet(out, manifest)
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=SYNTHETIC_PATH,
                        help=f"generated dataset NPZ, for dataset.kind: synthetic (default {SYNTHETIC_PATH})")
    parser.add_argument("--out", required=True, help="output Parquet, e.g. results/samples/manifest.parquet")


def main(args: argparse.Namespace, params: dict[str, Any]) -> None:
    from pipeline_steps.data.datasets import open_dataset

    settings = params["sample"]
    dataset = open_dataset(params["dataset"], settings["split"], synthetic_path=args.data)
    run(args.out, dataset, n_images=settings["n_images"], strategy=settings["strategy"], seed=settings["seed"],
        split=settings["split"])
