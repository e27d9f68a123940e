"""One model's activations on the sample manifest's images: the analysis both the teacher and every student
checkpoint go through (the extract and evolution steps call :func:`extract_activations`).

:func:`open_sample` opens the manifest's images; the evolution step opens them once and hands them to every
checkpoint's extraction, so an ImageNet-style folder is listed once per run, not once per checkpoint.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from pipeline_steps.config import SYNTHETIC_PATH
from pipeline_steps.errors import UserError

if TYPE_CHECKING:
    import pandas as pd

    from pipeline_steps.data.manifest import ManifestDataset

__all__ = ["extract_activations", "open_sample"]


def _sample_split(manifest: pd.DataFrame, manifest_path: str | os.PathLike, split: str) -> str:
    """The one split the manifest's images come from (its ``split`` column), else ``split``."""
    if "split" not in manifest.columns:
        return split
    splits = sorted(set(manifest["split"].astype(str)))
    if len(splits) != 1:
        raise UserError(f"sample manifest {manifest_path} mixes splits {splits}; use a manifest of one split")
    return splits[0]


def open_sample(dataset: Mapping[str, Any], manifest_path: str | os.PathLike, *, split: str = "test",
                synthetic_path: str | os.PathLike | None = SYNTHETIC_PATH) -> ManifestDataset:
    """The sample manifest's images, in manifest order: the manifest read and checked, its split of the
    dataset opened (for an ImageFolder, the whole split folder listed) and matched against it.

    Args:
        dataset: The ``dataset`` params section (kind, synthetic, imagefolder, preprocess).
        manifest_path: Sample manifest (Parquet) from the sample step.
        split: The dataset split the images come from, when the manifest has no ``split`` column.
        synthetic_path: The generated dataset, used when ``dataset.kind`` is ``synthetic``.

    Raises:
        UserError: A missing or invalid manifest, a manifest of several splits, a missing dataset, or a
            dataset that no longer has the manifest's images.
    """
    from pipeline_steps.data.datasets import open_dataset
    from pipeline_steps.data.manifest import ManifestDataset, read_manifest

    manifest = read_manifest(manifest_path)
    split = _sample_split(manifest, manifest_path, split)
    return ManifestDataset(open_dataset(dataset, split, synthetic_path=synthetic_path), manifest)


def extract_activations(spec: Mapping[str, Any], out: str | os.PathLike, *, dataset: Mapping[str, Any],
                        manifest_path: str | os.PathLike, layers: str | Sequence[int] = "all", batch_size: int = 32,
                        split: str = "test", weights_path: str | os.PathLike | None = None,
                        synthetic_path: str | os.PathLike | None = SYNTHETIC_PATH, model_key: str = "teacher",
                        device: str = "cpu", num_workers: int = 0, images: ManifestDataset | None = None) -> dict:
    """Extract the activations of the model ``spec`` on the manifest's images and write them as an NPZ.

    Args:
        spec: A model spec (``arch``, ``kwargs``, ``weights``; ``$defs/model`` in the schema).
        out: Destination ``.npz`` (written atomically).
        dataset: The ``dataset`` params section (kind, synthetic, imagefolder, preprocess).
        manifest_path: Sample manifest (Parquet) from the sample step.
        layers: ``analysis.layers``: ``"all"`` or block indices.
        batch_size: ``analysis.batch_size``: images per forward pass.
        split: The dataset split the images come from, when the manifest has no ``split`` column.
        weights_path: Weight file overriding the spec's ``weights`` (required for ``source: train``).
        synthetic_path: The generated dataset, used when ``dataset.kind`` is ``synthetic``.
        model_key: Where the spec came from (e.g. ``teacher``): recorded in the file's meta and named in
            errors about the model's settings.
        device: Torch device for the forward passes.
        num_workers: ``analysis.num_workers``: DataLoader worker processes reading and preprocessing the
            images (0 = in this process). The images and their order are the same for any value.
        images: The sample already opened by :func:`open_sample` with the same ``dataset``,
            ``manifest_path``, ``split`` and ``synthetic_path`` (the evolution step opens it once for all
            checkpoints); None opens it here.

    Returns:
        The meta stored in the NPZ.

    Raises:
        UserError: Missing inputs, a model that cannot take the images, or a stale manifest.
    """
    import torch
    from torch.utils.data import DataLoader

    from pipeline_steps.analysis.activations import write_activations
    from pipeline_steps.models.build import create_model
    from pipeline_steps.models.layers import check_input_size, resolve_layers

    if images is None:
        images = open_sample(dataset, manifest_path, split=split, synthetic_path=synthetic_path)
    split = _sample_split(images.manifest, manifest_path, split)

    model = create_model(spec, weights_path=weights_path)
    try:
        device = torch.device(device)
        model = model.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise UserError(f"cannot use device '{device}' ({exc}); pass --device cpu") from None
    layer_indices = resolve_layers(model, layers)
    first_image = images[0][0]
    check_input_size(model, tuple(first_image.shape[-2:]), where=f"{model_key}.model.kwargs.img_size")

    # Workers keep the order (a DataLoader without shuffling yields its batches in index order, whatever the
    # worker count); pinned host memory lets the batches copy to a GPU asynchronously.
    loader = DataLoader(images, batch_size=int(batch_size), shuffle=False, num_workers=int(num_workers),
                        pin_memory=device.type == "cuda")
    weights = dict(spec.get("weights") or {})
    if weights_path is not None:
        weights["path"] = str(weights_path)  # what was actually loaded
    # ManifestDataset feeds images in manifest 'position' order; ids and labels are recorded in that order.
    meta = {
        "model_key": model_key,
        "model": {"arch": spec["arch"], "kwargs": spec.get("kwargs") or {}, "weights": weights},
        "manifest_path": str(manifest_path),
        "manifest_hash": images.hash,
        "split": split,
        "dataset_kind": dataset.get("kind"),
        "image_ids": [str(v) for v in images.ids],
        "labels": [int(v) for v in images.labels],
        "class_names": [str(c) for c in getattr(images, "classes", [])],
    }
    return write_activations(out, model, loader, layer_indices, meta)
