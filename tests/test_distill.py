"""The distill and teacher-cache steps: the learnable projector is trained and saved, cached teacher outputs
equal live ones, and bad grids / recipes stop with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors
import torch

from pipeline_steps.distillation.methods import build_method
from pipeline_steps.distillation.layer_pairs import parse_layer_pairs
from pipeline_steps.models.build import create_model
from pipeline_steps.training.recipe import Recipe, build_optimizer
from pipeline_steps.training.loop import Trainee

from conftest import KD_STUDENT, KD_TEACHER, assert_one_line_error, check_ok, run_all

RECIPE = Recipe(epochs=1, batch_size=50, lr=3e-3, min_lr=1e-5, warmup_epochs=0, warmup_lr=1e-6, sched_on="step",
                weight_decay=0.05, label_smoothing=0.1, seed=0)
ONE_EPOCH = {"distill": {"train": {"epochs": 1, "checkpoint_every": 0}}}
LOSSES = ("train_loss", "train_loss_base", "train_loss_dist", "train_loss_fft", "test_loss")


def projector_method(name: str, layers: str = "L1"):
    """The objective the distill step builds for a ``layers`` entry of ``name`` (seed 0, the smoke options)."""
    pairs = parse_layer_pairs(layers, KD_STUDENT["depth"], KD_TEACHER["depth"])
    return build_method(name, pairs=pairs, student_channels=[KD_STUDENT["embed_dim"]] * len(pairs),
                        teacher_channels=[KD_TEACHER["embed_dim"]] * len(pairs), label_smoothing=0.1, alpha=0.9,
                        tau=1.0, beta=0.2, seed=0)


def student():
    return create_model({"arch": "vit_tiny_patch16_224", "kwargs": KD_STUDENT,
                         "weights": {"source": "random", "seed": 0}})


def final_state(run_dir: Path) -> dict:
    (path,) = sorted((run_dir / "resume").glob("step_*.state.pt"))
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------------------
# ProjectorKD's projector: optimised, saved, trained (and frozen, with its BN, in the released variant)
# ---------------------------------------------------------------------------------------------------------

def test_optimizer_holds_every_projector_parameter():
    objective = projector_method("projectorkd", "F1 L1")
    trainee = Trainee(student(), objective)
    optimised = {id(p) for group in build_optimizer(trainee, RECIPE).param_groups for p in group["params"]}
    names = {name for name, p in trainee.named_parameters() if id(p) in optimised}
    expected = {f"objective.projectors.{i}.{leaf}" for i in (0, 1) for leaf in ("weight", "bias")}
    assert {name for name in names if name.startswith("objective.")} == expected
    assert names == {name for name, _ in trainee.named_parameters()}  # and every student parameter
    decayed = {id(p) for g in build_optimizer(trainee, RECIPE).param_groups if g["weight_decay"] > 0
               for p in g["params"]}
    assert id(objective.projectors[0].weight) in decayed and id(objective.projectors[0].bias) not in decayed


def test_released_projector_is_not_optimised():
    objective = projector_method("projectorkd_released")
    trainee = Trainee(student(), objective)
    optimised = {id(p) for group in build_optimizer(trainee, RECIPE).param_groups for p in group["params"]}
    assert not any(id(p) in optimised for p in objective.parameters())
    assert all(id(p) in optimised for p in trainee.student.parameters())


@pytest.fixture(scope="module")
def projector_runs(kd, tmp_path_factory):
    root = tmp_path_factory.mktemp("projector")
    check_ok(*run_all(kd.distill("projectorkd_l1-s0", root / "learnable", ONE_EPOCH),
                      kd.distill("projectorkd_released_l1-s0", root / "released", ONE_EPOCH)))
    return root


def test_learnable_projector_is_trained_and_saved(projector_runs):
    saved = final_state(projector_runs / "learnable")["objective"]
    init = projector_method("projectorkd").state_dict()
    assert saved.keys() == init.keys()
    assert set(saved) == {"projectors.0.weight", "projectors.0.bias"}
    for key in saved:
        assert saved[key].shape == init[key].shape, key
        assert not torch.equal(saved[key], init[key]), f"{key} did not change in training"


def test_released_projector_stays_at_its_init(projector_runs):
    saved = final_state(projector_runs / "released")["objective"]
    init = projector_method("projectorkd_released").state_dict()
    assert saved.keys() == init.keys() and "projectors.0.weight" in saved
    assert not any("running" in key for key in saved)  # batch statistics only, as the authors' code
    for key in saved:
        assert torch.equal(saved[key], init[key]), key
    # ... while the student it distilled did train.
    learnable = final_state(projector_runs / "learnable")
    assert final_state(projector_runs / "released")["step"] == learnable["step"] == 600 // 50


# ---------------------------------------------------------------------------------------------------------
# Teacher outputs: cached == live
# ---------------------------------------------------------------------------------------------------------

def test_teacher_cache_gives_the_live_teacher_losses(kd, tmp_path):
    cache = tmp_path / "cache.safetensors"
    (made,) = run_all(kd.step("teacher-cache", "--out", str(cache)))
    check_ok(made)
    with safetensors.safe_open(str(cache), framework="pt") as f:
        assert json.loads(f.metadata()["layers"]) == [0, 2]  # every teacher block the grid pairs with
        assert f.get_slice("features.0").get_shape() == [600, KD_TEACHER["embed_dim"], 2, 2]
    cached, live = run_all(
        kd.distill("spectralkd_f1l1-s0", tmp_path / "cached", ONE_EPOCH, {"distill": {"teacher_cache": "on"}},
                   teacher_cache=cache),
        kd.distill("spectralkd_f1l1-s0", tmp_path / "live", ONE_EPOCH, {"distill": {"teacher_cache": "off"}}))
    check_ok(cached, live)
    (a,) = [json.loads(line) for line in (tmp_path / "cached" / "log.txt").read_text().splitlines()]
    (b,) = [json.loads(line) for line in (tmp_path / "live" / "log.txt").read_text().splitlines()]
    for key in LOSSES:  # the cache is computed in batches of 256, the live teacher in batches of 50
        assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key
    assert a["test_acc1"] == b["test_acc1"]


# ---------------------------------------------------------------------------------------------------------
# One-line errors
# ---------------------------------------------------------------------------------------------------------

def test_bad_layer_spec_and_cached_teacher_with_augmentation(kd, tmp_path):
    bad = {"distill": {"runs": [{"name": "softkd", "method": "softkd"},
                                {"name": "deep", "method": "spectralkd", "layers": "F9"}]}}
    augmented = {"distill": {"teacher_cache": "on", "train": {"randaugment": "rand-m9-mstd0.5-inc1"}}}
    distill, cache, aug = run_all(
        kd.distill("deep-s0", tmp_path / "deep", bad),
        kd.step("teacher-cache", "--out", str(tmp_path / "cache.safetensors"), overrides=(bad,)),
        kd.distill("softkd-s0", tmp_path / "aug", augmented, teacher_cache=tmp_path / "missing.safetensors"))
    for proc in (distill, cache):  # the teacher cache covers the whole grid, so it checks every entry
        assert_one_line_error(proc, "distill.runs entry 'deep'", "F9", "student 3, teacher 3 blocks")
    assert_one_line_error(aug, "distill.teacher_cache is on but the recipe augments", "teacher_cache: off or auto")
    assert not (tmp_path / "cache.safetensors").exists()
    assert not any(p.exists() for p in (tmp_path / "deep", tmp_path / "aug"))
