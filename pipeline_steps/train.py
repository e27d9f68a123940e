"""The training loop: the teacher from scratch and every distilled student, one implementation.

Reads top to bottom in :func:`train`: recipe -> process group (torchrun) -> data (a global batch per step,
each rank taking its slice) -> student + objective (a :mod:`losses` method) -> optimizer (AdamW, no decay on
biases, norms, pos_embed, cls_token) -> warmup + cosine schedule (timm's ``CosineLRScheduler``, as DeiT uses
it) -> resume from the run directory if it holds a checkpoint -> for each epoch: for each batch, the
teacher's logits and paired features (live under ``no_grad``, or from a per-dataset cache), the student's
logits and features, the loss, one optimizer step; then evaluation (top-1 / top-5), one JSON line in the
authors' DeiT log format, checkpoints.

Run directory (``out_dir``)::

    log.txt                          one JSON line per epoch (train_lr, train_loss[, train_loss_base,
                                     train_loss_dist, train_loss_fft], test_loss, test_acc1, test_acc5,
                                     epoch, n_parameters)
    model.safetensors                final weights (written last: its presence means the run finished)
    best.safetensors                 weights of the best test top-1 epoch
    checkpoints.json                 the kept checkpoints (epoch, path, sha256) and the best one (``best``: epoch,
                                     path, sha256, test_acc1), for the evolution analysis
    environment.json                 what each attempt (start, resume) computed with: versions, device, CPU
                                     vector ISA, threads, processes (:mod:`environment`)
    checkpoints/epoch_NNNN.safetensors   weights after NNNN epochs: 0, every ``checkpoint_every``, the last
    resume/step_NNNNNNNNN.{safetensors,state.pt}   the newest training state (weights + optimizer,
                                     scheduler, scaler, objective, RNG, log rows, position in the epoch)

Every file is written atomically. The resume pair is written weights first, state second, and named by the
global step; resuming takes the newest pair whose state file exists and whose weights hash matches, so a
kill at any instant leaves a consistent pair to resume from. A state is only resumed when its fingerprint
(the run's config, data and teacher) equals the current one; otherwise training starts afresh.

SIGTERM (what SLURM sends before a time limit or preemption) is honoured after the current step: the state
is saved mid-epoch and :class:`Interrupted` is raised; the CLI exits with status 75 (EX_TEMPFAIL), which the
workflow's retries turn into a resubmission that resumes. On CPU with ``num_workers: 0`` a resumed run ends
with the same metrics and weights, bit for bit, as an uninterrupted one (tests/test_resume.py kills runs).

DDP: the same entry point under ``torchrun --nproc_per_node K`` (gloo on CPU, NCCL on GPU).
``batch_size`` is the GLOBAL batch: each step, rank r trains on the r-th of K equal slices of the same
global batch a single process would draw, so gradients (averaged by DDP) match a single-process run up to
float summation order. Evaluation, logging and checkpoints happen on rank 0.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from ._io import atomic_path, sha256_file, write_json, write_text
from .config import recipe_augments
from .environment import describe
from .errors import Interrupted, UserError
from .losses import AUTHORS_LOG_NAMES, DistillMethod, build_method, order_features


#: DeiT's ``--color-jitter`` default, used by the ImageFolder training transform (:func:`training_view`).
DEIT_COLOR_JITTER = 0.4


@dataclass(frozen=True)
class Recipe:
    """Training hyperparameters (the schema's ``$defs/train``)."""

    epochs: int
    batch_size: int
    lr: float
    min_lr: float
    warmup_epochs: int
    warmup_lr: float
    sched_on: str
    weight_decay: float
    label_smoothing: float
    seed: int
    num_workers: int = 0
    threads: int = 0
    checkpoint_every: int = 0
    amp: str = "auto"
    randaugment: str | None = None
    reprob: float = 0.0
    repeated_aug: int = 1
    mixup: float = 0.0
    cutmix: float = 0.0
    device: str = "auto"

    @classmethod
    def from_params(cls, train: Mapping[str, Any], **overrides: Any) -> "Recipe":
        """Build from a validated ``train`` params section (``overrides`` replace fields, e.g. ``seed``)."""
        return cls(**{**{k: train[k] for k in cls.__dataclass_fields__ if k in train}, **overrides})

    @property
    def augments(self) -> bool:
        """Whether a training image differs between epochs (then teacher outputs cannot be cached)."""
        return recipe_augments(self.__dict__)


# ---------------------------------------------------------------------------------------------------------
# Building blocks: optimizer, schedule, data order, augmentation, teacher targets, the trained module
# ---------------------------------------------------------------------------------------------------------

def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, with weight decay on >=2-D weights only.

    Biases, norm weights and the tokens/position embedding the model lists in
    ``no_weight_decay()`` are excluded, as in the DeiT recipe.
    """
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    groups = param_groups_weight_decay(model, recipe.weight_decay, no_weight_decay_list=skip)
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.999), eps=1e-8)


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int) -> CosineLRScheduler:
    """Linear warmup from ``warmup_lr`` then cosine to ``min_lr``.

    ``sched_on="epoch"`` is DeiT's convention: the scheduler is stepped with the finished epoch's
    index after each epoch, so epochs 0 and 1 both run at ``warmup_lr``. ``sched_on="step"``
    evaluates the same curve per optimizer step.
    """
    per_step = recipe.sched_on == "step"
    scale = steps_per_epoch if per_step else 1
    return CosineLRScheduler(
        optimizer,
        t_initial=recipe.epochs * scale,
        lr_min=recipe.min_lr,
        warmup_t=recipe.warmup_epochs * scale,
        warmup_lr_init=recipe.warmup_lr,
        t_in_epochs=not per_step,
    )


class GlobalBatchSampler(Sampler[list[int]]):
    """This rank's slice of each global batch; the global order is a function of (seed, epoch) only.

    The epoch's order is a seeded permutation (with ``repeats > 1``, DeiT's repeated augmentation: each index
    repeated ``repeats`` times in a row, the list cut back to the dataset length), cut into global batches of
    ``batch_size`` (the last partial one dropped). Rank ``r`` of ``world`` takes the r-th contiguous slice of
    every global batch, so K ranks together see exactly what one process sees.
    """

    def __init__(self, n: int, batch_size: int, seed: int, *, repeats: int = 1, rank: int = 0, world: int = 1):
        if batch_size % world:
            raise UserError(f"train.batch_size = {batch_size} is not divisible by the {world} processes; "
                            "make it a multiple of the process count")
        if n < batch_size:
            raise UserError(f"train.batch_size = {batch_size} but the training set has only {n} images; "
                            "lower the batch size")
        self.n, self.batch_size, self.seed, self.repeats = n, batch_size, seed, repeats
        self.rank, self.world = rank, world
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch's order and skip its first ``skip`` batches (a mid-epoch resume)."""
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return self.n // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g)
        if self.repeats > 1:
            order = order.repeat_interleave(self.repeats)[: self.n]
        local = self.batch_size // self.world
        for b in range(self.skip, len(self)):
            start = b * self.batch_size + self.rank * local
            yield order[start: start + local].tolist()


