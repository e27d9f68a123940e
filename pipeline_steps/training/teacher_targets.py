"""The teacher's targets for distillation: live forward passes, or the teacher cache (torchdistill style).

:class:`TeacherTargets` hands the training loop the teacher's logits and paired-block features per batch,
either by running the frozen teacher under ``no_grad`` or by reading rows of a cache computed once over the
training set. The cache (:func:`write_teacher_cache`, :func:`read_teacher_cache`) is a safetensors file with
``logits`` ``[N, K]`` and ``features.<i>`` ``[N, C, H, W]`` (float32, training-set order) for every teacher
block some run of the grid pairs with, and in its metadata what it was made from (:func:`cache_metadata`).
It is valid only for a recipe without augmentation, where the student sees the same images every epoch
(:func:`pipeline_steps.config.uses_teacher_cache`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pipeline_steps.artifacts import write_safetensors
from pipeline_steps.errors import UserError
from pipeline_steps.models.layers import forward_with_features
from pipeline_steps.models.weights import weights_hash

__all__ = ["CACHE_FORMAT", "cache_metadata", "compute_teacher_cache", "read_teacher_cache", "TeacherTargets",
           "write_teacher_cache"]


class TeacherTargets:
    """The teacher's logits and the features of its paired blocks for a batch.

    Live (``model`` given): the frozen teacher runs in eval mode under ``no_grad`` on the batch the student
    sees (augmented, mixed). Cached (``cache`` given): rows ``indices`` of outputs computed once over the
    un-augmented training set by :func:`compute_teacher_cache` (exact only without augmentation).
    """

    def __init__(self, layers: Sequence[int], *, model: nn.Module | None = None,
                 cache: Mapping[str, Tensor] | None = None) -> None:
        if (model is None) == (cache is None):
            raise ValueError("give exactly one of model and cache")
        self.layers, self.model, self.cache = list(layers), model, cache
        if model is not None:
            model.eval().requires_grad_(False)

    def __call__(self, images: Tensor, indices: Tensor) -> tuple[Tensor, list[Tensor]]:
        if self.cache is not None:
            rows = indices.cpu()
            feats = [self.cache[f"features.{layer}"][rows].to(images.device) for layer in self.layers]
            return self.cache["logits"][rows].to(images.device), feats
        with torch.no_grad():
            return forward_with_features(self.model, images, self.layers)


@torch.no_grad()
def compute_teacher_cache(model: nn.Module, dataset: Dataset, layers: Sequence[int], *, batch_size: int = 256,
                          device: str | torch.device = "cpu", progress: bool = True) -> dict[str, Tensor]:
    """The teacher's logits ``[N, K]`` and block outputs ``features.<i>`` ``[N, C, H, W]`` over ``dataset``."""
    model.eval().to(device)
    layers = sorted(set(int(i) for i in layers))
    logits, feats = [], {i: [] for i in layers}
    loader = DataLoader(dataset, batch_size=batch_size)
    for images, _ in tqdm(loader, desc="teacher outputs", unit="batch", disable=not progress, mininterval=2.0):
        out, maps = forward_with_features(model, images.to(device), layers)
        logits.append(out.float().cpu())
        for i, m in zip(layers, maps):
            feats[i].append(m.float().cpu())
    cache = {"logits": torch.cat(logits)}
    cache.update({f"features.{i}": torch.cat(maps) for i, maps in feats.items()})
    return cache


#: ``format`` in the cache's metadata; a file without it (or another value) is not a cache of this version.
CACHE_FORMAT = "distillation-dynamics/teacher-cache/2"


def cache_metadata(train_set: Any, teacher: nn.Module, layers: Sequence[int]) -> dict[str, str]:
    """What a teacher cache was made from, stored in its safetensors metadata and compared before use: the
    training set's identity and size, the teacher's weights hash, and the cached blocks.

    Args:
        train_set: The training split (a dataset of :mod:`pipeline_steps.data.datasets`, with ``identity()``).
        teacher: The teacher model.
        layers: The teacher blocks whose outputs are cached.
    """
    return {"format": CACHE_FORMAT, "layers": json.dumps(sorted(layers)), "n_images": str(len(train_set)),
            "dataset_identity": train_set.identity(), "teacher_weights_hash": weights_hash(teacher)}


def write_teacher_cache(path: str | os.PathLike, teacher: nn.Module, train_set: Any, layers: Sequence[int], *,
                        device: str = "cpu", progress: bool = True) -> None:
    """Compute the teacher's logits and ``layers``' features over ``train_set`` and write the cache atomically."""
    cache = compute_teacher_cache(teacher, train_set, list(layers), device=device, progress=progress)
    write_safetensors(path, cache, cache_metadata(train_set, teacher, layers))


def read_teacher_cache(path: str | os.PathLike, layers: Sequence[int], *, train_set: Any,
                       teacher: nn.Module) -> dict[str, Tensor]:
    """The teacher outputs in ``path``, checked against what this run would compute them from.

    A cache is rows of teacher outputs in training-set order; used with another training set (of any size)
    or another teacher it would silently distil from wrong targets. So the cache's recorded origin
    (:func:`cache_metadata`) must equal this run's: the training set's identity and size, and the teacher's
    weights hash; and it must hold every block the run pairs with.

    Raises:
        UserError: The file is missing, unreadable, of another format, made from other data or another
            teacher, or lacks a block (one line naming the cache and the fix).
    """
    import safetensors

    path = Path(path)
    fix = "delete it and rerun the teacher-cache step (or set distill.teacher_cache: off)"
    if not path.is_file():
        raise UserError(f"teacher cache {path} not found; run the teacher-cache step")
    try:
        # Only the blocks this run pairs with: a grid with phase or cka runs caches every teacher block.
        with safetensors.safe_open(str(path), framework="pt") as f:
            recorded = f.metadata() or {}
            wanted = ["logits", *(f"features.{i}" for i in layers)]
            cache = {key: f.get_tensor(key) for key in wanted if key in f.keys()}
    except Exception as exc:  # noqa: BLE001 - a corrupt file: one line, the fix
        raise UserError(f"teacher cache {path} is unreadable ({type(exc).__name__}); {fix}") from None
    if recorded.get("format") != CACHE_FORMAT:
        raise UserError(f"teacher cache {path} does not record what it was made from (made by an older version, "
                        f"or not a teacher cache); {fix}")
    n = len(train_set)
    if recorded.get("n_images") != str(n):
        raise UserError(f"teacher cache {path} was made for a training set of {recorded.get('n_images')} images, "
                        f"this run's has {n}; {fix}")
    expected = cache_metadata(train_set, teacher, layers)
    if recorded.get("dataset_identity") != expected["dataset_identity"]:
        raise UserError(f"teacher cache {path} was made from another training set (same size, different "
                        f"content); {fix}")
    if recorded.get("teacher_weights_hash") != expected["teacher_weights_hash"]:
        raise UserError(f"teacher cache {path} was made with other teacher weights; {fix}")
    missing = [i for i in layers if f"features.{i}" not in cache] + ([] if "logits" in cache else ["logits"])
    if missing:
        raise UserError(f"teacher cache {path} lacks {missing}; rerun the teacher-cache step with this grid")
    short = [k for k, t in cache.items() if t.shape[0] != n]
    if short:
        raise UserError(f"teacher cache {path}: '{short[0]}' has {cache[short[0]].shape[0]} rows for {n} training "
                        f"images; {fix}")
    return cache
