"""The training loop: the teacher from scratch and every distilled student, one implementation.

Reads top to bottom in :func:`train`: recipe -> process group (torchrun) -> data (a global batch per step,
each rank taking its slice) -> student + objective (a :mod:`~pipeline_steps.distillation.methods` method) ->
optimizer (AdamW, no decay on biases, norms, pos_embed, cls_token) -> warmup + cosine schedule (timm's
``CosineLRScheduler``, as DeiT uses it) -> :func:`_restore` (resume from the run directory, or start afresh)
-> per epoch, :func:`_train_epoch` (per batch: the teacher's logits and paired features, live under
``no_grad`` or from the teacher cache, the student's logits and features, the loss, one optimizer step) and
:func:`_end_of_epoch` (evaluation, one JSON line in the authors' DeiT log format, checkpoints, resume state).

The run directory (logs, checkpoints, the checkpoint index, the resume state) is
:class:`~pipeline_steps.training.run_dir.RunDirectory`'s.

SIGTERM (what SLURM sends before a time limit or preemption) is honoured after the current step: the state
is saved mid-epoch and :class:`Interrupted` is raised; the CLI exits with status 75 (EX_TEMPFAIL), which the
workflow's retries turn into a resubmission that resumes. On CPU with ``num_workers: 0`` a resumed run ends
with the same metrics and weights, bit for bit, as an uninterrupted one (tests/test_resume.py kills runs).

DDP: the same entry point under ``torchrun --nproc_per_node K`` (gloo on CPU, NCCL on GPU).
``batch_size`` is the GLOBAL batch: each step, rank r trains on the r-th of K equal slices of the same
global batch a single process would draw, so gradients (averaged by DDP) match a single-process run up to
float summation order. Every rank evaluates (:func:`evaluate`): the test set is cut into batches of
``2 * batch_size`` images in dataset order whatever the process count, and rank r scores batches r, r + K,
r + 2K, ...; the per-batch sums are gathered and added in batch order, so the same weights give exactly the
single-process test_loss / test_acc1 / test_acc5 (same batches, same kernels, same float additions; no
padded duplicates). Each rank's evaluation batch is therefore twice the GLOBAL batch, as a single process's
always was (mind the memory). Logging and checkpoints happen on rank 0.
"""

from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.scheduler import CosineLRScheduler
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pipeline_steps.distillation.methods import AUTHORS_LOG_NAMES, DistillMethod, build_method
from pipeline_steps.environment import describe
from pipeline_steps.errors import Interrupted, UserError
from pipeline_steps.models.layers import forward_with_features
from pipeline_steps.models.weights import load_weights
from pipeline_steps.training.augment import build_mixup, training_view
from pipeline_steps.training.parallel import Processes, amp_dtype, seed_epoch, set_rng_state, start_processes
from pipeline_steps.training.recipe import Recipe, build_optimizer, build_scheduler
from pipeline_steps.training.run_dir import Position, RunDirectory
from pipeline_steps.training.sampler import GlobalBatchSampler, Indexed
from pipeline_steps.training.teacher_targets import TeacherTargets

__all__ = ["evaluate", "train", "Trainee"]


class Trainee(nn.Module):
    """The student and its objective as one module: what DDP wraps, what the optimizer and checkpoints see.

    The objective's trainable parameters (ProjectorKD's projectors) are parameters of this module, so
    they are optimised, averaged across ranks and saved with the student.
    """

    def __init__(self, student: nn.Module, objective: DistillMethod) -> None:
        super().__init__()
        self.student, self.objective = student, objective

    def no_weight_decay(self) -> set[str]:
        skip = self.student.no_weight_decay() if hasattr(self.student, "no_weight_decay") else ()
        return {f"student.{name}" for name in skip}

    def forward(self, images: Tensor, targets: Tensor, teacher_logits: Tensor | None,
                teacher_feats: list[Tensor] | None) -> dict[str, Tensor]:
        layers = self.objective.student_layers if self.objective.needs_teacher_features else ()
        logits, feats = forward_with_features(self.student, images, layers)
        return self.objective(logits, targets, teacher_logits, feats or None, teacher_feats)


