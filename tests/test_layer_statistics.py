"""pipeline_steps.analysis.layer_statistics: the streamed statistics table against the one-shot functions
(each of which has its own loop oracle in tests/test_statistics.py and tests/test_metrics.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from pipeline_steps.analysis.activations import ActivationsFile, write_activations
from pipeline_steps.analysis.layer_statistics import (
    PROFILE_SCALES, STATISTICS_COLUMNS, layer_statistics, read_statistics_table, statistics_summary,
)
from pipeline_steps.analysis.massive import massive_activations
from pipeline_steps.analysis.metrics import activation_magnitude, channel_entropy, channel_spectrum
from pipeline_steps.analysis.rank import effective_rank, participation_ratio, pca_dimension, shared_basis_rank, \
    svd_energy_rank
from pipeline_steps.analysis.reductions import reduce_activations
from pipeline_steps.analysis.similarity import linear_cka
from pipeline_steps.analysis.spectral import low_frequency_share, sep_bandwidth, spectral_slope
from pipeline_steps.errors import UserError
from pipeline_steps.models.build import create_model

from conftest import vit_activations

SMALL = dict(img_size=32, patch_size=8, embed_dim=32, num_heads=2, num_classes=10)


def _plant(path, layer: int, index: tuple[int, int, int, int], value: float) -> None:
    """Overwrite one activation in place (the archive is stored uncompressed; the reader does not check CRCs)."""
    acts = ActivationsFile(path)
    offset, shape, dtype = acts._member(layer)
    flat = np.ravel_multi_index(index, shape)
    with open(path, "r+b") as fh:
        fh.seek(offset + flat * dtype.itemsize)
        fh.write(np.asarray(value, dtype=dtype).tobytes())


def _values(table: pd.DataFrame, metric: str, level: float | None = None) -> np.ndarray:
    rows = table[table["metric"] == metric]
    if level is not None:
        rows = rows[np.isclose(rows["level"], level)]
    return rows.sort_values("layer")["value"].to_numpy()


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A 3-layer file whose layer 2 holds one massive activation (image 5, channel 7, token 6)."""
    path = vit_activations(tmp_path_factory.mktemp("stats") / "a.npz")
    _plant(path, 1, (5, 7, 1, 2), 5.0e4)
    return path


@pytest.mark.parametrize("chunk_images", [1, 3, 64])
def test_streamed_statistics_equal_the_one_shot_functions(planted, chunk_images):
    acts = ActivationsFile(planted).load_all()
    table = layer_statistics(planted, chunk_images=chunk_images, bootstrap=200, massive_min_magnitude=100.0)
    assert tuple(table.columns) == STATISTICS_COLUMNS
    # Entropy exactly as the reduce step (integer counts); magnitude and the rest to float64 rounding.
    reduced, _ = reduce_activations(planted, shape_tolerance=0.05, progress=False)
    reduced_entropy = reduced[reduced.metric == "entropy"].sort_values("layer")["value"].to_numpy()
    np.testing.assert_array_equal(_values(table, "entropy"), reduced_entropy)
    np.testing.assert_allclose(_values(table, "entropy"), channel_entropy(acts), rtol=1e-14)
    np.testing.assert_allclose(_values(table, "magnitude"), activation_magnitude(acts), rtol=1e-12)
    np.testing.assert_allclose(_values(table, "entropy_per_layer_range"),
                               channel_entropy(acts, range_policy="per_layer"), rtol=1e-13)
    np.testing.assert_allclose(_values(table, "effective_rank"), effective_rank(acts), rtol=1e-12)
    np.testing.assert_allclose(_values(table, "participation_ratio"), participation_ratio(acts), rtol=1e-12)
    svd = svd_energy_rank(acts)
    shared = shared_basis_rank(acts)
    for k, level in enumerate((0.8, 0.9, 0.95, 0.99)):
        np.testing.assert_allclose(_values(table, "svd_rank_p99", level), np.percentile(svd[:, :, k], 99, axis=1))
        np.testing.assert_allclose(_values(table, "svd_rank_mean", level), svd[:, :, k].mean(1), rtol=1e-14)
        np.testing.assert_array_equal(_values(table, "pca_dimension", level), pca_dimension(acts)[:, k])
        np.testing.assert_allclose(_values(table, "shared_basis_rank_p99", level),
                                   np.percentile(shared[:, :, k], 99, axis=1))
    for mode, metric in (("full", "sep_bandwidth"), ("folded", "sep_bandwidth_folded")):
        expected = sep_bandwidth(acts, mode=mode)
        for k, ratio in enumerate((0.5, 0.6, 0.7, 0.8, 0.9)):
            np.testing.assert_array_equal(_values(table, metric, ratio), expected[:, k])
    # float32 FFTs of other batch shapes: agreement to ~1e-8 absolute (measured up to 1.8e-8 on a near-zero
    # slope, -2.6e-4, on an AMD EPYC machine, 2026-12-07)
    spectrum = channel_spectrum(acts)
    np.testing.assert_allclose(_values(table, "low_frequency_share"), low_frequency_share(spectrum), rtol=1e-6)
    np.testing.assert_allclose(_values(table, "spectral_slope"), spectral_slope(spectrum), rtol=1e-6, atol=5e-8)
    top = massive_activations(acts, top_k=1)
    np.testing.assert_allclose(_values(table, "massive_max_abs"), np.abs(top.values[:, 0]), rtol=1e-7)
    np.testing.assert_allclose(_values(table, "massive_max_ratio"), top.ratios[:, 0], rtol=1e-12)
    np.testing.assert_array_equal(_values(table, "massive_count"), top.n_massive)
    np.testing.assert_array_equal(_values(table, "massive_top_channel"), top.channel[:, 0])
    np.testing.assert_array_equal(_values(table, "massive_top_token"), top.token[:, 0])