class Indexed(Dataset):
    """Yields ``(image, label, index)``: the index finds the image's cached teacher outputs."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        image, label = self.base[index]
        return image, label, index


class Augmented(Dataset):
    """A view of a dataset of pixels with a training transform (RandAugment, random erasing)."""

    def __init__(self, base: Dataset, transform: Any) -> None:
        self.base, self.transform = base, transform
        self.classes = getattr(base, "classes", None)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(self.base.pil(index)), self.base.labels[index]


def training_view(dataset: Dataset, recipe: Recipe) -> Dataset:
    """``dataset`` as the training loop sees it: with RandAugment and random erasing when the recipe asks.

    ImageFolder data gets DeiT's full training transform (timm ``create_transform``: random resized crop to
    the dataset's crop size, bicubic, flip, colour jitter 0.4 (DeiT's default), RandAugment, random erasing,
    the dataset's mean and std); generated data (already the model's input size) gets RandAugment and random
    erasing only. Without augmentation the dataset is returned as is: open it with
    ``open_dataset(..., preprocessing="evaluation")`` (``dataset.eval_preprocess``, DeiT's evaluation
    transform), which also gives this view its crop size, mean and std.
    """
    if not (recipe.randaugment or recipe.reprob > 0):
        return dataset
    from timm.data import create_transform
    from timm.data.auto_augment import rand_augment_transform
    from timm.data.random_erasing import RandomErasing
    from torchvision import transforms

    from .data import ImageFolderDataset, SyntheticDataset

    if isinstance(dataset, ImageFolderDataset):
        p = dataset.preprocess
        train_view = copy.copy(dataset)  # same file list; only the (cached) transform differs
        train_view.__dict__["transform"] = create_transform(
            int(p["crop"]), is_training=True, color_jitter=DEIT_COLOR_JITTER, auto_augment=recipe.randaugment,
            interpolation="bicubic", re_prob=recipe.reprob, re_mode="pixel", re_count=1,
            mean=tuple(p["mean"]), std=tuple(p["std"]))
        _posterize_zero_bits(train_view.__dict__["transform"])
        return train_view
    if not isinstance(dataset, SyntheticDataset):
        raise UserError(f"augmentation is not supported for {type(dataset).__name__}; set randaugment: null "
                        "and reprob: 0")
    steps: list[Any] = []
    if recipe.randaugment:
        mean = tuple(int(round(255 * float(m))) for m in dataset.mean.flatten().tolist())
        steps.append(rand_augment_transform(recipe.randaugment, {"translate_const": 10, "img_mean": mean}))
    steps += [transforms.PILToTensor(), transforms.ConvertImageDtype(torch.float32),
              transforms.Normalize(dataset.mean.flatten().tolist(), dataset.std.flatten().tolist())]
    if recipe.reprob > 0:
        steps.append(RandomErasing(recipe.reprob, mode="pixel", max_count=1, device="cpu"))
    return Augmented(dataset, _posterize_zero_bits(transforms.Compose(steps)))


def _posterize_zero_bits(transform: Any) -> Any:
    """Let RandAugment's posterize keep 0 bits again (a black image), as Pillow did before it raised.

    DeiT's ``rand-m9-mstd0.5-inc1`` maps a sampled magnitude of 10 to "keep 0 bits"; recent Pillow (13 here)
    raises ValueError for that in ``ImageOps.posterize``, which stopped training within the first epoch
    (roughly one image in a thousand draws it). Older Pillow's lookup table for 0 bits maps every value to 0.
    """
    from timm.data.auto_augment import RandAugment, posterize

    def zero_bits_black(img: Any, bits_to_keep: int, **kwargs: Any) -> Any:
        return img.point(lambda _: 0) if bits_to_keep <= 0 else posterize(img, bits_to_keep, **kwargs)

    for step in getattr(transform, "transforms", [transform]):
        if isinstance(step, RandAugment):
            for op in step.ops:
                if op.name.startswith("Posterize"):
                    op.aug_fn = zero_bits_black
    return transform


def build_mixup(recipe: Recipe, num_classes: int) -> Any | None:
    """timm's ``Mixup`` (batch mode, label smoothing folded into the mixed targets), or None when off."""
    if recipe.mixup <= 0 and recipe.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, label_smoothing=recipe.label_smoothing,
                 num_classes=num_classes)


