"""Bad input through the real CLI: one line on stderr, exit status 2, no traceback, no output file."""

from __future__ import annotations

import json

import pytest

from pipeline_steps.models.build import create_model
from pipeline_steps.models.weights import save_weights

from conftest import assert_error_after_progress, assert_one_line_error, run_step

TINY = {"arch": "vit_tiny_patch16_224",
        "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2, "num_classes": 10},
        "weights": {"source": "random", "seed": 0}}
DATA = {"dataset": {"kind": "synthetic", "synthetic": {"train_size": 20, "test_size": 40, "seed": 0}}}


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    work = tmp_path_factory.mktemp("cli")
    cfg = json.dumps({**DATA, "sample": {"n_images": 8}})
    run_step("generate-data", "--config-json", cfg, "--out", str(work / "data.npz"), check=True)
    run_step("sample", "--config-json", cfg, "--data", str(work / "data.npz"), "--out",
             str(work / "manifest.parquet"), check=True)
    return work


def _extract(work, teacher: dict, analysis: dict | None = None, weights: str | None = None):
    cfg = json.dumps({**DATA, "teacher": {"model": teacher}, "analysis": analysis or {}})
    out = work / "acts.npz"
    args = ["extract", "--config-json", cfg, "--manifest", str(work / "manifest.parquet"),
            "--data", str(work / "data.npz"), "--out", str(out)]
    if weights:
        args += ["--model-weights", weights]
    return run_step(*args), out


def test_extract_succeeds_on_good_input(sampled):
    proc, out = _extract(sampled, TINY)
    assert proc.returncode == 0, proc.stderr
    assert out.exists()
    out.unlink()


def test_unknown_model_name(sampled):
    proc, out = _extract(sampled, {**TINY, "arch": "vit_tiny_patch16_22"})
    assert_one_line_error(proc, "unknown model 'vit_tiny_patch16_22'", "vit_tiny_patch16_224")
    assert not out.exists()


def test_layer_index_out_of_range(sampled):
    proc, out = _extract(sampled, TINY, {"layers": [0, 3]})
    assert_one_line_error(proc, "analysis.layers contains 3", "3 blocks")
    assert not out.exists()


def test_weight_file_that_does_not_match(sampled, tmp_path):
    other = create_model({**TINY, "kwargs": {**TINY["kwargs"], "embed_dim": 64}})
    path = tmp_path / "other.safetensors"
    save_weights(other, path, {"arch": TINY["arch"]})
    proc, out = _extract(sampled, TINY, weights=str(path))
    assert_one_line_error(proc, "does not match model", "shape mismatch")
    assert not out.exists()


def test_image_size_that_does_not_match_the_model(sampled):
    proc, out = _extract(sampled, {**TINY, "kwargs": {**TINY["kwargs"], "img_size": 64}})
    assert_one_line_error(proc, "img_size")
    assert not out.exists()


# ------------------------------------------------------------------ values the schema passes, the library does not

def test_model_kwargs_that_timm_rejects_by_assertion(sampled):
    proc, out = _extract(sampled, {**TINY, "kwargs": {**TINY["kwargs"], "embed_dim": 30, "num_heads": 4}})
    assert_one_line_error(proc, "not accepted by 'vit_tiny_patch16_224'", "AssertionError",
                          "dim should be divisible by num_heads", "check the model's kwargs")
    assert not out.exists()


def test_model_kwargs_that_timm_divides_by(sampled):
    proc, out = _extract(sampled, {**TINY, "kwargs": {**TINY["kwargs"], "num_heads": 0}})
    assert_one_line_error(proc, "not accepted by 'vit_tiny_patch16_224'", "ZeroDivisionError")
    assert not out.exists()


@pytest.mark.parametrize("override, where", [
    ({"sample": {"seed": 2**63}}, "sample.seed"),
    ({"dataset": {"synthetic": {"seed": 2**64 + 1}}}, "dataset.synthetic.seed"),
    ({"distill": {"seeds": [0, 2**32]}}, "distill.seeds.1"),
    ({"teacher": {"train": {"seed": -1}}}, "teacher.train.seed"),
])
def test_seed_out_of_range(tmp_path, override, where):
    """Seeds are 0 .. 2**32 - 1 (schema $defs/seed); beyond that numpy or torch would fail mid-step."""
    out = tmp_path / "data.npz"
    proc = run_step("generate-data", "--config-json", json.dumps(override), "--out", str(out))
    assert_one_line_error(proc, f"'{where}'", "4294967295" if where != "teacher.train.seed" else "minimum of 0")
    assert not out.exists()


def test_learning_rate_so_large_the_loss_is_nan(sampled, tmp_path):
    """A diverged training run is the recipe's fault: one error line (after the progress bar), exit 2."""
    teacher = {"model": {**TINY, "weights": {"source": "train"}},
               "train": {"epochs": 2, "batch_size": 10, "lr": 1e30, "warmup_epochs": 0, "device": "cpu",
                         "num_workers": 0}}
    cfg = json.dumps({**DATA, "teacher": teacher})
    proc = run_step("train-teacher", "--config-json", cfg, "--data", str(sampled / "data.npz"), "--out-dir",
                    str(tmp_path / "teacher"))
    assert_error_after_progress(proc, "training diverged: the loss is nan", "lr 1e+30", "lower the train.lr")
    assert not (tmp_path / "teacher" / "model.safetensors").exists()


def test_dataset_that_cannot_fit_in_memory(tmp_path):
    """Checked before allocating: 10**12 images of 256 px would need about 180 PiB."""
    out = tmp_path / "data.npz"
    cfg = json.dumps({"dataset": {"synthetic": {"train_size": 10**12, "image_size": 256}}})
    proc = run_step("generate-data", "--config-json", cfg, "--out", str(out))
    assert_one_line_error(proc, "dataset.synthetic.train_size = 1000000000000", "GiB of memory",
                          "lower dataset.synthetic.train_size")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("layers, extra, message", [
    ("phase:compression", [], "are chosen from the teacher's entropy profile; pass --teacher-reductions"),
    ("phase:compression", ["--teacher-reductions", "missing.parquet"], "teacher reductions missing.parquet not found"),
    ("cka:softkd:F1", [], "are chosen from that run's CKA matrix; pass --cka-statistics"),
    ("phase:middle", [], "unknown phase 'middle'"),
])
def test_a_run_whose_pairs_come_from_the_analysis_without_it(sampled, tmp_path, layers, extra, message):
    """A phase or cka run refuses to start without the analysis it is chosen from, before any output."""
    runs = [{"name": "softkd", "method": "softkd"}, {"name": "x", "method": "spectralkd", "layers": layers}]
    cfg = json.dumps({**DATA, "student": {"model": TINY}, "distill": {"runs": runs, "teacher_cache": "off"},
                      "teacher": {"model": {**TINY, "weights": {"source": "random"}}}})
    out = tmp_path / "run"
    proc = run_step("distill", "--config-json", cfg, "--run-id", "x-s0", "--data", str(sampled / "data.npz"),
                    "--out-dir", str(out), *extra)
    assert_one_line_error(proc, message)
    assert not out.exists()
