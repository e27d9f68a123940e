"""Lift and WideLast runs end to end: the distill step's ``run`` trains a tiny student of each for one epoch,
its checkpoints rebuild the remedy model, and the evolution step analyses every block, the wider last one
included."""

from __future__ import annotations

import pytest

from pipeline_steps.config import distill_runs, validate_params
from pipeline_steps.data.datasets import open_dataset
from pipeline_steps.models.build import create_model
from pipeline_steps.models.layers import block_channels
from pipeline_steps.models.weights import load_checkpoint_spec, read_weights_metadata
from pipeline_steps.steps import distill, evolution, generate_data, sample
from pipeline_steps.training.recipe import Recipe

STUDENT = {"img_size": 16, "patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 2, "num_classes": 4}
TEACHER = {**STUDENT, "embed_dim": 32, "depth": 3}
DATASET = {"kind": "synthetic", "synthetic": {"seed": 0, "num_classes": 4, "image_size": 16, "train_size": 40,
                                              "test_size": 12}}
ANALYSIS = {"batch_size": 4, "layers": "all", "chunk_images": 4}
RECIPE = Recipe(epochs=1, batch_size=20, lr=3e-3, min_lr=1e-5, warmup_epochs=0, warmup_lr=1e-6, sched_on="step",
                weight_decay=0.05, label_smoothing=0.1, seed=0, checkpoint_every=1, device="cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("remedies")
    data = work / "data.npz"
    generate_data.run(data, num_classes=4, image_size=16, train_size=40, test_size=12, seed=0, progress=False)
    params = validate_params({"dataset": DATASET, "analysis": ANALYSIS, "distill": {"seeds": [0], "runs": [
        {"name": "lift", "method": "lift"}, {"name": "widelast", "method": "widelast"},
        {"name": "lift_softkd", "method": "softkd", "architecture": "lift"}]}})
    teacher = {"arch": "vit_tiny_patch16_224", "kwargs": TEACHER, "weights": {"source": "random", "seed": 99}}
    student = {"arch": "vit_tiny_patch16_224", "kwargs": STUDENT, "weights": {"source": "random", "seed": 0}}
    dataset = params["dataset"]
    manifest = work / "manifest.parquet"
    sample.run(manifest, open_dataset(dataset, "test", synthetic_path=data), n_images=6, strategy="random", seed=0,
               split="test", progress=False)
    out = {}
    for grid_run in distill_runs(params):
        run_dir = work / "runs" / grid_run.run_id
        rows = distill.run(grid_run, run_dir, teacher=teacher, student=student, recipe=RECIPE, dataset=dataset,
                           fingerprint="test", synthetic_path=data, progress=False)
        values, summary, _ = evolution.run(run_dir, work / f"{grid_run.name}.parquet",
                                           work / f"{grid_run.name}_summary.parquet",
                                           work / f"{grid_run.name}_statistics.parquet", dataset=dataset,
                                           analysis=params["analysis"], manifest_path=manifest, synthetic_path=data,
                                           progress=False)
        out[grid_run.name] = (run_dir, rows, values)
    return out


@pytest.mark.parametrize("name,arch", [("lift", "vit_lift"), ("widelast", "vit_widelast"),
                                       ("lift_softkd", "vit_lift")])
def test_checkpoints_store_and_rebuild_the_remedy(trained, name, arch):
    run_dir, rows, _ = trained[name]
    meta = read_weights_metadata(run_dir / "model.safetensors")
    assert meta["arch"] == arch
    assert meta["kwargs"] == {"base_arch": "vit_tiny_patch16_224", "wide_dim": 32, **STUDENT}
    model = create_model(load_checkpoint_spec(run_dir / "model.safetensors"))
    assert block_channels(model) == [16, 32]
    base = sum(p.numel() for p in create_model({"arch": "vit_tiny_patch16_224", "kwargs": STUDENT}).parameters())
    head_s, head_t = 16 * 4 + 4, 32 * 4 + 4
    if arch == "vit_lift":
        # minus the base's final LN and head; plus the projector, its LN and the wider head
        expected = base - 2 * 16 - head_s + 16 * 32 + 2 * 32 + head_t
    else:
        def block(d: int) -> int:  # two LNs, qkv, proj, fc1 (4d), fc2, all with bias
            return 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)

        expected = base - block(16) + block(32) + 16 * 32 + 2 * 32 + 2 * 32 - 2 * 16 + head_t - head_s
    assert sum(p.numel() for p in model.parameters()) == expected
    assert len(rows) == 1 and rows[0]["epoch"] == 0
    loss_feat = rows[0]["train_loss_fft"]
    assert (loss_feat > 0) if name != "lift_softkd" else loss_feat == 0.0


@pytest.mark.parametrize("name", ["lift", "widelast"])
def test_evolution_analyses_every_block_of_a_remedy(trained, name):
    _, _, values = trained[name]
    checkpoints = values["checkpoint"].nunique()
    assert checkpoints == 3  # epoch_0000 (the init), epoch_0001 and best
    counts = values.groupby(["layer", "metric"]).size().to_dict()
    # One entropy and one magnitude value per block and checkpoint; the channel spectrum has one entry per
    # channel: 16 at block 1, the teacher's 32 at the remedy's last block.
    assert counts == {(1, "entropy"): 3, (1, "magnitude"): 3, (1, "spectrum"): 16 * 3,
                      (2, "entropy"): 3, (2, "magnitude"): 3, (2, "spectrum"): 32 * 3}
    assert values["value"].notna().all() and (values["arch"] == f"vit_{name}").all()

