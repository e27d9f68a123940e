"""A CNN (a timm ResNet) as the analysed model: its residual stages are the layers of extract -> reduce -> figures.

A randomly initialised ``resnet10t`` on 32x32 synthetic images goes through the library functions the extract,
reduce and figures steps call; the activations must equal a direct ``forward_intermediates`` call (indices 1..4,
past the stem) and the metrics the literal transcriptions of Eq. 1-6 (tests/metrics_oracle.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

import metrics_oracle as ref
from conftest import REPO, assert_one_line_error, run_step
from pipeline_steps.analysis.activations import STAGE_POLICY, ActivationsFile
from pipeline_steps.errors import UserError
from pipeline_steps.models.build import create_model, describe_model
from pipeline_steps.models.layers import (intermediate_indices, kind_of_layer_names, layer_kind, layer_names,
                                          num_blocks, num_layers, resolve_layers)

SPEC = {"arch": "resnet10t", "kwargs": {"num_classes": 10}, "weights": {"source": "random", "seed": 3}}
STAGES = ["layer1", "layer2", "layer3", "layer4"]
#: resnet10t on 32x32 images: channels 64, 128, 256, 512 at strides 4, 8, 16, 32.
STAGE_SHAPES = [(64, 8, 8), (128, 4, 4), (256, 2, 2), (512, 1, 1)]


@pytest.fixture(scope="module")
def resnet() -> torch.nn.Module:
    return create_model(SPEC)


def test_stages_are_the_layers(resnet):
    """Four stages named as timm's feature_info names them; analysis layer i is forward_intermediates index i + 1
    (index 0 is the stem); distillation, which needs blocks, refuses the model in one line."""
    assert layer_kind(resnet) == "stage" and num_layers(resnet) == 4
    assert layer_names(resnet, resolve_layers(resnet, "all")) == STAGES
    assert [entry["module"] for entry in resnet.feature_info] == ["act1", *STAGES]
    assert intermediate_indices(resnet, [0, 3]) == [1, 4]
    assert resolve_layers(resnet, [3, 1]) == [1, 3]
    with pytest.raises(UserError, match=r"analysis.layers contains 4 but the model has 4 stages \(valid 0..3\)"):
        resolve_layers(resnet, [4])
    with pytest.raises(UserError, match=r"model 'resnet10t' has no 'blocks' \(a CNN: only its analysis is "
                                        r"supported, distillation needs a ViT\)"):
        num_blocks(resnet)
    assert describe_model(SPEC) == "ResNet, 4 stages"
    with pytest.raises(UserError, match="model 'test_convnext' has no 'blocks' sequence of transformer blocks nor "
                                        "residual stages"):
        create_model({"arch": "test_convnext"})  # a CNN whose forward_intermediates enumeration is not checked
    assert kind_of_layer_names(STAGES) == "stage" and kind_of_layer_names(["blocks.0", "blocks.1"]) == "block"


def test_resnet_extract_reduce_figure(tmp_path, resnet):
    """extract -> reduce -> figures for a ResNet, with exact shapes, names and values."""
    from pipeline_steps.analysis.extraction import extract_activations
    from pipeline_steps.analysis.reductions import reduce_activations
    from conftest import small_sample
    from pipeline_steps.reporting import plots

    data, test_set, manifest, rows = small_sample(tmp_path)
    n_images = len(rows)
    out = tmp_path / "teacher.npz"
    meta = extract_activations(SPEC, out, dataset={"kind": "synthetic"}, manifest_path=manifest, batch_size=4,
                               synthetic_path=data)

    f = ActivationsFile(out)
    assert f.layers == ["layer_00", "layer_01", "layer_02", "layer_03"] and f.layer_indices == [0, 1, 2, 3]
    assert f.layer_kind == "stage" and meta["layer_kind"] == "stage" and meta["layer_names"] == STAGES
    assert meta["n_blocks"] == 4 and meta["token_policy"] == STAGE_POLICY and meta["prefix_tokens_removed"] == 0
    assert [f.shape(i) for i in range(4)] == [(n_images, *s) for s in STAGE_SHAPES]

    images = torch.stack([test_set[i][0] for i in rows["index"]])
    with torch.inference_mode():
        direct = resnet.forward_intermediates(images, indices=[1, 2, 3, 4], norm=False, output_fmt="NCHW",
                                              intermediates_only=True)
    stored = [f.load(i) for i in range(4)]
    for got, want in zip(stored, direct):
        np.testing.assert_array_equal(got, want.numpy())

    values, summary = reduce_activations(out, bins=100, range_policy="global", shape_tolerance=0.05,
                                         chunk_images=2, progress=False)
    assert sorted(values["layer"].unique()) == [1, 2, 3, 4]
    assert values.groupby("layer")["layer_name"].first().tolist() == STAGES
    assert values.groupby("layer")["metric"].apply(lambda m: int((m == "spectrum").sum())).tolist() == \
        [64, 128, 256, 512]  # C bins: the channel spectrum of each stage
    lo = min(float(a.min()) for a in stored)
    hi = max(float(a.max()) for a in stored)
    for stage, acts in enumerate(stored, start=1):
        one = acts[None]  # the oracle's [L, B, C, H, W]
        at = values[values["layer"] == stage]
        np.testing.assert_allclose(at.loc[at["metric"] == "magnitude", "value"].to_numpy(),
                                   ref.activation_magnitude(one), rtol=1e-6)
        np.testing.assert_allclose(at.loc[at["metric"] == "entropy", "value"].to_numpy(),
                                   ref.channel_entropy(one, value_range=(lo, hi)), rtol=0, atol=1e-9)
        spectrum = at[at["metric"] == "spectrum"].sort_values("k")["value"].to_numpy()
        np.testing.assert_allclose(spectrum, ref.channel_spectrum(one)[0], rtol=2e-6, atol=1e-9)
    assert summary["metric"].tolist() == ["entropy", "magnitude"]

    fig = plots.figure_profile(values, "entropy", "teacher: " + describe_model(SPEC))
    ax = fig.axes[0]
    assert ax.get_xlabel() == "Stage"
    assert any(t.get_text().startswith("min: stage ") for t in ax.texts)
    written = plots.save_figure(fig, tmp_path / "entropy.pdf")
    assert all(p.stat().st_size > 0 for p in written)
    grid = plots.figure_spectra_grid(values)
    assert [a.get_title() for a in grid.axes if a.get_visible()] == ["stage 1", "stage 2", "stage 3", "stage 4"]
    spectra = plots.figure_spectra(values, plots.choose_spectra_layers(
        plots.profile(values, "entropy")["value"].to_numpy()))
    assert all(" stage " in a.get_title() for a in spectra.axes if a.get_visible())


def test_steps_on_a_resnet_teacher(tmp_path):
    """The analysis steps from the command line with a ResNet as ``teacher.model``: the reduce step reports the
    minimum as a stage, the figure renders; the distillation side refuses a CNN teacher in one line."""
    params = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    params["teacher"]["model"] = SPEC
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    p = ("--params", str(tmp_path / "p.yaml"))
    data, manifest, acts = (str(tmp_path / n) for n in ("data.npz", "m.parquet", "t.npz"))
    run_step("generate-data", *p, "--out", data, check=True)
    run_step("sample", *p, "--data", data, "--out", manifest, check=True)
    run_step("extract", *p, "--data", data, "--manifest", manifest, "--out", acts, check=True)
    assert ActivationsFile(acts).layer_kind == "stage"
    reduced = run_step("reduce", *p, "--activations", acts, "--out", str(tmp_path / "r.parquet"),
                       "--summary", str(tmp_path / "s.parquet"), check=True)
    assert "entropy minimum at stage " in reduced.stdout
    run_step("figures", *p, "--figure", "entropy", "--reductions", str(tmp_path / "r.parquet"),
             "--out", str(tmp_path / "entropy.pdf"), check=True)
    assert (tmp_path / "entropy.png").stat().st_size > 0
    refused = run_step("teacher-cache", *p, "--data", data, "--out", str(tmp_path / "cache.safetensors"))
    assert_one_line_error(refused, "model 'resnet10t' has no 'blocks' (a CNN: only its analysis is supported, "
                                   "distillation needs a ViT)")
    assert not (tmp_path / "cache.safetensors").exists()


def test_statistics_beyond_entropy_on_resnet_stages(tmp_path):
    """The statistics table of a ResNet: one stage at a time (each its own C and grid), each value that of the
    one-shot function on that stage; CKA of the model with itself has a unit diagonal across stages of different
    widths; stage 4's single token has no participation ratio (NaN) and its profile is left out of the summary."""
    from conftest import small_sample
    from pipeline_steps.analysis.extraction import extract_activations
    from pipeline_steps.analysis.layer_statistics import layer_statistics, statistics_summary
    from pipeline_steps.analysis.rank import effective_rank, participation_ratio, svd_energy_rank
    from pipeline_steps.analysis.spectral import sep_bandwidth

    data, _, manifest, _ = small_sample(tmp_path, n_images=6)
    out = tmp_path / "teacher.npz"
    extract_activations(SPEC, out, dataset={"kind": "synthetic"}, manifest_path=manifest, batch_size=4,
                        synthetic_path=data)
    table = layer_statistics(out, reference=out, bootstrap=100, chunk_images=2)
    assert table.groupby("layer")["layer_name"].first().tolist() == STAGES
    f = ActivationsFile(out)
    for stage in range(4):
        one = f.load(stage)[None]
        at = table[table["layer"] == stage + 1].set_index(["metric", "level"])["value"]
        np.testing.assert_allclose(at[("effective_rank", np.nan)], effective_rank(one)[0], rtol=1e-12)
        np.testing.assert_allclose(at.xs("svd_rank_mean", level="metric").to_numpy(),
                                   svd_energy_rank(one)[0].mean(0), rtol=1e-14)
        np.testing.assert_array_equal(at.xs("sep_bandwidth_folded", level="metric").to_numpy(),
                                      sep_bandwidth(one, mode="folded")[0])
        if stage < 3:
            np.testing.assert_allclose(at[("participation_ratio", np.nan)], participation_ratio(one)[0], rtol=1e-12)
    assert np.isnan(table.query("metric == 'participation_ratio' and layer == 4")["value"]).all()
    cka = table[table["metric"] == "cka"].pivot(index="teacher_layer", columns="layer", values="value")
    np.testing.assert_allclose(np.diag(cka.to_numpy()), 1.0, rtol=1e-12)
    summary = statistics_summary(table, 0.1)
    assert "participation_ratio" not in set(summary["metric"]) and "entropy" in set(summary["metric"])
