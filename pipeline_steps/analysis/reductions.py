"""Reduce an activations NPZ to the entropy / spectrum / magnitude table (Parquet).

Output (long format, one row per value): ``model, arch, checkpoint, epoch, layer (1-based),
layer_name, metric (entropy | magnitude | spectrum), k (spectrum bin, else null), value,
n_images, bins, range_policy, range_min, range_max, weights_hash, manifest_hash``; and a
per-profile summary table, one row per scalar metric: ``model, checkpoint, epoch, metric`` and
:func:`pipeline_steps.analysis.shapes.profile_summary`'s ``argmin_layer`` (1-based), ``argmax_layer``, ``first``,
``min``, ``max``, ``last``, ``drop``, ``rise``, ``shape``, ``u_shaped``, ``shape_tolerance``, ``shape_scale``
(entropy is classified in bits, magnitude on log2: :data:`METRIC_SHAPE_SCALE`).

Memory is independent of the number of images: the NPZ is read chunk by chunk in two passes
(pass 1 finds the histogram range, pass 2 accumulates the three statistics).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline_steps.errors import UserError

__all__ = ["METRIC_SHAPE_SCALE", "SCALAR_METRICS", "VALUES_COLUMNS", "read_values_table", "reduce_activations"]

SCALAR_METRICS = ("entropy", "magnitude")


#: Columns of the values table, in order (the evolution step's tables add ``run_id``).
VALUES_COLUMNS = ("model", "arch", "checkpoint", "epoch", "layer", "layer_name", "metric", "k", "value",
                  "n_images", "bins", "range_policy", "range_min", "range_max", "weights_hash", "manifest_hash")


#: Columns a reader computes with (and ``k``, which spectrum rows need), and the kind of value each must
#: hold (``int``: integers, no nulls; ``float``: numbers, no NaN; ``str``: text, no nulls).
_CHECKED_COLUMNS = {"model": "str", "arch": "str", "layer": "int", "metric": "str", "value": "float"}


def read_values_table(path: str | Path, what: str, fix: str, *, extra: dict[str, str] | None = None) -> pd.DataFrame:
    """Read a values table (the reduce step's, or the evolution step's with ``extra={"run_id": "str",
    "epoch": "int"}``), checked, so that a foreign or damaged file stops with one line instead of a traceback.

    Args:
        path: The Parquet file.
        what: What the file is, for messages ("reductions table").
        fix: How to make a good one, for messages ("run the reduce step first").
        extra: Further required columns and their kinds (see ``_CHECKED_COLUMNS``).

    Raises:
        UserError: The file is missing, not Parquet, empty, lacks a column, or a column holds the wrong type
            of value or a null/NaN.
    """
    from pipeline_steps.artifacts import read_parquet

    path = Path(path)
    values = read_parquet(path, what, fix)
    checked = {**_CHECKED_COLUMNS, **(extra or {})}
    missing = [c for c in checked if c not in values.columns]
    if missing:
        raise UserError(f"{what} {path} lacks column(s) {', '.join(missing)} (not a values table of this "
                        f"pipeline); {fix}")
    if len(values) == 0:
        raise UserError(f"{what} {path} has no rows; {fix}")
    for column, kind in checked.items():
        col = values[column]
        if col.isna().any():
            raise UserError(f"{what} {path}: column '{column}' has a missing or NaN value (row "
                            f"{int(np.flatnonzero(col.isna().to_numpy())[0])}); {fix}")
        ok = {"int": pd.api.types.is_integer_dtype, "float": pd.api.types.is_numeric_dtype,
              "str": lambda c: pd.api.types.infer_dtype(c, skipna=False) == "string"}[kind](col)
        if not ok or (kind == "float" and pd.api.types.is_bool_dtype(col)):
            raise UserError(f"{what} {path}: column '{column}' holds {col.dtype} values, expected {kind}; {fix}")
    spectrum = values["metric"] == "spectrum"
    if spectrum.any() and ("k" not in values.columns or values.loc[spectrum, "k"].isna().any()):
        raise UserError(f"{what} {path}: spectrum rows need the bin index 'k'; {fix}")
    return values


#: The scale each scalar metric's shape is read on, so that one tolerance means "changes by more than a
#: factor 2**tol" for both (entropy is already a log2 quantity; magnitude is not).
METRIC_SHAPE_SCALE = {"entropy": "linear", "magnitude": "log2"}


def reduce_activations(
    npz_path: str | Path,
    *,
    bins: int = 100,
    range_policy: str = "global",
    shape_tolerance: float,
    chunk_images: int = 64,
    model_label: str = "teacher",
    checkpoint: str = "final",
    epoch: int | None = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Compute Eq. 1-6 for every layer of an activations file.

    Args:
        npz_path: Written by the extract step.
        bins: Entropy histogram bins.
        range_policy: ``"global"`` (one range over all layers, the paper's) or ``"per_layer"``.
        shape_tolerance: Tolerance of the summary's shape classes (params ``analysis.shape_tolerance``).
        chunk_images: Images read at once (bounds memory).
        model_label: Value of the ``model`` column.
        checkpoint: Value of the ``checkpoint`` column (``final`` for a trained teacher).
        epoch: Value of the ``epoch`` column, if known.
        progress: Show progress bars.

    Returns:
        ``(values, summary)`` DataFrames as described in the module docstring.
    """
    from pipeline_steps.analysis.activations import ActivationsFile
    from pipeline_steps.analysis.metrics import MetricAccumulator, RangeAccumulator
    from pipeline_steps.analysis.shapes import profile_summary

    acts = ActivationsFile(npz_path)
    meta = acts.meta
    n_layers = len(acts.layers)

    def fold(accumulator, desc: str):
        """One pass over every layer, chunk by chunk."""
        for i in tqdm(range(n_layers), desc=desc, disable=not progress, leave=False):
            for chunk in acts.iter_chunks(i, chunk_images):
                accumulator.update(i, chunk)
        return accumulator

    ranges = fold(RangeAccumulator(), "range pass")
    layer_ranges = [ranges.value_range(range_policy, i) for i in range(n_layers)]
    result = fold(MetricAccumulator(n_layers, bins=bins, ranges=layer_ranges), "metrics pass").result()

    common = {
        "model": model_label,
        "arch": meta["model"]["arch"],
        "checkpoint": checkpoint,
        "epoch": epoch,
        "n_images": int(result["n_images"]),
        "bins": bins,
        "range_policy": range_policy,
        "weights_hash": meta["weights_hash"],
        "manifest_hash": meta.get("manifest_hash"),
    }
    rows: list[dict[str, Any]] = []
    for i in range(n_layers):
        layer = {"layer": meta["layer_indices"][i] + 1, "layer_name": meta["layer_names"][i],
                 "range_min": float(layer_ranges[i][0]), "range_max": float(layer_ranges[i][1])}
        for metric in SCALAR_METRICS:
            rows.append({**layer, "metric": metric, "k": None, "value": float(result[metric][i])})
        rows.extend({**layer, "metric": "spectrum", "k": k, "value": float(v)}
                    for k, v in enumerate(result["spectrum"][i]))
    values = pd.DataFrame(rows).assign(**common)
    values = values[list(VALUES_COLUMNS)]
    values = values.astype({"k": "Int64", "epoch": "Int64"})

    summary = pd.DataFrame([
        {"model": model_label, "checkpoint": checkpoint, "epoch": epoch, "metric": metric,
         **profile_summary(np.asarray(result[metric]), tol=shape_tolerance,
                           scale=METRIC_SHAPE_SCALE[metric])}
        for metric in SCALAR_METRICS
    ]).astype({"epoch": "Int64"})
    return values, summary
