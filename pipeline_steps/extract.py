"""Extract per-block activations of one model on the sample manifest into an NPZ.

Usage::

    python -m pipeline_steps extract --params params.yaml \\
        --manifest results/samples/manifest.parquet \\
        [--weights results/teacher/model.safetensors] [--data results/data/synthetic.npz] \\
        [--model-key teacher] --out results/activations/teacher.npz

The model is ``params[<model-key>]["model"]`` (see ``$defs/model`` in the schema); ``--weights``
overrides its weight source (a ``source: train`` model needs it). Layers, batch size: ``analysis``.
The NPZ format is described in :mod:`pipeline_steps.activations`.
"""

from __future__ import annotations

import argparse
import copy
import os
from typing import Any

from .config import SYNTHETIC_PATH
from .errors import UserError



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, metavar="PARQUET", help="sample manifest (from the sample step)")
    parser.add_argument("--weights", default=None, metavar="FILE",
                        help="weight file overriding the model's weights source (.safetensors/.pth)")
    parser.add_argument("--data", default=SYNTHETIC_PATH, metavar="NPZ",
                        help=f"synthetic dataset file, for dataset.kind=synthetic (default {SYNTHETIC_PATH})")
    parser.add_argument("--model-key", default="teacher", metavar="KEY",
                        help="params key (dotted path) of the model to extract, e.g. teacher (default)")
    parser.add_argument("--device", default="cpu", help="torch device to run on (default cpu)")
    parser.add_argument("--out", required=True, metavar="NPZ", help="output activations file (.npz)")


def main(args: argparse.Namespace, params: dict) -> None:
    run(params, args.out, manifest_path=args.manifest, weights_path=args.weights, synthetic_path=args.data,
        model_key=args.model_key, device=args.device)


def model_spec(params: dict, model_key: str) -> dict:
    """The model spec at ``model_key`` (a dotted path; the node is a spec or holds one under ``model``)."""
    node: Any = params
    for part in model_key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise UserError(f"params has no model at '{model_key}'; pass --model-key naming a model section "
                            "(e.g. teacher)")
    if isinstance(node, dict) and isinstance(node.get("model"), dict):
        node = node["model"]
    if not isinstance(node, dict) or "arch" not in node:
        raise UserError(f"params '{model_key}' is not a model spec (needs 'arch'); pass --model-key naming a "
                        "model section (e.g. teacher)")
    return copy.deepcopy(node)


def run(params: dict, out: str | os.PathLike, *, manifest_path: str | os.PathLike,
        weights_path: str | os.PathLike | None = None,
        synthetic_path: str | os.PathLike | None = SYNTHETIC_PATH,
        model_key: str = "teacher", device: str = "cpu") -> dict:
    """Extract the activations of one model on the manifest's images and write them as an NPZ.

    Args:
        params: Validated params (``analysis``, ``dataset``, ``sample`` and the model section).
        out: Destination ``.npz`` (written atomically).
        manifest_path: Sample manifest (Parquet) from the sample step.
        weights_path: Weight file overriding the model's ``weights`` (required for ``source: train``).
        synthetic_path: The generated dataset, used when ``dataset.kind`` is ``synthetic``.
        model_key: Dotted params path of the model (``teacher``).
        device: Torch device for the forward passes.

    Returns:
        The meta stored in the NPZ.

    Raises:
        UserError: Missing inputs, a model that cannot take the images, or a stale manifest.
    """
    import torch
    from torch.utils.data import DataLoader

    from .activations import write_activations
    from .data import ManifestDataset, manifest_hash, open_dataset, read_manifest  # written alongside; imported lazily
    from .models import check_input_size, create_model, resolve_layers

    spec = model_spec(params, model_key)
    analysis = params.get("analysis", {})
    manifest = read_manifest(manifest_path)

    split = params.get("sample", {}).get("split", "test")
    if "split" in manifest.columns:
        splits = sorted(set(manifest["split"].astype(str)))
        if len(splits) != 1:
            raise UserError(f"sample manifest {manifest_path} mixes splits {splits}; use a manifest of one split")
        split = splits[0]
    dataset = ManifestDataset(open_dataset(params, split, synthetic_path=synthetic_path), manifest)

    model = create_model(spec, weights_path=weights_path)
    try:
        model = model.to(torch.device(device))
    except (RuntimeError, AssertionError) as exc:
        raise UserError(f"cannot use device '{device}' ({exc}); pass --device cpu") from None
    layers = resolve_layers(model, analysis.get("layers", "all"))
    first_image = dataset[0][0]
    check_input_size(model, tuple(first_image.shape[-2:]), where=f"{model_key}.model.kwargs.img_size")

    loader = DataLoader(dataset, batch_size=int(analysis.get("batch_size", 32)), shuffle=False, num_workers=0)
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
        "dataset_kind": params.get("dataset", {}).get("kind"),
        "image_ids": [str(v) for v in dataset.ids],
        "labels": [int(v) for v in dataset.labels],
        "class_names": [str(c) for c in getattr(dataset, "classes", [])],
    }
    return write_activations(out, model, loader, layers, meta)
