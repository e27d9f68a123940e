"""The training loop: a ViT trained from scratch on the pipeline's data.

Reads top to bottom: recipe -> data loaders -> optimizer (AdamW, no decay on biases, norms,
pos_embed, cls_token) -> warmup + cosine schedule (timm's ``CosineLRScheduler``, as DeiT uses it)
-> for each epoch: train, evaluate (top-1 / top-5), append one JSON line to the log in the
authors' DeiT format (keys ``train_lr``, ``train_loss``, ``test_loss``, ``test_acc1``,
``test_acc5``, ``epoch``, ``n_parameters``) -> final weights (safetensors, atomic).

Single process:  ``python -m pipeline_steps train-teacher --params params.yaml --out-dir results/teacher``
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from torch.utils.data import DataLoader, Dataset, RandomSampler
from tqdm import tqdm

from .errors import UserError
from .losses import build_method


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

    @classmethod
    def from_params(cls, train: Mapping[str, Any]) -> "Recipe":
        """Build from a validated ``train`` params section."""
        return cls(**{k: train[k] for k in cls.__dataclass_fields__})


def build_optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.AdamW:
    """AdamW with weight decay on >=2-D weights only.

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


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader: DataLoader) -> dict[str, float]:
    """Mean cross-entropy and top-1 / top-5 accuracy (percent) over a loader."""
    model.eval()
    total, loss_sum, correct1, correct5 = 0, 0.0, 0, 0
    for images, labels in loader:
        logits = model(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top.eq(labels[:, None])
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
        total += labels.numel()
    return {"loss": loss_sum / total, "acc1": 100.0 * correct1 / total, "acc5": 100.0 * correct5 / total}


def train_model(
    model: torch.nn.Module,
    train_set: Dataset,
    test_set: Dataset,
    recipe: Recipe,
    log_path: str | Path,
    *,
    on_epoch_end: Callable[[int, torch.nn.Module], None] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train ``model`` with label-smoothed cross-entropy (the ``ce`` method) and evaluate after every epoch.

    Args:
        model: A freshly initialised classifier (train mode is set here).
        train_set: Items are ``(image tensor, label)``.
        test_set: Evaluated after every epoch.
        recipe: Hyperparameters.
        log_path: JSON-lines log, one line per epoch, rewritten atomically after each epoch.
        on_epoch_end: Called as ``on_epoch_end(epoch, model)`` after each epoch's evaluation.
        progress: Show a tqdm bar per epoch (stderr).

    Returns:
        The log rows (one dict per epoch).
    """
    from ._io import write_text

    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    if len(train_set) < recipe.batch_size:
        raise UserError(f"train.batch_size = {recipe.batch_size} but the training set has only "
                        f"{len(train_set)} images; lower the batch size")
    shuffle = torch.Generator()
    train_loader = DataLoader(train_set, batch_size=recipe.batch_size, drop_last=True,
                              sampler=RandomSampler(train_set, generator=shuffle),
                              num_workers=recipe.num_workers)
    test_loader = DataLoader(test_set, batch_size=2 * recipe.batch_size, num_workers=recipe.num_workers)
    objective = build_method("ce", label_smoothing=recipe.label_smoothing)
    optimizer = build_optimizer(model, recipe)
    scheduler = build_scheduler(optimizer, recipe, len(train_loader))
    n_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)

    rows: list[dict[str, Any]] = []
    step = 0
    for epoch in range(recipe.epochs):
        # The shuffle order is a function of (seed, epoch) alone, so a resumed run sees the same batches.
        shuffle.manual_seed(recipe.seed * 1_000_003 + epoch)
        model.train()
        loss_sum, lr_sum, n_batches = 0.0, 0.0, 0
        start = time.perf_counter()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{recipe.epochs}", disable=not progress,
                   unit="batch", leave=False, mininterval=2.0)
        for images, labels in bar:
            logits = model(images)
            loss = objective(logits, labels)["loss"]
            if not math.isfinite(loss.item()):
                raise RuntimeError(f"loss is {loss.item()} at epoch {epoch} step {step}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if recipe.sched_on == "step":
                scheduler.step_update(step)
            loss_sum += loss.item()
            lr_sum += optimizer.param_groups[0]["lr"]
            n_batches += 1
            bar.set_postfix(loss=f"{loss_sum / n_batches:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
        if recipe.sched_on == "epoch":
            scheduler.step(epoch)  # DeiT: stepped with the finished epoch's index.
        seconds = time.perf_counter() - start
        test = evaluate(model, test_loader)
        rows.append({
            "train_lr": lr_sum / n_batches,
            "train_loss": loss_sum / n_batches,
            "test_loss": test["loss"],
            "test_acc1": test["acc1"],
            "test_acc5": test["acc5"],
            "epoch": epoch,
            "n_parameters": n_parameters,
        })
        tqdm.write(f"epoch {epoch}: train_loss {rows[-1]['train_loss']:.4f}  test_acc1 {test['acc1']:.2f}%  "
                   f"({n_batches * recipe.batch_size / seconds:.0f} img/s)")
        write_text(log_path, "".join(json.dumps(r) + "\n" for r in rows))
        if on_epoch_end is not None:
            on_epoch_end(epoch, model)
    return rows
