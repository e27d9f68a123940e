"""Statistics beyond entropy (analysis.similarity, .rank, .spectral, .massive): golden values against plain
numpy loops written here from the definitions, invariances, edge cases and bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from pipeline_steps.analysis.massive import massive_activations
from pipeline_steps.analysis.metrics import channel_spectrum
from pipeline_steps.analysis.rank import (
    effective_rank, participation_ratio, pca_dimension, shared_basis_rank, svd_energy_rank,
)
from pipeline_steps.analysis.similarity import CKAAccumulator, linear_cka, unbiased_hsic
from pipeline_steps.analysis.spectral import low_frequency_share, sep_bandwidth, sep_curve, spectral_slope
from pipeline_steps.errors import UserError

ENERGIES = (0.8, 0.9, 0.95, 0.99)


def _acts(seed: int, shape=(3, 6, 8, 3, 3), dtype=np.float64) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _tokens(layer_image: np.ndarray) -> np.ndarray:
    """[C, H, W] -> [N, C] token matrix, token n = h * W + w."""
    c = layer_image.shape[0]
    return layer_image.reshape(c, -1).T


# ---------------------------------------------------------------- CKA


def _hsic_u_statistic(k: np.ndarray, l_: np.ndarray) -> float:
    """Unbiased HSIC as the U-statistic over ordered quadruples of distinct indices (Song et al. 2012, Thm. 2)."""
    n = k.shape[0]
    total = 0.0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += k[i, j] * l_[i, j] + k[i, j] * l_[q, r] - 2 * k[i, j] * l_[i, q]
    return total / (n * (n - 1) * (n - 2) * (n - 3))


def _gram(features: np.ndarray) -> np.ndarray:
    n = features.shape[0]
    return np.array([[features[i] @ features[j] for j in range(n)] for i in range(n)])


def _cka_loop(acts_a: np.ndarray, acts_b: np.ndarray, tokens: str) -> np.ndarray:
    def feats(layer):  # raw, uncentred features: the estimator must not need centring
        return layer.mean(axis=(2, 3)) if tokens == "mean" else layer.reshape(layer.shape[0], -1)

    out = np.empty((len(acts_a), len(acts_b)))
    for i, la in enumerate(acts_a):
        for j, lb in enumerate(acts_b):
            k, l_ = _gram(feats(la)), _gram(feats(lb))
            out[i, j] = _hsic_u_statistic(k, l_) / np.sqrt(_hsic_u_statistic(k, k) * _hsic_u_statistic(l_, l_))
    return out


def test_unbiased_hsic_matches_the_u_statistic():
    x, y = _acts(0, (6, 4)) + 3.0, _acts(1, (6, 5))
    k, l_ = x @ x.T, y @ y.T
    assert unbiased_hsic(k, l_) == pytest.approx(_hsic_u_statistic(k, l_), rel=1e-12)
    assert unbiased_hsic(torch.from_numpy(k), l_) == pytest.approx(_hsic_u_statistic(k, l_), rel=1e-12)


@pytest.mark.parametrize("tokens", ["mean", "flatten"])
def test_cka_matches_the_loop(tokens):
    a, b = _acts(0) + 0.5, _acts(1, (2, 6, 5, 3, 3)) * 2.0
    np.testing.assert_allclose(linear_cka(a, b, tokens=tokens), _cka_loop(a, b, tokens), rtol=1e-10, atol=1e-12)


def test_cka_of_a_model_with_itself_has_a_unit_diagonal_and_is_symmetric():
    a = _acts(2, dtype=np.float32)
    cka = linear_cka(a, a)
    np.testing.assert_allclose(np.diag(cka), 1.0, rtol=1e-12)
    np.testing.assert_allclose(cka, cka.T, rtol=1e-12)


@pytest.mark.parametrize("tokens", ["mean", "flatten"])
def test_cka_is_invariant_to_orthogonal_maps_and_isotropic_scaling(tokens):
    a = _acts(3)
    q, _ = np.linalg.qr(np.random.default_rng(4).standard_normal((8, 8)))
    rotated = 7.5 * np.einsum("dc,lbchw->lbdhw", q, a)  # the same rotation of every token's channel vector
    np.testing.assert_allclose(linear_cka(a, rotated, tokens=tokens), linear_cka(a, a, tokens=tokens),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.diag(linear_cka(a, rotated, tokens=tokens)), 1.0, rtol=1e-10)


def test_cka_mean_tokens_allows_different_grids_flatten_does_not():
    a, b = _acts(5), _acts(6, (2, 6, 4, 2, 5))
    assert linear_cka(a, b).shape == (3, 2)
    with pytest.raises(UserError, match="equal token grids"):
        linear_cka(a, b, tokens="flatten")


@pytest.mark.parametrize("value", [0.1, 1 / 3, 7.0])
def test_cka_of_features_constant_across_images_is_nan(value):
    a = _acts(7)
    const = np.full_like(a, value)  # every image the same (0.1 and 1/3: their mean over 6 images rounds)
    assert np.isnan(linear_cka(const, a)).all() and np.isnan(linear_cka(const, a, tokens="flatten")).all()
    same = np.broadcast_to(a[:, :1], a.shape).copy()
    assert np.isnan(linear_cka(same, a)).all()
    acc = CKAAccumulator(3, 3)
    for layer in range(3):
        acc.update_a(layer, const[layer])
        acc.update_b(layer, a[layer])
    assert np.isnan(acc.result()).all()


@pytest.mark.parametrize("n_images", [1, 3])
def test_cka_needs_four_images(n_images):
    a = _acts(8, (2, n_images, 4, 2, 2))
    with pytest.raises(UserError, match="at least 4 images"):
        linear_cka(a, a)


def test_cka_rejects_mismatched_images_and_bad_modes():
    with pytest.raises(UserError, match="model A has 6 images and model B 5"):
        linear_cka(_acts(0), _acts(1, (3, 5, 8, 3, 3)))
    with pytest.raises(UserError, match="unknown tokens mode"):
        linear_cka(_acts(0), _acts(0), tokens="cls")


def test_streaming_cka_equals_one_shot():
    a, b = _acts(9, (3, 7, 8, 3, 3), np.float32), _acts(10, (2, 7, 5, 2, 2), np.float32)
    acc = CKAAccumulator(3, 2)
    for lo, hi in [(0, 2), (2, 5), (5, 7)]:
        for layer in range(3):
            acc.update_a(layer, a[layer, lo:hi])
        for layer in range(2):
            acc.update_b(layer, torch.from_numpy(b[layer, lo:hi]))
    np.testing.assert_allclose(acc.result(), linear_cka(a, b), rtol=1e-12, atol=1e-14)



def test_token_means_and_a_prepared_side_give_the_chunks_result_to_the_bit():
    """What layer_statistics feeds: one model's token means chunk by chunk, the other side prepared once."""
    from pipeline_steps.analysis.similarity import prepare_features

    a, b = _acts(12, (3, 9, 8, 3, 3)), _acts(13, (2, 9, 5, 2, 2))
    by_chunks, by_parts = CKAAccumulator(3, 2), CKAAccumulator(3, 2)
    for layer in range(3):
        by_chunks.update_a(layer, a[layer])
        by_parts.set_prepared("a", layer, prepare_features(torch.from_numpy(a[layer]).mean(dim=(2, 3))))
    for layer in range(2):
        for lo, hi in [(0, 4), (4, 9)]:
            by_chunks.update_b(layer, b[layer, lo:hi])
            by_parts.update_means("b", layer, torch.from_numpy(b[layer, lo:hi]).mean(dim=(2, 3)))
    np.testing.assert_array_equal(by_parts.result(), by_chunks.result())
    with pytest.raises(UserError, match="side must be 'a' or 'b'"):
        by_parts.update_means("c", 0, torch.zeros(2, 8, dtype=torch.float64))
    with pytest.raises(UserError, match="layer must be"):
        by_parts.set_prepared("b", 2, prepare_features(torch.zeros(9, 5, dtype=torch.float64)))

