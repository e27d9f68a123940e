"""The sample manifest: which images the analysis runs on, in which order, with a content hash per image.

:func:`sample_manifest` chooses and records them (Parquet, :data:`MANIFEST_COLUMNS`), :func:`read_manifest`
checks a file, and :class:`ManifestDataset` feeds the chosen images in manifest order, failing on an image
whose content changed instead of silently analysing it.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from pipeline_steps.artifacts import read_parquet, sha256_bytes
from pipeline_steps.data.datasets import AnalysisDataset
from pipeline_steps.errors import UserError

__all__ = ["MANIFEST_COLUMNS", "STRATEGIES", "check_manifest", "manifest_hash", "ManifestDataset", "read_manifest",
           "sample_manifest"]

STRATEGIES = ("random", "stratified", "first")


MANIFEST_COLUMNS = ("position", "index", "id", "label", "class_name", "split", "strategy", "seed",
                    "content_hash")


def _choose(labels: np.ndarray, num_classes: int, class_names: Sequence[str], n: int, strategy: str, seed: int,
            split: str) -> np.ndarray:
    if strategy == "first":
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if strategy == "random":
        return np.sort(rng.choice(len(labels), size=n, replace=False))
    # stratified: floor(n / K) per class, the remainder to distinct randomly chosen classes.
    quota = np.full(num_classes, n // num_classes)
    quota[rng.choice(num_classes, size=n % num_classes, replace=False)] += 1
    chosen = []
    for k in range(num_classes):
        pool = np.flatnonzero(labels == k)
        if len(pool) < quota[k]:
            raise UserError(f"stratified sampling needs {quota[k]} images of class '{class_names[k]}' but the "
                            f"{split} split has only {len(pool)}; lower sample.n_images or use sample.strategy: "
                            "random")
        chosen.append(rng.choice(pool, size=quota[k], replace=False))
    return np.sort(np.concatenate(chosen))


def sample_manifest(dataset: AnalysisDataset, n: int, strategy: str, seed: int, split: str,
                    progress: bool | None = None) -> pd.DataFrame:
    """Choose ``n`` images of ``dataset`` and record them, with a content hash each.

    Strategies: ``random`` (seeded, uniform, without replacement), ``stratified`` (seeded; ``n // K`` per
    class and the remainder to randomly chosen classes), ``first`` (the first ``n`` in dataset order). The
    chosen images are fed to the model in dataset order (``position``). Every chosen image is read and
    decoded here, so a broken image fails the sampling step rather than a later one.

    Args:
        dataset: A dataset with ``ids``, ``labels``, ``classes`` and ``content_hash`` (both in this module).
        n: Number of images.
        strategy: ``random``, ``stratified`` or ``first``.
        seed: Non-negative sampling seed (``first`` ignores it, but it is recorded).
        split: Split name, recorded and used in messages.
        progress: tqdm bar while hashing; ``None`` shows it only on a terminal.

    Returns:
        One row per image: ``position, index, id, label, class_name, split, strategy, seed, content_hash``.

    Raises:
        UserError: Unknown strategy, bad ``n`` or ``seed``, too few images, or an unreadable image.
    """
    if strategy not in STRATEGIES:
        raise UserError(f"unknown sample.strategy '{strategy}'; use one of: {', '.join(STRATEGIES)}")
    if n < 1:
        raise UserError(f"sample.n_images = {n}; use at least 1")
    if seed < 0:
        raise UserError(f"sample.seed = {seed} is negative; use a seed >= 0")
    if n > len(dataset):
        raise UserError(f"sample.n_images = {n} but the {split} split has only {len(dataset)} images; lower "
                        "sample.n_images")
    labels = np.asarray(dataset.labels, dtype=np.int64)
    indices = _choose(labels, len(dataset.classes), dataset.classes, n, strategy, seed, split)
    hashes = [dataset.content_hash(int(i)) for i in tqdm(indices, desc="hash sample", unit="img",
                                                          disable=None if progress is None else not progress,
                                                          leave=False)]
    return pd.DataFrame({
        "position": np.arange(n, dtype=np.int64),
        "index": indices.astype(np.int64),
        "id": [dataset.ids[i] for i in indices],
        "label": labels[indices],
        "class_name": [dataset.classes[labels[i]] for i in indices],
        "split": split,
        "strategy": strategy,
        "seed": np.int64(seed),
        "content_hash": hashes,
    }, columns=list(MANIFEST_COLUMNS))


def manifest_hash(df: pd.DataFrame) -> str:
    """SHA-256 identifying a sample: its ids and content hashes in ``position`` order."""
    rows = df.sort_values("position")
    text = "".join(f"{i}\t{h}\n" for i, h in zip(rows["id"], rows["content_hash"]))
    return sha256_bytes(text.encode())


#: What each manifest column holds (``int``: integers; ``str``: text), checked by :func:`read_manifest`.
_MANIFEST_KINDS = {"position": "int", "index": "int", "id": "str", "label": "int", "class_name": "str",
                   "split": "str", "strategy": "str", "seed": "int", "content_hash": "str"}


def check_manifest(df: pd.DataFrame, source: str) -> None:
    """Check a sample manifest's columns, their types and positions (one-line UserError naming ``source``).

    Args:
        df: The manifest.
        source: Where it came from, for messages (its path).

    Raises:
        UserError: Empty; a missing column; a column of the wrong type or with a missing/NaN value; negative
            indices; positions that are not ``0 .. n-1``.
    """
    fix = "re-run the sample step"
    if len(df) == 0:
        raise UserError(f"sample manifest {source} is empty; check sample.n_images and {fix}")
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"sample manifest {source} lacks column(s) {', '.join(missing)}; {fix}")
    for column, kind in _MANIFEST_KINDS.items():
        col = df[column]
        if col.isna().any():
            row = int(np.flatnonzero(col.isna().to_numpy())[0])
            raise UserError(f"sample manifest {source}: column '{column}' has a missing or NaN value (row {row}); "
                            f"{fix}")
        ok = (pd.api.types.is_integer_dtype(col) if kind == "int"
              else pd.api.types.infer_dtype(col, skipna=False) == "string")
        if not ok:
            raise UserError(f"sample manifest {source}: column '{column}' holds {col.dtype} values, expected "
                            f"{'integers' if kind == 'int' else 'text'}; {fix}")
    if (df["index"] < 0).any() or (df["label"] < 0).any():
        raise UserError(f"sample manifest {source} has a negative index or label; {fix}")
    if sorted(df["position"].tolist()) != list(range(len(df))):
        raise UserError(f"sample manifest {source}: column 'position' is not 0..{len(df) - 1}, each once; {fix}")


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read and check a sample manifest written by the sample step (see :func:`check_manifest`).

    Raises:
        UserError: The file is missing, not Parquet, or not a valid manifest.
    """
    df = read_parquet(path, "sample manifest", "run the sample step first")
    check_manifest(df, str(path))
    return df


