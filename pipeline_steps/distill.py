"""Train one student of the distillation grid (``distill.runs`` x ``distill.seeds``) from the teacher.

Usage::

    python -m pipeline_steps distill --params params.yaml --run-id spectralkd_f1-s0 \\
        [--teacher-weights results/teacher/model.safetensors] [--teacher-cache results/teacher/cache.safetensors] \\
        [--data results/data/synthetic.npz] --out-dir results/runs/spectralkd_f1-s0

    torchrun --nproc_per_node 4 -m pipeline_steps distill --run-id ...   (DDP; batch_size is the global batch;
                                                                      torchrun rejects the --run spelling)

The run directory is :func:`pipeline_steps.train.train`'s (log.txt, model.safetensors, best.safetensors,
checkpoints.json, checkpoints/, resume/). An interrupted run resumes when started again; SIGTERM saves and
exits with status 75 so that the workflow retries it.
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path
from typing import Any

from .config import SYNTHETIC_PATH, TRAINING_DATA_PARAMS, DistillRun, distill_run, select, uses_teacher_cache
from .errors import UserError


def teacher_spec(params: dict, weights_path: str | os.PathLike | None) -> dict:
    """The teacher's model spec; a pipeline-trained teacher needs ``weights_path``."""
    spec = copy.deepcopy(params["teacher"]["model"])
    if spec["weights"]["source"] == "train" and weights_path is None:
        raise UserError("the teacher is trained by this pipeline (teacher.model.weights.source: train); pass "
                        "--teacher-weights results/teacher/model.safetensors (run the train_teacher rule first)")
    return spec


def layer_pairs(run: DistillRun, student_depth: int, teacher_depth: int) -> list[tuple[int, int]]:
    """The run's ``(student_block, teacher_block)`` pairs, validated against the two models' depths."""
    from .losses import parse_layer_pairs

    if run.layers is None:
        return []
    try:
        return parse_layer_pairs(run.layers, student_depth, teacher_depth)
    except UserError as exc:
        raise UserError(f"distill.runs entry '{run.name}': {exc}") from None


def teacher_layers_of_grid(params: dict, student_depth: int, teacher_depth: int) -> list[int]:
    """Every teacher block some run of the grid pairs with (what the teacher cache must hold)."""
    from .config import distill_runs

    return sorted({t for run in distill_runs(params) for _, t in layer_pairs(run, student_depth, teacher_depth)})


def build_student(params: dict, seed: int) -> Any:
    """The student, randomly initialised with ``seed``."""
    from .models import create_model

    spec = copy.deepcopy(params["student"]["model"])
    if spec.get("weights", {}).get("source", "random") != "random":
        raise UserError("student.model.weights.source must be random (students are trained from scratch here)")
    spec["weights"] = {"source": "random", "seed": seed, "tag": None, "path": None}
    return create_model(spec)


