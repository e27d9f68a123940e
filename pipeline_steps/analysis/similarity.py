"""Linear CKA between every layer of one model and every layer of another (method.md section 9.1).

Centered kernel alignment (Kornblith et al. 2019, "Similarity of neural network representations
revisited") with a linear kernel and the **unbiased** HSIC estimator of Song et al. (2012), as used by
Nguyen, Raghu and Kornblith (2021, "Do wide and deep networks learn the same things?"):

``CKA(K, L) = HSIC_1(K, L) / sqrt(HSIC_1(K, K) HSIC_1(L, L))``, with ``K = X X^T`` and ``L = Y Y^T`` the
``[n, n]`` Gram matrices of the two layers' features over the same ``n`` images (examples = images).

Tokens. Each image's feature vector is built from its ``[C, H, W]`` activation in one of two ways
(:data:`TOKEN_MODES`):

* ``"mean"`` (default): the mean over the ``H * W`` tokens, a ``[C]`` vector. Well defined when the two models
  have different token grids (e.g. a 14 x 14 student against a 7 x 7 Swin stage), and the one mode the
  streaming :class:`CKAAccumulator` supports.
* ``"flatten"``: all tokens concatenated, a ``[C * H * W]`` vector (Raghu et al. 2021 treat ViT tokens this
  way). Requires both models to have the same ``H x W`` grid, so token ``(h, w)`` of one lines up with token
  ``(h, w)`` of the other.

The unbiased estimator needs ``n >= 4`` images. It is invariant to a constant shift of the features, so
features are centred over the images first (in float64) without changing the value; this only improves the
rounding, and makes a layer whose features do not vary across images give exactly zero self-HSIC, for which
CKA is undefined and returned as NaN.

Streaming (:class:`CKAAccumulator`): the estimator is computed from the centred ``[n, C]`` features themselves,
``tr(K~ L~) = ||X^T Y||_F^2 - sum_i k_i l_i`` with ``k = diag(K)`` the squared row norms, ``1' K~ 1 = ||X^T 1||^2 -
sum k`` and ``K~ 1 = X (X^T 1) - k``, so its memory is ``O(n C)`` (the features), not the ``O(n^2)`` of a Gram
matrix per layer. :func:`linear_cka` keeps the Gram form, which ``tokens="flatten"`` (``C H W`` features) needs.
The two agree to float64 rounding unless one image's features dwarf the others' (then the subtracted
``sum k_i l_i`` costs the feature form digits: 7e-9 relative for a 10^4 outlier among 32 images; method.md 9.1).
"""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple

import numpy as np
import torch

from pipeline_steps.analysis._inputs import as_acts, as_chunk, check_layer
from pipeline_steps.errors import UserError

__all__ = ["CKAAccumulator", "PreparedFeatures", "TOKEN_MODES", "linear_cka", "prepare_features", "unbiased_hsic"]

TOKEN_MODES = ("mean", "flatten")

_MIN_IMAGES = 4


def _check_images(n: int) -> None:
    if n < _MIN_IMAGES:
        raise UserError(f"linear CKA with the unbiased HSIC estimator needs at least {_MIN_IMAGES} images, "
                        f"got {n}; analyse more images")


def unbiased_hsic(gram_x: Any, gram_y: Any) -> float:
    """Unbiased HSIC estimator of Song et al. (2012, Eq. 5) for two ``[n, n]`` Gram matrices.

    With ``K~``, ``L~`` the Gram matrices with their diagonals set to zero and ``1`` the all-ones vector::

        HSIC_1 = [tr(K~ L~) + (1' K~ 1)(1' L~ 1) / ((n-1)(n-2)) - 2/(n-2) 1' K~ L~ 1] / (n (n-3))

    Args:
        gram_x: ``[n, n]`` symmetric Gram matrix of the first representation (numpy or torch).
        gram_y: ``[n, n]`` Gram matrix of the second representation over the same ``n >= 4`` examples.

    Returns:
        The estimate, a float (it can be slightly negative: it is unbiased, not non-negative).
    """
    k = torch.as_tensor(np.asarray(gram_x, dtype=np.float64))
    l_ = torch.as_tensor(np.asarray(gram_y, dtype=np.float64))
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape != l_.shape:
        raise UserError(f"Gram matrices must be two [n, n] arrays of one size, got shapes {tuple(k.shape)} "
                        f"and {tuple(l_.shape)}")
    _check_images(k.shape[0])
    return float(_hsic(k, l_))