@torch.inference_mode()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device | str = "cpu",
             amp_dtype: torch.dtype | None = None, *, procs: Processes | None = None,
             num_workers: int = 0) -> dict[str, float]:
    """Mean cross-entropy and top-1 / top-5 accuracy (percent) over ``dataset``, spread over the processes.

    The batches are consecutive runs of ``batch_size`` images in dataset order (the last may be partial),
    whatever the process count; rank r of K scores batches r, r + K, r + 2K, ... Per-batch sums are gathered
    to every rank and added in batch order, so K processes return exactly (``==``) what one process returns:
    each batch's logits are the same bits and the float sums are taken in the same order.

    Args:
        model: The classifier, unwrapped (not DDP: its forward would run collectives); set to eval mode.
        dataset: Items ``(image, label)``.
        batch_size: Images per batch (each rank's batch; it does not shrink with the process count).
        device: Where ``model`` is.
        amp_dtype: Autocast dtype, or None for full precision.
        procs: This process's place in the run; None is one process scoring every batch. With ``world > 1``
            every rank must call this (it gathers the results).
        num_workers: DataLoader workers.

    Returns:
        ``{"loss", "acc1", "acc5"}`` over all of ``dataset``, the same on every rank.
    """
    procs = procs or Processes()
    model.eval()
    device = torch.device(device)
    n = len(dataset)
    my_batches = range(procs.rank, math.ceil(n / batch_size), procs.world)  # indices of this rank's batches
    loader = DataLoader(dataset, num_workers=num_workers, pin_memory=device.type == "cuda",
                        batch_sampler=[range(b * batch_size, min((b + 1) * batch_size, n)) for b in my_batches])
    records: list[tuple[int, float, int, int, int]] = []  # (batch, loss sum, top-1 hits, top-5 hits, images)
    for b, (images, labels) in zip(my_batches, loader):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images).float()
        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(labels[:, None])
        records.append((b, F.cross_entropy(logits, labels, reduction="sum").item(), hits[:, 0].sum().item(),
                        hits.any(dim=1).sum().item(), labels.numel()))
    if procs.world > 1:
        gathered: list[Any] = [None] * procs.world
        dist.all_gather_object(gathered, records)
        records = sorted(record for part in gathered for record in part)
    total, loss_sum, correct1, correct5 = 0, 0.0, 0, 0
    for _, loss, top1, top5, count in records:  # in batch order: one process's summation order
        loss_sum += loss
        correct1 += top1
        correct5 += top5
        total += count
    return {"loss": loss_sum / total, "acc1": 100.0 * correct1 / total, "acc5": 100.0 * correct5 / total}