@pytest.mark.parametrize("n, c, d, shift", [(4, 3, 5, 0.0), (9, 16, 2, 0.0), (40, 7, 11, 2.5), (33, 64, 128, 0.0)])
def test_hsic_from_features_equals_the_gram_form(n, c, d, shift):
    """The accumulator's Gram-free estimator (||X^T Y||^2, row norms, X^T 1) against Song et al.'s on K = X X^T,
    for centred features and, the identity being exact, uncentred ones too."""
    from pipeline_steps.analysis.similarity import _cka_from_features, _cka_from_grams, _hsic, _hsic_of_features

    rng = np.random.default_rng(n + c + d)
    x = torch.from_numpy(rng.standard_normal((n, c)) * 3.0 + shift)
    y = torch.from_numpy(rng.standard_normal((n, d)) + x[:, :1].numpy() * 0.5)
    for a, b in ((x, y), (x - x.mean(0), y - y.mean(0))):
        for p, q in ((a, b), (a, a), (b, b)):
            expected = float(_hsic(p @ p.T, q @ q.T))
            assert float(_hsic_of_features(p, q)) == pytest.approx(expected, rel=1e-12, abs=1e-12 * abs(expected))
    feats_a = [x - x.mean(0), torch.from_numpy(rng.standard_normal((n, 5)))]
    feats_a[1] -= feats_a[1].mean(0)
    feats_b = [y - y.mean(0), feats_a[0][:, :2].clone(), torch.zeros(n, 3)]  # a constant layer: NaN column
    got = _cka_from_features(iter(feats_a), feats_b)
    expected = _cka_from_grams([f @ f.T for f in feats_a], [f @ f.T for f in feats_b])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    assert np.isnan(got[:, 2]).all() and np.isfinite(got[:, :2]).all()


