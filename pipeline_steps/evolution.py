"""Per-checkpoint analysis of one distillation run: the student's layer-wise profiles over training (Fig. 4).

Usage::

    python -m pipeline_steps evolution --params params.yaml \\
        --run-dir results/runs/<run_id> --manifest results/samples/manifest.parquet \\
        [--data results/data/synthetic.npz] \\
        --out results/evolution/<run_id>.parquet --summary results/evolution/<run_id>_summary.parquet

The run directory holds ``checkpoints.json`` (written by the distill step)::

    {"run_id": "spectralkd_f1-s0", "epochs": 4,
     "checkpoints": [{"epoch": 0, "path": "checkpoints/epoch_0000.safetensors", "sha256": "<hex>"}, ...],
     "best": {"epoch": 3, "path": "best.safetensors", "sha256": "<hex>", "test_acc1": 61.2}}

with ``path`` relative to the run directory and ``epoch`` the number of completed training epochs (0 = the
initial random student). ``best`` is the best test top-1 checkpoint and the epoch it was saved after. Every
checkpoint's SHA-256 (the best's included) is checked first, then each one goes through exactly the teacher
analysis: :func:`pipeline_steps.extract.run` (the model rebuilt from the file's own spec, as a
``weights.source: file`` model) and :func:`pipeline_steps.reduce.reduce_activations`, with the ``analysis``
params. The activations live in a temporary directory beside ``--out`` and are deleted after reduction (a killed
run's directory is removed by the next run). The two tables are written together or not at all.

Outputs:

- ``--out``: the reduce step's values table for all checkpoints (columns ``model`` (= run id), ``arch``,
  ``checkpoint``, ``epoch``, ``layer``, ``layer_name``, ``metric``, ``k``, ``value``, ``n_images``, ``bins``,
  ``range_policy``, ``range_min``, ``range_max``, ``weights_hash``, ``manifest_hash``) plus ``run_id``: the
  epoch checkpoints ordered by epoch (``checkpoint`` = the file's stem, ``epoch_NNNN``), then the best
  checkpoint (``checkpoint`` = :data:`BEST_CHECKPOINT`, ``"best"``; ``epoch`` = the epoch it was saved after,
  so the same epoch may also appear as an ``epoch_NNNN`` row).
- ``--summary``: the reduce step's profile summary per checkpoint and metric (``checkpoint``, ``epoch``,
  ``argmin_layer`` (1-based), ``first``, ``min``, ``last``, ``drop``, ``rise``, ``shape``, ``u_shaped``,
  ``shape_tolerance``, ...) plus ``run_id``.

:func:`read_published_entropy` reads the authors' per-checkpoint entropy tables (``reference/entropy``) into
the same long format, so Fig. 4 draws them with the same function.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .config import SYNTHETIC_PATH
from .errors import UserError

#: The params key under which the checkpoint's model spec is handed to the extract step.
_MODEL_KEY = "evolution_checkpoint"
#: ``checkpoint`` value of the best test top-1 checkpoint's rows (``best.safetensors``; the authors' ``model_best``).
BEST_CHECKPOINT = "best"


def read_checkpoints(run_dir: str | Path, *, verify: bool = True) -> tuple[str, list[dict[str, Any]]]:
    """Read and check a run's ``checkpoints.json``.

    Args:
        run_dir: The run directory (``results/runs/<run_id>``).
        verify: Check that every listed file exists and has the recorded SHA-256.

    Returns:
        ``(run_id, checkpoints)``: the run id (from the file, else the directory name) and the entries, the
        epoch checkpoints sorted by epoch then the best one, each with ``checkpoint`` (``epoch_NNNN``, or
        :data:`BEST_CHECKPOINT` for the best), ``epoch`` (int), ``path`` (absolute :class:`Path`) and
        ``sha256``.

    Raises:
        UserError: Missing or malformed ``checkpoints.json``, no ``best`` entry, a duplicate epoch, a missing
            checkpoint file or one whose SHA-256 differs from the recorded one.
    """
    from ._io import read_json, sha256_file

    run_dir = Path(run_dir)
    index = run_dir / "checkpoints.json"
    if not index.is_file():
        raise UserError(f"no checkpoints.json in run directory {run_dir}; run the distill step for this run first")
    doc = read_json(index, "checkpoint index", "re-run the distill step for this run")
    entries = doc.get("checkpoints") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{index} lists no checkpoints; re-run the distill step for this run")
    run_id = str(doc.get("run_id") or run_dir.name)
    if "best" not in doc:
        raise UserError(f"{index} has no 'best' checkpoint (the distill step records best.safetensors there when "
                        f"training ends); re-run the distill step for {run_id}")

    def entry_of(entry: Any, what: str) -> dict[str, Any]:
        if not (isinstance(entry, dict) and isinstance(entry.get("epoch"), int) and isinstance(entry.get("path"), str)
                and isinstance(entry.get("sha256"), str)):
            raise UserError(f"{index}: {what} needs integer 'epoch', string 'path' and 'sha256'; "
                            "re-run the distill step for this run")
        return {"epoch": entry["epoch"], "path": (run_dir / entry["path"]).resolve(), "sha256": entry["sha256"].lower()}

    checkpoints = [entry_of(entry, f"checkpoint entry {n}") for n, entry in enumerate(entries)]
    epochs = [c["epoch"] for c in checkpoints]
    duplicated = sorted({e for e in epochs if epochs.count(e) > 1})
    if duplicated:
        raise UserError(f"{index} lists epoch {duplicated[0]} more than once; re-run the distill step for this run")
    checkpoints.sort(key=lambda c: c["epoch"])
    for c in checkpoints:
        c["checkpoint"] = c["path"].stem
    checkpoints.append({**entry_of(doc["best"], "the 'best' entry"), "checkpoint": BEST_CHECKPOINT})

    if verify:
        for c in checkpoints:
            path = c["path"]
            what = "best checkpoint" if c["checkpoint"] == BEST_CHECKPOINT else "epoch"
            if not path.is_file():
                raise UserError(f"checkpoint file {path} ({what} {c['epoch']}, listed in {index}) is missing; "
                                f"restore it or re-run the distill step for {run_id}")
            actual = sha256_file(path)
            if actual != c["sha256"]:
                raise UserError(f"checkpoint file {path} ({what} {c['epoch']}) has SHA-256 {actual[:12]}... but "
                                f"{index} records {c['sha256'][:12]}...; the file changed after training, restore "
                                f"it or re-run the distill step for {run_id}")
    return run_id, checkpoints


def run(params: dict, run_dir: str | Path, out: str | Path, summary_out: str | Path, *,
        manifest_path: str | Path, synthetic_path: str | Path | None = SYNTHETIC_PATH, device: str = "cpu",
        progress: bool = True) -> tuple["pd.DataFrame", "pd.DataFrame"]:  # noqa: F821
    """Analyse every checkpoint of one run, the best one included, and write the values and summary tables
    atomically.

    Args:
        params: Validated params (``dataset``, ``analysis``; ``sample.split`` only if the manifest has no
            ``split`` column).
        run_dir: The run directory with ``checkpoints.json``.
        out: Values table (Parquet).
        summary_out: Summary table (Parquet).
        manifest_path: Sample manifest from the sample step (the teacher's analysis sample).
        synthetic_path: The generated dataset, for ``dataset.kind: synthetic``.
        device: Torch device for the forward passes.
        progress: tqdm bar over checkpoints (stderr).

    Returns:
        ``(values, summary)`` as written.

    Raises:
        UserError: See :func:`read_checkpoints`; anything the extract step rejects. Nothing is written
            then.
    """
    import pandas as pd
    from tqdm import tqdm

    from . import extract
    from ._io import atomic_outputs, temporary_directory_beside
    from .models import load_checkpoint_spec
    from .reduce import reduce_activations

    run_id, checkpoints = read_checkpoints(run_dir)
    analysis = params["analysis"]
    out, summary_out = Path(out), Path(summary_out)
    values_parts, summary_parts = [], []
    # The outputs are opened first, so one that cannot be written stops the step before the work.
    with atomic_outputs(out, summary_out) as (values_tmp, summary_tmp), \
            temporary_directory_beside(out, ".tmp") as tmp:
        for c in tqdm(checkpoints, desc=f"evolution {run_id}", unit="ckpt", disable=not progress, file=sys.stderr):
            spec = load_checkpoint_spec(c["path"])  # {"arch", "kwargs", "weights": {"source": "file", "path"}}
            step_params = {**params, _MODEL_KEY: {"model": spec}}
            npz = Path(tmp) / f"{c['checkpoint']}.npz"
            extract.run(step_params, npz, manifest_path=manifest_path, synthetic_path=synthetic_path,
                        model_key=_MODEL_KEY, device=device)
            values, summary = reduce_activations(
                npz, bins=analysis["bins"], range_policy=analysis["range_policy"],
                shape_tolerance=analysis["shape_tolerance"], chunk_images=analysis["chunk_images"],
                model_label=run_id, checkpoint=c["checkpoint"],
                epoch=c["epoch"], progress=False)
            npz.unlink()  # one checkpoint's activations on disk at a time
            values_parts.append(values.assign(run_id=run_id))
            summary_parts.append(summary.assign(run_id=run_id))
        values = pd.concat(values_parts, ignore_index=True)
        summary = pd.concat(summary_parts, ignore_index=True)
        values.to_parquet(values_tmp, index=False)  # both tables or neither
        summary.to_parquet(summary_tmp, index=False)
    return values, summary


#: The authors' per-checkpoint entropy tables (``reference/entropy``) -> (run id, panel title, the training log
#: in ``reference/logs`` of the same run), in the order of the paper's Fig. 4 panels.
PUBLISHED_ENTROPY: dict[str, tuple[str, str, str]] = {
    "SoftKD.csv": ("softkd", "SoftKD", "SoftKD.txt"),
    "SpectralKD10.csv": ("spectralkd_f1", "SpectralKD F1", "SpectralKD_First_1.txt"),
    "SpectralKD01.csv": ("spectralkd_l1", "SpectralKD L1", "SpectralKD_Last_1.txt"),
    "SpectralKD11.csv": ("spectralkd_f1l1", "SpectralKD F1 L1", "SpectralKD_First_1_Last_1.txt"),
}
#: The student architecture of the published tables (DeiT-Tiny, 12 blocks).
PUBLISHED_ARCH = "deit_tiny_patch16_224"


def read_published_entropy(path: str | Path, run_id: str,
                           best_epoch: int | None = None) -> "pd.DataFrame":  # noqa: F821
    """One of the authors' per-checkpoint entropy tables, in the evolution step's long format.

    The file is wide (header ``Model/Epoch,Layer_1,...,Layer_L``, one row per checkpoint). Row
    ``checkpoint_epoch_N`` becomes ``checkpoint`` = that name, ``epoch`` = N (training epochs completed, as
    in this pipeline); ``model_best`` becomes the :data:`BEST_CHECKPOINT` row with ``epoch`` = ``best_epoch``
    (the tables do not say it; missing = ``<NA>``).

    Args:
        path: The CSV (``reference/entropy/<name>.csv``).
        run_id: Value of the ``run_id`` and ``model`` columns.
        best_epoch: Epochs completed when ``model_best`` was saved (see :func:`published_best_epoch`).

    Returns:
        Columns ``model``, ``arch``, ``checkpoint``, ``epoch`` (nullable Int64), ``layer`` (1-based),
        ``metric`` (``entropy``), ``value`` (bits, as published), ``run_id``; the epoch rows by epoch, then
        the best row. The evolution step's other columns (sample, histogram range, hashes) are not
        published and absent.

    Raises:
        UserError: Missing file, no ``Layer_<n>`` columns, or a row name other than the two forms above.
    """
    import re

    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise UserError(f"published entropy table not found: {path}; it is vendored in reference/entropy")
    wide = pd.read_csv(path)
    layers = {c: int(m.group(1)) for c in wide.columns if (m := re.fullmatch(r"Layer_(\d+)", str(c)))}
    if wide.empty or wide.columns[0] != "Model/Epoch" or not layers:
        raise UserError(f"{path} is not a published entropy table (header 'Model/Epoch,Layer_1,...'); restore it "
                        "from reference/entropy (reference/SHA256SUMS)")
    rows = []
    for name, *values in wide[["Model/Epoch", *layers]].itertuples(index=False):
        if name == "model_best":
            checkpoint, epoch = BEST_CHECKPOINT, best_epoch
        elif m := re.fullmatch(r"checkpoint_epoch_(\d+)", str(name)):
            checkpoint, epoch = str(name), int(m.group(1))
        else:
            raise UserError(f"{path}: row '{name}' is neither checkpoint_epoch_<N> nor model_best; restore it from "
                            "reference/entropy")
        rows += [{"checkpoint": checkpoint, "epoch": epoch, "layer": layer, "value": float(v)}
                 for layer, v in zip(layers.values(), values)]
    long = pd.DataFrame(rows).astype({"epoch": "Int64"})
    order = long["checkpoint"].eq(BEST_CHECKPOINT).astype(int)  # epoch rows by epoch, then the best
    long = long.assign(_best=order).sort_values(["_best", "epoch", "layer"], kind="stable").drop(columns="_best")
    return long.assign(model=run_id, arch=PUBLISHED_ARCH, metric="entropy", run_id=run_id)[
        ["model", "arch", "checkpoint", "epoch", "layer", "metric", "value", "run_id"]].reset_index(drop=True)


def published_best_epoch(log_path: str | Path) -> int:
    """Epochs completed when DeiT's ``main.py`` saved ``model_best``: 1 + the first epoch (0-based in the log)
    with the highest ``test_acc1`` (it saves whenever the top-1 beats the previous maximum)."""
    from .tables import read_run_log, run_summary

    return run_summary(read_run_log(log_path))["best_epoch"] + 1


def read_published(entropy_dir: str | Path,
                   logs_dir: str | Path | None = None) -> tuple["pd.DataFrame", dict[str, str]]:  # noqa: F821
    """The authors' four Fig. 4 tables (:data:`PUBLISHED_ENTROPY`) as one long table, and their panel titles.

    Args:
        entropy_dir: ``reference/entropy``.
        logs_dir: ``reference/logs``, for the best checkpoint's epoch; ``None``: unknown (``<NA>``).

    Returns:
        ``(values, labels)``: :func:`read_published_entropy` of every table, concatenated; run id -> title,
        in the paper's panel order.
    """
    import pandas as pd

    parts, labels = [], {}
    for csv, (run_id, label, log) in PUBLISHED_ENTROPY.items():
        best = published_best_epoch(Path(logs_dir) / log) if logs_dir is not None else None
        parts.append(read_published_entropy(Path(entropy_dir) / csv, run_id, best))
        labels[run_id] = label
    return pd.concat(parts, ignore_index=True), labels


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", required=True, metavar="DIR",
                        help="distillation run directory holding checkpoints.json (results/runs/<run_id>)")
    parser.add_argument("--manifest", required=True, metavar="PARQUET", help="sample manifest (from the sample step)")
    parser.add_argument("--data", default=SYNTHETIC_PATH, metavar="NPZ",
                        help=f"synthetic dataset file, for dataset.kind=synthetic (default {SYNTHETIC_PATH})")
    parser.add_argument("--device", default="cpu", help="torch device to run on (default cpu)")
    parser.add_argument("--out", required=True, metavar="PARQUET", help="values table for all checkpoints")
    parser.add_argument("--summary", required=True, metavar="PARQUET", help="profile summary per checkpoint")


def main(args: argparse.Namespace, params: dict[str, Any]) -> None:
    values, summary = run(params, args.run_dir, args.out, args.summary, manifest_path=args.manifest,
                          synthetic_path=args.data, device=args.device)
    entropy = summary[summary["metric"] == "entropy"]
    trace = ", ".join(f"{'best, ' if r.checkpoint == BEST_CHECKPOINT else ''}epoch {int(r.epoch)}: {r.shape}, min at "
                      f"layer {int(r.argmin_layer)}" for r in entropy.itertuples())
    print(f"{entropy['run_id'].iloc[0]}: {len(entropy)} checkpoints, {len(values)} rows -> {args.out} ({trace})")