def forward_with_features(model: nn.Module, images: Tensor, layers: Sequence[int]) -> tuple[Tensor, list[Tensor]]:
    """Logits and the raw block outputs ``[B, C, H, W]`` of blocks ``layers`` (in that order) in one pass."""
    if not layers:
        return model(images), []
    extracted = sorted(set(layers))
    final, feats = model.forward_intermediates(images, indices=extracted, norm=False, output_fmt="NCHW")
    return model.forward_head(final), order_features(feats, extracted, list(layers))


class TeacherTargets:
    """The teacher's logits and the features of its paired blocks for a batch.

    Live (``model`` given): the frozen teacher runs in eval mode under ``no_grad`` on the batch the student
    sees (augmented, mixed). Cached (``cache`` given): rows ``indices`` of outputs computed once over the
    un-augmented training set by :func:`compute_teacher_cache` (exact only without augmentation).
    """

    def __init__(self, layers: Sequence[int], *, model: nn.Module | None = None,
                 cache: Mapping[str, Tensor] | None = None) -> None:
        if (model is None) == (cache is None):
            raise ValueError("give exactly one of model and cache")
        self.layers, self.model, self.cache = list(layers), model, cache
        if model is not None:
            model.eval().requires_grad_(False)

    def __call__(self, images: Tensor, indices: Tensor) -> tuple[Tensor, list[Tensor]]:
        if self.cache is not None:
            rows = indices.cpu()
            feats = [self.cache[f"features.{layer}"][rows].to(images.device) for layer in self.layers]
            return self.cache["logits"][rows].to(images.device), feats
        with torch.no_grad():
            return forward_with_features(self.model, images, self.layers)


