"""The evolution step (per-checkpoint analysis of a distillation run) and Fig. 4, through the real CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline_steps.steps import generate_data
from pipeline_steps.steps import evolution as evolution_step
from pipeline_steps.steps import sample
from pipeline_steps.artifacts import sha256_file
from pipeline_steps.data.datasets import open_dataset
from pipeline_steps.errors import UserError
from pipeline_steps.analysis.checkpoints import read_checkpoints
from pipeline_steps.analysis.shapes import profile_shape
from pipeline_steps.models.build import create_model
from pipeline_steps.models.weights import save_weights

from conftest import assert_one_line_error, run_step

KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2, "num_classes": 10}
ARCH = "vit_tiny_patch16_224"
EPOCHS = (0, 1, 2)
BEST_EPOCH = 1  # best.safetensors holds epoch 1's weights, as the distill step writes it
RUN_ID = "spectralkd_f1-s0"
TEACHER_KWARGS = {**KWARGS, "embed_dim": 48, "depth": 4, "num_heads": 2}
DATA = {"dataset": {"kind": "synthetic", "synthetic": {"train_size": 20, "test_size": 40, "seed": 0}}}
ANALYSIS = {"batch_size": 3, "layers": "all", "bins": 100, "range_policy": "global", "chunk_images": 4,
            "shape_tolerance": 0.05}
CFG = json.dumps({**DATA, "sample": {"n_images": 8}, "analysis": ANALYSIS})


def make_run(run_dir, epochs=EPOCHS, kwargs=KWARGS) -> None:
    """A run directory as the distill step writes it; each 'epoch' is a differently seeded random student and
    best.safetensors holds epoch BEST_EPOCH's weights (with its own metadata, so another file hash)."""
    entries = []
    for epoch in epochs:
        model = create_model({"arch": ARCH, "kwargs": kwargs, "weights": {"source": "random", "seed": 10 + epoch}})
        rel = f"checkpoints/epoch_{epoch:04d}.safetensors"
        save_weights(model, run_dir / rel, {"arch": ARCH, "kwargs": kwargs, "epoch": epoch})
        entries.append({"epoch": epoch, "path": rel, "sha256": sha256_file(run_dir / rel)})
        if epoch == BEST_EPOCH:
            save_weights(model, run_dir / "best.safetensors",
                         {"arch": ARCH, "kwargs": kwargs, "epoch": epoch, "test_acc1": 12.5})
            best = {"epoch": epoch, "path": "best.safetensors", "sha256": sha256_file(run_dir / "best.safetensors"),
                    "test_acc1": 12.5}
    doc = {"run_id": run_dir.name, "epochs": max(epochs), "checkpoints": entries, "best": best}
    (run_dir / "checkpoints.json").write_text(json.dumps(doc, indent=2))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("evolution")
    # The generate-data and sample steps' own functions (their CLIs are tested elsewhere).
    generate_data.run(work / "data.npz", num_classes=10, image_size=32, train_size=20, test_size=40, seed=0,
                      progress=False)
    dataset = open_dataset(DATA["dataset"], "test", synthetic_path=work / "data.npz")
    sample.run(work / "manifest.parquet", dataset, n_images=8, strategy="random", seed=0, split="test",
               progress=False)
    make_run(work / "runs" / RUN_ID)
    # The CKA reference: a deeper, wider random "teacher" on the same sample, through the extract step.
    teacher = {"arch": ARCH, "kwargs": TEACHER_KWARGS, "weights": {"source": "random", "seed": 99}}
    run_step("extract", "--config-json", json.dumps({**json.loads(CFG), "teacher": {"model": teacher}}),
             "--manifest", str(work / "manifest.parquet"), "--data", str(work / "data.npz"),
             "--out", str(work / "teacher.npz"), check=True)
    return work


def evolution(work, run_dir, out_name: str = RUN_ID, reference: Path | None = None):
    out, summary = work / "evolution" / f"{out_name}.parquet", work / "evolution" / f"{out_name}_summary.parquet"
    statistics = work / "evolution" / f"{out_name}_statistics.parquet"
    proc = run_step("evolution", "--config-json", CFG, "--run-dir", str(run_dir),
                    "--manifest", str(work / "manifest.parquet"), "--data", str(work / "data.npz"),
                    *(["--reference", str(reference)] if reference else []),
                    "--out", str(out), "--summary", str(summary), "--statistics", str(statistics))
    return proc, out, summary


