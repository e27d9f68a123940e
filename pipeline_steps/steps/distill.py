"""Train one student of the distillation grid (``distill.runs`` x ``distill.seeds``) from the teacher.

Usage::

    python -m pipeline_steps distill --params params.yaml --run-id spectralkd_f1-s0 \\
        [--teacher-weights results/teacher/model.safetensors] [--teacher-cache results/teacher/cache.safetensors] \\
        [--data results/data/synthetic.npz] --out-dir results/runs/spectralkd_f1-s0

    torchrun --nproc_per_node 4 -m pipeline_steps distill --run-id ...   (DDP; batch_size is the global batch)

The run directory is :func:`pipeline_steps.training.loop.train`'s (log.txt, model.safetensors, best.safetensors,
checkpoints.json, checkpoints/, resume/). An interrupted run resumes when started again; SIGTERM saves and
exits with status 75 so that the workflow retries it.

The run's resolved ``(student_block, teacher_block)`` pairs are printed, stored in every weights file's
metadata (``layer_pairs``) and in checkpoints.json. A run whose pairs are chosen from the analysis
(``phase:<name>``, ``cka:<entry>:<spec>``) reads it from ``--teacher-reductions`` or ``--cka-statistics``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Mapping

from pipeline_steps.config import (
    SYNTHETIC_PATH,
    DistillRun,
    distill_run,
    select,
    student_spec,
    teacher_spec,
    uses_teacher_cache,
)
from pipeline_steps.dependencies import TRAINING_DATA_PARAMS
from pipeline_steps.errors import UserError


def run(grid_run: DistillRun, out_dir: str | os.PathLike, *, teacher: Mapping[str, Any], student: Mapping[str, Any],
        recipe: "Recipe", dataset: Mapping[str, Any], fingerprint: str,  # noqa: F821
        teacher_weights: str | os.PathLike | None = None, teacher_cache: str | os.PathLike | None = None,
        synthetic_path: str | os.PathLike = SYNTHETIC_PATH, evidence: "PairEvidence | None" = None,  # noqa: F821
        progress: bool = True) -> list[dict[str, Any]]:
    """Train the grid run ``grid_run`` and write its run directory.

    Args:
        grid_run: The grid run (:func:`~pipeline_steps.config.distill_runs`): method, layer pairs, weights, seed.
        out_dir: The run directory.
        teacher: The teacher's model spec; ``teacher_weights`` is its weight file.
        student: The student's model spec, randomly initialised with the run's seed
            (:func:`~pipeline_steps.config.student_spec`).
        recipe: The training recipe (``distill.train`` with the run's seed and epochs).
        dataset: The ``dataset`` params section; training and scoring use its evaluation transform.
        fingerprint: Identifies the run's configuration, data and code; a saved state resumes only under it.
        teacher_cache: The teacher-cache step's file, to read the teacher's outputs from instead of running
            the teacher (``None``: the teacher runs on every batch).
        synthetic_path: The generated dataset (synthetic data).
        evidence: The analysis a ``phase`` or ``cka`` layer-pair spec is resolved from
            (:func:`~pipeline_steps.distillation.pair_evidence.read_pair_evidence`).
        progress: Progress bars.

    Returns:
        The per-epoch log rows (rank 0).
    """
    from pipeline_steps.data.datasets import open_dataset
    from pipeline_steps.distillation.layer_pairs import run_layer_pairs
    from pipeline_steps.distillation.methods import build_method
    from pipeline_steps.models.build import create_model
    from pipeline_steps.models.layers import block_channels, check_num_classes, num_blocks
    from pipeline_steps.models.remedies import student_spec_for
    from pipeline_steps.training.loop import train
    from pipeline_steps.training.teacher_targets import TeacherTargets, read_teacher_cache

    train_set = open_dataset(dataset, "train", synthetic_path=synthetic_path, preprocessing="evaluation")
    test_set = open_dataset(dataset, "test", synthetic_path=synthetic_path, preprocessing="evaluation")
    teacher_model = create_model(teacher, weights_path=teacher_weights)
    # Lift / WideLast: the follow-up's student built on the configured one, at the teacher's width.
    student = student_spec_for(student, grid_run.architecture, teacher_model.embed_dim)
    student_model = create_model(student)
    check_num_classes(student_model, len(train_set.classes), where="student.model.kwargs.num_classes")
    check_num_classes(teacher_model, len(train_set.classes), where="teacher.model.kwargs.num_classes")
    pairs = run_layer_pairs(grid_run, num_blocks(student_model), num_blocks(teacher_model), evidence)
    if pairs and int(os.environ.get("RANK", "0")) == 0:
        origin = f" (chosen from {evidence.described})" if evidence is not None else ""
        print(f"{grid_run.run_id}: layer pairs {grid_run.layers!r} -> (student, teacher) blocks "
              f"{', '.join(f'({s}, {t})' for s, t in pairs)}{origin}", flush=True)
    s_channels, t_channels = block_channels(student_model), block_channels(teacher_model)
    objective = build_method(grid_run.method, pairs=pairs, student_channels=[s_channels[s] for s, _ in pairs],
                             teacher_channels=[t_channels[t] for _, t in pairs],
                             label_smoothing=recipe.label_smoothing, **grid_run.loss_options())
    teacher_layers = [t for _, t in pairs]

    targets = None
    if objective.needs_teacher_logits or objective.needs_teacher_features:
        if teacher_cache is None:
            targets = TeacherTargets(teacher_layers, model=teacher_model)
        else:
            targets = TeacherTargets(teacher_layers, cache=read_teacher_cache(
                teacher_cache, teacher_layers, train_set=train_set, teacher=teacher_model))
    meta = {"arch": student["arch"], "kwargs": student["kwargs"], "run_id": grid_run.run_id, "method": grid_run.method,
            "layers": grid_run.layers, "layer_pairs": [list(p) for p in pairs], "seed": grid_run.seed}
    if evidence is not None:
        meta["layer_pairs_from"] = evidence.described
    return train(student_model, train_set, test_set, recipe, out_dir, objective=objective, teacher=targets,
                 fingerprint=fingerprint, metadata=meta, progress=progress)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # --run-id, not --run: torchrun's own argument parser reads every option on its command line and rejects
    # --run as an ambiguous abbreviation of its --run-path (`torchrun -m pipeline_steps distill --run X` fails).
    parser.add_argument("--run-id", dest="run", required=True, metavar="RUN_ID", help="grid run id, <name>-s<seed>")
    parser.add_argument("--out-dir", required=True, help="run directory")
    parser.add_argument("--teacher-weights", default=None, metavar="FILE", help="teacher weight file")
    parser.add_argument("--teacher-cache", default=None, metavar="FILE",
                        help="teacher outputs from the teacher-cache step (used when distill.teacher_cache allows)")
    parser.add_argument("--data", default=SYNTHETIC_PATH, help="generated dataset artifact (synthetic data)")
    parser.add_argument("--teacher-reductions", default=None, metavar="FILE",
                        help="the teacher's reductions table, for layers: phase:<name> "
                             "(results/reductions/teacher.parquet)")
    parser.add_argument("--cka-statistics", default=None, metavar="FILE",
                        help="the evolution statistics of the run a layers: cka:<entry>:<spec> run names "
                             "(results/evolution/<entry>-s<seed>_statistics.parquet)")


def main(args: argparse.Namespace, params: dict[str, Any]) -> None:
    from pipeline_steps.distillation.layer_pairs import pair_source
    from pipeline_steps.distillation.pair_evidence import read_pair_evidence
    from pipeline_steps.training.recipe import Recipe
    from pipeline_steps.training.run_dir import run_fingerprint

    grid_run = distill_run(params, args.run)
    try:
        source = pair_source(grid_run.layers)
    except UserError as exc:
        raise UserError(f"distill.runs entry '{grid_run.name}': {exc}") from None
    evidence, evidence_files = None, []
    if source is not None:
        evidence = read_pair_evidence(source, teacher_reductions=args.teacher_reductions,
                                      cka_statistics=args.cka_statistics,
                                      shape_tolerance=params["analysis"]["shape_tolerance"])
        evidence_files = [args.teacher_reductions if source.kind == "phase" else args.cka_statistics]
    cache = None
    if uses_teacher_cache(params) and grid_run.method != "ce":
        if args.teacher_cache is None:
            raise UserError("distill.teacher_cache is on/auto and the recipe does not augment, but no "
                            "--teacher-cache was given; run the teacher-cache step or set distill.teacher_cache: off")
        cache = args.teacher_cache
    # The analysis a phase or cka run's pairs come from is part of what the run is: a new one restarts it.
    files = [p for p in (args.teacher_weights, args.data if params["dataset"]["kind"] == "synthetic" else None)
             if p is not None] + evidence_files
    config = {**select(params, (*TRAINING_DATA_PARAMS, "teacher.model", "student.model", "distill.train")),
              "run": grid_run.fingerprint_fields()}
    run(grid_run, args.out_dir, teacher=teacher_spec(params, args.teacher_weights),
        student=student_spec(params, grid_run.seed),
        recipe=Recipe.from_params(params["distill"]["train"], seed=grid_run.seed, epochs=grid_run.epochs),
        dataset=params["dataset"], fingerprint=run_fingerprint(config, files, step="distill"),
        teacher_weights=args.teacher_weights, teacher_cache=cache, synthetic_path=args.data, evidence=evidence)
