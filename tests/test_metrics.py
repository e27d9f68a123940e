"""pipeline_steps.analysis.metrics: hand-computed values, and cross-checks against the literal reference loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import metrics_oracle as ref
from pipeline_steps.analysis import metrics, shapes
from pipeline_steps.errors import UserError
from pipeline_steps.analysis.metrics import (
    MetricAccumulator, RangeAccumulator, activation_magnitude, channel_entropy, channel_spectrum,
)
from pipeline_steps.analysis.shapes import profile_shape, profile_summary

SHAPE = (3, 2, 16, 4, 4)  # [L, B, C, H, W]: small enough for the per-vector reference loop


def _acts(seed: int = 0, shape=SHAPE, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _one_vector(values, dtype=np.float64) -> np.ndarray:
    """A single C-vector as a [1, 1, C, 1, 1] activation tensor."""
    return np.asarray(values, dtype=dtype).reshape(1, 1, -1, 1, 1)


def _on_edges(seed: int, dtype=np.float32, neighbours: bool = False) -> np.ndarray:
    """Random activations whose values sit exactly on the global histogram's bin edges (or 1 ulp off)."""
    a = _acts(seed, dtype=dtype)
    edges = np.histogram_bin_edges(np.empty(0, dtype), 100, range=(a.min(), a.max()))
    lo, hi = a.min(), a.max()
    rng = np.random.default_rng(seed + 1)
    pool = edges
    if neighbours:
        pool = np.concatenate([edges, np.nextafter(edges, dtype(np.inf)), np.nextafter(edges, dtype(-np.inf))])
        pool = pool[(pool >= lo) & (pool <= hi)]
    b = rng.choice(pool, size=a.shape).astype(dtype)
    b.flat[0], b.flat[1] = lo, hi  # keep the global range, hence the edges
    return b