class _TermFlag:
    """Records SIGTERM instead of dying, so the loop can save and stop between steps."""

    def __init__(self) -> None:
        self.raised = False
        self._previous: Any = None

    def __enter__(self) -> "_TermFlag":
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.raised = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def train(
    student: nn.Module,
    train_set: Dataset,
    test_set: Dataset,
    recipe: Recipe,
    out_dir: str | os.PathLike,
    *,
    objective: DistillMethod | None = None,
    teacher: TeacherTargets | None = None,
    fingerprint: str = "",
    metadata: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train ``student`` (from scratch, or distilled from ``teacher``) and write the run directory.

    Args:
        student: A freshly initialised timm classifier with ``forward_intermediates``.
        train_set: Items ``(image, label)``; augmented by the recipe (:func:`training_view`).
        test_set: Evaluated after every epoch.
        recipe: Hyperparameters (``seed`` drives shuffling, augmentation and dropout).
        out_dir: The run directory; resumed from when it holds a state with the same ``fingerprint``.
        objective: A :mod:`~pipeline_steps.distillation.methods` method; default ``ce`` with the recipe's
            label smoothing.
        teacher: Source of teacher logits / features, for methods that need them.
        fingerprint: Identifies the run's configuration (config, data, teacher); a saved state is only
            resumed when it matches.
        metadata: Stored in every weights file (e.g. ``arch``, ``kwargs`` to rebuild the model).
        progress: tqdm bars (stderr).

    Returns:
        The log rows (one dict per epoch).

    Raises:
        Interrupted: SIGTERM arrived; the state was saved and a rerun resumes.
    """
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    procs = start_processes(recipe.device)
    device, autocast = procs.device, amp_dtype(recipe, procs.device)
    mixup = build_mixup(recipe, getattr(student, "num_classes", 0))
    if objective is None:
        objective = build_method("ce", label_smoothing=recipe.label_smoothing)
    if mixup is not None:
        objective.label_smoothing = 0.0  # Mixup already smoothed the targets
    if (objective.needs_teacher_logits or objective.needs_teacher_features) and teacher is None:
        raise ValueError(f"method {objective.name!r} needs a teacher")

    # Data: one global batch per step, this rank's slice of it.
    batches = GlobalBatchSampler(len(train_set), recipe.batch_size, recipe.seed, repeats=recipe.repeated_aug,
                                 rank=procs.rank, world=procs.world)
    # The loader draws its workers' base seed from its own generator, not the global RNG that a resumed
    # run restores mid-epoch.
    loader_rng = torch.Generator()
    train_loader = DataLoader(Indexed(training_view(train_set, recipe)), batch_sampler=batches,
                              num_workers=recipe.num_workers, pin_memory=device.type == "cuda",
                              generator=loader_rng)

    # Model, optimizer, schedule.
    trainee = Trainee(student, objective).to(device)
    if teacher is not None and teacher.model is not None:
        teacher.model.to(device)
    optimizer = build_optimizer(trainee, recipe)
    s = _Session(recipe=recipe, procs=procs, device=device, autocast=autocast, mixup=mixup, teacher=teacher,
                 trainee=trainee, model=trainee, optimizer=optimizer,
                 scheduler=build_scheduler(optimizer, recipe, len(batches)),
                 scaler=torch.amp.GradScaler(device.type, enabled=autocast == torch.float16),
                 batches=batches, loader_rng=loader_rng, train_loader=train_loader, test_set=test_set,
                 run=RunDirectory(out_dir, fingerprint, {**(metadata or {}), "epochs": recipe.epochs}),
                 n_parameters=sum(p.numel() for p in student.parameters() if p.requires_grad), progress=progress)

    position = _restore(s)
    tqdm.write(f"{s.run.path.name}: {procs.describe()}")  # every rank: which GPUs it was given, where
    if procs.world > 1:
        s.model = nn.parallel.DistributedDataParallel(trainee)
    with _TermFlag() as term:
        for epoch in range(position.epoch, recipe.epochs):
            sums, seconds = _train_epoch(s, epoch, position, term)
            position = _end_of_epoch(s, epoch, position, sums, seconds)
            procs.barrier()
    if procs.main:
        # Written again here: a finished run that is run again (e.g. its outputs were deleted) ends complete.
        rows = position.rows
        s.run.write_log(rows)
        s.run.write_manifest(position)
        s.run.save_weights(student, "model.safetensors", epoch=recipe.epochs, test_acc1=rows[-1]["test_acc1"])
    return position.rows


@dataclass
class _Session:
    """What the phases of one training attempt share (:func:`train` builds it)."""

    recipe: Recipe
    procs: Processes
    device: torch.device
    autocast: torch.dtype | None
    mixup: Any
    teacher: TeacherTargets | None
    trainee: Trainee
    model: nn.Module  # the trainee, wrapped in DDP under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    scaler: torch.amp.GradScaler
    batches: GlobalBatchSampler
    loader_rng: torch.Generator
    train_loader: DataLoader
    test_set: Dataset
    run: RunDirectory
    n_parameters: int
    progress: bool
    step: int = 0  # optimizer steps taken, over all epochs


def _restore(s: _Session) -> Position:
    """Resume from the run directory's newest state of this fingerprint, or start afresh (keeping epoch 0's
    checkpoint); record this attempt's environment."""
    position = Position()
    saved = s.run.load_state()
    if saved is not None:
        weights, state = saved
        load_weights(s.trainee.student, weights)
        s.trainee.objective.load_state_dict(state["objective"])
        s.optimizer.load_state_dict(state["optimizer"])
        s.scheduler.load_state_dict(state["scheduler"])
        s.scaler.load_state_dict(state["scaler"])
        position = Position(epoch=state["epoch"], batch=state["batch"], sums=state["sums"], rows=state["rows"],
                            best_acc1=state["best_acc1"], kept=state["kept"], best=state.get("best"),
                            environments=state.get("environments", []))
        s.step = state["step"]
        if position.batch:
            set_rng_state(state["rng"])
        if s.procs.main:
            tqdm.write(f"{s.run.path}: resuming at epoch {position.epoch} batch {position.batch}")
    elif s.procs.main:
        s.run.keep_checkpoint(s.trainee.student, 0, position)
    if position.epoch < s.recipe.epochs:  # an attempt that trains (a finished run run again only rewrites)
        position.environments.append({"from_epoch": position.epoch, "from_batch": position.batch,
                                      **describe(s.device, s.procs.world)})
    if s.procs.main:
        s.run.write_environments(position)
    return position