@pytest.fixture(scope="module")
def evolved(work):
    proc, out, summary = evolution(work, work / "runs" / RUN_ID, reference=work / "teacher.npz")
    assert proc.returncode == 0, proc.stderr
    return pd.read_parquet(out), pd.read_parquet(summary)


def test_one_value_per_checkpoint_layer_and_metric(evolved, work):
    values, summary = evolved
    depth, width = KWARGS["depth"], KWARGS["embed_dim"]
    assert set(values["run_id"]) == {RUN_ID} and set(values["model"]) == {RUN_ID}
    assert sorted(values["epoch"].unique()) == list(EPOCHS)
    values = values[values["checkpoint"] != "best"]  # the best checkpoint's rows: test_best_checkpoint_is_analysed
    scalars = values[values["metric"] != "spectrum"]
    counts = scalars.groupby(["epoch", "layer", "metric"]).size()
    assert (counts == 1).all() and len(counts) == len(EPOCHS) * depth * 2
    assert values[values["metric"] == "spectrum"].groupby(["epoch", "layer"]).size().eq(width).all()
    assert sorted(values["layer"].unique()) == list(range(1, depth + 1))
    assert set(evolved[0]["checkpoint"]) == {f"epoch_{e:04d}" for e in EPOCHS} | {"best"}
    assert set(values["n_images"]) == {8}
    # Differently initialised checkpoints give different profiles (the step really loads each file).
    entropy = scalars[scalars["metric"] == "entropy"].pivot(index="layer", columns="epoch", values="value")
    assert not np.allclose(entropy[0], entropy[1]) and not np.allclose(entropy[1], entropy[2])
    # Summary: one row per (epoch, metric), consistent with the values.
    assert len(summary) == (len(EPOCHS) + 1) * 2 and set(summary["run_id"]) == {RUN_ID}
    for epoch in EPOCHS:
        row = summary[(summary["checkpoint"] == f"epoch_{epoch:04d}") & (summary["metric"] == "entropy")].iloc[0]
        assert row["argmin_layer"] == int(entropy[epoch].idxmin())
        assert row["drop"] == pytest.approx(entropy[epoch].iloc[0] - entropy[epoch].min(), abs=0)
        # The shape is read with the params' tolerance: entropy in bits, magnitude on log2.
        assert row["shape_tolerance"] == 0.05 and row["shape_scale"] == "linear"
        assert row["shape"] == profile_shape(entropy[epoch].to_numpy(), tol=0.05)
        assert row["u_shaped"] == (row["shape"] == "u_shaped")
        mag_row = summary[(summary["checkpoint"] == f"epoch_{epoch:04d}") & (summary["metric"] == "magnitude")].iloc[0]
        magnitude = scalars[(scalars["metric"] == "magnitude") & (scalars["epoch"] == epoch)].sort_values("layer")
        assert mag_row["shape_scale"] == "log2"
        assert mag_row["shape"] == profile_shape(np.log2(magnitude["value"].to_numpy()), tol=0.05)
    assert not [p.name for p in (work / "evolution").iterdir() if p.name.startswith(".")]  # temp dir removed


def test_values_equal_the_teacher_analysis_of_each_checkpoint(evolved, work):
    """Bit-exact: the same numbers as extract + reduce run on the checkpoint as a weights.source: file model."""
    values, _ = evolved
    epoch = 1
    ckpt = work / "runs" / RUN_ID / f"checkpoints/epoch_{epoch:04d}.safetensors"
    model = {"arch": ARCH, "kwargs": KWARGS, "weights": {"source": "file", "path": str(ckpt)}}
    cfg = json.dumps({**json.loads(CFG), "teacher": {"model": model}})
    acts, ref, ref_summary = work / "ref.npz", work / "ref.parquet", work / "ref_summary.parquet"
    run_step("extract", "--config-json", cfg, "--manifest", str(work / "manifest.parquet"),
             "--data", str(work / "data.npz"), "--out", str(acts), check=True)
    run_step("reduce", "--config-json", cfg, "--activations", str(acts), "--out", str(ref),
             "--summary", str(ref_summary), "--epoch", str(epoch), check=True)
    expected = pd.read_parquet(ref)
    got = values[values["checkpoint"] == f"epoch_{epoch:04d}"].reset_index(drop=True)
    cols = ["arch", "epoch", "layer", "layer_name", "metric", "k", "value", "n_images", "bins", "range_policy",
            "range_min", "range_max", "weights_hash", "manifest_hash"]
    pd.testing.assert_frame_equal(got[cols], expected[cols], check_exact=True)
    summary_cols = ["metric", "argmin_layer", "first", "min", "last", "drop", "rise", "shape", "u_shaped",
                    "shape_tolerance", "shape_scale"]
    got_summary = evolved[1][evolved[1]["checkpoint"] == f"epoch_{epoch:04d}"].reset_index(drop=True)
    pd.testing.assert_frame_equal(got_summary[summary_cols], pd.read_parquet(ref_summary)[summary_cols],
                                  check_exact=True)


