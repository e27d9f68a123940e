"""One model's activations on the sample manifest's images: the analysis both the teacher and every student
checkpoint go through (the extract and evolution steps call :func:`extract_activations`)."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from pipeline_steps.config import SYNTHETIC_PATH
from pipeline_steps.errors import UserError

__all__ = ["extract_activations"]


def extract_activations(spec: Mapping[str, Any], out: str | os.PathLike, *, dataset: Mapping[str, Any],
                        manifest_path: str | os.PathLike, layers: str | Sequence[int] = "all", batch_size: int = 32,
                        split: str = "test", weights_path: str | os.PathLike | None = None,
                        synthetic_path: str | os.PathLike | None = SYNTHETIC_PATH, model_key: str = "teacher",
                        device: str = "cpu") -> dict:
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

    Returns:
        The meta stored in the NPZ.

    Raises:
        UserError: Missing inputs, a model that cannot take the images, or a stale manifest.
    """
    import torch
    from torch.utils.data import DataLoader

    from pipeline_steps.analysis.activations import write_activations
    from pipeline_steps.data.datasets import open_dataset
    from pipeline_steps.data.manifest import ManifestDataset, manifest_hash, read_manifest
    from pipeline_steps.models.build import create_model
    from pipeline_steps.models.layers import check_input_size, resolve_layers

    manifest = read_manifest(manifest_path)
    if "split" in manifest.columns:
        splits = sorted(set(manifest["split"].astype(str)))
        if len(splits) != 1:
            raise UserError(f"sample manifest {manifest_path} mixes splits {splits}; use a manifest of one split")
        split = splits[0]
    images = ManifestDataset(open_dataset(dataset, split, synthetic_path=synthetic_path), manifest)

    model = create_model(spec, weights_path=weights_path)
    try:
        model = model.to(torch.device(device))
    except (RuntimeError, AssertionError) as exc:
        raise UserError(f"cannot use device '{device}' ({exc}); pass --device cpu") from None
    layer_indices = resolve_layers(model, layers)
    first_image = images[0][0]
    check_input_size(model, tuple(first_image.shape[-2:]), where=f"{model_key}.model.kwargs.img_size")

    loader = DataLoader(images, batch_size=int(batch_size), shuffle=False, num_workers=0)
    weights = dict(spec.get("weights") or {})
    if weights_path is not None:
        weights["path"] = str(weights_path)  # what was actually loaded
    # ManifestDataset feeds images in manifest 'position' order; ids and labels are recorded in that order.
    meta = {
        "model_key": model_key,
        "model": {"arch": spec["arch"], "kwargs": spec.get("kwargs") or {}, "weights": weights},
        "manifest_path": str(manifest_path),
        "manifest_hash": manifest_hash(manifest),
        "split": split,
        "dataset_kind": dataset.get("kind"),
        "image_ids": [str(v) for v in images.ids],
        "labels": [int(v) for v in images.labels],
        "class_names": [str(c) for c in getattr(images, "classes", [])],
    }
    return write_activations(out, model, loader, layer_indices, meta)