def test_streaming_cka_checks_what_it_was_fed():
    a = _acts(11, (2, 5, 4, 2, 2))
    acc = CKAAccumulator(2, 2)
    acc.update_a(0, a[0])
    with pytest.raises(UserError, match="no chunk seen for model A layer"):
        acc.result()
    acc.update_a(1, a[1])
    acc.update_b(0, a[0])
    acc.update_b(1, a[1, :4])
    with pytest.raises(UserError, match="different numbers of images"):
        acc.result()
    with pytest.raises(UserError, match="layer must be"):
        acc.update_b(2, a[0])
    with pytest.raises(UserError, match="channels"):
        acc.update_b(1, a[1, :1, :3])
    with pytest.raises(UserError, match="NaN or inf"):
        acc.update_b(1, np.full((1, 4, 2, 2), np.inf))


# ---------------------------------------------------------------- rank


def _erank(matrix: np.ndarray) -> float:
    s = np.linalg.svd(matrix, compute_uv=False)
    p = s / s.sum()
    return float(np.exp(-sum(pi * np.log(pi) for pi in p if pi > 0)))


def _pr(tokens: np.ndarray) -> float:
    lam = np.linalg.eigvalsh(np.cov(tokens, rowvar=False))
    return float(lam.sum() ** 2 / (lam ** 2).sum())


def _first_reaching(cum: np.ndarray, t: float) -> int:
    for k, value in enumerate(cum, start=1):
        if value >= t:
            return k
    return len(cum)


def test_effective_rank_and_participation_ratio_match_the_loops():
    a = _acts(12, (2, 3, 6, 2, 3))  # N = 6 tokens, C = 6 channels
    want_erank_img = [np.mean([_erank(_tokens(a[l, b])) for b in range(3)]) for l in range(2)]
    want_erank_ds = [_erank(np.concatenate([_tokens(a[l, b]) for b in range(3)])) for l in range(2)]
    want_pr_img = [np.mean([_pr(_tokens(a[l, b])) for b in range(3)]) for l in range(2)]
    want_pr_ds = [_pr(np.concatenate([_tokens(a[l, b]) for b in range(3)])) for l in range(2)]
    np.testing.assert_allclose(effective_rank(a), want_erank_img, rtol=1e-12)
    np.testing.assert_allclose(effective_rank(a, scope="dataset"), want_erank_ds, rtol=1e-10)
    np.testing.assert_allclose(participation_ratio(a), want_pr_img, rtol=1e-10)
    np.testing.assert_allclose(participation_ratio(a, scope="dataset"), want_pr_ds, rtol=1e-10)