def _assert_entropy_matches(acts, **kw) -> None:
    np.testing.assert_allclose(channel_entropy(acts, **kw), ref.channel_entropy(acts, **kw), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------------------
# Hand-computed values
# ----------------------------------------------------------------------------------------------------

def test_entropy_two_equal_halves_is_one_bit():
    # 0 falls in the first bin, 1 (the range max) in the last: p = (1/2, 1/2).
    assert channel_entropy(_one_vector([0, 0, 1, 1]), value_range=(0.0, 1.0))[0] == 1.0


def test_entropy_four_distinct_bins_is_two_bits():
    assert channel_entropy(_one_vector([0.1, 0.3, 0.6, 0.9]), bins=4, value_range=(0.0, 1.0))[0] == 2.0
    # Edges 0, 0.25, 0.5, 0.75, 1: each value on a left edge, the max in the last bin.
    assert channel_entropy(_one_vector([0.0, 0.25, 0.5, 1.0]), bins=4, value_range=(0.0, 1.0))[0] == 2.0


def test_entropy_of_constant_vectors_is_zero():
    a = np.zeros((2, 3, 8, 2, 2), dtype=np.float32)
    a[0] = 2.5  # layer 0: every vector constant; layer 1: every vector constant at 0
    np.testing.assert_array_equal(channel_entropy(a), [0.0, 0.0])
    np.testing.assert_array_equal(channel_entropy(a, range_policy="per_layer"), [0.0, 0.0])


def test_entropy_counts_values_outside_a_fixed_range_as_missing():
    # Only 0.2 and 0.6 are inside [0, 1], one per bin: p = (1/4, 1/4) -> E = 2 * (1/4 * 2) = 1 bit.
    assert channel_entropy(_one_vector([-3.0, 0.2, 0.6, 7.0]), bins=2, value_range=(0.0, 1.0))[0] == 1.0


def test_spectrum_of_constant_channel_vector():
    s = channel_spectrum(np.full((1, 2, 8, 3, 3), -3.0, dtype=np.float32))
    np.testing.assert_allclose(s[0, 0], 3.0, rtol=1e-7)
    np.testing.assert_allclose(s[0, 1:], 0.0, atol=1e-7)


def test_spectrum_of_alternating_signs_is_nyquist():
    c = 8
    a = np.broadcast_to((-1.0) ** np.arange(c), (2, 3, 2, 2, c)).transpose(0, 1, 4, 2, 3).astype(np.float32)
    s = channel_spectrum(a)
    np.testing.assert_allclose(s[:, c // 2], 1.0, rtol=1e-7)
    np.testing.assert_allclose(np.delete(s, c // 2, axis=1), 0.0, atol=1e-7)


def test_spectrum_single_cosine():
    # A cosine at frequency k0 puts 1/2 in bins k0 and C - k0.
    c, k0 = 12, 3
    vec = np.cos(2 * np.pi * k0 * np.arange(c) / c)
    s = channel_spectrum(_one_vector(vec))[0]
    expected = np.zeros(c)
    expected[[k0, c - k0]] = 0.5
    np.testing.assert_allclose(s, expected, atol=1e-12)


def test_magnitude_of_hand_tensor():
    a = np.zeros((2, 1, 4, 1, 1), dtype=np.float32)
    a[0, 0, :, 0, 0] = [1, -2, 3, -4]
    np.testing.assert_array_equal(activation_magnitude(a), [2.5, 0.0])


# ----------------------------------------------------------------------------------------------------
# Entropy against the per-vector np.histogram loop
# ----------------------------------------------------------------------------------------------------

def test_entropy_random_normal_matches_reference():
    _assert_entropy_matches(_acts(0))


@pytest.mark.parametrize("neighbours", [False, True], ids=["on_edges", "one_ulp_off_edges"])
def test_entropy_values_on_bin_edges_match_reference(neighbours):
    _assert_entropy_matches(_on_edges(1, neighbours=neighbours))


def test_entropy_many_values_equal_to_max_match_reference():
    a = _acts(2)
    a[1, :, :5] = a.max()
    a[2, 0] = a.max()
    _assert_entropy_matches(a)


def test_entropy_one_massive_channel_matches_reference():
    a = _acts(3)
    a[:, :, 7] *= 1000
    _assert_entropy_matches(a)
    _assert_entropy_matches(a, range_policy="per_layer")


def test_entropy_heavy_ties_match_reference():
    a = np.random.default_rng(4).integers(-3, 4, size=SHAPE).astype(np.float32) * np.float32(0.37)
    _assert_entropy_matches(a)
    _assert_entropy_matches(a, bins=7)


def test_entropy_float64_matches_reference():
    _assert_entropy_matches(_acts(5, dtype=np.float64))
    _assert_entropy_matches(_on_edges(6, dtype=np.float64, neighbours=True))


def test_entropy_torch_input_matches_reference():
    a = _acts(7)
    np.testing.assert_allclose(channel_entropy(torch.from_numpy(a)), ref.channel_entropy(a), rtol=0, atol=1e-12)


def test_entropy_per_layer_policy_matches_reference():
    a = _acts(8)
    a[1] *= 10
    _assert_entropy_matches(a, range_policy="per_layer")
    assert not np.allclose(channel_entropy(a, range_policy="per_layer"), channel_entropy(a))


def test_entropy_fixed_range_drops_outside_values_like_numpy():
    a = _acts(9)
    _assert_entropy_matches(a, value_range=(-1.0, 0.5))
    _assert_entropy_matches(a, value_range=(-0.3, 0.4), bins=13)


def test_entropy_degenerate_range_matches_reference():
    _assert_entropy_matches(np.full(SHAPE, 1.75, dtype=np.float32))  # global min == max
    a = _acts(10)
    a[1] = -2.0  # one constant layer: its own min == max
    _assert_entropy_matches(a, range_policy="per_layer")
    _assert_entropy_matches(a, value_range=(0.25, 0.25))


def test_entropy_bins_options_match_reference():
    a = _acts(11)
    for bins in (1, 3, 256):
        _assert_entropy_matches(a, bins=bins)


def test_entropy_imprecise_range_falls_back_to_exact_binning():
    # At 1e6 a float32 ulp is 1/16 and the edges are rounded by up to a tenth of a bin: every value takes
    # numpy's own algorithm, and the result must still match.
    a = (np.float32(1e6) + np.random.default_rng(12).integers(0, 64 * 16, size=SHAPE) / 16).astype(np.float32)
    lo, hi = a.min(), a.max()
    assert metrics._spec_for((lo, hi), 100, np.dtype(np.float32)).delta is None
    _assert_entropy_matches(a)


def test_entropy_split_into_many_sub_chunks_matches_reference(monkeypatch):
    # Real layers are processed in pieces of ~_CHUNK_ELEMS values; shrink it so these small tensors are too.
    monkeypatch.setattr(metrics, "_CHUNK_ELEMS", 16 * 16)  # one image (C x H x W = 256) per piece
    a = _on_edges(14, neighbours=True)
    _assert_entropy_matches(a)
    _assert_entropy_matches(a, value_range=(-0.5, 0.7))
    _, res = _stream(a, "global", sizes=(2, 3))
    np.testing.assert_allclose(res["entropy"], ref.channel_entropy(a), rtol=0, atol=1e-12)


def test_entropy_many_channels_use_wider_counters():
    # Beyond C = 8191 the per-bin counters switch from int16 to int32.
    a = _acts(15, shape=(1, 1, 9000, 2, 1))
    assert metrics._counts_dtype(9000) == torch.int32
    _assert_entropy_matches(a)


def test_entropy_non_contiguous_and_read_only_input():
    a = _acts(13)
    expected = ref.channel_entropy(a)
    view = np.ascontiguousarray(a.transpose(0, 1, 2, 4, 3)).transpose(0, 1, 2, 4, 3)  # strided, same values
    np.testing.assert_allclose(channel_entropy(view), expected, rtol=0, atol=1e-12)
    a.flags.writeable = False
    np.testing.assert_allclose(channel_entropy(a), expected, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------------------
# Spectrum and magnitude against numpy
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("c", [16, 15], ids=["even_C", "odd_C"])
def test_spectrum_matches_numpy_fft(c):
    a = _acts(20, shape=(3, 2, c, 4, 4))
    a[:, :, 3] *= 50
    s = channel_spectrum(a)
    assert s.shape == (3, c) and s.dtype == np.float64
    np.testing.assert_allclose(s, ref.channel_spectrum(a), rtol=2e-6)
    exact = np.abs(np.fft.fft(a.astype(np.float64), axis=2) / c).mean(axis=(1, 3, 4))
    np.testing.assert_allclose(s, exact, rtol=1e-6)


def test_spectrum_float64_and_torch_input():
    a = _acts(21, dtype=np.float64)
    exact = ref.channel_spectrum(a)
    np.testing.assert_allclose(channel_spectrum(a), exact, rtol=1e-12)
    np.testing.assert_allclose(channel_spectrum(torch.from_numpy(a)), exact, rtol=1e-12)


def test_magnitude_matches_numpy():
    a = _acts(22)
    m = activation_magnitude(a)
    np.testing.assert_allclose(m, ref.activation_magnitude(a), rtol=1e-6)
    np.testing.assert_allclose(m, np.abs(a.astype(np.float64)).mean(axis=(1, 2, 3, 4)), rtol=1e-12)
    np.testing.assert_allclose(activation_magnitude(torch.from_numpy(a)), m, rtol=1e-15)


# ----------------------------------------------------------------------------------------------------
# Streaming accumulators
# ----------------------------------------------------------------------------------------------------

def _stream(acts, policy: str, bins: int = 100, sizes=(1, 2, 3)):
    """Two passes over image chunks of varying size, as a streaming caller would do them."""
    n_layers, n_images = acts.shape[:2]
    starts = np.cumsum((0,) + sizes * n_images)
    chunks = [(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:]) if a < n_images]
    ranges = RangeAccumulator(n_layers)
    for a, b in chunks:
        for layer in range(n_layers):
            ranges.update(layer, acts[layer, a:b])
    acc = MetricAccumulator(n_layers, bins, ranges=[ranges.value_range(policy, i) for i in range(n_layers)])
    for a, b in chunks:
        for layer in range(n_layers):
            acc.update(layer, acts[layer, a:b])
    return ranges, acc.result()


@pytest.mark.parametrize("policy", ["global", "per_layer"])
def test_chunked_accumulators_equal_one_shot(policy):
    a = _acts(30, shape=(3, 7, 16, 4, 4))
    a[:, :, 5] *= 40
    a[2, 3, :, 1, 1] = a.max()
    ranges, res = _stream(a, policy)
    assert res["n_images"] == 7 and res["n_vectors"] == [7 * 16] * 3
    np.testing.assert_allclose(res["entropy"], channel_entropy(a, range_policy=policy), rtol=0, atol=1e-12)
    np.testing.assert_allclose(res["entropy"], ref.channel_entropy(a, range_policy=policy), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.stack(res["spectrum"]), channel_spectrum(a), rtol=1e-9)
    np.testing.assert_allclose(res["magnitude"], activation_magnitude(a), rtol=1e-9)
    layer_ranges = ranges.layer_ranges()
    assert layer_ranges.dtype == np.float32
    np.testing.assert_array_equal(layer_ranges, np.stack([a.min(axis=(1, 2, 3, 4)), a.max(axis=(1, 2, 3, 4))], 1))


def test_range_accumulator_keeps_the_data_dtype():
    a = _acts(31)
    ranges = RangeAccumulator(3)
    for layer in range(3):
        ranges.update(layer, torch.from_numpy(a[layer]))
    lo, hi = ranges.value_range("global", 1)
    assert type(lo) is np.float32 and (lo, hi) == (a.min(), a.max())
    assert ranges.value_range("per_layer", 2) == (a[2].min(), a[2].max())
    with pytest.raises(UserError, match="layer"):
        ranges.update(3, a[0])


def test_range_accumulator_without_layer_count_takes_the_layers_fed():
    a = _acts(34)
    ranges = RangeAccumulator()
    for layer in (2, 0):
        ranges.update(layer, a[layer])
    with pytest.raises(UserError, match=r"layer\(s\) \[1\]"):
        ranges.value_range("global", 0)
    ranges.update(1, a[1])
    assert ranges.layer_ranges().shape == (3, 2)
    assert ranges.value_range("global", 2) == (a.min(), a.max())
    with pytest.raises(UserError, match="range policy"):
        ranges.value_range("fixed", 0)


def test_metric_accumulator_fixed_range_with_outside_values():
    a = _acts(32)
    acc = MetricAccumulator(3, 10, ranges=[(-0.5, 0.5)] * 3)
    for layer in range(3):
        acc.update(layer, a[layer, :1])
        acc.update(layer, a[layer, 1:])
    np.testing.assert_allclose(acc.result()["entropy"], ref.channel_entropy(a, bins=10, value_range=(-0.5, 0.5)),
                               rtol=0, atol=1e-12)


def test_metric_accumulator_rejects_inconsistent_feeding():
    a = _acts(33)
    acc = MetricAccumulator(3, ranges=[(-5, 5)] * 3)
    for layer in range(3):
        acc.update(layer, a[layer])
    acc.update(0, a[0, :1])
    with pytest.raises(UserError, match="different numbers of images"):
        acc.result()
    with pytest.raises(UserError, match="channels"):
        acc.update(1, a[1, :, :8])
    with pytest.raises(UserError, match="dtype"):
        acc.update(1, a[1].astype(np.float64))
    with pytest.raises(UserError, match="layer"):
        acc.update(3, a[0])
    fresh = MetricAccumulator(3, ranges=[(-5, 5)] * 3)
    fresh.update(0, a[0])
    with pytest.raises(UserError, match=r"layer\(s\) \[1, 2\]"):
        fresh.result()
    with pytest.raises(UserError, match="one \\(lo, hi\\) pair per layer"):
        MetricAccumulator(3, ranges=[(-5, 5)])


# ----------------------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 3, 4, 5)), "L, B, C, H, W"),
    (np.zeros(SHAPE, dtype=np.int32), "float32 or float64"),
    ([[1.0]], "numpy array or a torch tensor"),
])
def test_bad_activations_raise_user_error(bad, match):
    for fn in (channel_entropy, channel_spectrum, activation_magnitude):
        with pytest.raises(UserError, match=match):
            fn(bad)


def test_bad_entropy_options_raise_user_error():
    a = _acts(40)
    with pytest.raises(UserError, match="range_policy"):
        channel_entropy(a, range_policy="layer")
    with pytest.raises(UserError, match="bins"):
        channel_entropy(a, bins=0)
    with pytest.raises(UserError, match="lo > hi"):
        channel_entropy(a, value_range=(1.0, -1.0))
    a[0, 0, 0, 0, 0] = np.nan
    with pytest.raises(UserError, match="NaN or inf"):
        channel_entropy(a)


# ----------------------------------------------------------------------------------------------------
# profile_summary
# ----------------------------------------------------------------------------------------------------

def test_profile_summary_u_shape():
    s = profile_summary([5.0, 3.0, 2.0, 2.5, 4.0], tol=0.5)
    assert s == {"argmin_layer": 3, "argmax_layer": 1, "first": 5.0, "min": 2.0, "max": 5.0, "last": 4.0,
                 "drop": 3.0, "rise": 2.0, "shape": "u_shaped", "u_shaped": True, "shape_tolerance": 0.5,
                 "shape_scale": "linear"}
    at_rise = profile_summary([5.0, 3.0, 2.0, 2.5, 4.0], tol=2.0)  # rise is exactly tol: does not count
    assert (at_rise["shape"], at_rise["u_shaped"]) == ("decreasing", False)


def test_profile_summary_monotonic_profiles_are_not_u_shaped():
    down = profile_summary(np.array([4.0, 3.0, 2.0, 1.0]), tol=0.0)
    assert (down["argmin_layer"], down["drop"], down["rise"], down["shape"], down["u_shaped"]) == \
        (4, 3.0, 0.0, "decreasing", False)
    up = profile_summary([1.0, 2.0, 3.0], tol=0.0)
    assert (up["argmin_layer"], up["argmax_layer"], up["drop"], up["rise"], up["shape"]) == \
        (1, 3, 0.0, 2.0, "increasing")
    assert not up["u_shaped"]


def test_profile_summary_n_shape_and_ties():
    n = profile_summary([1.0, 3.0, 2.0, 0.5], tol=0.0)
    assert (n["argmin_layer"], n["argmax_layer"], n["shape"], n["u_shaped"]) == (4, 2, "inverted_u", False)
    tie = profile_summary([2.0, 1.0, 1.0, 2.0], tol=0.0)
    assert (tie["argmin_layer"], tie["shape"], tie["u_shaped"]) == (2, "u_shaped", True)
    with pytest.raises(UserError):
        profile_summary([], tol=0.1)
    with pytest.raises(UserError):
        profile_summary([1.0, float("nan")], tol=0.1)


# Every class on a crafted profile, with tol = 0.25 and values in multiples of 1/8, so that the
# boundary cases (a change of exactly tol) are exact in binary floating point.
TOL = 0.25


@pytest.mark.parametrize("profile, shape", [
    # flat: range <= tol, including exactly tol
    ([1.0], "flat"),
    ([2.0, 2.0, 2.0], "flat"),
    ([2.0, 2.125, 1.875, 2.0], "flat"),             # range 0.25 = tol
    ([2.0, 2.25, 2.0, 2.25], "flat"),               # range 0.25 = tol, zig-zag
    # increasing: range > tol, no fall > tol anywhere
    ([1.0, 1.5, 2.0, 3.0], "increasing"),
    ([2.0, 1.75, 2.5, 3.0], "increasing"),          # an initial dip of exactly tol is noise
    ([1.0, 2.0, 1.75, 3.0], "increasing"),          # an interior fall of exactly tol
    ([2.0, 2.125, 2.375], "increasing"),            # range 0.375 > tol, steps of 1/8
    # decreasing: mirror image
    ([3.0, 2.0, 1.5, 1.0], "decreasing"),
    ([3.0, 2.0, 2.25, 1.0], "decreasing"),          # an interior rise of exactly tol
    ([3.0, 2.0, 1.0, 1.25], "decreasing"),          # a final rise of exactly tol
    # U: drop > tol and rise > tol, down (up to tol) to the minimum, then up (up to tol)
    ([3.0, 2.0, 1.0, 2.0, 3.0], "u_shaped"),
    ([2.0, 1.625, 2.0], "u_shaped"),                # drop = rise = 0.375 > tol
    ([3.0, 2.0, 2.25, 1.0, 1.5, 1.25, 3.0], "u_shaped"),  # wiggles of exactly tol on both arms
    ([2.0, 1.0, 1.0, 1.0, 2.0], "u_shaped"),        # a flat bottom
    # not U at the boundary: drop or rise exactly tol
    ([2.0, 1.75, 3.0], "increasing"),               # drop = tol
    ([3.0, 1.0, 1.25], "decreasing"),               # rise = tol
    # inverted U: mirror image
    ([1.0, 2.0, 3.0, 2.0, 1.0], "inverted_u"),
    ([1.0, 1.375, 1.0], "inverted_u"),
    ([2.0, 3.0, 2.75, 3.0, 1.0], "inverted_u"),     # a dip of exactly tol at the top
    # other: two changes of direction that count
    ([3.0, 1.0, 3.0, 1.0, 3.0], "other"),           # W
    ([1.0, 3.0, 1.0, 3.0, 1.0], "other"),           # M
    ([1.0, 3.0, 2.0, 4.0], "other"),                # N: up, down, up
    ([1.0, 3.0, 2.0, 0.5], "inverted_u"),           # up, then down below the start: still one peak
    ([3.0, 1.0, 2.0, 1.5, 3.0], "other"),           # U with a bump of 0.5 > tol on the rising arm
    ([3.0, 1.0, 1.5, 1.25, 3.0], "u_shaped"),       # ... and with a bump of exactly tol it is a U
])
def test_profile_shape_classes(profile, shape):
    assert profile_shape(profile, tol=TOL) == shape
    summary = profile_summary(profile, tol=TOL)
    assert summary["shape"] == shape
    assert summary["u_shaped"] == (shape == "u_shaped")


def _shape_by_pairs(v: list[float], tol: float) -> str:
    """The docstring's definition, literally: explicit loops over layer pairs."""
    n = len(v)
    falls = [v[i] - v[j] for i in range(n) for j in range(i, n)]
    rises = [v[j] - v[i] for i in range(n) for j in range(i, n)]
    m, p = v.index(min(v)), v.index(max(v))
    if max(v) - min(v) <= tol:
        return "flat"
    if max(falls) <= tol:
        return "increasing"
    if max(rises) <= tol:
        return "decreasing"
    if (v[0] - v[m] > tol and v[-1] - v[m] > tol
            and all(v[j] - v[i] <= tol for i in range(m + 1) for j in range(i, m + 1))
            and all(v[i] - v[j] <= tol for i in range(m, n) for j in range(i, n))):
        return "u_shaped"
    if (v[p] - v[0] > tol and v[p] - v[-1] > tol
            and all(v[i] - v[j] <= tol for i in range(p + 1) for j in range(i, p + 1))
            and all(v[j] - v[i] <= tol for i in range(p, n) for j in range(i, n))):
        return "inverted_u"
    return "other"


def test_profile_shape_matches_the_pairwise_definition_on_random_profiles():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(3000):
        n = int(rng.integers(1, 9))
        v = (rng.integers(0, 9, size=n) / 8).tolist()  # steps of 1/8: many exact-tol boundary cases
        expected = _shape_by_pairs(v, TOL)
        assert profile_shape(v, tol=TOL) == expected, v
        seen.add(expected)
    assert seen == set(shapes.SHAPES)


def test_profile_summary_log2_scale_reads_ratios():
    # log2 values [4, 3.907, 6]: the 15/16 dip is a factor 1.07, under tol 0.25 (a factor 1.19)
    assert profile_summary([16.0, 15.0, 64.0], tol=TOL, scale="log2")["shape"] == "increasing"
    assert profile_summary([16.0, 15.0, 64.0], tol=TOL)["shape"] == "u_shaped"  # linear: a dip of 1
    # scale-free: the same class whatever the unit
    for unit in (1e-3, 1.0, 1e3):
        s = profile_summary([unit * x for x in (4.0, 2.0, 2.0, 8.0)], tol=0.5, scale="log2")
        assert (s["shape"], s["argmin_layer"], s["shape_scale"]) == ("u_shaped", 2, "log2")
        assert s["drop"] == pytest.approx(2.0 * unit) and s["rise"] == pytest.approx(6.0 * unit)


@pytest.mark.parametrize("values, kwargs, match", [
    ([1.0, 0.0, 2.0], {"tol": 0.1, "scale": "log2"}, "positive"),
    ([1.0, 2.0], {"tol": 0.1, "scale": "ln"}, "shape scale"),
    ([1.0, 2.0], {"tol": -0.1}, "tolerance"),
    ([1.0, 2.0], {"tol": float("nan")}, "tolerance"),
])
def test_profile_summary_rejects_bad_input(values, kwargs, match):
    with pytest.raises(UserError, match=match):
        profile_summary(values, **kwargs)