def test_best_checkpoint_is_analysed(evolved, work):
    """The best checkpoint gets its own rows (checkpoint 'best', the epoch it was saved after); it holds epoch
    1's weights, so its numbers equal epoch 1's exactly; its file hash is the one checkpoints.json records."""
    values, summary = evolved
    best = values[values["checkpoint"] == "best"].reset_index(drop=True)
    assert set(best["epoch"]) == {BEST_EPOCH} and set(best["run_id"]) == {RUN_ID}
    assert values["checkpoint"].iloc[-1] == "best"  # after the epoch checkpoints
    same = values[values["checkpoint"] == f"epoch_{BEST_EPOCH:04d}"].reset_index(drop=True)
    cols = ["epoch", "layer", "metric", "k", "value", "range_min", "range_max", "weights_hash"]
    pd.testing.assert_frame_equal(best[cols], same[cols], check_exact=True)
    # ...and differ from the other epochs' (it really is epoch 1's file that was analysed).
    other = values[(values["checkpoint"] == "epoch_0002") & (values["metric"] == "entropy")]["value"].to_numpy()
    assert not np.allclose(best[best["metric"] == "entropy"]["value"].to_numpy(), other)
    row = summary[(summary["checkpoint"] == "best") & (summary["metric"] == "entropy")]
    assert len(row) == 1 and int(row["epoch"].iloc[0]) == BEST_EPOCH
    doc = json.loads((work / "runs" / RUN_ID / "checkpoints.json").read_text())
    assert doc["best"]["sha256"] == sha256_file(work / "runs" / RUN_ID / "best.safetensors")


def test_statistics_of_every_checkpoint_with_cka_to_the_teacher(evolved, work):
    """The statistics table: every checkpoint, CKA [teacher layers x student layers] to the reference, seed read
    from the run id; each checkpoint's rows equal layer_statistics on that checkpoint's activations."""
    from pipeline_steps.analysis.layer_statistics import layer_statistics, statistics_settings

    stats = pd.read_parquet(work / "evolution" / f"{RUN_ID}_statistics.parquet")
    assert set(stats["checkpoint"]) == {f"epoch_{e:04d}" for e in EPOCHS} | {"best"}
    assert set(stats["run_id"]) == {RUN_ID} and set(stats["seed"]) == {0} and set(stats["n_images"]) == {8}
    cka = stats[stats["metric"] == "cka"]
    per_checkpoint = cka.groupby("checkpoint").apply(lambda g: (g["teacher_layer"].nunique(), g["layer"].nunique()))
    assert set(per_checkpoint) == {(TEACHER_KWARGS["depth"], KWARGS["depth"])}
    assert cka["value"].between(-0.1, 1.0 + 1e-9).all() and cka["value"].notna().all()
    # The step's rows of epoch 1 are layer_statistics of epoch 1's activations (the extract step's file).
    ckpt = work / "runs" / RUN_ID / "checkpoints/epoch_0001.safetensors"
    model = {"arch": ARCH, "kwargs": KWARGS, "weights": {"source": "file", "path": str(ckpt)}}
    acts = work / "epoch1.npz"
    run_step("extract", "--config-json", json.dumps({**json.loads(CFG), "teacher": {"model": model}}),
             "--manifest", str(work / "manifest.parquet"), "--data", str(work / "data.npz"), "--out", str(acts),
             check=True)
    analysis = {**ANALYSIS, "statistics": {"bootstrap": 1000, "bootstrap_seed": 0, "confidence": 0.95,
                                           "massive_min_ratio": 1000, "massive_min_magnitude": 100}}
    expected = layer_statistics(acts, reference=work / "teacher.npz", model_label=RUN_ID, seed=0,
                                checkpoint="epoch_0001", epoch=1, **statistics_settings(analysis))
    got = stats[stats["checkpoint"] == "epoch_0001"].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    # The best checkpoint holds epoch 1's weights: the same numbers.
    best = stats[stats["checkpoint"] == "best"].drop(columns="checkpoint").reset_index(drop=True)
    pd.testing.assert_frame_equal(best, got.drop(columns="checkpoint"), check_exact=True)