@torch.no_grad()
def compute_teacher_cache(model: nn.Module, dataset: Dataset, layers: Sequence[int], *, batch_size: int = 256,
                          device: str | torch.device = "cpu", progress: bool = True) -> dict[str, Tensor]:
    """The teacher's logits ``[N, K]`` and block outputs ``features.<i>`` ``[N, C, H, W]`` over ``dataset``."""
    model.eval().to(device)
    layers = sorted(set(int(i) for i in layers))
    logits, feats = [], {i: [] for i in layers}
    loader = DataLoader(dataset, batch_size=batch_size)
    for images, _ in tqdm(loader, desc="teacher outputs", unit="batch", disable=not progress, mininterval=2.0):
        out, maps = forward_with_features(model, images.to(device), layers)
        logits.append(out.float().cpu())
        for i, m in zip(layers, maps):
            feats[i].append(m.float().cpu())
    cache = {"logits": torch.cat(logits)}
    cache.update({f"features.{i}": torch.cat(maps) for i, maps in feats.items()})
    return cache


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
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device | str = "cpu",
             amp_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Mean cross-entropy and top-1 / top-5 accuracy (percent) over a loader."""
    model.eval()
    device = torch.device(device)
    total, loss_sum, correct1, correct5 = 0, 0.0, 0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top.eq(labels[:, None])
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
        total += labels.numel()
    return {"loss": loss_sum / total, "acc1": 100.0 * correct1 / total, "acc5": 100.0 * correct5 / total}


# ---------------------------------------------------------------------------------------------------------
# Processes, devices, RNG
# ---------------------------------------------------------------------------------------------------------

@dataclass
class Processes:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on at least one."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], device=self.device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())


def start_processes(device: str) -> Processes:
    """Join the torchrun process group when launched by torchrun, and choose this rank's device."""
    cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device is cuda but no CUDA device is available; set device: auto or cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Processes(rank=rank, world=world, device=torch.device("cuda", local) if cuda else torch.device("cpu"))