def test_massive_tokens_are_left_out_of_the_robust_entropy(planted):
    acts = ActivationsFile(planted).load_all()
    table = layer_statistics(planted, bootstrap=0)
    assert _values(table, "massive_count").tolist() == [0, 1, 0]
    assert _values(table, "massive_top_channel")[1] == 7 and _values(table, "massive_top_token")[1] == 6
    share = _values(table, "massive_token_share")
    np.testing.assert_allclose(share, [0, 1 / (11 * 16), 0])
    # The oracle: every token except the planted one, histogrammed over the global range of the kept tokens.
    tokens = [acts[i].transpose(0, 2, 3, 1).reshape(-1, acts.shape[2]) for i in range(3)]
    tokens[1] = np.delete(tokens[1], 5 * 16 + 6, axis=0)
    lo, hi = min(t.min() for t in tokens), max(t.max() for t in tokens)
    expected = [channel_entropy(t.T[None, None, :, :, None], value_range=(lo, hi))[0] for t in tokens]
    np.testing.assert_allclose(_values(table, "entropy_without_massive"), expected, rtol=1e-13)
    # The massive value stretches the global range: every layer's entropy falls with it.
    assert np.all(_values(table, "entropy") < _values(table, "entropy_without_massive") - 0.5)


def test_bootstrap_interval_is_the_percentile_interval_of_resampled_image_means(planted):
    acts = ActivationsFile(planted).load_all()
    table = layer_statistics(planted, bootstrap=300, bootstrap_seed=7, confidence=0.9)
    n = acts.shape[1]
    lo, hi = acts.min(), acts.max()
    per_image = np.array([[channel_entropy(acts[i, b][None, None], value_range=(lo, hi))[0] for b in range(n)]
                          for i in range(3)])
    magnitude = np.abs(acts.astype(np.float64)).mean(axis=(2, 3, 4))
    rng = np.random.default_rng(7)
    idx = rng.integers(0, n, size=(300, n))
    for metric, values in (("entropy", per_image), ("magnitude", magnitude)):
        rows = table[table.metric == metric].sort_values("layer")
        means = values[:, idx].mean(axis=2)                       # [L, draws]
        np.testing.assert_allclose(rows["ci_low"], np.quantile(means, 0.05, axis=1), rtol=1e-12)
        np.testing.assert_allclose(rows["ci_high"], np.quantile(means, 0.95, axis=1), rtol=1e-12)
        assert np.all(rows["ci_low"] <= rows["value"]) and np.all(rows["value"] <= rows["ci_high"])
    assert table.loc[~table.metric.isin(["entropy", "magnitude"]), "ci_low"].isna().all()


def test_cka_rows_against_a_reference_equal_linear_cka(tmp_path):
    student = vit_activations(tmp_path / "s.npz", depth=2, seed=1, width=16)
    teacher = vit_activations(tmp_path / "t.npz", depth=3, seed=2)
    table = layer_statistics(student, reference=teacher, bootstrap=0, chunk_images=4, model_label="run-s0",
                             run_id="run-s0", seed=0, checkpoint="epoch_0003", epoch=3)
    cka = table[table.metric == "cka"]
    assert len(cka) == 6 and cka["teacher_layer"].notna().all()
    assert set(table["teacher_layer"].dropna()) == {1, 2, 3}
    matrix = cka.pivot(index="teacher_layer", columns="layer", values="value").to_numpy()
    expected = linear_cka(ActivationsFile(teacher).load_all(), ActivationsFile(student).load_all())
    np.testing.assert_allclose(matrix, expected, rtol=1e-10)
    assert (table["seed"] == 0).all() and (table["epoch"] == 3).all() and (table["n_images"] == 11).all()
    # A file on other images is refused, with the fix.
    other = tmp_path / "o.npz"
    write_activations(other, create_model({"arch": "vit_tiny_patch16_224", "kwargs": dict(SMALL, depth=1)}),
                      DataLoader(TensorDataset(torch.randn(11, 3, 32, 32), torch.zeros(11)), batch_size=4),
                      [0], {"image_ids": list(range(100, 111))})
    with pytest.raises(UserError, match="other images.*same sample manifest"):
        layer_statistics(student, reference=other)


