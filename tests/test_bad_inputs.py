"""Bad input files, through the real CLI: one line on stderr naming the file or key, exit status 2, no
traceback, nothing written at the output path. And the inputs that used to give silently wrong results: a
teacher cache of another training set, 16-bit images.

The data is tiny and built in-process where the step under test is not the one making it; the bad-input
commands of a test run concurrently (process start-up, importing torch, dominates their time).
"""

from __future__ import annotations

import io
import json
import os
import struct
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pipeline_steps.steps import extract
from pipeline_steps.steps import generate_data
from pipeline_steps.steps import teacher_cache
from pipeline_steps.artifacts import write_parquet
from pipeline_steps.config import load_params
from pipeline_steps.data.datasets import ImageFolderDataset, SyntheticDataset
from pipeline_steps.data.manifest import sample_manifest
from pipeline_steps.errors import UserError

from conftest import REPO, assert_one_line_error, check_ok, run_all

TINY = {"arch": "vit_tiny_patch16_224",
        "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2, "num_classes": 10},
        "weights": {"source": "random", "seed": 0}}
DATA = {"dataset": {"kind": "synthetic", "synthetic": {"train_size": 20, "test_size": 40, "seed": 0}}}
CONFIG = json.dumps({**DATA, "sample": {"n_images": 8}, "teacher": {"model": TINY}, "analysis": {}})


def step(name: str, *args: str, config: str = CONFIG) -> list[str]:
    return [sys.executable, "-m", "pipeline_steps", name, "--config-json", config, *args]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A generated dataset, a sample manifest and the tiny model's activations, all made in-process."""
    root = tmp_path_factory.mktemp("bad_inputs")
    synthetic = DATA["dataset"]["synthetic"]
    generate_data.run(root / "data.npz", num_classes=10, image_size=32, train_size=synthetic["train_size"],
                      test_size=synthetic["test_size"], seed=synthetic["seed"], progress=False)
    manifest = sample_manifest(SyntheticDataset(root / "data.npz", "test"), 8, "random", 0, "test", progress=False)
    write_parquet(root / "manifest.parquet", manifest)
    params = load_params([], [CONFIG])
    extract.run(params["teacher"]["model"], root / "acts.npz", dataset=params["dataset"],
                manifest_path=root / "manifest.parquet", synthetic_path=root / "data.npz")
    return root


# ---------------------------------------------------------------------------------------------------------
# Teacher cache: made from another training set (same size or not) or another teacher
# ---------------------------------------------------------------------------------------------------------

CACHE_ON = {"distill": {"teacher_cache": "on", "train": {"epochs": 1, "checkpoint_every": 0}}}


def write_cache(params: dict, out: Path, teacher_weights: Path, data: Path) -> None:
    """The teacher-cache step's work for the grid of ``params``."""
    from pipeline_steps.config import distill_runs

    teacher_cache.run(out, teacher=params["teacher"]["model"], student=params["student"]["model"],
                      runs=distill_runs(params), dataset=params["dataset"], teacher_weights=teacher_weights,
                      synthetic_path=data, progress=False)


def test_teacher_cache_of_another_training_set_is_refused_and_the_matching_one_used(kd, tmp_path):
    from conftest import KD_CONFIG

    synthetic = KD_CONFIG["dataset"]["synthetic"]
    params = load_params([REPO / "configs" / "smoke.yaml"], [kd.config()])
    caches = {}
    for name, changes in {"same": {}, "other_seed": {"seed": 1}, "smaller": {"train_size": 500},
                          "larger": {"train_size": 700}}.items():
        data = kd.data if name == "same" else tmp_path / f"{name}.npz"
        if name != "same":
            generate_data.run(data, **{**synthetic, **changes}, progress=False)
        caches[name] = tmp_path / f"{name}.safetensors"
        write_cache(params, caches[name], kd.teacher, data)

    same, other_seed, smaller, larger = run_all(
        *(kd.distill("softkd-s0", tmp_path / f"run_{name}", CACHE_ON, teacher_cache=cache)
          for name, cache in caches.items()))
    check_ok(same)
    assert (tmp_path / "run_same" / "model.safetensors").exists()
    assert_one_line_error(other_seed, f"teacher cache {caches['other_seed']}", "another training set (same size",
                          "rerun the teacher-cache step")
    assert_one_line_error(smaller, f"teacher cache {caches['smaller']}", "500 images, this run's has 600",
                          "rerun the teacher-cache step")
    assert_one_line_error(larger, "700 images, this run's has 600")
    for name in ("other_seed", "smaller", "larger"):
        assert not (tmp_path / f"run_{name}").exists()