def amp_dtype(recipe: Recipe, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 / fp16 on CUDA as asked (auto = bf16), none on CPU (fp32 there)."""
    if device.type != "cuda" or recipe.amp == "none":
        return None
    return torch.float16 if recipe.amp == "fp16" else torch.bfloat16


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed every RNG the step uses (dropout, augmentation) from (seed, epoch, rank) alone."""
    s = (seed * 1_000_003 + epoch) * 1_009 + rank
    torch.manual_seed(s)
    random.seed(s)
    np.random.seed(s % 2**32)


def _rng_state() -> dict[str, Any]:
    state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
            "numpy": [state[0], torch.from_numpy(state[1].astype(np.int64)), *state[2:]]}


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy = state["numpy"]
    np.random.set_state((numpy[0], numpy[1].numpy().astype(np.uint32), *numpy[2:]))


# ---------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------

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
        from .models import save_weights

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
        if position.best is not None:
            doc["best"] = position.best
        write_json(self.path / "checkpoints.json", doc)

    def save_state(self, trainee: Trainee, optimizer: torch.optim.Optimizer, scheduler: CosineLRScheduler,
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
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": _rng_state(),
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


def run_fingerprint(config: Mapping[str, Any], files: Sequence[str | os.PathLike] = ()) -> str:
    """SHA-256 of a run's config, the content of its input ``files`` and the training code.

    A saved state is resumed only under the same fingerprint, so changed params, data, teacher or code
    start the run afresh instead of continuing a different run.
    """
    import hashlib

    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for path in files:
        h.update(sha256_file(path).encode())
    for module in ("train.py", "losses.py", "models.py", "data.py"):
        h.update((Path(__file__).parent / module).read_bytes())
    return h.hexdigest()


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


# ---------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------

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
        objective: A :mod:`losses` method; default ``ce`` with the recipe's label smoothing.
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
    test_loader = DataLoader(test_set, batch_size=2 * (recipe.batch_size // procs.world),
                             num_workers=recipe.num_workers)

    # Model, optimizer, schedule.
    trainee = Trainee(student, objective).to(device)
    if teacher is not None and teacher.model is not None:
        teacher.model.to(device)
    optimizer = build_optimizer(trainee, recipe)
    scheduler = build_scheduler(optimizer, recipe, len(batches))
    scaler = torch.amp.GradScaler(device.type, enabled=autocast == torch.float16)
    n_parameters = sum(p.numel() for p in student.parameters() if p.requires_grad)
    run = RunDirectory(out_dir, fingerprint, {**(metadata or {}), "epochs": recipe.epochs})

    # Resume, or start afresh.
    position, step = Position(), 0
    saved = run.load_state()
    if saved is not None:
        weights, state = saved
        from .models import load_weights

        load_weights(student, weights)
        trainee.objective.load_state_dict(state["objective"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        position = Position(epoch=state["epoch"], batch=state["batch"], sums=state["sums"], rows=state["rows"],
                            best_acc1=state["best_acc1"], kept=state["kept"], best=state.get("best"),
                            environments=state.get("environments", []))
        step = state["step"]
        if position.batch:
            _set_rng_state(state["rng"])
        if procs.main:
            tqdm.write(f"{run.path}: resuming at epoch {position.epoch} batch {position.batch}")
    elif procs.main:
        run.keep_checkpoint(student, 0, position)
    if position.epoch < recipe.epochs:  # an attempt that trains (a finished run run again only rewrites)
        position.environments.append({"from_epoch": position.epoch, "from_batch": position.batch,
                                      **describe(device, procs.world)})
    if procs.main:
        run.write_environments(position)
    model = nn.parallel.DistributedDataParallel(trainee) if procs.world > 1 else trainee

    with _TermFlag() as term:
        for epoch in range(position.epoch, recipe.epochs):
            if position.batch == 0:
                seed_epoch(recipe.seed, epoch, procs.rank)
            loader_rng.manual_seed(recipe.seed * 1_000_003 + epoch)
            batches.set_epoch(epoch, skip=position.batch)
            sums = position.sums or {"loss": 0.0, "lr": 0.0}
            model.train()
            start = time.perf_counter()
            bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{recipe.epochs}", disable=not (progress and procs.main),
                       unit="batch", leave=False, mininterval=2.0, initial=position.batch, total=len(batches))
            for images, labels, indices in bar:
                images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                targets = labels
                if mixup is not None:
                    images, targets = mixup(images, labels)
                with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                    t_logits, t_feats = teacher(images, indices) if teacher is not None else (None, None)
                    parts = model(images, targets, t_logits, t_feats or None)
                loss = parts["loss"]
                if not math.isfinite(loss.item()):
                    # Diverged: the recipe's doing (almost always the learning rate), so a config error.
                    raise UserError(f"training diverged: the loss is {loss.item()} at epoch {epoch + 1} step {step} "
                                    f"with lr {recipe.lr:g}; lower the train.lr of this recipe (teacher.train or "
                                    "distill.train) and run the step again")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                step += 1
                position.batch += 1
                if recipe.sched_on == "step":
                    scheduler.step_update(step)
                # The logged losses are the GLOBAL batch's: each rank's mean over its equal slice, averaged
                # over ranks (without this, rank 0 logged its own slice's loss only).
                values = torch.stack([value.detach().float() for value in parts.values()])
                if procs.world > 1:
                    dist.all_reduce(values)
                    values /= procs.world
                for name, value in zip(parts, values.tolist()):
                    sums[name] = sums.get(name, 0.0) + value
                sums["lr"] += optimizer.param_groups[0]["lr"]
                position.sums = sums
                bar.set_postfix(refresh=False, loss=f"{sums['loss'] / position.batch:.3f}",
                                lr=f"{optimizer.param_groups[0]['lr']:.2e}")
                if procs.any(term.raised) and position.batch < len(batches):
                    if procs.main:
                        run.save_state(trainee, optimizer, scheduler, scaler, position, step)
                    procs.barrier()
                    raise Interrupted(f"SIGTERM at epoch {epoch} batch {position.batch}; state saved in "
                                      f"{run.resume_dir}, run again to resume")
            if recipe.sched_on == "epoch":
                scheduler.step(epoch)  # DeiT: stepped with the finished epoch's index.
            seconds = time.perf_counter() - start
            n_batches = position.batch
            position = Position(epoch=epoch + 1, rows=position.rows, best_acc1=position.best_acc1,
                                kept=position.kept, best=position.best, environments=position.environments)
            if procs.main:
                test = evaluate(student, test_loader, device, autocast)
                row = {"train_lr": sums["lr"] / n_batches, "train_loss": sums["loss"] / n_batches}
                if objective.name != "ce":
                    row.update({f"train_{AUTHORS_LOG_NAMES[k]}": sums[k] / n_batches
                                for k in ("loss_base", "loss_dist", "loss_feat") if k in sums})
                row.update({"test_loss": test["loss"], "test_acc1": test["acc1"], "test_acc5": test["acc5"],
                            "epoch": epoch, "n_parameters": n_parameters})
                position.rows.append(row)
                tqdm.write(f"{run.path.name} epoch {epoch}: train_loss {row['train_loss']:.4f}  "
                           f"test_acc1 {test['acc1']:.2f}%  ({n_batches * recipe.batch_size / seconds:.0f} img/s)")
                run.write_log(position.rows)
                if test["acc1"] > position.best_acc1:
                    run.keep_best(student, epoch + 1, test["acc1"], position)
                every = recipe.checkpoint_every
                if epoch + 1 == recipe.epochs or (every and (epoch + 1) % every == 0):
                    run.keep_checkpoint(student, epoch + 1, position)
                run.save_state(trainee, optimizer, scheduler, scaler, position, step)
            procs.barrier()
    if procs.main:
        # Written again here: a finished run that is run again (e.g. its outputs were deleted) ends complete.
        rows = position.rows
        run.write_log(rows)
        run.write_manifest(position)
        run.save_weights(student, "model.safetensors", epoch=recipe.epochs, test_acc1=rows[-1]["test_acc1"])
    return position.rows
