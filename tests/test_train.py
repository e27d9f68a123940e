"""The training loop: DeiT's optimizer groups and lr schedule, and a real (tiny) training run."""

from __future__ import annotations

import json
import math

import pytest
import timm
import torch
from torch.utils.data import TensorDataset

from pipeline_steps.training.recipe import Recipe, build_optimizer, build_scheduler
from pipeline_steps.training.loop import train

from conftest import REPO

DEIT = Recipe(epochs=300, batch_size=1024, lr=2e-3, min_lr=1e-5, warmup_epochs=5, warmup_lr=1e-6,
              sched_on="epoch", weight_decay=0.05, label_smoothing=0.1, seed=0)


def _tiny_vit(**kw):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=8, embed_dim=32, depth=2,
                             num_heads=2, num_classes=2, **kw)


def _closed_form_lr(epoch: int, r: Recipe) -> float:
    """The lr DeiT uses during 0-based ``epoch``: the scheduler is stepped with the finished
    epoch's index, so epoch e runs at the curve's value for t = max(e - 1, 0)."""
    t = max(epoch - 1, 0)
    if t < r.warmup_epochs:
        return r.warmup_lr + t * (r.lr - r.warmup_lr) / r.warmup_epochs
    return r.min_lr + 0.5 * (r.lr - r.min_lr) * (1 + math.cos(math.pi * t / r.epochs))


def _scheduled_lrs(recipe: Recipe, epochs: int) -> list[float]:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=recipe.lr)
    sched = build_scheduler(opt, recipe, steps_per_epoch=10)
    lrs = []
    for epoch in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step(epoch)
    return lrs


def test_epoch_schedule_matches_deit_convention():
    lrs = _scheduled_lrs(DEIT, 300)
    assert lrs[0] == lrs[1] == pytest.approx(1e-6, abs=0)
    assert lrs[2] == pytest.approx(1e-6 + (2e-3 - 1e-6) / 5, rel=1e-15)
    for epoch, lr in enumerate(lrs):
        assert lr == pytest.approx(_closed_form_lr(epoch, DEIT), rel=1e-12, abs=1e-18)


def test_epoch_schedule_reproduces_published_train_lr():
    """train_lr values copied from the authors' SoftKD log (a fixture file in tests/data)."""
    fixture = json.loads((REPO / "tests" / "data" / "deit_softkd_train_lr.json").read_text())
    lrs = _scheduled_lrs(DEIT, 300)
    for epoch, published in fixture["train_lr"].items():
        assert abs(lrs[int(epoch)] - published) < 1e-12, epoch


def test_step_schedule_warms_up_then_decays():
    recipe = Recipe(**{**DEIT.__dict__, "epochs": 4, "warmup_epochs": 1, "sched_on": "step"})
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=recipe.lr)
    sched = build_scheduler(opt, recipe, steps_per_epoch=10)
    lrs = []
    for step in range(1, 41):
        sched.step_update(step)
        lrs.append(opt.param_groups[0]["lr"])
    def cosine(t):  # timm's curve without warmup_prefix: t counts from 0, warmup included
        return recipe.min_lr + 0.5 * (recipe.lr - recipe.min_lr) * (1 + math.cos(math.pi * t / 40))

    assert lrs[8] == pytest.approx(recipe.warmup_lr + 9 * (recipe.lr - recipe.warmup_lr) / 10, rel=1e-12)
    assert all(a < b for a, b in zip(lrs[:8], lrs[1:9]))  # warmup: steps 1..9
    assert lrs[9] == pytest.approx(cosine(10), rel=1e-12)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(cosine(40), rel=1e-12)


def test_no_weight_decay_on_biases_norms_and_tokens():
    model = _tiny_vit()
    opt = build_optimizer(model, DEIT)
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = sorted(names[i] for i in decay)
    assert "pos_embed" not in decayed and "cls_token" not in decayed
    assert all(not n.endswith(".bias") and "norm" not in n for n in decayed)
    assert "blocks.0.attn.qkv.weight" in decayed and "patch_embed.proj.weight" in decayed
    assert opt.defaults["betas"] == (0.9, 0.999) and opt.defaults["eps"] == 1e-8


def _separable_data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = torch.randn(n, 3, 16, 16, generator=g) * 0.5
    images[labels == 1, :, :8] += 1.5  # class 1: bright upper half
    return TensorDataset(images, labels)


def test_training_learns_and_logs_deit_format(tmp_path):
    recipe = Recipe(epochs=3, batch_size=32, lr=3e-3, min_lr=1e-5, warmup_epochs=0, warmup_lr=1e-6,
                    sched_on="step", weight_decay=0.05, label_smoothing=0.1, seed=0)
    rows = train(_tiny_vit(), _separable_data(256, 0), _separable_data(128, 1), recipe, tmp_path, progress=False)
    logged = [json.loads(line) for line in (tmp_path / "log.txt").read_text().splitlines()]
    assert logged == rows
    assert set(rows[0]) == {"train_lr", "train_loss", "test_loss", "test_acc1", "test_acc5", "epoch",
                            "n_parameters"}
    assert rows[-1]["test_acc1"] >= 95.0
    assert rows[-1]["test_acc5"] == 100.0  # two classes: top-k is capped at the class count
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]


def test_training_is_deterministic(tmp_path):
    recipe = Recipe(epochs=1, batch_size=32, lr=1e-3, min_lr=1e-5, warmup_epochs=0, warmup_lr=1e-6,
                    sched_on="epoch", weight_decay=0.05, label_smoothing=0.1, seed=3)
    a = train(_tiny_vit(), _separable_data(128, 0), _separable_data(64, 1), recipe, tmp_path / "a", progress=False)
    b = train(_tiny_vit(), _separable_data(128, 0), _separable_data(64, 1), recipe, tmp_path / "b", progress=False)
    assert a == b