def test_teacher_cache_of_another_teacher_or_an_older_version_is_refused(kd, tmp_path):
    from safetensors.torch import load_file

    from pipeline_steps.artifacts import write_safetensors
    from pipeline_steps.training.teacher_targets import read_teacher_cache as read_cache
    from pipeline_steps.models.build import create_model

    params = load_params([REPO / "configs" / "smoke.yaml"], [kd.config()])
    cache = tmp_path / "cache.safetensors"
    write_cache(params, cache, kd.teacher, kd.data)
    train_set = SyntheticDataset(kd.data, "train")
    spec = params["teacher"]["model"]
    trained = create_model(spec, weights_path=kd.teacher)
    other = create_model({**spec, "weights": {"source": "random", "seed": 5}})
    assert read_cache(cache, [0, 2], train_set=train_set, teacher=trained)["logits"].shape == (600, 10)
    with pytest.raises(UserError, match="made with other teacher weights; delete it"):
        read_cache(cache, [0, 2], train_set=train_set, teacher=other)
    old = tmp_path / "old.safetensors"  # the previous format: layers and n_images only
    write_safetensors(old, load_file(str(cache)), {"layers": "[0, 2]", "n_images": "600"})
    with pytest.raises(UserError, match="does not record what it was made from"):
        read_cache(old, [0, 2], train_set=train_set, teacher=trained)


# ---------------------------------------------------------------------------------------------------------
# 16-bit images are scaled to 8 bits, not clipped at 255
# ---------------------------------------------------------------------------------------------------------

