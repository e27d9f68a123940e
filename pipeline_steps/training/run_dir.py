"""A training run's directory: logs, checkpoints, the checkpoint index and the resume state.

Layout (``out_dir``)::

    log.txt                          one JSON line per epoch (train_lr, train_loss[, train_loss_base,
                                     train_loss_dist, train_loss_fft], test_loss, test_acc1, test_acc5,
                                     epoch, n_parameters)
    model.safetensors                final weights (written last: its presence means the run finished)
    best.safetensors                 weights of the best test top-1 epoch
    checkpoints.json                 the kept checkpoints (epoch, path, sha256) and the best one (``best``: epoch,
                                     path, sha256, test_acc1), for the evolution analysis; a distillation run's
                                     resolved ``layer_pairs`` ([student block, teacher block], 0-based)
    environment.json                 what each attempt (start, resume) computed with: versions, device, CPU
                                     model and vector ISA, threads, processes (:mod:`pipeline_steps.environment`)
    checkpoints/epoch_NNNN.safetensors   weights after NNNN epochs: 0, every ``checkpoint_every``, the last
    resume/step_NNNNNNNNN.{safetensors,state.pt}   the newest training state (weights + optimizer,
                                     scheduler, scaler, objective, RNG, log rows, position in the epoch)

Every file is written atomically. The resume pair is written weights first, state second, and named by the
global step; resuming takes the newest pair whose state file exists and whose weights hash matches, so a
kill at any instant leaves a consistent pair to resume from. A state is only resumed when its fingerprint
(:func:`run_fingerprint`: the run's config, data, teacher and code) equals the current one; otherwise
training starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from timm.scheduler import CosineLRScheduler
from torch import nn
from tqdm import tqdm

from pipeline_steps.artifacts import atomic_path, sha256_file, write_json, write_text
from pipeline_steps.dependencies import code_digest
from pipeline_steps.training.parallel import rng_state

__all__ = ["Position", "run_fingerprint", "RunDirectory"]


@dataclass
class Position:
    """Where training stands: completed epochs, batches done in the current one and their running sums."""

    epoch: int = 0
    batch: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    best_acc1: float = -1.0
    kept: list[dict[str, Any]] = field(default_factory=list)
    #: One :func:`environment.describe` record per attempt (start or resume) of the run, with where it began.
    environments: list[dict[str, Any]] = field(default_factory=list)
    #: best.safetensors as checkpoints.json lists it (epoch, path, sha256, test_acc1); None before epoch 1.
    best: dict[str, Any] | None = None


class RunDirectory:
    """The run directory's files (see the module docstring) and the resume protocol."""

    def __init__(self, out_dir: str | os.PathLike, fingerprint: str, metadata: Mapping[str, Any]) -> None:
        self.path = Path(out_dir)
        self.fingerprint = fingerprint
        self.metadata = dict(metadata)

    @property
    def resume_dir(self) -> Path:
        return self.path / "resume"

    def write_log(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """log.txt: one JSON line per epoch (the authors' DeiT format), rewritten atomically."""
        write_text(self.path / "log.txt", "".join(json.dumps(r) + "\n" for r in rows))

    def save_weights(self, student: nn.Module, name: str, **extra: Any) -> Path:
        from pipeline_steps.models.weights import save_weights

        path = self.path / name
        save_weights(student, path, {**self.metadata, **extra})
        return path

    def keep_checkpoint(self, student: nn.Module, epoch: int, position: Position) -> None:
        """Weights after ``epoch`` epochs into checkpoints/, listed in checkpoints.json."""
        path = self.save_weights(student, f"checkpoints/epoch_{epoch:04d}.safetensors", epoch=epoch)
        position.kept = [k for k in position.kept if k["epoch"] != epoch]
        position.kept.append({"epoch": epoch, "path": path.relative_to(self.path).as_posix(),
                              "sha256": sha256_file(path)})
        self.write_manifest(position)

    def write_environments(self, position: Position) -> None:
        """environment.json: what each attempt of the run computed with (see :mod:`environment`)."""
        write_json(self.path / "environment.json", {"run_id": self.metadata.get("run_id", self.path.name),
                                                    "attempts": position.environments})

    def keep_best(self, student: nn.Module, epoch: int, test_acc1: float, position: Position) -> None:
        """Weights of a new best test top-1 (after ``epoch`` epochs) into best.safetensors, listed in
        checkpoints.json as ``best``."""
        path = self.save_weights(student, "best.safetensors", epoch=epoch, test_acc1=test_acc1)
        position.best_acc1 = test_acc1
        position.best = {"epoch": epoch, "path": path.relative_to(self.path).as_posix(), "sha256": sha256_file(path),
                         "test_acc1": test_acc1}
        self.write_manifest(position)

    def write_manifest(self, position: Position) -> None:
        """checkpoints.json (atomic): the kept checkpoints by epoch and, once an epoch is evaluated, the best."""
        doc = {"run_id": self.metadata.get("run_id", self.path.name), "epochs": self.metadata.get("epochs"),
               "checkpoints": sorted(position.kept, key=lambda k: k["epoch"])}
        if "layer_pairs" in self.metadata:
            doc["layer_pairs"] = self.metadata["layer_pairs"]
        if position.best is not None:
            doc["best"] = position.best
        write_json(self.path / "checkpoints.json", doc)

    def save_state(self, trainee: nn.Module, optimizer: torch.optim.Optimizer, scheduler: CosineLRScheduler,
                   scaler: torch.amp.GradScaler, position: Position, step: int) -> None:
        """The resume pair for global step ``step``; older pairs are removed once it is complete."""
        stem = self.resume_dir / f"step_{step:09d}"
        weights = self.save_weights(trainee.student, f"resume/{stem.name}.safetensors", epoch=position.epoch)
        state = {
            "fingerprint": self.fingerprint, "weights_sha256": sha256_file(weights), "step": step,
            "epoch": position.epoch, "batch": position.batch, "sums": position.sums, "rows": position.rows,
            "best_acc1": position.best_acc1, "kept": position.kept, "best": position.best,
            "environments": position.environments,
            "objective": trainee.objective.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
        }
        # Through a Python file: torch.save to a path reports a full disk as an opaque RuntimeError.
        with atomic_path(stem.with_suffix(".state.pt")) as tmp, open(tmp, "wb") as f:
            torch.save(state, f)
        for old in self.resume_dir.glob("step_*"):
            if not old.name.startswith(stem.name):
                old.unlink(missing_ok=True)

    def load_state(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest complete resume pair of this run's fingerprint, or None."""
        for state_path in sorted(self.resume_dir.glob("step_*.state.pt"), reverse=True):
            weights = state_path.with_name(state_path.name.replace(".state.pt", ".safetensors"))
            try:
                state = torch.load(state_path, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - an unreadable state is skipped, an older one may do
                continue
            if state.get("fingerprint") != self.fingerprint:
                tqdm.write(f"{self.path}: ignoring a resume state from a different configuration")
                return None
            if weights.is_file() and sha256_file(weights) == state["weights_sha256"]:
                return weights, state
        return None


def run_fingerprint(config: Mapping[str, Any], files: Sequence[str | os.PathLike] = (), *, step: str) -> str:
    """SHA-256 of a run's config, the content of its input ``files`` and the code of its ``step``.

    A saved state is resumed only under the same fingerprint, so changed params, data, teacher or code
    start the run afresh instead of continuing a different run. The code is the step's import closure
    (:func:`pipeline_steps.dependencies.code_digest`), the same files that make Snakemake and DVC re-run it.
    """
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for path in files:
        h.update(sha256_file(path).encode())
    h.update(code_digest(step).encode())
    return h.hexdigest()
