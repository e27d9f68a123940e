"""The training recipe (:class:`Recipe`, from ``teacher.train`` / ``distill.train``), its optimizer and schedule.

AdamW with no weight decay on biases, norms, ``pos_embed`` and ``cls_token``; warmup + cosine schedule with
timm's ``CosineLRScheduler``, as DeiT uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from torch import nn

from pipeline_steps.config import recipe_augments

__all__ = ["DEIT_COLOR_JITTER", "build_optimizer", "build_scheduler", "Recipe"]

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