def test_rank_one_features_have_effective_rank_one_and_orthonormal_ones_full_rank():
    rng = np.random.default_rng(13)
    scale, channels, grid = rng.standard_normal(4), rng.standard_normal(4), rng.standard_normal((3, 3))
    rank1 = np.einsum("b,c,hw->bchw", scale, channels, grid)[None]  # every token a multiple of one vector
    np.testing.assert_allclose(effective_rank(rank1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(effective_rank(rank1, scope="dataset"), 1.0, rtol=1e-6)
    eye = np.eye(5).reshape(1, 1, 5, 5, 1)  # N = C = 5 orthonormal tokens: all singular values 1
    np.testing.assert_allclose(effective_rank(eye), 5.0, rtol=1e-12)
    np.testing.assert_allclose(participation_ratio(rank1, scope="dataset"), 1.0, rtol=1e-9)


def test_constant_tokens_have_undefined_participation_ratio():
    const = np.ones((1, 2, 4, 3, 3))
    assert np.isnan(participation_ratio(const)).all()
    np.testing.assert_allclose(effective_rank(const), 1.0)  # uncentred: a rank-1 matrix


def test_svd_energy_rank_on_a_designed_spectrum():
    rng = np.random.default_rng(14)
    u, _ = np.linalg.qr(rng.standard_normal((9, 4)))  # N = 9 tokens
    v, _ = np.linalg.qr(rng.standard_normal((6, 4)))  # C = 6 channels
    x = u @ np.diag(np.sqrt([0.55, 0.30, 0.12, 0.03])) @ v.T  # energy shares .55 .85 .97 1.0
    acts = x.T.reshape(1, 1, 6, 3, 3)
    assert svd_energy_rank(acts).tolist() == [[[2, 3, 3, 4]]]


def test_svd_energy_rank_matches_the_loop():
    a = _acts(15, (2, 4, 10, 3, 3))
    want = [[[_first_reaching(np.cumsum(s ** 2) / np.sum(s ** 2), t) for t in ENERGIES]
             for s in (np.linalg.svd(_tokens(a[l, b]), compute_uv=False) for b in range(4))] for l in range(2)]
    got = svd_energy_rank(a)
    assert got.dtype == np.int64 and got.tolist() == want
    assert svd_energy_rank(a.astype(np.float32)).shape == (2, 4, 4)
    zero = np.zeros((1, 2, 4, 2, 2))
    assert svd_energy_rank(zero).tolist() == [[[0] * 4] * 2]


@pytest.mark.parametrize("center", [False, True])
def test_dataset_pca_dimensions_match_the_loop(center):
    a = _acts(16, (2, 5, 7, 2, 2)) + 1.0
    want_glob, want_shared = [], []
    for l in range(2):
        tokens = [_tokens(a[l, b]) for b in range(5)]
        pooled = np.concatenate(tokens)
        m = sum(x.T @ x for x in tokens) / len(pooled)
        mu = pooled.mean(0)
        if center:
            m = m - np.outer(mu, mu)
        lam, vec = np.linalg.eigh(m)
        lam, vec = lam[::-1], vec[:, ::-1]
        want_glob.append([_first_reaching(np.cumsum(lam) / lam.sum(), t) for t in ENERGIES])
        rows = []
        for x in tokens:
            x = x - mu if center else x
            captured = [np.sum((x @ vec[:, :d]) ** 2) / np.sum(x ** 2) for d in range(1, 8)]
            rows.append([_first_reaching(np.array(captured), t) for t in ENERGIES])
        want_shared.append(rows)
    assert pca_dimension(a, center=center).tolist() == want_glob
    assert shared_basis_rank(a, center=center).tolist() == want_shared


def test_own_basis_needs_no_more_dimensions_than_the_shared_one():
    """The follow-up's reading: each image's optimal basis beats the shared basis at every level."""
    a = _acts(17, (1, 6, 12, 3, 3))
    assert np.all(svd_energy_rank(a) <= shared_basis_rank(a))


def test_rank_options_are_checked():
    a = _acts(0)
    with pytest.raises(UserError, match="energies"):
        svd_energy_rank(a, energies=[0.8, 1.5])
    with pytest.raises(UserError, match="unknown scope"):
        effective_rank(a, scope="token")
    with pytest.raises(UserError, match="no variance"):
        pca_dimension(np.zeros((1, 2, 4, 2, 2)))


# ---------------------------------------------------------------- spectral


def _sep_curve_loop(acts: np.ndarray, mode: str) -> np.ndarray:
    curves = []
    for layer in acts:
        per_token = []
        for image in layer:
            for x in _tokens(image):
                if mode == "full":
                    s = np.abs(np.fft.fft(x)) ** 2
                else:
                    s = np.abs(np.fft.rfft(x)) ** 2
                    for k in range(1, len(s)):
                        if not (len(x) % 2 == 0 and k == len(s) - 1):
                            s[k] *= 2
                per_token.append(np.cumsum(s) / s.sum())
        curves.append(np.mean(per_token, axis=0))
    return np.array(curves)


@pytest.mark.parametrize("mode", ["full", "folded"])
@pytest.mark.parametrize("channels", [8, 9])
def test_sep_curve_and_bandwidth_match_the_loop(mode, channels):
    a = _acts(18, (2, 3, channels, 2, 2), np.float32)
    want = _sep_curve_loop(a.astype(np.float64), mode)
    np.testing.assert_allclose(sep_curve(a, mode), want, rtol=1e-12)
    ratios = (0.5, 0.6, 0.7, 0.8, 0.9)
    want_b = [[_first_reaching(row, r) / len(row) for r in ratios] for row in want]
    np.testing.assert_allclose(sep_bandwidth(a, ratios, mode), want_b)


def test_sep_half_point_identity():
    """For one real token, c(D/2) = 1/2 + (S_0 - S_{D/2}) / (2 sum S) (followup.md section 1.3)."""
    x = _acts(19, (1, 1, 16, 1, 1))
    s = np.abs(np.fft.fft(x.ravel())) ** 2
    assert sep_curve(x)[0, 16 // 2 - 1] == pytest.approx(0.5 + (s[0] - s[8]) / (2 * s.sum()), rel=1e-12)


def test_sep_bandwidth_of_a_low_pass_token_is_near_one():
    """A pure cosine at k = 1 puts half its energy at k = 1 and half at k = C - 1, the last bin in full order."""
    c = 16
    x = np.cos(2 * np.pi * np.arange(c) / c).reshape(1, 1, c, 1, 1)
    np.testing.assert_allclose(sep_bandwidth(x, (0.45, 0.6, 0.9)), [[2 / c, 1.0, 1.0]])
    np.testing.assert_allclose(sep_bandwidth(x, (0.5, 0.9), mode="folded"), [[2 / 9, 2 / 9]])


def test_sep_of_white_noise_is_close_to_the_ratio():
    a = _acts(20, (1, 50, 64, 6, 6))
    np.testing.assert_allclose(sep_bandwidth(a), [[0.5, 0.6, 0.7, 0.8, 0.9]], atol=2 / 64)


def test_sep_leaves_zero_tokens_out():
    a = _acts(21, (1, 2, 8, 2, 2))
    padded = np.concatenate([a, np.zeros((1, 1, 8, 2, 2))], axis=1)
    np.testing.assert_allclose(sep_curve(padded), sep_curve(a), rtol=1e-12)
    assert np.isnan(sep_bandwidth(np.zeros((1, 1, 8, 2, 2)))).all()


def test_low_frequency_share_matches_the_loop():
    a = _acts(22, (3, 4, 32, 2, 2))
    spec = channel_spectrum(a)
    want = []
    for row in spec:
        low = sum(row[k] ** 2 for k in range(32) if min(k, 32 - k) / 32 < 1 / 8)
        want.append(low / sum(v ** 2 for v in row))
    np.testing.assert_allclose(low_frequency_share(spec), want, rtol=1e-12)
    np.testing.assert_allclose(low_frequency_share(np.ones((1, 16))), [3 / 16])  # k = 0, 1, 15


def test_spectral_slope_recovers_a_power_law_and_matches_polyfit():
    c = 32
    k = np.arange(c)
    folded = np.minimum(k, c - k).astype(float)
    folded[0] = 1.0
    power_law = (5.0 * folded ** -1.5)[None]
    np.testing.assert_allclose(spectral_slope(power_law), [-1.5], rtol=1e-12)
    spec = channel_spectrum(_acts(23, (2, 3, c, 2, 2)))
    want = [np.polyfit(np.log(np.arange(1, c // 2 + 1)), np.log(row[1:c // 2 + 1]), 1)[0] for row in spec]
    np.testing.assert_allclose(spectral_slope(spec), want, rtol=1e-10)


def test_spectral_indices_check_their_input():
    with pytest.raises(UserError, match=r"\[L, C\]"):
        spectral_slope(np.ones(16))
    with pytest.raises(UserError, match="cutoff"):
        low_frequency_share(np.ones((1, 16)), cutoff=0.7)
    with pytest.raises(UserError, match="unknown SEP mode"):
        sep_curve(_acts(0), mode="half")


# ---------------------------------------------------------------- massive activations


def test_massive_activations_find_a_planted_value():
    a = _acts(24, (2, 3, 8, 2, 3))
    a[1, 2, 5, 1, 0] = -4000.0  # layer 1, image 2, channel 5, token 1 * 3 + 0
    a[1, 0, 2, 0, 2] = 150.0    # large but only ~200 x the median: not massive by ratio
    got = massive_activations(a, top_k=3)
    assert got.values[1, :2].tolist() == [-4000.0, 150.0]
    assert (got.image[1, 0], got.channel[1, 0], got.token[1, 0]) == (2, 5, 3)
    assert (got.image[1, 1], got.channel[1, 1], got.token[1, 1]) == (0, 2, 2)
    assert got.massive[1].tolist() == [True, False, False]
    assert got.n_massive.tolist() == [0, 1]
    median = [[np.median(np.abs(a[l, b])) for b in range(3)] for l in range(2)]
    np.testing.assert_array_equal(got.median, median)
    assert got.ratios[1, 0] == 4000.0 / median[1][2]
    ratio_only = massive_activations(a, top_k=3, min_ratio=100.0, min_magnitude=0.0)
    assert ratio_only.massive[1, :2].tolist() == [True, True]


def test_massive_activations_match_the_loop():
    a = _acts(25, (2, 3, 4, 2, 2))
    got = massive_activations(a, top_k=5, min_ratio=2.0, min_magnitude=0.5)
    for l in range(2):
        entries = sorted(((abs(a[l, b, c, h, w]), b, c, h * 2 + w) for b, c, h, w in np.ndindex(3, 4, 2, 2)),
                         key=lambda e: -e[0])[:5]
        assert got.image[l].tolist() == [e[1] for e in entries]
        assert got.channel[l].tolist() == [e[2] for e in entries]
        assert got.token[l].tolist() == [e[3] for e in entries]
        medians = [np.median(np.abs(a[l, b])) for b in range(3)]
        count = sum(abs(a[l, b, c, h, w]) > 0.5 and abs(a[l, b, c, h, w]) / medians[b] > 2.0
                    for b, c, h, w in np.ndindex(3, 4, 2, 2))
        assert got.n_massive[l] == count


def test_massive_activations_ties_go_to_the_first_position():
    a = np.zeros((1, 1, 4, 1, 2))
    a[0, 0, 3, 0, 1] = a[0, 0, 1, 0, 0] = -2.0
    got = massive_activations(a, top_k=2)
    assert got.channel.tolist() == [[1, 3]] and got.token.tolist() == [[0, 1]]
    assert got.ratios.tolist() == [[np.inf, np.inf]]


def test_massive_activations_check_their_options():
    with pytest.raises(UserError, match="top_k"):
        massive_activations(_acts(0), top_k=0)
    with pytest.raises(UserError, match="min_ratio"):
        massive_activations(_acts(0), min_ratio=-1.0)


# ---------------------------------------------------------------- shared input rules


@pytest.mark.parametrize("call", [
    lambda x: linear_cka(x, x), effective_rank, participation_ratio, svd_energy_rank, pca_dimension,
    shared_basis_rank, sep_curve, sep_bandwidth, massive_activations,
], ids=["cka", "erank", "pr", "svd", "pca", "shared", "sep_curve", "sep_bw", "massive"])
def test_every_statistic_rejects_a_non_5d_input(call):
    with pytest.raises(UserError, match=r"\[L, B, C, H, W\]"):
        call(np.zeros((4, 8, 3, 3)))
    with pytest.raises(UserError, match="float32 or float64"):
        call(np.zeros((1, 4, 8, 3, 3), dtype=np.int64))
    bad = _acts(26, (2, 4, 8, 3, 3))
    bad[1, 2, 3, 0, 0] = np.nan
    with pytest.raises(UserError, match="NaN or inf"):
        call(bad)