def run(params: dict, run_id: str, out_dir: str | os.PathLike, *, teacher_weights: str | os.PathLike | None = None,
        teacher_cache: str | os.PathLike | None = None, synthetic_path: str | os.PathLike = SYNTHETIC_PATH,
        progress: bool = True) -> list[dict[str, Any]]:
    """Train grid run ``run_id`` and write its run directory.

    Args:
        params: Validated config (``dataset``, ``teacher.model``, ``student.model``, ``distill``).
        run_id: ``<name>-s<seed>`` of a ``distill.runs`` entry and a ``distill.seeds`` seed.
        out_dir: The run directory.
        teacher_weights: The teacher's weight file (required for a pipeline-trained teacher).
        teacher_cache: Teacher outputs from the teacher-cache step; used when ``distill.teacher_cache`` allows.
        synthetic_path: The generated dataset (synthetic data).
        progress: Progress bars.

    Returns:
        The per-epoch log rows (rank 0).
    """
    from .data import open_dataset
    from .losses import build_method
    from .models import check_num_classes, create_model, num_blocks
    from .train import Recipe, run_fingerprint, train

    spec = distill_run(params, run_id)
    recipe = Recipe.from_params(params["distill"]["train"], seed=spec.seed, epochs=spec.epochs)
    train_set = open_dataset(params, "train", synthetic_path=synthetic_path, preprocessing="evaluation")
    test_set = open_dataset(params, "test", synthetic_path=synthetic_path, preprocessing="evaluation")
    teacher = create_model(teacher_spec(params, teacher_weights), weights_path=teacher_weights)
    student = build_student(params, spec.seed)
    check_num_classes(student, len(train_set.classes), where="student.model.kwargs.num_classes")
    check_num_classes(teacher, len(train_set.classes), where="teacher.model.kwargs.num_classes")
    pairs = layer_pairs(spec, num_blocks(student), num_blocks(teacher))
    objective = build_method(spec.method, pairs=pairs, student_channels=[student.embed_dim] * len(pairs),
                             teacher_channels=[teacher.embed_dim] * len(pairs),
                             label_smoothing=recipe.label_smoothing, **spec.loss_options())
    teacher_layers = [t for _, t in pairs]

    targets = None
    if objective.needs_teacher_logits or objective.needs_teacher_features:
        targets = _teacher_targets(params, teacher, teacher_layers, teacher_cache, train_set)

    files = [p for p in (teacher_weights, synthetic_path if params["dataset"]["kind"] == "synthetic" else None)
             if p is not None]
    config = {**select(params, (*TRAINING_DATA_PARAMS, "teacher.model", "student.model", "distill.train")),
              "run": spec.__dict__}
    meta = {"arch": params["student"]["model"]["arch"], "kwargs": params["student"]["model"]["kwargs"],
            "run_id": run_id, "method": spec.method, "layers": spec.layers, "seed": spec.seed}
    return train(student, train_set, test_set, recipe, out_dir, objective=objective, teacher=targets,
                 fingerprint=run_fingerprint(config, files), metadata=meta, progress=progress)


def _teacher_targets(params: dict, teacher: Any, layers: list[int], cache_path: str | os.PathLike | None,
                     train_set: Any) -> Any:
    from .train import TeacherTargets

    if not uses_teacher_cache(params):
        return TeacherTargets(layers, model=teacher)
    if cache_path is None:
        raise UserError("distill.teacher_cache is on/auto and the recipe does not augment, but no --teacher-cache "
                        "was given; run the teacher-cache step or set distill.teacher_cache: off")
    return TeacherTargets(layers, cache=read_cache(cache_path, layers, train_set=train_set, teacher=teacher))


def read_cache(path: str | os.PathLike, layers: list[int], *, train_set: Any, teacher: Any) -> dict[str, Any]:
    """The teacher outputs in ``path``, checked against what this run would compute them from.

    A cache is rows of teacher outputs in training-set order; used with another training set (of any size)
    or another teacher it would silently distil from wrong targets. So the cache's recorded origin
    (:func:`pipeline_steps.teacher_cache.cache_metadata`) must equal this run's: the training set's identity
    and size, and the teacher's weights hash; and it must hold every block the run pairs with.

    Raises:
        UserError: The file is missing, unreadable, of another format, made from other data or another
            teacher, or lacks a block (one line naming the cache and the fix).
    """
    import safetensors
    import safetensors.torch

    from .teacher_cache import CACHE_FORMAT, cache_metadata

    path = Path(path)
    fix = "delete it and rerun the teacher-cache step (or set distill.teacher_cache: off)"
    if not path.is_file():
        raise UserError(f"teacher cache {path} not found; run the teacher-cache step")
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            recorded = f.metadata() or {}
        cache = safetensors.torch.load_file(str(path))
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # --run-id, not only --run: torchrun's own argument parser reads every option on its command line and
    # rejects --run as an ambiguous abbreviation of its --run-path (so `torchrun -m pipeline_steps distill
    # --run X` fails before starting anything).
    parser.add_argument("--run-id", "--run", dest="run", required=True, metavar="RUN_ID",
                        help="grid run id, <name>-s<seed> (use --run-id under torchrun)")
    parser.add_argument("--out-dir", required=True, help="run directory")
    parser.add_argument("--teacher-weights", default=None, metavar="FILE", help="teacher weight file")
    parser.add_argument("--teacher-cache", default=None, metavar="FILE",
                        help="teacher outputs from the teacher-cache step (used when distill.teacher_cache allows)")
    parser.add_argument("--data", default=SYNTHETIC_PATH, help="generated dataset artifact (synthetic data)")


def main(args: argparse.Namespace, params: dict[str, Any]) -> None:
    run(params, args.run, args.out_dir, teacher_weights=args.teacher_weights, teacher_cache=args.teacher_cache,
        synthetic_path=args.data)
