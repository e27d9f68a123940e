"""How many dimensions a layer's token features use (method.md section 9.2).

Activations are ``[L, B, C, H, W]`` as everywhere (:mod:`pipeline_steps.analysis.metrics`); one image's
**token matrix** at layer ``l`` is ``X = A[l, b].reshape(C, H * W).T``, ``[N, C]`` with ``N = H * W`` patch
tokens (prefix tokens are never in the activations, method.md section 1).

* :func:`effective_rank` -- Roy & Vetterli (2007): ``exp`` of the Shannon entropy of the singular values
  normalised to sum 1.
* :func:`participation_ratio` -- ``(sum lambda)^2 / sum lambda^2`` of the token covariance's eigenvalues.
* :func:`svd_energy_rank` -- the follow-up paper's per-image ("sample-wise") SVD rank at an energy level
  (Tian, Xu, Li, arXiv 2511.15572, released ``analyze_svd_separate.py``).
* :func:`pca_dimension`, :func:`shared_basis_rank` -- the follow-up's dataset-level PCA: dimensions of the
  global second-moment spectrum, and per-image capture in the shared eigenbasis (``analyze_dataset_pca.py``).

The follow-up's choices, kept here: features are **raw** (not centred, not normalised); energy is the squared
singular value (equivalently the second-moment eigenvalue); a threshold rank is the smallest ``k`` whose
cumulative energy share is ``>= t`` (1-based). Its tables report the 99th percentile over images (numpy's
default linear interpolation, rounded) of the per-image ranks of the **last** layer, e.g.
``np.rint(np.percentile(svd_energy_rank(acts)[-1], 99, axis=0))``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from pipeline_steps.analysis._inputs import as_acts
from pipeline_steps.errors import UserError

__all__ = ["ENERGY_LEVELS", "SCOPES", "effective_rank", "participation_ratio", "pca_dimension",
           "shared_basis_rank", "svd_energy_rank"]

#: The follow-up's energy levels (80, 90, 95, 99 %).
ENERGY_LEVELS = (0.80, 0.90, 0.95, 0.99)

#: Over what a matrix is formed: each image's ``[N, C]`` token matrix, or all images' tokens pooled.
SCOPES = ("image", "dataset")


def _check_finite(layer_acts: torch.Tensor, layer: int) -> torch.Tensor:
    if not bool(torch.isfinite(layer_acts).all()):
        raise UserError(f"layer {layer} holds NaN or inf; check the model and its inputs")
    return layer_acts


def _token_matrices(layer_acts: torch.Tensor, layer: int) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, N, C]`` float64 token matrices (``layer`` names the layer in errors)."""
    b, c = layer_acts.shape[:2]
    return _check_finite(layer_acts, layer).to(torch.float64).reshape(b, c, -1).transpose(1, 2)


def _check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise UserError(f"unknown scope {scope!r}; use one of {', '.join(SCOPES)}")
    return scope


def _check_energies(energies: Sequence[float]) -> np.ndarray:
    e = np.asarray(energies, dtype=np.float64)
    if e.ndim != 1 or e.size == 0 or not np.all((e > 0) & (e <= 1)):
        raise UserError(f"energies must be a non-empty list of fractions in (0, 1], got {list(np.ravel(e))}; "
                        "e.g. [0.8, 0.9, 0.95, 0.99]")
    return e


def _entropy_rank(weights: torch.Tensor) -> torch.Tensor:
    """``exp(H(p))``, ``p = w / sum w`` along the last axis (``0 log 0 = 0``); NaN where ``sum w = 0``."""
    p = weights / weights.sum(-1, keepdim=True)
    return torch.exp(-torch.xlogy(p, p).sum(-1))


def effective_rank(acts: Any, scope: str = "image") -> np.ndarray:
    """Effective rank of a layer's token matrix (Roy & Vetterli 2007, Eq. 2-3).

    With ``sigma_1..m`` the singular values of the raw (uncentred) token matrix and ``p_i = sigma_i / sum_j
    sigma_j`` (the singular values themselves, not their squares, as Roy & Vetterli define it)::

        erank = exp(-sum_i p_i ln p_i)

    It lies in ``[1, min(N, C)]``: 1 for a rank-1 matrix, ``min(N, C)`` when all singular values are equal.

    Args:
        acts: ``[L, B, C, H, W]`` float32 or float64 array or tensor.
        scope: ``"image"``: the effective rank of each image's ``[N, C]`` token matrix, averaged over images;
            ``"dataset"``: that of all images' tokens pooled, ``[B N, C]`` (from the eigenvalues of the
            ``C x C`` Gram matrix ``Z^T Z``, float64).

    Returns:
        ``[L]`` float64; NaN for an all-zero layer (or image, which makes the image mean NaN).
    """
    scope = _check_scope(scope)
    t = as_acts(acts)
    out = np.empty(t.shape[0])
    for layer in range(t.shape[0]):
        x = _token_matrices(t[layer], layer)
        if scope == "image":
            out[layer] = float(_entropy_rank(torch.linalg.svdvals(x)).mean())
        else:
            z = x.reshape(-1, x.shape[2])
            eig = torch.linalg.eigvalsh(z.T @ z).clamp_min(0.0)
            out[layer] = float(_entropy_rank(eig.sqrt()))
    return out