def _train_epoch(s: _Session, epoch: int, position: Position, term: _TermFlag) -> tuple[dict[str, float], float]:
    """Train epoch ``epoch`` from ``position.batch`` on; returns the summed loss parts and the seconds taken.

    Raises:
        Interrupted: SIGTERM arrived mid-epoch; the state was saved.
    """
    recipe, procs = s.recipe, s.procs
    if position.batch == 0:
        seed_epoch(recipe.seed, epoch, procs.rank)
    s.loader_rng.manual_seed(recipe.seed * 1_000_003 + epoch)
    s.batches.set_epoch(epoch, skip=position.batch)
    sums = position.sums or {"loss": 0.0, "lr": 0.0}
    s.model.train()
    start = time.perf_counter()
    bar = tqdm(s.train_loader, desc=f"epoch {epoch + 1}/{recipe.epochs}", disable=not (s.progress and procs.main),
               unit="batch", leave=False, mininterval=2.0, initial=position.batch, total=len(s.batches))
    for images, labels, indices in bar:
        images, labels = images.to(s.device, non_blocking=True), labels.to(s.device, non_blocking=True)
        targets = labels
        if s.mixup is not None:
            images, targets = s.mixup(images, labels)
        with torch.autocast(s.device.type, dtype=s.autocast, enabled=s.autocast is not None):
            t_logits, t_feats = s.teacher(images, indices) if s.teacher is not None else (None, None)
            parts = s.model(images, targets, t_logits, t_feats or None)
        loss = parts["loss"]
        if not math.isfinite(loss.item()):
            # Diverged: the recipe's doing (almost always the learning rate), so a config error.
            raise UserError(f"training diverged: the loss is {loss.item()} at epoch {epoch + 1} step {s.step} "
                            f"with lr {recipe.lr:g}; lower the train.lr of this recipe (teacher.train or "
                            "distill.train) and run the step again")
        s.optimizer.zero_grad(set_to_none=True)
        s.scaler.scale(loss).backward()
        s.scaler.step(s.optimizer)
        s.scaler.update()
        s.step += 1
        position.batch += 1
        if recipe.sched_on == "step":
            s.scheduler.step_update(s.step)
        # The logged losses are the GLOBAL batch's: each rank's mean over its equal slice, averaged
        # over ranks (without this, rank 0 logged its own slice's loss only).
        values = torch.stack([value.detach().float() for value in parts.values()])
        if procs.world > 1:
            dist.all_reduce(values)
            values /= procs.world
        for name, value in zip(parts, values.tolist()):
            sums[name] = sums.get(name, 0.0) + value
        sums["lr"] += s.optimizer.param_groups[0]["lr"]
        position.sums = sums
        bar.set_postfix(refresh=False, loss=f"{sums['loss'] / position.batch:.3f}",
                        lr=f"{s.optimizer.param_groups[0]['lr']:.2e}")
        if procs.any(term.raised) and position.batch < len(s.batches):
            if procs.main:
                s.run.save_state(s.trainee, s.optimizer, s.scheduler, s.scaler, position, s.step)
            procs.barrier()
            raise Interrupted(f"SIGTERM at epoch {epoch} batch {position.batch}; state saved in "
                              f"{s.run.resume_dir}, run again to resume")
    if recipe.sched_on == "epoch":
        s.scheduler.step(epoch)  # DeiT: stepped with the finished epoch's index.
    return sums, time.perf_counter() - start


def _end_of_epoch(s: _Session, epoch: int, position: Position, sums: dict[str, float],
                  seconds: float) -> Position:
    """Evaluate (every rank, its share of the test batches), then on rank 0 log one line, keep checkpoints and
    save the resume state; the next epoch's position."""
    n_batches = position.batch
    position = Position(epoch=epoch + 1, rows=position.rows, best_acc1=position.best_acc1,
                        kept=position.kept, best=position.best, environments=position.environments)
    student, recipe = s.trainee.student, s.recipe
    # 2 x the global batch per rank: the single-process evaluation batches, so the numbers do not depend on
    # the process count.
    test = evaluate(student, s.test_set, 2 * recipe.batch_size, s.device, s.autocast, procs=s.procs,
                    num_workers=recipe.num_workers)
    if not s.procs.main:
        return position
    row = {"train_lr": sums["lr"] / n_batches, "train_loss": sums["loss"] / n_batches}
    if s.trainee.objective.name != "ce":
        row.update({f"train_{AUTHORS_LOG_NAMES[k]}": sums[k] / n_batches
                    for k in ("loss_base", "loss_dist", "loss_feat") if k in sums})
    row.update({"test_loss": test["loss"], "test_acc1": test["acc1"], "test_acc5": test["acc5"],
                "epoch": epoch, "n_parameters": s.n_parameters})
    position.rows.append(row)
    tqdm.write(f"{s.run.path.name} epoch {epoch}: train_loss {row['train_loss']:.4f}  "
               f"test_acc1 {test['acc1']:.2f}%  ({n_batches * recipe.batch_size / seconds:.0f} img/s)")
    s.run.write_log(position.rows)
    if test["acc1"] > position.best_acc1:
        s.run.keep_best(student, epoch + 1, test["acc1"], position)
    every = recipe.checkpoint_every
    if epoch + 1 == recipe.epochs or (every and (epoch + 1) % every == 0):
        s.run.keep_checkpoint(student, epoch + 1, position)
    s.run.save_state(s.trainee, s.optimizer, s.scheduler, s.scaler, position, s.step)
    return position
