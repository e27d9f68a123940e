"""Bad input through the real CLI: one line on stderr, exit status 2, no traceback, no output file."""

from __future__ import annotations

import json

import pytest

from pipeline_steps.models import create_model, save_weights

from conftest import assert_one_line_error, run_step

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
        args += ["--weights", weights]
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