def participation_ratio(acts: Any, scope: str = "image") -> np.ndarray:
    """Participation ratio of a layer's token covariance (Gao et al. 2017; Recanatesi et al. 2019).

    With ``lambda_1..C`` the eigenvalues of the covariance of the tokens (centred over the tokens)::

        PR = (sum_i lambda_i)^2 / sum_i lambda_i^2

    It lies in ``[1, C]`` and does not depend on the covariance's normalisation (``1/n`` or ``1/(n-1)``).

    Args:
        acts: ``[L, B, C, H, W]`` float32 or float64 array or tensor.
        scope: ``"image"``: each image's ``N`` tokens centred on the image's mean token, PR averaged over
            images; ``"dataset"``: all ``B N`` tokens centred on the mean token of the layer.

    Returns:
        ``[L]`` float64; NaN where the tokens do not vary (zero covariance).
    """
    scope = _check_scope(scope)
    t = as_acts(acts)
    out = np.empty(t.shape[0])
    for layer in range(t.shape[0]):
        x = _token_matrices(t[layer], layer)
        if scope == "dataset":
            x = x.reshape(1, -1, x.shape[2])
        x = x - x.mean(dim=1, keepdim=True)
        # tr(S)^2 / tr(S^2) equals the eigenvalue form for symmetric S, without an eigendecomposition; S = X^T X
        # and the token Gram X X^T share their nonzero eigenvalues, so the smaller of the two serves.
        gram = x.transpose(1, 2) @ x if x.shape[2] <= x.shape[1] else x @ x.transpose(1, 2)
        trace = torch.diagonal(gram, dim1=1, dim2=2).sum(-1)
        frob2 = (gram * gram).sum(dim=(1, 2))
        out[layer] = float((trace * trace / frob2).mean())
    return out


def _threshold_rank(cumulative: torch.Tensor, energies: np.ndarray) -> np.ndarray:
    """Smallest 1-based ``k`` with ``cumulative[..., k-1] >= t`` for each ``t``, capped at the length.

    ``np.searchsorted(cum, t, side="left") + 1`` (the follow-up's rule) along the last axis.
    """
    cum = cumulative.numpy()
    m = cum.shape[-1]
    flat = cum.reshape(-1, m)
    ranks = np.stack([np.searchsorted(row, energies, side="left") + 1 for row in flat])
    return np.minimum(ranks, m).reshape(cum.shape[:-1] + (energies.size,)).astype(np.int64)


def svd_energy_rank(acts: Any, energies: Sequence[float] = ENERGY_LEVELS) -> np.ndarray:
    """Per-image SVD rank at each energy level (the follow-up's section "sample-wise SVD").

    For each image's raw ``[N, C]`` token matrix (not centred, not normalised) with singular values
    ``sigma_1 >= ... >= sigma_m``, ``m = min(N, C)``::

        cum(k) = sum_{j <= k} sigma_j^2 / sum_j sigma_j^2,    d(t) = min {k : cum(k) >= t}

    The SVD runs in the data's precision (the follow-up: float32), the cumulative shares in float64. An
    all-zero image has no energy to capture and gets ``d = 0``.

    Args:
        acts: ``[L, B, C, H, W]`` float32 or float64 array or tensor.
        energies: Energy levels ``t`` in ``(0, 1]``.

    Returns:
        ``[L, B, len(energies)]`` int64 ranks in ``[1, m]`` (0 for an all-zero image). The follow-up's table
        value is the 99th percentile over images of the last layer's ranks.
    """
    e = _check_energies(energies)
    t = as_acts(acts)
    out = []
    for layer in range(t.shape[0]):
        b, c = t.shape[1:3]
        x = _check_finite(t[layer], layer).reshape(b, c, -1).transpose(1, 2)
        energy = torch.linalg.svdvals(x).to(torch.float64) ** 2
        total = energy.sum(-1, keepdim=True)
        ranks = _threshold_rank(torch.cumsum(energy, -1) / total.clamp_min(torch.finfo(torch.float64).tiny), e)
        ranks[total.squeeze(-1).numpy() == 0] = 0
        out.append(ranks)
    return np.stack(out)