def _flip_last_byte(path: Path) -> None:
    """Tamper with a file so that its SHA-256 no longer matches the recorded one."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_best_sha_mismatch_is_a_one_line_error(work, tmp_path):
    run_dir = tmp_path / "runs" / "softkd-s2"
    shutil.copytree(work / "runs" / RUN_ID, run_dir)
    _flip_last_byte(run_dir / "best.safetensors")
    proc, out, summary = evolution(tmp_path, run_dir, "softkd-s2")
    assert_one_line_error(proc, "best.safetensors (best checkpoint 1)", "SHA-256", "re-run the distill step")
    assert not out.exists() and not summary.exists() and not (tmp_path / "evolution").exists()


def test_sha_mismatch_is_a_one_line_error_and_writes_nothing(work, tmp_path):
    run_dir = tmp_path / "runs" / "softkd-s1"
    shutil.copytree(work / "runs" / RUN_ID, run_dir)
    doc = json.loads((run_dir / "checkpoints.json").read_text())
    doc["run_id"] = "softkd-s1"
    (run_dir / "checkpoints.json").write_text(json.dumps(doc))
    _flip_last_byte(run_dir / "checkpoints/epoch_0002.safetensors")
    proc, out, summary = evolution(tmp_path, run_dir, "softkd-s1")
    assert_one_line_error(proc, "epoch_0002.safetensors", "SHA-256", "re-run the distill step for softkd-s1")
    assert not out.exists() and not summary.exists()


def test_missing_checkpoint_and_index_are_user_errors(work, tmp_path):
    run_dir = tmp_path / "run-s0"
    with pytest.raises(UserError, match="no checkpoints.json .* run the distill step"):
        read_checkpoints(run_dir)
    shutil.copytree(work / "runs" / RUN_ID, run_dir)
    (run_dir / "checkpoints/epoch_0001.safetensors").unlink()
    with pytest.raises(UserError, match=r"epoch_0001.safetensors \(epoch 1, .*\) is missing; restore it or re-run"):
        read_checkpoints(run_dir)
    run_id, checkpoints = read_checkpoints(run_dir, verify=False)
    assert run_id == RUN_ID and [c["epoch"] for c in checkpoints] == [*EPOCHS, BEST_EPOCH]
    assert [c["checkpoint"] for c in checkpoints] == [*(f"epoch_{e:04d}" for e in EPOCHS), "best"]
    shutil.copy(work / "runs" / RUN_ID / "checkpoints/epoch_0001.safetensors", run_dir / "checkpoints")
    (run_dir / "best.safetensors").unlink()
    with pytest.raises(UserError, match=r"best.safetensors \(best checkpoint 1, .*\) is missing"):
        read_checkpoints(run_dir)
    doc = json.loads((run_dir / "checkpoints.json").read_text())
    del doc["best"]
    (run_dir / "checkpoints.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match="has no 'best' checkpoint .* re-run the distill step for spectralkd_f1-s0"):
        read_checkpoints(run_dir, verify=False)


def _seeded_copy(values: pd.DataFrame, run_id: str, shift: float) -> pd.DataFrame:
    return values.assign(run_id=run_id, model=run_id, value=values["value"] + shift)


def test_fig4_panels_per_configuration_in_label_order(evolved, work, tmp_path):
    """Through the CLI: two configurations (one with two seeds), the teacher line, PDF + PNG."""
    from pipeline_steps.reporting import plots

    values, _ = evolved
    tables = []
    for run_id, shift in [(RUN_ID, 0.0), ("softkd-s0", 0.1), ("softkd-s1", 0.3)]:
        path = tmp_path / f"{run_id}.parquet"
        _seeded_copy(values, run_id, shift).to_parquet(path)
        tables.append(str(path))
    teacher = tmp_path / "teacher.parquet"
    t_depth = 6  # deeper than the student, as in the paper (24 vs 12)
    pd.DataFrame({"model": "teacher", "arch": "vit", "checkpoint": "final", "layer": range(1, t_depth + 1),
                  "metric": "entropy", "value": np.linspace(3.0, 4.0, t_depth)}).to_parquet(teacher)
    labels = {"softkd": "SoftKD", "spectralkd_f1": "SpectralKD F1"}
    out = tmp_path / "fig4_evolution.pdf"
    proc = run_step("figures", "--config-json", json.dumps({"figures": {"dpi": 50}}), "--figure", "evolution",
                    "--evolution", *tables, "--reductions", str(teacher), "--labels-json", json.dumps(labels),
                    "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes().startswith(b"%PDF")
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind

    both = pd.concat([pd.read_parquet(p) for p in tables])
    fig = plots.figure_evolution(both, pd.read_parquet(teacher), labels)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["(a) SoftKD, 2 seeds", "(b) SpectralKD F1"]
    lines = panels[0].get_lines()
    teacher_line = [ln for ln in lines if ln.get_label() == plots.TEACHER_SHAPE_LABEL]
    assert len(teacher_line) == 1 and teacher_line[0].get_linestyle() == "--"
    x, y = teacher_line[0].get_data()
    assert x[0] == 1 and x[-1] == KWARGS["depth"] and len(x) == t_depth  # depth-aligned on the student's axis
    curves = [ln for ln in lines if ln.get_label().startswith(("_epoch", "init"))]
    assert len(curves) == len(EPOCHS)  # one curve per checkpoint epoch
    assert curves[0].get_label() == "init (epoch 0)" and curves[0].get_linestyle() == ":"
    # The SoftKD curve of epoch 0 is the mean of its two seeds (shifted by 0.1 and 0.3).
    entropy = values[values["metric"] == "entropy"]
    e0 = entropy[entropy["epoch"] == 0].sort_values("layer")["value"]
    np.testing.assert_allclose(curves[0].get_ydata(), e0.to_numpy() + 0.2, rtol=0, atol=1e-12)
    # The best checkpoint: black, solid, labelled with its epoch; the seeds' mean.
    (best,) = [ln for ln in lines if ln.get_label().startswith("best")]
    assert best.get_label() == f"best (epoch {BEST_EPOCH})" and best.get_color() == "black"
    eb = entropy[entropy["checkpoint"] == "best"].sort_values("layer")["value"]
    np.testing.assert_allclose(best.get_ydata(), eb.to_numpy() + 0.2, rtol=0, atol=1e-12)
    # The teacher (3.0 .. 4.0 bits, linear) is rescaled onto the range of the panel's student curves.
    student = np.concatenate([ln.get_ydata() for ln in [*curves, best]])
    assert y.min() == pytest.approx(student.min(), abs=1e-12) and y.max() == pytest.approx(student.max(), abs=1e-12)
    np.testing.assert_allclose(np.diff(y), np.diff(y)[0], rtol=1e-9)  # its shape (a straight line) kept
    assert plots.TEACHER_SHAPE_LABEL in [t.get_text() for t in panels[0].get_legend().get_texts()]
    assert len(panels[0].collections) == len(EPOCHS) and not panels[1].collections  # seed bands: >1 seed only
    plots.plt.close(fig)


def test_fig4_bad_input_is_a_one_line_error(evolved, tmp_path):
    table = tmp_path / f"{RUN_ID}.parquet"
    evolved[0].to_parquet(table)
    base = ["figures", "--figure", "evolution", "--out", str(tmp_path / "fig4.pdf"), "--evolution", str(table)]
    assert_one_line_error(run_step(*base, "--labels-json", '{"softkd": "SoftKD"}'),
                          "no evolution table for configuration 'softkd'")
    assert_one_line_error(run_step(*base, "--labels-json", "{softkd"), "--labels-json is not valid JSON")
    assert_one_line_error(run_step(*base[:-2], "--evolution", str(tmp_path / "none.parquet")),
                          "evolution table not found", "run the evolution step")
    assert not (tmp_path / "fig4.pdf").exists()


# ---------------------------------------------------------------------------------------------------------
# An ImageNet-style folder: listed once per run, the same activations with DataLoader workers
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def imagefolder(tmp_path_factory):
    """A val folder of 3 classes x 4 seeded-noise JPEGs (40 x 30, preprocessed to 32 x 32), a 6-image sample
    of it and the validated params: ``(work, params)``."""
    from PIL import Image

    from pipeline_steps.config import validate_params

    work = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for cls in ("n01_a", "n02_b", "n03_c"):
        (work / "imagenet" / "val" / cls).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(work / "imagenet" / "val" / cls / f"img{i}.JPEG", quality=90)
    preprocess = {"resize": 32, "crop": 32, "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.25] * 3}
    params = validate_params({"dataset": {"kind": "imagefolder", "imagefolder": {"root": str(work / "imagenet")},
                                          "preprocess": preprocess}, "analysis": ANALYSIS})
    sample.run(work / "manifest.parquet", open_dataset(params["dataset"], "test"), n_images=6, strategy="random",
               seed=0, split="test", progress=False)
    return work, params


def _counting_listings(monkeypatch) -> list[Path]:
    """Wrap the real ``_list_images`` so that each listing of a split folder is recorded."""
    from pipeline_steps.data import datasets

    listed, real = [], datasets._list_images

    def list_images(directory, classes):
        listed.append(directory)
        return real(directory, classes)

    monkeypatch.setattr(datasets, "_list_images", list_images)
    return listed


def test_an_imagefolder_is_listed_once_per_run(imagefolder, monkeypatch):
    """Five checkpoints (epochs 0-3 and the best), one listing of the folder; each checkpoint's values are
    those of the extraction that opens the folder itself (the extract step's), bit for bit."""
    from pipeline_steps.analysis.extraction import extract_activations
    from pipeline_steps.analysis.reductions import reduce_activations

    work, params = imagefolder
    run_dir = work / "runs" / RUN_ID
    make_run(run_dir, epochs=(0, 1, 2, 3))
    listed = _counting_listings(monkeypatch)
    values, _, _ = evolution_step.run(run_dir, work / "values.parquet", work / "summary.parquet",
                                      work / "statistics.parquet", dataset=params["dataset"],
                                      analysis=params["analysis"], manifest_path=work / "manifest.parquet",
                                      progress=False)
    assert values["checkpoint"].nunique() == 5
    assert listed == [work / "imagenet" / "val"]

    ckpt = run_dir / "checkpoints/epoch_0002.safetensors"
    spec = {"arch": ARCH, "kwargs": KWARGS, "weights": {"source": "file", "path": str(ckpt)}}
    analysis = params["analysis"]
    extract_activations(spec, work / "epoch2.npz", dataset=params["dataset"], manifest_path=work / "manifest.parquet",
                        layers=analysis["layers"], batch_size=analysis["batch_size"], model_key="student")
    assert len(listed) == 2  # opened again, as the extract step does
    expected, _ = reduce_activations(work / "epoch2.npz", bins=analysis["bins"], range_policy=analysis["range_policy"],
                                     shape_tolerance=analysis["shape_tolerance"],
                                     chunk_images=analysis["chunk_images"], model_label=RUN_ID,
                                     checkpoint="epoch_0002", epoch=2, progress=False)
    got = values[values["checkpoint"] == "epoch_0002"].drop(columns="run_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)


def test_dataloader_workers_give_the_same_activations(imagefolder, tmp_path):
    """Two worker processes read the images in the same order as the step's own process: the same file."""
    from pipeline_steps.analysis.extraction import extract_activations, open_sample

    work, params = imagefolder
    spec = {"arch": ARCH, "kwargs": KWARGS, "weights": {"source": "random", "seed": 3}}
    images = open_sample(params["dataset"], work / "manifest.parquet")
    paths = []
    for workers in (0, 2):
        paths.append(tmp_path / f"workers{workers}.npz")
        extract_activations(spec, paths[-1], dataset=params["dataset"], manifest_path=work / "manifest.parquet",
                            batch_size=4, num_workers=workers, images=images)  # 6 images: batches of 4 and 2
    assert sha256_file(paths[0]) == sha256_file(paths[1])


# ---------------------------------------------------------------------------------------------------------
# The authors' published tables (reference/entropy) in the same format, drawn by the same function
# ---------------------------------------------------------------------------------------------------------

def _log_best_epoch(path) -> int:
    """Independently of the tables module: 1 + the first 0-based epoch with the highest test_acc1."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    top = max(r["test_acc1"] for r in rows)
    return 1 + min(r["epoch"] for r in rows if r["test_acc1"] == top)


def test_published_entropy_table_in_the_evolution_format():
    import csv

    from conftest import REPO
    from pipeline_steps.analysis.published import read_published, read_published_entropy

    path = REPO / "reference/entropy/SoftKD.csv"
    with path.open() as f:
        wide = {row["Model/Epoch"]: row for row in csv.DictReader(f)}
    got = read_published_entropy(path, "softkd", best_epoch=297)
    assert len(got) == 11 * 12 and set(got["metric"]) == {"entropy"} and set(got["run_id"]) == {"softkd"}
    epochs = got[got["checkpoint"] != "best"]
    assert sorted(epochs["epoch"].unique()) == list(range(30, 301, 30))
    assert set(epochs["checkpoint"]) == {f"checkpoint_epoch_{e}" for e in range(30, 301, 30)}
    for name, epoch in [("checkpoint_epoch_30", 30), ("checkpoint_epoch_300", 300)]:
        rows = got[got["checkpoint"] == name].sort_values("layer")
        assert set(rows["epoch"]) == {epoch} and list(rows["layer"]) == list(range(1, 13))
        assert list(rows["value"]) == [float(wide[name][f"Layer_{i}"]) for i in range(1, 13)]
    assert got.loc[0, "value"] == 2.4673946862766547  # checkpoint_epoch_30, layer 1, as printed in the file
    best = got[got["checkpoint"] == "best"].sort_values("layer")
    assert set(best["epoch"]) == {297} and got["checkpoint"].iloc[-1] == "best"
    assert list(best["value"]) == [float(wide["model_best"][f"Layer_{i}"]) for i in range(1, 13)]
    assert read_published_entropy(path, "softkd")["epoch"].isna().sum() == 12  # best epoch unknown: <NA>

    values, labels = read_published(REPO / "reference/entropy", REPO / "reference/logs")
    assert labels == {"softkd": "SoftKD", "spectralkd_f1": "SpectralKD F1", "spectralkd_l1": "SpectralKD L1",
                      "spectralkd_f1l1": "SpectralKD F1 L1"}
    logs = {"softkd": "SoftKD.txt", "spectralkd_f1": "SpectralKD_First_1.txt",
            "spectralkd_l1": "SpectralKD_Last_1.txt", "spectralkd_f1l1": "SpectralKD_First_1_Last_1.txt"}
    best_epochs = values[values["checkpoint"] == "best"].groupby("run_id")["epoch"].first().to_dict()
    assert best_epochs == {r: _log_best_epoch(REPO / "reference/logs" / log) for r, log in logs.items()}
    assert best_epochs == {"softkd": 297, "spectralkd_f1": 299, "spectralkd_l1": 297, "spectralkd_f1l1": 290}


def test_published_fig4_through_the_cli_with_the_same_function(tmp_path):
    from conftest import REPO
    from pipeline_steps.steps import figures
    from pipeline_steps.reporting import plots
    from pipeline_steps.analysis.published import read_published

    out = tmp_path / "paper_fig4_published.pdf"
    proc = run_step("figures", "--config-json", json.dumps({"figures": {"dpi": 50}}), "--figure",
                    "evolution_published", "--published-entropy", str(REPO / "reference/entropy"),
                    "--published-logs", str(REPO / "reference/logs"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes().startswith(b"%PDF") and out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    values, labels = read_published(REPO / "reference/entropy", REPO / "reference/logs")
    fig = plots.figure_evolution(values, None, labels, figures.PUBLISHED_TITLE)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["(a) SoftKD", "(b) SpectralKD F1", "(c) SpectralKD L1",
                                                 "(d) SpectralKD F1 L1"]
    best = [ln.get_label() for ax in panels for ln in ax.get_lines() if ln.get_label().startswith("best")]
    assert best == ["best (epoch 297)", "best (epoch 299)", "best (epoch 297)", "best (epoch 290)"]
    softkd_300 = [ln for ln in panels[0].get_lines() if ln.get_label() == "_epoch 300"][0]
    at_300 = values[(values["run_id"] == "softkd") & (values["checkpoint"] == "checkpoint_epoch_300")]
    assert softkd_300.get_ydata()[0] == at_300[at_300["layer"] == 1]["value"].item()
    plots.plt.close(fig)
    assert_one_line_error(run_step("figures", "--figure", "evolution_published", "--published-entropy",
                                   str(tmp_path / "none"), "--out", str(tmp_path / "f.pdf")),
                          "published entropy table not found")
    assert not (tmp_path / "f.pdf").exists()