def _hsic(k: torch.Tensor, l_: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC of float64 ``[n, n]`` Gram matrices (diagonals are zeroed on copies)."""
    n = k.shape[0]
    k = k.clone().fill_diagonal_(0.0)
    l_ = l_.clone().fill_diagonal_(0.0)
    k_row, l_row = k.sum(1), l_.sum(1)
    trace = (k * l_).sum()
    both_sums = k_row.sum() * l_row.sum() / ((n - 1) * (n - 2))
    return (trace + both_sums - 2.0 / (n - 2) * (k_row @ l_row)) / (n * (n - 3))


def _hsic_terms(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For float64 ``[n, C]`` features with ``K = X X^T``: ``k = diag(K)``, ``K~ 1 = X (X^T 1) - k`` and
    ``1' K~ 1 = ||X^T 1||^2 - sum k`` (``K~``: ``K`` with a zero diagonal), without forming ``K``."""
    k = (x * x).sum(1)
    col = x.sum(0)                         # X^T 1: zero (to rounding) for centred features
    return k, x @ col - k, col @ col - k.sum()


def _hsic_from_terms(n: int, cross: torch.Tensor, kl: torch.Tensor, row_product: torch.Tensor,
                     k_sum: torch.Tensor, l_sum: torch.Tensor) -> torch.Tensor:
    """Song et al.'s estimator from ``||X^T Y||_F^2``, ``sum_i k_i l_i``, ``(K~ 1).(L~ 1)`` and the two sums."""
    trace = cross - kl                     # tr(K~ L~) = tr(K L) - sum_i k_i l_i, tr(K L) = ||X^T Y||_F^2
    return (trace + k_sum * l_sum / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * row_product) / (n * (n - 3))


def _hsic_of_features(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC of the linear kernels of float64 ``[n, C]`` and ``[n, D]`` features, from the features:
    equal to ``_hsic(x @ x.T, y @ y.T)`` (to float64 rounding) in ``O(n C D)`` time and ``O(C D)`` memory."""
    k, k_row, k_sum = _hsic_terms(x)
    l_, l_row, l_sum = _hsic_terms(y)
    return _hsic_from_terms(x.shape[0], (x.T @ y).square().sum(), k @ l_, k_row @ l_row, k_sum, l_sum)


def _centred(x: torch.Tensor) -> torch.Tensor:
    """Float64 ``[B, F]`` features centred over the images; exactly zero when every image has the same features
    (the mean of equal values need not round back to that value, which would leave ~1e-17 noise)."""
    if not bool(torch.isfinite(x).all()):
        raise UserError("activations hold NaN or inf; check the model and its inputs")
    if bool((x == x[:1]).all()):
        return torch.zeros_like(x)
    return x - x.mean(dim=0, keepdim=True)


def _features(layer_acts: torch.Tensor, tokens: str) -> torch.Tensor:
    """``[B, C, H, W]`` -> float64 ``[B, F]`` features, centred over the images."""
    x = layer_acts.to(torch.float64)
    return _centred(x.mean(dim=(2, 3)) if tokens == "mean" else x.reshape(x.shape[0], -1))


def _cka_from_grams(grams_a: list[torch.Tensor], grams_b: list[torch.Tensor]) -> np.ndarray:
    self_a = torch.stack([_hsic(k, k) for k in grams_a])
    self_b = torch.stack([_hsic(k, k) for k in grams_b])
    out = np.empty((len(grams_a), len(grams_b)))
    for i, k in enumerate(grams_a):
        for j, l_ in enumerate(grams_b):
            denom = float(self_a[i] * self_b[j])
            # Zero (or, from rounding, negative) self-HSIC: a layer that does not vary across images.
            out[i, j] = float(_hsic(k, l_)) / np.sqrt(denom) if denom > 0 else np.nan
    return out


class PreparedFeatures(NamedTuple):
    """One layer's centred ``[n, C]`` features and the estimator's sums that involve no other layer."""

    x: torch.Tensor           # centred features
    k: torch.Tensor           # diag K, [n]
    row: torch.Tensor         # K~ 1, [n]
    total: torch.Tensor       # 1' K~ 1
    self_trace: torch.Tensor  # tr(K K) = ||X^T X||_F^2
    kk: torch.Tensor          # sum_i k_i^2
    rr: torch.Tensor          # (K~ 1).(K~ 1)


def _prepare(x: torch.Tensor) -> PreparedFeatures:
    """:class:`PreparedFeatures` of centred float64 ``[n, C]`` features."""
    k, row, total = _hsic_terms(x)
    return PreparedFeatures(x, k, row, total, (x.T @ x).square().sum(), k @ k, row @ row)


def prepare_features(means: torch.Tensor) -> PreparedFeatures:
    """One layer's whole-sample float64 ``[n, C]`` token means, centred and with the estimator's per-layer sums,
    for :meth:`CKAAccumulator.set_prepared`: a reference compared with many models is prepared once."""
    return _prepare(_centred(means))


def _cka_from_features(feats_a: Iterable[torch.Tensor], feats_b: list[torch.Tensor]) -> np.ndarray:
    """:func:`_cka_from_grams` of the Gram matrices of centred float64 ``[n, C]`` features, without forming them
    (``feats_a`` may be a generator: model A is taken one layer at a time)."""
    return _cka_from_prepared((_prepare(x) for x in feats_a), [_prepare(y) for y in feats_b])


def _cka_from_prepared(prep_a: Iterable[PreparedFeatures], prep_b: list[PreparedFeatures]) -> np.ndarray:
    """CKA between every layer of ``prep_a`` and of ``prep_b``.

    Model B's features are taken together (``[n, sum C_b]``), model A's one layer at a time: memory beyond the
    features is one A layer's ``C_a x sum C_b`` cross products and a few numbers per image and layer. The sums
    are formed layer by layer; the estimator's elementwise algebra then runs once on ``[L_a, L_b]`` arrays (the
    same operations on the same numbers as pair by pair).
    """
    n = prep_b[0].x.shape[0]
    widths = [p.x.shape[1] for p in prep_b]
    b_all = torch.cat([p.x for p in prep_b], dim=1) if len(prep_b) > 1 else prep_b[0].x
    l_diag = torch.stack([p.k for p in prep_b], dim=1)          # [n, L_b]
    l_rows = torch.stack([p.row for p in prep_b], dim=1)        # [n, L_b]
    l_sums = torch.stack([p.total for p in prep_b])             # [L_b]
    self_b = _hsic_from_terms(n, torch.stack([p.self_trace for p in prep_b]), torch.stack([p.kk for p in prep_b]),
                              torch.stack([p.rr for p in prep_b]), l_sums, l_sums)
    parts: dict[str, list[torch.Tensor]] = {key: [] for key in ("self", "kk", "rr", "sum", "cross", "kl", "rl")}
    for p in prep_a:
        parts["self"].append(p.self_trace)
        parts["kk"].append(p.kk)
        parts["rr"].append(p.rr)
        parts["sum"].append(p.total)
        parts["cross"].append(torch.stack([block.sum() for block in (p.x.T @ b_all).square_().split(widths, dim=1)]))
        parts["kl"].append(p.k @ l_diag)
        parts["rl"].append(p.row @ l_rows)
    a = {key: torch.stack(v) for key, v in parts.items()}
    self_a = _hsic_from_terms(n, a["self"], a["kk"], a["rr"], a["sum"], a["sum"])
    hsic = _hsic_from_terms(n, a["cross"], a["kl"], a["rl"], a["sum"][:, None], l_sums[None, :]).numpy()
    denom = (self_a[:, None] * self_b[None, :]).numpy()
    # Zero (or, from rounding, negative) self-HSIC: a layer that does not vary across images.
    ok = denom > 0
    return np.where(ok, hsic / np.sqrt(np.where(ok, denom, 1.0)), np.nan)


def _check_tokens(tokens: str) -> str:
    if tokens not in TOKEN_MODES:
        raise UserError(f"unknown tokens mode {tokens!r}; use one of {', '.join(TOKEN_MODES)}")
    return tokens


def linear_cka(acts_a: Any, acts_b: Any, tokens: str = "mean") -> np.ndarray:
    """Linear CKA (unbiased HSIC) between every layer of model A and every layer of model B.

    ``CKA[i, j] = HSIC_1(K_i, L_j) / sqrt(HSIC_1(K_i, K_i) HSIC_1(L_j, L_j))`` with ``K_i = X_i X_i^T`` the
    Gram matrix over images of layer ``i``'s features (see the module docstring for ``tokens``). Invariant to
    orthogonal transforms and isotropic scaling of either layer's features; ``linear_cka(a, a)`` has a unit
    diagonal.

    Args:
        acts_a: ``[L_a, B, C_a, H_a, W_a]`` float32 or float64 array or tensor.
        acts_b: ``[L_b, B, C_b, H_b, W_b]``, the same ``B >= 4`` images in the same order.
        tokens: ``"mean"`` (token-averaged channel vector per image) or ``"flatten"`` (all tokens
            concatenated; needs equal token grids).

    Returns:
        ``[L_a, L_b]`` float64; NaN where a layer's features do not vary across images.
    """
    tokens = _check_tokens(tokens)
    a, b = as_acts(acts_a), as_acts(acts_b)
    if a.shape[1] != b.shape[1]:
        raise UserError(f"model A has {a.shape[1]} images and model B {b.shape[1]}; CKA compares the same "
                        "images, pass both models' activations on one sample")
    _check_images(a.shape[1])
    if tokens == "flatten" and a.shape[3:] != b.shape[3:]:
        raise UserError(f"tokens='flatten' needs equal token grids, got {tuple(a.shape[3:])} and "
                        f"{tuple(b.shape[3:])}; use tokens='mean'")
    grams_a = [(x := _features(a[i], tokens)) @ x.T for i in range(a.shape[0])]
    grams_b = [(y := _features(b[j], tokens)) @ y.T for j in range(b.shape[0])]
    return _cka_from_grams(grams_a, grams_b)


class CKAAccumulator:
    """Streaming :func:`linear_cka` with ``tokens="mean"``: feed each model's layers chunk by chunk.

    Unbiased HSIC is a U-statistic over all pairs (in fact quadruples) of images, so neither the Gram matrix
    nor the estimate splits into per-chunk parts: a chunk's images pair with every earlier image, and
    averaging per-minibatch estimates (the "minibatch CKA" of Nguyen et al. 2021) is a different estimator.
    The accumulator therefore keeps each image's token-mean feature vector, float64, ``B x C`` values per
    layer (``H * W`` times fewer than the activations), and :meth:`result` computes the estimator from these
    centred features without forming a ``B x B`` Gram matrix (``tr(K L) = ||X^T Y||_F^2``, ``diag K`` the
    squared row norms, ``K 1 = X (X^T 1)``; method.md section 9.1). Memory grows linearly with the number of
    images: ``8 B (sum of C over both models' layers)`` bytes, e.g. 32 images of CaiT-S24 (24 x 384) and
    DeiT-Tiny (12 x 192): 3 MB, 2,048 images of them: 189 MB (their Gram matrices would be 1.2 GB). The result
    equals the one-shot function up to float64 rounding. ``tokens="flatten"`` would have to keep every
    activation, so it is not offered here.

    Args:
        n_layers_a: Number of layers of model A that will be fed.
        n_layers_b: Number of layers of model B.
    """

    def __init__(self, n_layers_a: int, n_layers_b: int):
        for name, n in (("n_layers_a", n_layers_a), ("n_layers_b", n_layers_b)):
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
                raise UserError(f"{name} must be a positive integer, got {n!r}")
        self._features: dict[str, list[list[torch.Tensor]]] = {
            "a": [[] for _ in range(int(n_layers_a))], "b": [[] for _ in range(int(n_layers_b))]}
        self._prepared: dict[str, list[PreparedFeatures | None]] = {
            side: [None] * len(parts) for side, parts in self._features.items()}

    def _update(self, side: str, layer: int, chunk: Any) -> None:
        self.update_means(side, layer, as_chunk(chunk).to(torch.float64).mean(dim=(2, 3)))

    def _side(self, side: str) -> str:
        if side not in self._features:
            raise UserError(f"side must be 'a' or 'b', got {side!r}")
        return side

    def update_means(self, side: str, layer: int, means: torch.Tensor) -> None:
        """Fold in a chunk of model ``side``'s (``"a"`` or ``"b"``) layer already reduced to float64 ``[b, C]``
        token means, as :meth:`update_a` and :meth:`update_b` reduce theirs. They are kept as they are (no copy:
        the caller must not change them afterwards)."""
        parts = self._features[self._side(side)]
        layer = check_layer(layer, len(parts))
        if not bool(torch.isfinite(means).all()):
            raise UserError(f"model {side.upper()} layer {layer}: the chunk holds NaN or inf; check the model "
                            "and its inputs")
        if parts[layer] and parts[layer][0].shape[1] != means.shape[1]:
            raise UserError(f"model {side.upper()} layer {layer} got {means.shape[1]} channels but earlier chunks "
                            f"had {parts[layer][0].shape[1]}; keep the [b, C, H, W] layout for every chunk")
        parts[layer].append(means)

    def set_prepared(self, side: str, layer: int, prepared: PreparedFeatures) -> None:
        """Take model ``side``'s layer ``layer`` as a whole sample already prepared by :func:`prepare_features`,
        in place of chunks."""
        prepared_side = self._prepared[self._side(side)]
        prepared_side[check_layer(layer, len(prepared_side))] = prepared

    def update_a(self, layer: int, chunk: Any) -> None:
        """Fold a ``[b, C, H, W]`` chunk of model A's layer ``layer`` (0-based) in; images in sample order."""
        self._update("a", layer, chunk)

    def update_b(self, layer: int, chunk: Any) -> None:
        """Fold a ``[b, C, H, W]`` chunk of model B's layer ``layer`` in; model A's images, in the same order."""
        self._update("b", layer, chunk)

    def result(self) -> np.ndarray:
        """CKA of everything fed so far.

        Returns:
            ``[L_a, L_b]`` float64, as :func:`linear_cka` with ``tokens="mean"``.

        Raises:
            UserError: A layer was never fed, layers saw different numbers of images, or fewer than 4.
        """
        feats = {}
        for side, parts in self._features.items():
            prepared = self._prepared[side]
            missing = [i for i, (p, q) in enumerate(zip(parts, prepared)) if not p and q is None]
            if missing:
                raise UserError(f"no chunk seen for model {side.upper()} layer(s) {missing}; update every layer "
                                "before result()")
            feats[side] = [q if q is not None else p[0] if len(p) == 1 else torch.cat(p)
                           for p, q in zip(parts, prepared)]
        counts = sorted({(x.x if isinstance(x, PreparedFeatures) else x).shape[0] for side in feats.values() for x in side})
        if len(counts) != 1:
            raise UserError(f"layers saw different numbers of images ({counts}); feed every layer of both "
                            "models the same images")
        _check_images(counts[0])

        def prepared(x: torch.Tensor | PreparedFeatures) -> PreparedFeatures:
            return x if isinstance(x, PreparedFeatures) else _prepare(_centred(x))

        return _cka_from_prepared((prepared(x) for x in feats["a"]), [prepared(y) for y in feats["b"]])