class ManifestDataset(Dataset):
    """The images of a sample manifest, in ``position`` order, each checked against its content hash.

    Args:
        dataset: The dataset the manifest was drawn from (opened the same way).
        manifest: A sample manifest (:func:`sample_manifest`, or its Parquet file read with pandas).

    Raises:
        UserError: At construction, if the dataset no longer has the manifest's ids at its indices; on
            loading an image, if its content changed since sampling.
    """

    def __init__(self, dataset: AnalysisDataset, manifest: pd.DataFrame) -> None:
        check_manifest(manifest, "given to ManifestDataset")
        self.dataset = dataset
        self.manifest = manifest.sort_values("position").reset_index(drop=True)
        self.indices: list[int] = [int(i) for i in self.manifest["index"]]
        self.ids: list[str] = list(self.manifest["id"])
        for index, id_ in zip(self.indices, self.ids):
            found = dataset.ids[index] if 0 <= index < len(dataset) else None
            if found != id_:
                raise UserError(f"the dataset no longer matches the sample manifest ({id_} expected at index "
                                f"{index}, found {found}); re-run the sample step")
        self.labels: list[int] = [int(x) for x in self.manifest["label"]]
        self.classes: list[str] = list(dataset.classes)
        self.hash: str = manifest_hash(self.manifest)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int]:
        x, label, digest = self.dataset.load(self.indices[position])
        if digest != self.manifest["content_hash"].iat[position]:
            raise UserError(f"image {self.ids[position]} changed since it was sampled (content hash differs "
                            "from the manifest); re-run the sample step")
        return x, label