def _second_moment_basis(x: torch.Tensor, center: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending), eigenvectors and mean token of ``M = (1/T) sum_i X_i^T X_i``, float64.

    With ``center``, ``M - mu mu^T`` (the covariance, the follow-up's ``--center``) and the mean token ``mu``.
    """
    z = x.reshape(-1, x.shape[2])
    m = z.T @ z / z.shape[0]
    mu = z.mean(0)
    if center:
        m = m - torch.outer(mu, mu)
    eigvals, eigvecs = _eigh_descending(m)
    return eigvals, eigvecs, mu


def _eigh_descending(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and eigenvectors (columns, same order) of a symmetric matrix."""
    eigvals, eigvecs = torch.linalg.eigh(m)
    return eigvals.flip(0), eigvecs.flip(1)


def _shared_basis_ranks(x: torch.Tensor, v: torch.Tensor, energies: np.ndarray) -> np.ndarray:
    """Per-image ranks of ``[B, N, C]`` token matrices in the basis ``v`` (:func:`shared_basis_rank`)."""
    captured = torch.cumsum(((x @ v) ** 2).sum(1), -1)       # [B, C]: ||X_i V[:, :d]||^2 for d = 1..C
    total = (x ** 2).sum(dim=(1, 2)).unsqueeze(-1)             # ||X_i||_F^2
    ranks = _threshold_rank(captured / total.clamp_min(torch.finfo(torch.float64).tiny), energies)
    ranks[total.squeeze(-1).numpy() == 0] = 0
    return ranks


def pca_dimension(acts: Any, energies: Sequence[float] = ENERGY_LEVELS, center: bool = False) -> np.ndarray:
    """Dimensions of the dataset-level PCA spectrum (the follow-up's ``d_glob``).

    ``M = (1/T) sum_i X_i^T X_i`` over all ``T = B N`` tokens of the layer, **uncentred** by default (the
    follow-up's released results); ``eigh`` in float64, eigenvalues ``lambda_1 >= ... >= lambda_C``::

        d_glob(t) = min {d : sum_{j <= d} lambda_j / sum_j lambda_j >= t}

    Eigenvalues are already energies (mean squared projections); they are not squared again.

    Args:
        acts: ``[L, B, C, H, W]`` float32 or float64 array or tensor.
        energies: Energy levels ``t`` in ``(0, 1]``.
        center: Use ``M - mu mu^T`` (``mu`` the mean token), the follow-up's ``--center`` option.

    Returns:
        ``[L, len(energies)]`` int64 dimensions in ``[1, C]``.

    Raises:
        UserError: A layer is all zero (no spectrum to threshold).
    """
    e = _check_energies(energies)
    t = as_acts(acts)
    out = []
    for layer in range(t.shape[0]):
        lam, _, _ = _second_moment_basis(_token_matrices(t[layer], layer), center)
        total = lam.sum()
        if not total > 0:
            raise UserError(f"layer {layer} has no variance to decompose (all tokens zero or equal); "
                            "PCA dimensions are undefined for it")
        out.append(_threshold_rank(torch.cumsum(lam, 0) / total, e))
    return np.stack(out)


def shared_basis_rank(acts: Any, energies: Sequence[float] = ENERGY_LEVELS, center: bool = False) -> np.ndarray:
    """Per-image dimensions needed in the dataset's shared eigenbasis (the follow-up's tabulated PCA rank).

    With ``V`` the eigenvectors of :func:`pca_dimension`'s ``M`` in descending eigenvalue order (the global
    order, not the image's own)::

        E_i(d) = ||X_i V[:, :d]||_F^2 / ||X_i||_F^2,    d_i(t) = min {d : E_i(d) >= t}, or C if never reached

    With ``center``, tokens are centred on the dataset's mean token before projecting, as the follow-up's
    ``--center`` does. The gap between this and :func:`svd_energy_rank` (each image in its own optimal
    basis) is how the follow-up measures "subspace rotation" across images.

    Args:
        acts: ``[L, B, C, H, W]`` float32 or float64 array or tensor.
        energies: Energy levels ``t`` in ``(0, 1]``.
        center: See above.

    Returns:
        ``[L, B, len(energies)]`` int64 dimensions in ``[1, C]`` (0 for an all-zero image).
    """
    e = _check_energies(energies)
    t = as_acts(acts)
    out = []
    for layer in range(t.shape[0]):
        x = _token_matrices(t[layer], layer)
        _, v, mu = _second_moment_basis(x, center)
        if center:
            x = x - mu
        out.append(_shared_basis_ranks(x, v, e))
    return np.stack(out)
