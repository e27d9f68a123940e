"""Per-checkpoint analysis of one distillation run: the student's layer-wise profiles over training (Fig. 4).

Usage::

    python -m pipeline_steps evolution --params params.yaml \\
        --run-dir results/runs/<run_id> --manifest results/samples/manifest.parquet \\
        [--data results/data/synthetic.npz] \\
        --reference results/activations/teacher.npz \
        --out results/evolution/<run_id>.parquet --summary results/evolution/<run_id>_summary.parquet \
        --statistics results/evolution/<run_id>_statistics.parquet

The run directory holds ``checkpoints.json`` (written by the distill step)::

    {"run_id": "spectralkd_f1-s0", "epochs": 4,
     "checkpoints": [{"epoch": 0, "path": "checkpoints/epoch_0000.safetensors", "sha256": "<hex>"}, ...],
     "best": {"epoch": 3, "path": "best.safetensors", "sha256": "<hex>", "test_acc1": 61.2}}

with ``path`` relative to the run directory and ``epoch`` the number of completed training epochs (0 = the
initial random student). ``best`` is the best test top-1 checkpoint and the epoch it was saved after. Every
checkpoint's SHA-256 (the best's included) is checked first, then each one goes through exactly the teacher
analysis: :func:`~pipeline_steps.analysis.extraction.extract_activations` (the model rebuilt from the file's own
spec, as a ``weights.source: file`` model) and :func:`~pipeline_steps.analysis.reductions.reduce_activations`,
with the ``analysis`` params, and :func:`~pipeline_steps.analysis.layer_statistics.layer_statistics` with
``analysis.statistics`` (CKA to ``--reference``, the teacher's activations on the same images). The
activations live in a temporary directory beside ``--out`` and are deleted after the analysis (a killed run's
directory is removed by the next run). The three tables are written together or not at all.

The same step analyses the teacher's own training (``--run-dir results/teacher --model-key teacher``), with
the final teacher as the CKA reference: how far each layer is from where it ends.

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
- ``--statistics``: the statistics table of every checkpoint (docs/artifacts.md section 4b), ``model`` and
  ``run_id`` the run id, ``seed`` read from it (:func:`pipeline_steps.config.run_seed`), checkpoints as in
  ``--out``.

:func:`read_published_entropy` reads the authors' per-checkpoint entropy tables (``reference/entropy``) into
the same long format, so Fig. 4 draws them with the same function.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Mapping

from pipeline_steps.analysis.checkpoints import BEST_CHECKPOINT, read_checkpoints
from pipeline_steps.config import SYNTHETIC_PATH, run_seed


def run(run_dir: str | Path, out: str | Path, summary_out: str | Path, statistics_out: str | Path, *,
        dataset: Mapping[str, Any], analysis: Mapping[str, Any], manifest_path: str | Path,
        reference: str | Path | None = None, model_key: str = "student", split: str = "test",
        synthetic_path: str | Path | None = SYNTHETIC_PATH, device: str = "cpu",
        progress: bool = True) -> tuple["pd.DataFrame", "pd.DataFrame", "pd.DataFrame"]:  # noqa: F821
    """Analyse every checkpoint of one run, the best one included, and write the values, summary and
    statistics tables atomically.

    Args:
        run_dir: The run directory with ``checkpoints.json``.
        out: Values table (Parquet).
        summary_out: Summary table (Parquet).
        statistics_out: Statistics table (Parquet).
        dataset: The ``dataset`` params section.
        analysis: The ``analysis`` params section (layers, batch size, bins, range policy, chunking, shape
            tolerance), as for the teacher.
        manifest_path: Sample manifest from the sample step (the teacher's analysis sample).
        reference: The teacher's activations on the same sample, for CKA; None for no CKA rows.
        model_key: Which model the checkpoints are (``student``, or ``teacher`` for its own training),
            recorded in the activations' meta.
        split: The images' split when the manifest has no ``split`` column.
        synthetic_path: The generated dataset, for ``dataset.kind: synthetic``.
        device: Torch device for the forward passes.
        progress: tqdm bar over checkpoints (stderr).

    Returns:
        ``(values, summary, statistics)`` as written.

    Raises:
        UserError: See :func:`read_checkpoints`; anything the extract step rejects. Nothing is written
            then.
    """
    import pandas as pd
    from tqdm import tqdm

    from pipeline_steps.analysis.extraction import extract_activations, open_sample
    from pipeline_steps.analysis.layer_statistics import layer_statistics, statistics_settings
    from pipeline_steps.analysis.reductions import reduce_activations
    from pipeline_steps.artifacts import atomic_outputs, temporary_directory_beside
    from pipeline_steps.models.weights import load_checkpoint_spec

    run_id, checkpoints = read_checkpoints(run_dir)
    out, summary_out = Path(out), Path(summary_out)
    values_parts, summary_parts, statistics_parts = [], [], []
    settings = statistics_settings(analysis)
    # The outputs are opened first, so one that cannot be written stops the step before the work.
    with atomic_outputs(out, summary_out, statistics_out) as (values_tmp, summary_tmp, statistics_tmp), \
            temporary_directory_beside(out, ".tmp") as tmp:
        # Opened once for all checkpoints: an ImageNet-style folder is listed once per run, not per checkpoint.
        images = open_sample(dataset, manifest_path, split=split, synthetic_path=synthetic_path)
        for c in tqdm(checkpoints, desc=f"evolution {run_id}", unit="ckpt", disable=not progress, file=sys.stderr):
            spec = load_checkpoint_spec(c["path"])  # {"arch", "kwargs", "weights": {"source": "file", "path"}}
            npz = Path(tmp) / f"{c['checkpoint']}.npz"
            extract_activations(spec, npz, dataset=dataset, manifest_path=manifest_path, layers=analysis["layers"],
                                batch_size=analysis["batch_size"], split=split, synthetic_path=synthetic_path,
                                model_key=model_key, device=device, num_workers=analysis["num_workers"],
                                images=images)
            values, summary = reduce_activations(
                npz, bins=analysis["bins"], range_policy=analysis["range_policy"],
                shape_tolerance=analysis["shape_tolerance"], chunk_images=analysis["chunk_images"],
                model_label=run_id, checkpoint=c["checkpoint"],
                epoch=c["epoch"], progress=False)
            statistics_parts.append(layer_statistics(
                npz, reference=reference, model_label=run_id, seed=run_seed(run_id), checkpoint=c["checkpoint"],
                epoch=c["epoch"], **settings))
            npz.unlink()  # one checkpoint's activations on disk at a time
            values_parts.append(values.assign(run_id=run_id))
            summary_parts.append(summary.assign(run_id=run_id))
        values = pd.concat(values_parts, ignore_index=True)
        summary = pd.concat(summary_parts, ignore_index=True)
        statistics = pd.concat(statistics_parts, ignore_index=True)
        values.to_parquet(values_tmp, index=False)  # all three tables or none
        summary.to_parquet(summary_tmp, index=False)
        statistics.to_parquet(statistics_tmp, index=False)
    return values, summary, statistics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", required=True, metavar="DIR",
                        help="run directory holding checkpoints.json (results/runs/<run_id>, or results/teacher)")
    parser.add_argument("--reference", default=None, metavar="NPZ",
                        help="the teacher's activations on the same sample, for CKA (default: no CKA rows)")
    parser.add_argument("--model-key", default="student", choices=("student", "teacher"),
                        help="which model the checkpoints are (default student)")
    parser.add_argument("--manifest", required=True, metavar="PARQUET", help="sample manifest (from the sample step)")
    parser.add_argument("--data", default=SYNTHETIC_PATH, metavar="NPZ",
                        help=f"synthetic dataset file, for dataset.kind=synthetic (default {SYNTHETIC_PATH})")
    parser.add_argument("--device", default="cpu", help="torch device to run on (default cpu)")
    parser.add_argument("--out", required=True, metavar="PARQUET", help="values table for all checkpoints")
    parser.add_argument("--summary", required=True, metavar="PARQUET", help="profile summary per checkpoint")
    parser.add_argument("--statistics", required=True, metavar="PARQUET",
                        help="statistics table (beyond entropy) for all checkpoints")


def main(args: argparse.Namespace, params: dict[str, Any]) -> None:
    values, summary, _ = run(args.run_dir, args.out, args.summary, args.statistics, dataset=params["dataset"],
                             analysis=params["analysis"], manifest_path=args.manifest, reference=args.reference,
                             model_key=args.model_key, split=params["sample"]["split"], synthetic_path=args.data,
                             device=args.device)
    entropy = summary[summary["metric"] == "entropy"]
    trace = ", ".join(f"{'best, ' if r.checkpoint == BEST_CHECKPOINT else ''}epoch {int(r.epoch)}: {r.shape}, min at "
                      f"layer {int(r.argmin_layer)}" for r in entropy.itertuples())
    print(f"{entropy['run_id'].iloc[0]}: {len(entropy)} checkpoints, {len(values)} rows -> {args.out} ({trace})")