def _png_rgb48(pixels: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG, written by hand (Pillow cannot write one)."""
    h, w, _ = pixels.shape
    big = pixels.astype(">u2")
    raw = b"".join(b"\x00" + big[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_16_bit_images_span_0_to_255_instead_of_saturating(tmp_path):
    width = 64
    ramp16 = np.tile(np.linspace(0, 65535, width).round().astype(np.uint16), (width, 1))  # 0..65535 left to right
    expected = np.floor(ramp16.astype(np.float64) * 255 / 65535 + 0.5)  # round(v / 257), computed independently
    for cls, name in (("a", "ramp.png"), ("b", "ramp.tif")):
        (tmp_path / "val" / cls).mkdir(parents=True)
        Image.fromarray(ramp16).save(tmp_path / "val" / cls / name)  # mode I;16
    (tmp_path / "val" / "c").mkdir()
    (tmp_path / "val" / "c" / "rgb48.png").write_bytes(_png_rgb48(np.stack([ramp16] * 3, axis=-1)))
    identity = {"resize": width, "crop": width, "interpolation": "nearest", "mean": [0, 0, 0], "std": [1, 1, 1]}
    ds = ImageFolderDataset(tmp_path, "val", identity)
    assert Image.open(ds.paths[0]).mode == "I;16"
    for i in range(len(ds)):
        pixels = (ds[i][0] * 255).round().numpy()  # [3, H, W]
        row = pixels[0, 0]
        assert row.min() == 0 and row.max() == 255, ds.paths[i]
        assert (np.diff(row) >= 0).all() and (row == 255).mean() < 0.05, ds.paths[i]  # was 99.6% saturated
        # Pillow reads a 48-bit PNG by keeping each channel's high byte (v // 256), one level off round(v / 257)
        # at most; the 16-bit grayscale files are scaled here, exactly.
        tolerance = 1 if ds.paths[i].name == "rgb48.png" else 0
        np.testing.assert_allclose(pixels, np.broadcast_to(expected, pixels.shape), atol=tolerance,
                                   err_msg=str(ds.paths[i]))


def test_float_images_are_refused_with_one_line(tmp_path):
    (tmp_path / "val" / "a").mkdir(parents=True)
    Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)).save(tmp_path / "val" / "a" / "f.tif")
    ds = ImageFolderDataset(tmp_path, "val", {"resize": 8, "crop": 8, "interpolation": "nearest", "mean": [0, 0, 0],
                                             "std": [1, 1, 1]})
    with pytest.raises(UserError, match=r"f\.tif is a floating-point image.*convert it"):
        ds[0]


# ---------------------------------------------------------------------------------------------------------
# A generated-dataset archive with the wrong arrays
# ---------------------------------------------------------------------------------------------------------

def _rewrite_npz(src: Path, dst: Path, **changes: np.ndarray | None) -> None:
    """A copy of an NPZ with members replaced (``None`` drops one)."""
    with np.load(src, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    np.savez(dst, **arrays)


def test_generated_dataset_with_wrong_arrays_is_refused_by_the_sample_step(work, tmp_path):
    with np.load(work / "data.npz") as npz:
        images, labels = npz["test_images"], npz["test_labels"]
    cases = {
        "no_channel_axis": ({"test_images": images[..., 0]}, "member 'test_images' must be uint8 [N, H, W, 3]"),
        "float_images": ({"test_images": images.astype(np.float32)}, "test_images' must be uint8"),
        "short_labels": ({"test_labels": labels[:-1]}, "member 'test_labels' has 39 labels for 40 images"),
        "label_out_of_range": ({"test_labels": np.where(np.arange(40) == 3, 10, labels)},
                               "holds label 10, outside 0..9"),
        "float_labels": ({"test_labels": labels.astype(np.float64)}, "test_labels' must be a 1-D integer array"),
        "missing_key": ({"class_names": None}, "missing class_names"),
        "bad_std": ({"std": np.zeros(3, np.float32)}, "member 'std' must be 3 finite per-channel floats > 0"),
    }
    for name, (changes, _) in cases.items():
        _rewrite_npz(work / "data.npz", tmp_path / f"{name}.npz", **changes)
    procs = run_all(*(step("sample", "--data", str(tmp_path / f"{name}.npz"), "--out",
                           str(tmp_path / f"{name}.parquet"))
                      for name in cases))
    for (name, (_, fragment)), proc in zip(cases.items(), procs):
        assert_one_line_error(proc, str(tmp_path / f"{name}.npz"), fragment, "re-run the generate-data step")
        assert not (tmp_path / f"{name}.parquet").exists()


# ---------------------------------------------------------------------------------------------------------
# A .pth file whose pickle would run a shell command
# ---------------------------------------------------------------------------------------------------------

class _Shell:
    """Unpickling this runs a shell command (the classic payload); the command creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_with_the_projects_advice_and_never_run(work, tmp_path):
    from pipeline_steps.models.build import create_model

    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.pth"
    torch.save({"model": create_model(TINY).state_dict(), "extra": _Shell(marker)}, evil)
    out = tmp_path / "acts.npz"
    (proc,) = run_all(step("extract", "--manifest", str(work / "manifest.parquet"), "--data", str(work / "data.npz"),
                           "--model-weights", str(evil), "--out", str(out)))
    assert_one_line_error(proc, f"weight file {evil} holds pickled Python objects", "system",
                          "convert it to .safetensors")
    assert "weights_only=False" not in proc.stderr and "weights_only` set to `False" not in proc.stderr
    assert not marker.exists()
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------------
# Malformed tables, metadata, indexes and params
# ---------------------------------------------------------------------------------------------------------

def test_figures_refuse_a_non_parquet_or_foreign_table(work, tmp_path):
    not_parquet = tmp_path / "notes.parquet"
    not_parquet.write_text("layer,value\n1,2.0\n")
    foreign = tmp_path / "foreign.parquet"
    write_parquet(foreign, pd.DataFrame({"epoch": [1, 2], "accuracy": [0.5, 0.6]}))
    nan_values = tmp_path / "nan.parquet"
    reductions = pd.DataFrame({"model": ["t"] * 2, "arch": ["a"] * 2, "checkpoint": ["final"] * 2,
                               "epoch": pd.array([None, None], dtype="Int64"), "layer": [1, 2],
                               "layer_name": ["blocks.0", "blocks.1"], "metric": ["entropy"] * 2,
                               "k": pd.array([None, None], dtype="Int64"), "value": [1.0, float("nan")],
                               "n_images": 8, "bins": 100, "range_policy": "global", "range_min": 0.0,
                               "range_max": 1.0, "weights_hash": "x", "manifest_hash": "y"})
    write_parquet(nan_values, reductions)
    no_epoch = tmp_path / "evolution.parquet"
    write_parquet(no_epoch, reductions.assign(value=1.0, run_id="softkd-s0"))  # an evolution table needs epochs
    outs = {name: tmp_path / f"{name}.pdf" for name in ("not_parquet", "foreign", "nan", "evo_foreign", "evo_epoch")}
    procs = run_all(
        step("figures", "--figure", "entropy", "--reductions", str(not_parquet), "--out", str(outs["not_parquet"])),
        step("figures", "--figure", "magnitude", "--reductions", str(foreign), "--out", str(outs["foreign"])),
        step("figures", "--figure", "entropy", "--reductions", str(nan_values), "--out", str(outs["nan"])),
        step("figures", "--figure", "evolution", "--evolution", str(foreign), "--out", str(outs["evo_foreign"])),
        step("figures", "--figure", "evolution", "--evolution", str(no_epoch), "--out", str(outs["evo_epoch"])),
    )
    assert_one_line_error(procs[0], f"reductions table {not_parquet} is not a readable Parquet file",
                          "run the reduce step")
    assert_one_line_error(procs[1], f"reductions table {foreign} lacks column(s) model, arch", "not a values table")
    assert_one_line_error(procs[2], f"reductions table {nan_values}: column 'value' has a missing or NaN value (row 1)")
    assert_one_line_error(procs[3], f"evolution table {foreign} lacks column(s)", "run the evolution step")
    assert_one_line_error(procs[4], f"evolution table {no_epoch}: column 'epoch'")
    for out in outs.values():
        assert not out.exists() and not out.with_suffix(".png").exists()


def _rewrite_meta(src: Path, dst: Path, edit) -> None:
    """A copy of an activations NPZ (stored zip) with its ``meta`` JSON edited."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "meta.npy":
                meta = json.loads(str(np.lib.format.read_array(io.BytesIO(data))[()]))
                edit(meta)
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.array(json.dumps(meta)), allow_pickle=False)
                data = buf.getvalue()
            zout.writestr(info.filename, data)


def test_reduce_refuses_activation_metadata_missing_a_key_or_with_inconsistent_layers(work, tmp_path):
    edits = {
        "no_layer_indices": (lambda m: m.pop("layer_indices"), "activations metadata lacks key 'layer_indices'"),
        "no_arch": (lambda m: m.pop("model"), "lacks key 'model.arch'"),
        "short_names": (lambda m: m["layer_names"].pop(), "metadata lists disagree in length (arrays: 3, "
                                                          "layer_indices: 3, layer_names: 2)"),
        "names_not_list": (lambda m: m.update(layer_names="blocks"), "'layer_names' is not a list of str"),
        "wrong_count": (lambda m: m.update(n_images=7), "holds 8 images, the metadata says 7"),
    }
    for name, (edit, _) in edits.items():
        _rewrite_meta(work / "acts.npz", tmp_path / f"{name}.npz", edit)
    procs = run_all(*(step("reduce", "--activations", str(tmp_path / f"{name}.npz"), "--out",
                           str(tmp_path / f"{name}.parquet"), "--summary", str(tmp_path / f"{name}_summary.parquet"))
                      for name in edits))
    for (name, (_, fragment)), proc in zip(edits.items(), procs):
        assert_one_line_error(proc, str(tmp_path / f"{name}.npz"), fragment, "re-run the extract step")
        assert not (tmp_path / f"{name}.parquet").exists() and not (tmp_path / f"{name}_summary.parquet").exists()


def test_extract_refuses_a_manifest_with_wrong_column_types_or_nan(work, tmp_path):
    good = pd.read_parquet(work / "manifest.parquet")
    label_nan = good.assign(label=good["label"].astype(float).where(good["position"] != 2))
    index_text = good.assign(index=good["index"].astype(str))
    id_numbers = good.assign(id=np.arange(len(good)))
    positions = good.assign(position=good["position"] + 1)
    cases = {"label_nan": (label_nan, "column 'label' has a missing or NaN value (row 2)"),
             "index_text": (index_text, "column 'index' holds"),
             "id_numbers": (id_numbers, "column 'id' holds int64 values, expected text"),
             "positions": (positions, "column 'position' is not 0..7")}
    for name, (df, _) in cases.items():
        write_parquet(tmp_path / f"{name}.parquet", df)
    procs = run_all(*(step("extract", "--manifest", str(tmp_path / f"{name}.parquet"), "--data",
                           str(work / "data.npz"), "--out", str(tmp_path / f"{name}.npz")) for name in cases))
    for (name, (_, fragment)), proc in zip(cases.items(), procs):
        assert_one_line_error(proc, f"sample manifest {tmp_path / f'{name}.parquet'}", fragment,
                              "re-run the sample step")
        assert not (tmp_path / f"{name}.npz").exists()


def test_non_utf8_index_and_params_non_mapping_params_and_non_object_config_json(work, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints.json").write_bytes(b'{"run_id": "caf\xe9", "checkpoints": []}')  # Latin-1
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"figures:\n  title: \"Entropie d'activit\xe9\"\n")
    a_list = tmp_path / "list.yaml"
    a_list.write_text("- dataset\n- sample\n")
    out = tmp_path / "out.parquet"
    evolution, params_latin1, params_list, json_list = run_all(
        step("evolution", "--run-dir", str(run_dir), "--manifest", str(work / "manifest.parquet"), "--data",
             str(work / "data.npz"), "--out", str(out), "--summary", str(tmp_path / "summary.parquet"),
             "--statistics", str(tmp_path / "statistics.parquet")),
        [*step("sample", "--data", str(work / "data.npz"), "--out", str(out)), "--params", str(latin1)],
        [*step("sample", "--data", str(work / "data.npz"), "--out", str(out)), "--params", str(a_list)],
        step("sample", "--data", str(work / "data.npz"), "--out", str(out), config='[{"sample": {"n_images": 4}}]'),
    )
    assert_one_line_error(evolution, f"{run_dir / 'checkpoints.json'} is not UTF-8 text", "re-run the distill step")
    assert_one_line_error(params_latin1, f"params file {latin1} is not UTF-8 text", "save it as UTF-8")
    assert_one_line_error(params_list, f"params file {a_list} must contain a mapping", "not a list")
    assert_one_line_error(json_list, "--config-json must be a JSON object", "not a list")
    assert not out.exists() and not (tmp_path / "summary.parquet").exists()
