"""Extract per-block activations of one model on the sample manifest into an NPZ.

Usage::

    python -m pipeline_steps extract --params params.yaml \\
        --manifest results/samples/manifest.parquet \\
        [--model-weights results/teacher/model.safetensors] [--data results/data/synthetic.npz] \\
        [--model-key teacher] --out results/activations/teacher.npz

The model is ``params[<model-key>]["model"]`` (see ``$defs/model`` in the schema); ``--model-weights``
overrides its weight source (a ``source: train`` model needs it). Layers, batch size, DataLoader workers:
``analysis``.
The NPZ format is described in :mod:`pipeline_steps.analysis.activations`.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

from pipeline_steps.analysis.extraction import extract_activations
from pipeline_steps.config import SYNTHETIC_PATH
from pipeline_steps.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, metavar="PARQUET", help="sample manifest (from the sample step)")
    parser.add_argument("--model-weights", default=None, metavar="FILE",
                        help="weight file of the --model-key model, overriding its weights source (.safetensors/.pth)")
    parser.add_argument("--data", default=SYNTHETIC_PATH, metavar="NPZ",
                        help=f"synthetic dataset file, for dataset.kind=synthetic (default {SYNTHETIC_PATH})")
    parser.add_argument("--model-key", default="teacher", metavar="KEY",
                        help="params key (dotted path) of the model to extract, e.g. teacher (default)")
    parser.add_argument("--device", default="cpu", help="torch device to run on (default cpu)")
    parser.add_argument("--out", required=True, metavar="NPZ", help="output activations file (.npz)")


def main(args: argparse.Namespace, params: dict) -> None:
    analysis = params["analysis"]
    run(model_spec(params, args.model_key), args.out, dataset=params["dataset"], manifest_path=args.manifest,
        layers=analysis["layers"], batch_size=analysis["batch_size"], split=params["sample"]["split"],
        weights_path=args.model_weights, synthetic_path=args.data, model_key=args.model_key, device=args.device,
        num_workers=analysis["num_workers"])


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


#: The step's work is exactly the library's: the same function extracts the teacher here and every student
#: checkpoint in the evolution step.
run = extract_activations