def test_memory_of_per_image_state_does_not_depend_on_the_chunking(planted):
    """The table is the same whatever the chunk size (the streaming is exact)."""
    a = layer_statistics(planted, chunk_images=2, bootstrap=50)
    b = layer_statistics(planted, chunk_images=64, bootstrap=50)
    exact = ["entropy", "pca_dimension", "svd_rank_p99", "massive_count", "sep_bandwidth", "massive_top_token"]
    pd.testing.assert_frame_equal(a[a.metric.isin(exact)], b[b.metric.isin(exact)])
    pd.testing.assert_frame_equal(a, b, rtol=1e-12)


def test_summary_reads_every_profile_and_round_trips(planted, tmp_path):
    table = layer_statistics(planted, bootstrap=0)
    summary = statistics_summary(table, 0.05)
    assert list(summary["metric"]) == list(PROFILE_SCALES)
    entropy = summary.set_index("metric").loc["entropy"]
    assert entropy["argmin_layer"] == 1 + int(np.argmin(_values(table, "entropy")))
    assert summary.set_index("metric").loc["magnitude", "shape_scale"] == "log2"
    path = tmp_path / "s.parquet"
    table.to_parquet(path, index=False)
    pd.testing.assert_frame_equal(read_statistics_table(path, "statistics", "fix"), table)
    table.drop(columns="metric").to_parquet(path, index=False)
    with pytest.raises(UserError, match="lacks column.*metric"):
        read_statistics_table(path, "statistics", "re-run it")


@pytest.mark.parametrize("kwargs, message", [
    ({"bootstrap": -1}, "bootstrap must be"),
    ({"confidence": 1.0}, "confidence must lie"),
    ({"range_policy": "local"}, "unknown range policy"),
])
def test_bad_settings_are_user_errors(planted, kwargs, message):
    with pytest.raises(UserError, match=message):
        layer_statistics(planted, **kwargs)


def test_fewer_than_four_images_leave_cka_undefined_and_the_rest_defined(tmp_path):
    student = vit_activations(tmp_path / "s.npz", depth=2, n=3, seed=1)
    teacher = vit_activations(tmp_path / "t.npz", depth=2, n=3, seed=2)
    table = layer_statistics(student, reference=teacher, bootstrap=10)
    assert table.loc[table.metric == "cka", "value"].isna().all() and (table.metric == "cka").sum() == 4
    assert table.loc[table.metric == "entropy", "value"].notna().all()


@pytest.mark.parametrize("range_policy", ["global", "per_layer"])
def test_without_massive_tokens_the_robust_entropy_is_the_entropy_of_every_token(tmp_path, range_policy):
    """No massive activation anywhere: entropy_without_massive is the entropy of all tokens over the profile's
    range, i.e. the entropy profile (under per_layer) or its global-range twin."""
    path = vit_activations(tmp_path / "a.npz", depth=3, n=9)
    acts = ActivationsFile(path).load_all()
    table = layer_statistics(path, range_policy=range_policy, bootstrap=0, chunk_images=4)
    assert (_values(table, "massive_count") == 0).all() and (_values(table, "massive_token_share") == 0).all()
    expected = channel_entropy(acts, range_policy=range_policy)
    np.testing.assert_allclose(_values(table, "entropy_without_massive"), expected, rtol=1e-13)
    np.testing.assert_allclose(_values(table, "entropy_without_massive"), _values(table, "entropy"), rtol=1e-13)


def test_the_streaming_helpers_equal_numpy_and_the_rank_module():
    from pipeline_steps.analysis.layer_statistics import _image_medians, _ranks
    from pipeline_steps.analysis.rank import _threshold_rank

    rng = np.random.default_rng(3)
    for width in (1, 2, 7, 64):
        mag = np.abs(rng.standard_normal((5, width))).astype(np.float32)
        mag[0, : width // 2] = 0.0
        np.testing.assert_array_equal(_image_medians(mag), np.median(mag.astype(np.float64), axis=1))
    energy = torch.from_numpy(rng.exponential(size=(6, 3, 16)) ** 3)
    energy[0, 0, 8:] = 0.0
    cumulative = torch.cumsum(energy, -1) / energy.sum(-1, keepdim=True)
    levels = np.array([0.5, 0.8, 0.9, 0.95, 0.99, 1.0])
    np.testing.assert_array_equal(_ranks(cumulative, levels), _threshold_rank(cumulative, levels))
