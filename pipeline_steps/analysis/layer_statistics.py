"""Every per-layer statistic of one activations file in one long table (method.md sections 9.5-9.7).

:func:`layer_statistics` streams an activations NPZ chunk by chunk through the functions of
:mod:`~pipeline_steps.analysis.metrics`, :mod:`~pipeline_steps.analysis.rank`,
:mod:`~pipeline_steps.analysis.spectral`, :mod:`~pipeline_steps.analysis.massive` and
:mod:`~pipeline_steps.analysis.similarity`, in two passes over the file:

1. ranges (the entropy histogram's, and that of the tokens without massive activations), each image's median
   ``|A|``, the massive activations (the largest, their count, the tokens holding one) and the second moment
   ``sum X^T X`` of the dataset PCA;
2. everything else: the entropy and magnitude of every image (for the bootstrap intervals), the entropy with
   per-layer range and without massive-activation tokens, the channel spectrum, effective rank, participation
   ratio, per-image SVD ranks and shared-basis ranks, the SEP curve, and each image's token-mean vector for CKA
   against a reference file.

Memory beyond one chunk is a few numbers per image and layer (preallocated arrays of one row per image), a
``C x C`` matrix per layer and the token means ``[B, C]`` for CKA, which is computed from them without ``B x B``
Gram matrices (:class:`~pipeline_steps.analysis.similarity.CKAAccumulator`); it does not grow with the
activations (benchmarks/bench_statistics.py, BENCHMARKS.md). Each streamed value equals the one-shot function on
the whole tensor: exactly (entropy, ranks, massive activations) or to float64 rounding
(tests/test_layer_statistics.py).
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from pipeline_steps.analysis.activations import ActivationsFile
from pipeline_steps.errors import UserError

__all__ = ["LOW_FREQUENCY_CUTOFF", "PROFILE_SCALES", "STATISTICS_COLUMNS", "layer_statistics", "read_statistics_table",
           "statistics_settings", "statistics_summary"]

#: Columns of the statistics table, in order (docs/artifacts.md section 4b).
STATISTICS_COLUMNS = ("model", "run_id", "seed", "checkpoint", "epoch", "layer", "layer_name", "teacher_layer",
                      "metric", "level", "value", "ci_low", "ci_high", "n_images")

#: The profiles whose shape :func:`statistics_summary` reads, and the scale each is read on (as
#: :data:`~pipeline_steps.analysis.reductions.METRIC_SHAPE_SCALE`: bits as they are, positive quantities on log2).
PROFILE_SCALES = {"entropy": "linear", "entropy_per_layer_range": "linear", "entropy_without_massive": "linear",
                  "magnitude": "log2", "effective_rank": "log2", "participation_ratio": "log2"}

#: The cutoff of the low-frequency share (method.md section 9.3).
LOW_FREQUENCY_CUTOFF = 1 / 8

#: The params keys of ``analysis.statistics`` that :func:`layer_statistics` takes as they are.
_SETTINGS = ("bootstrap", "bootstrap_seed", "confidence", "massive_min_ratio", "massive_min_magnitude")


def statistics_settings(analysis: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`layer_statistics` from the validated ``analysis`` params section."""
    return {"bins": analysis["bins"], "range_policy": analysis["range_policy"],
            "chunk_images": analysis["chunk_images"], **{k: analysis["statistics"][k] for k in _SETTINGS}}


def _massive_mask(mag: np.ndarray, median: np.ndarray, min_ratio: float, min_magnitude: float) -> np.ndarray:
    """Massive values of ``[b, C, H, W]`` magnitudes (Sun et al., as :func:`massive_activations` reads them)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = mag / median.reshape(-1, 1, 1, 1)
    ratio[mag == 0] = 0.0
    return (mag > min_magnitude) & (ratio > min_ratio)


class _Layer:
    """Pass-1 facts of one layer: ranges, medians, second moment."""

    def __init__(self, n_images: int) -> None:
        self.lo = self.hi = None                   # all values
        self.kept_lo = self.kept_hi = None         # values of tokens without a massive activation
        self.medians = np.empty(n_images)          # each image's median |A|
        self.dropped = 0                           # tokens with a massive activation
        self.n_massive = 0                         # massive values
        self.top = (-1.0, np.nan, -1, -1)          # largest |A| (first position on ties), its ratio, channel, token
        self.moment: torch.Tensor | None = None    # sum over tokens of x x^T, float64 [C, C]
        self.tokens = 0


def _fold_min(old, new):
    return new if old is None else min(old, new)


def _fold_max(old, new):
    return new if old is None else max(old, new)


def _token_means_into(out: torch.Tensor, start: int, chunk: np.ndarray) -> torch.Tensor:
    """Write a ``[b, C, H, W]`` chunk's token means into rows ``start:start+b`` of float64 ``out`` ``[B, C]``, as
    :meth:`CKAAccumulator.update_a` computes them; returns the chunk as a float64 tensor."""
    x = torch.from_numpy(chunk).to(torch.float64)
    torch.mean(x, dim=(2, 3), out=out[start:start + len(chunk)])
    return x


@functools.lru_cache(maxsize=2)
def _cached_reference(path: str, stamp: tuple[int, int], chunk_images: int) -> tuple[ActivationsFile, tuple]:
    from pipeline_steps.analysis.similarity import prepare_features

    acts = ActivationsFile(path)
    layers = []
    for j in range(len(acts.layers)):
        b, c = acts.shape(j)[:2]
        means = torch.empty((b, c), dtype=torch.float64)
        for start, chunk in zip(range(0, b, chunk_images), acts.iter_chunks(j, chunk_images)):
            _token_means_into(means, start, chunk)
        if not bool(torch.isfinite(means).all()):
            raise UserError(f"the reference {path}: layer {j} holds NaN or inf; check the model and its inputs")
        layers.append(prepare_features(means))
    return acts, tuple(layers)


def _reference(path: str | Path, chunk_images: int) -> tuple[ActivationsFile, tuple]:
    """The reference file and, per layer, its token-mean features ``[B, C]`` float64 centred and prepared for
    :class:`CKAAccumulator` (as it would from the chunks). Cached by file and modification time: the evolution
    step compares every checkpoint of a run with the same reference (nothing here changes them)."""
    path = Path(path)
    stat = path.stat()
    return _cached_reference(str(path.resolve()), (stat.st_mtime_ns, stat.st_size), chunk_images)


def _image_medians(mag: np.ndarray) -> np.ndarray:
    """Each row's median of ``[b, M]`` float32 magnitudes, float64, equal to ``np.median`` of the float64 values
    (the mean of the two middle values of an even count); a sort is several times faster than its partition."""
    ordered = np.sort(mag, axis=1)
    k = ordered.shape[1] // 2
    if ordered.shape[1] % 2:
        return ordered[:, k].astype(np.float64)
    return (ordered[:, k - 1].astype(np.float64) + ordered[:, k]) / 2


def _ranks(cumulative: torch.Tensor, energies: np.ndarray) -> np.ndarray:
    """:func:`~pipeline_steps.analysis.rank._threshold_rank` without its loop over rows: on a non-decreasing row,
    ``searchsorted(row, t, side="left")`` is the number of entries below ``t``."""
    cum = cumulative.numpy()
    below = (cum[..., None, :] < energies[:, None]).sum(-1)
    return np.minimum(below + 1, cum.shape[-1]).astype(np.int64)


def _svd_ranks(chunk: np.ndarray, energies: np.ndarray) -> np.ndarray:
    """``svd_energy_rank(chunk[None], energies)[0]`` (the same float32 SVD) of a finite chunk."""
    b, c = chunk.shape[:2]
    energy = torch.linalg.svdvals(torch.from_numpy(chunk).reshape(b, c, -1).transpose(1, 2)).to(torch.float64) ** 2
    total = energy.sum(-1, keepdim=True)
    ranks = _ranks(torch.cumsum(energy, -1) / total.clamp_min(_TINY), energies)
    ranks[total.squeeze(-1).numpy() == 0] = 0
    return ranks


def _shared_ranks(x: torch.Tensor, basis: torch.Tensor, energies: np.ndarray) -> np.ndarray:
    """``rank._shared_basis_ranks`` of float64 ``[b, N, C]`` token matrices, with :func:`_ranks`."""
    captured = torch.cumsum(((x @ basis) ** 2).sum(1), -1)
    total = (x ** 2).sum(dim=(1, 2)).unsqueeze(-1)
    ranks = _ranks(captured / total.clamp_min(_TINY), energies)
    ranks[total.squeeze(-1).numpy() == 0] = 0
    return ranks


_TINY = torch.finfo(torch.float64).tiny


def _participation_ratio(x: torch.Tensor) -> float:
    """``participation_ratio(chunk[None])[0]`` from the chunk's float64 ``[b, N, C]`` token matrices (the same
    operations, without converting and checking the chunk again)."""
    x = x - x.mean(dim=1, keepdim=True)
    gram = x.transpose(1, 2) @ x if x.shape[2] <= x.shape[1] else x @ x.transpose(1, 2)
    trace = torch.diagonal(gram, dim1=1, dim2=2).sum(-1)
    frob2 = (gram * gram).sum(dim=(1, 2))
    return float((trace * trace / frob2).mean())


@functools.lru_cache(maxsize=1)
def _fix_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold at 1 MiB for this process (once); False where the C library is not glibc.

    glibc serves a request above its mmap threshold with its own mmap, returned to the system on free, and the
    rest from its heaps. The threshold is dynamic: each freed mmap'd block raises it to that block's size, so after
    the first chunk the chunk-sized numpy/torch temporaries (float64 copies, FFTs, masks) all come from the heap,
    and their freed space stays part of the process's resident set, fragmented, growing the peak RSS with the
    number of chunks. A fixed threshold (``mallopt(M_MMAP_THRESHOLD)``, which also stops the adjustment) keeps
    such temporaries in mmap'd blocks that leave with each chunk.
    """
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_mmap_threshold = -3                              # <malloc.h>
        return bool(libc.mallopt(m_mmap_threshold, 1 << 20))
    except (OSError, AttributeError):
        return False


def _bootstrap(per_image: np.ndarray, draws: int, seed: int, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap interval of the mean over images, per row of ``[R, B]``; the same draws for all rows."""
    rows, n = per_image.shape
    if draws == 0:
        return np.full(rows, np.nan), np.full(rows, np.nan)
    rng = np.random.default_rng(seed)
    means = np.empty((draws, rows))
    # Draws per block: the index array and the [R, draws, n] gather stay ~2 MB whatever the sample size.
    block = max(1, (1 << 18) // (n * rows))
    for start in range(0, draws, block):
        idx = rng.integers(0, n, size=(min(block, draws - start), n))
        means[start:start + idx.shape[0]] = per_image[:, idx].mean(axis=2).T
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha], axis=0)
    return low, high


def layer_statistics(
    npz_path: str | Path,
    *,
    reference: str | Path | None = None,
    bins: int = 100,
    range_policy: str = "global",
    chunk_images: int = 64,
    bootstrap: int = 1000,
    bootstrap_seed: int = 0,
    confidence: float = 0.95,
    massive_min_ratio: float = 1000.0,
    massive_min_magnitude: float = 100.0,
    model_label: str = "teacher",
    run_id: str | None = None,
    seed: int | None = None,
    checkpoint: str = "final",
    epoch: int | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """The statistics table of one activations file (method.md section 9.5).

    Args:
        npz_path: Written by the extract step.
        reference: Another activations file on the same images (the teacher's), for CKA rows; None for none.
            With fewer than 4 images (the unbiased estimator's minimum) the CKA values are NaN.
        bins: Entropy histogram bins.
        range_policy: The entropy range, ``"global"`` or ``"per_layer"`` (``entropy_per_layer_range`` is always
            per layer).
        chunk_images: Images read at once.
        bootstrap: Bootstrap resamples for the entropy and magnitude intervals (0: no interval).
        bootstrap_seed: Seed of the resampling.
        confidence: Coverage of the intervals.
        massive_min_ratio: Sun et al.'s ratio to the image's median ``|A|``.
        massive_min_magnitude: Sun et al.'s absolute threshold on ``|A|``.
        model_label: Value of the ``model`` column.
        run_id: Value of the ``run_id`` column (default ``model_label``).
        seed: Value of the ``seed`` column.
        checkpoint: Value of the ``checkpoint`` column.
        epoch: Value of the ``epoch`` column.
        progress: Show a progress bar over layers.

    Returns:
        A DataFrame with :data:`STATISTICS_COLUMNS`.

    Raises:
        UserError: Bad settings, activations with NaN or inf, or a reference on other images.
    """
    from pipeline_steps.analysis.metrics import RANGE_POLICIES, MetricAccumulator, channel_entropy
    from pipeline_steps.analysis.rank import (ENERGY_LEVELS, _eigh_descending, _entropy_rank, _threshold_rank)
    from pipeline_steps.analysis.similarity import CKAAccumulator
    from pipeline_steps.analysis.spectral import SEP_MODES, SEP_RATIOS, _bandwidth, _sep_sums, low_frequency_share, \
        spectral_slope

    _fix_mmap_threshold()
    if range_policy not in RANGE_POLICIES:
        raise UserError(f"unknown range policy {range_policy!r}; use one of {', '.join(RANGE_POLICIES)}")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, (int, np.integer)) or bootstrap < 0:
        raise UserError(f"bootstrap must be a non-negative integer, got {bootstrap!r}")
    if not 0 < confidence < 1:
        raise UserError(f"confidence must lie in (0, 1), got {confidence!r}; e.g. 0.95")
    acts = ActivationsFile(npz_path)
    meta = acts.meta
    n_layers = len(acts.layers)
    ref = None
    if reference is not None:
        ref, ref_layers = _reference(reference, chunk_images)
        if list(ref.meta.get("image_ids", [])) != list(meta.get("image_ids", [])):
            raise UserError(f"the reference {reference} holds other images than {npz_path} (their image_ids "
                            "differ); extract both with the same sample manifest")
    energies = np.asarray(ENERGY_LEVELS)
    ratios = np.asarray(SEP_RATIOS)

    # Pass 1: ranges, medians, second moments.
    layers = [_Layer(acts.shape(i)[0]) for i in range(n_layers)]
    for i in tqdm(range(n_layers), desc="statistics pass 1", disable=not progress, leave=False):
        s = layers[i]
        for start, chunk in zip(itertools.count(0, chunk_images), acts.iter_chunks(i, chunk_images)):
            if not np.all(np.isfinite(chunk)):
                raise UserError(f"{npz_path}: layer {i} holds NaN or inf; check the model and its inputs")
            b, c = chunk.shape[:2]
            tokens_per_image = chunk.shape[2] * chunk.shape[3]
            mag = np.abs(chunk)  # float32 |A| is exact; medians and ratios in float64 as massive_activations
            median = _image_medians(mag.reshape(b, -1))
            s.medians[start:start + b] = median
            s.lo, s.hi = _fold_min(s.lo, chunk.min()), _fold_max(s.hi, chunk.max())
            # Massive activations: the largest |A| (first position on ties), its ratio, and the massive tokens.
            massive = _massive_mask(mag, median, massive_min_ratio, massive_min_magnitude)
            s.n_massive += int(massive.sum())
            flat = int(np.argmax(mag))
            if float(mag.reshape(-1)[flat]) > s.top[0]:
                top_abs = float(mag.reshape(-1)[flat])
                j, rest = divmod(flat, c * tokens_per_image)
                channel, token = divmod(rest, tokens_per_image)
                ratio = top_abs / median[j] if median[j] > 0 else (np.inf if top_abs > 0 else 0.0)
                s.top = (top_abs, ratio, channel, token)
            kept = ~massive.any(axis=1)  # [b, H, W]
            n_kept = int(kept.sum())
            s.dropped += kept.size - n_kept
            if n_kept:
                tokens = chunk.transpose(0, 2, 3, 1)[kept]
                s.kept_lo, s.kept_hi = _fold_min(s.kept_lo, tokens.min()), _fold_max(s.kept_hi, tokens.max())
            z = torch.from_numpy(chunk).to(torch.float64).flatten(2).transpose(1, 2).reshape(-1, c)
            moment = z.T @ z
            s.moment = moment if s.moment is None else s.moment + moment
            s.tokens += z.shape[0]

    global_range = (min(s.lo for s in layers), max(s.hi for s in layers))
    kept_ranges = [(s.kept_lo, s.kept_hi) for s in layers]
    if range_policy == "global" and any(r[0] is not None for r in kept_ranges):
        kept_global = (min(r[0] for r in kept_ranges if r[0] is not None),
                       max(r[1] for r in kept_ranges if r[1] is not None))
        kept_ranges = [kept_global if r[0] is not None else r for r in kept_ranges]
    ranges = [global_range if range_policy == "global" else (s.lo, s.hi) for s in layers]
    metrics = MetricAccumulator(n_layers, bins=bins, ranges=ranges, per_image=True)
    cka = CKAAccumulator(len(ref.layers), n_layers) if ref is not None else None

    # Pass 2: per image, per token and per layer sums.
    rows: list[dict[str, Any]] = []
    for i in tqdm(range(n_layers), desc="statistics pass 2", disable=not progress, leave=False):
        s = layers[i]
        lam, basis = _eigh_descending(s.moment / s.tokens)
        total = float(lam.sum())
        pca = (_threshold_rank(torch.cumsum(lam, 0) / total, energies) if total > 0
               else np.full(energies.size, np.nan))
        sums = {"effective_rank": 0.0, "participation_ratio": 0.0, "per_layer": 0.0, "kept": 0.0}
        kept_tokens = 0
        n_images = len(s.medians)
        ranks = np.empty((n_images, 2, energies.size), dtype=np.int64)   # per image: SVD, shared-basis ranks
        if cka is not None:
            means = torch.empty((n_images, acts.shape(i)[1]), dtype=torch.float64)
        sep = {mode: np.zeros(0) for mode in SEP_MODES}
        sep_tokens = 0
        image = 0
        for chunk in acts.iter_chunks(i, chunk_images):
            b, c = chunk.shape[:2]
            tokens_per_image = chunk.shape[2] * chunk.shape[3]
            metrics.update(i, chunk)
            batch = chunk[None]
            if cka is not None:
                x4 = _token_means_into(means, image, chunk)
            else:
                x4 = torch.from_numpy(chunk).to(torch.float64)
            x = x4.flatten(2).transpose(1, 2)                                  # [b, N, C] token matrices
            sums["effective_rank"] += float(_entropy_rank(torch.linalg.svdvals(x)).mean()) * b
            sums["participation_ratio"] += _participation_ratio(x) * b
            sums["per_layer"] += float(channel_entropy(batch, bins, value_range=(s.lo, s.hi))[0]) * b * tokens_per_image
            ranks[image:image + b, 0] = _svd_ranks(chunk, energies)
            ranks[image:image + b, 1] = _shared_ranks(x, basis, energies)
            for mode, (curve_sum, nonzero) in _sep_sums(x4, SEP_MODES).items():
                sep[mode] = curve_sum if sep[mode].size == 0 else sep[mode] + curve_sum
            sep_tokens += nonzero
            # The kept tokens as one image's [C, K] token-major rows (contiguous: binned faster, the same counts).
            if s.dropped:
                median = s.medians[image:image + b]
                kept = ~_massive_mask(np.abs(chunk), median, massive_min_ratio, massive_min_magnitude).any(axis=1)
                tokens = np.ascontiguousarray(chunk.transpose(1, 0, 2, 3)[:, kept])      # [C, K]
            else:
                tokens = np.ascontiguousarray(chunk.transpose(1, 0, 2, 3)).reshape(c, -1)  # every token, same order
            if tokens.shape[1]:
                entropy = channel_entropy(tokens[None, None, :, :, None], bins, value_range=kept_ranges[i])
                sums["kept"] += float(entropy[0]) * tokens.shape[1]
                kept_tokens += tokens.shape[1]
            image += b

        if cka is not None:
            cka.update_means("b", i, means)
        layer_rows = [("effective_rank", np.nan, sums["effective_rank"] / n_images),
                      ("participation_ratio", np.nan, sums["participation_ratio"] / n_images),
                      ("entropy_per_layer_range", np.nan, sums["per_layer"] / (n_images * tokens_per_image)),
                      ("entropy_without_massive", np.nan, sums["kept"] / kept_tokens if kept_tokens else np.nan),
                      ("massive_token_share", np.nan, s.dropped / s.tokens)]
        (svd_p99, shared_p99), svd_mean = np.percentile(ranks, 99, axis=0), ranks[:, 0].mean(axis=0)
        for k, level in enumerate(energies):
            layer_rows += [("svd_rank_p99", level, float(svd_p99[k])), ("svd_rank_mean", level, float(svd_mean[k])),
                           ("pca_dimension", level, float(pca[k])),
                           ("shared_basis_rank_p99", level, float(shared_p99[k]))]
        for mode, metric in zip(SEP_MODES, ("sep_bandwidth", "sep_bandwidth_folded")):
            curve = sep[mode][None] / sep_tokens if sep_tokens else np.full((1, 1), np.nan)
            bandwidth = _bandwidth(curve, ratios)[0] if sep_tokens else np.full(ratios.size, np.nan)
            layer_rows += [(metric, r, float(v)) for r, v in zip(ratios, bandwidth)]
        top_abs, top_ratio, top_channel, top_token = s.top
        layer_rows += [("massive_max_abs", np.nan, top_abs), ("massive_max_ratio", np.nan, float(top_ratio)),
                       ("massive_count", np.nan, float(s.n_massive)),
                       ("massive_top_channel", np.nan, float(top_channel)),
                       ("massive_top_token", np.nan, float(top_token))]
        rows += [{"layer": i, "metric": m, "level": lv, "value": v} for m, lv, v in layer_rows]

    result = metrics.result()
    spectrum = result["spectrum"]
    for i in range(n_layers):
        rows.append({"layer": i, "metric": "low_frequency_share", "level": LOW_FREQUENCY_CUTOFF,
                     "value": float(low_frequency_share(spectrum[i][None], LOW_FREQUENCY_CUTOFF)[0])})
        rows.append({"layer": i, "metric": "spectral_slope", "level": np.nan,
                     "value": float(spectral_slope(spectrum[i][None])[0])})
    # One bootstrap for both profiles: the same draws for every row, as two calls with the same seed would make.
    low, high = _bootstrap(np.concatenate([result["image_entropy"], result["image_magnitude"]]), bootstrap,
                           bootstrap_seed, confidence)
    for m, metric in enumerate(("entropy", "magnitude")):
        rows += [{"layer": i, "metric": metric, "level": np.nan, "value": float(result[metric][i]),
                  "ci_low": float(low[m * n_layers + i]), "ci_high": float(high[m * n_layers + i])}
                 for i in range(n_layers)]
    if cka is not None:
        for j, prepared in enumerate(ref_layers):
            cka.set_prepared("a", j, prepared)
        # The unbiased estimator needs 4 images; a smaller sample still gets every other statistic.
        matrix = cka.result() if result["n_images"] >= 4 else np.full((len(ref.layers), n_layers), np.nan)
        teacher_layers = [k + 1 for k in ref.meta["layer_indices"]]
        rows += [{"layer": i, "metric": "cka", "level": np.nan, "value": float(matrix[j, i]),
                  "teacher_layer": teacher_layers[j]} for j in range(len(teacher_layers)) for i in range(n_layers)]

    return _table(rows, meta, {"model": model_label, "run_id": run_id if run_id is not None else model_label,
                               "seed": seed, "checkpoint": checkpoint, "epoch": epoch},
                  int(result["n_images"]))


def _table(rows: list[dict[str, Any]], meta: Mapping[str, Any], labels: Mapping[str, Any],
           n_images: int) -> pd.DataFrame:
    """The statistics table of ``rows`` (``layer`` the position in the file; ``level``, ``ci_low``, ``ci_high``,
    ``teacher_layer`` NaN where absent), columns built once as arrays (the per-checkpoint table is assembled for
    every checkpoint of every run: pandas' row-wise construction and per-column casts cost as much as a statistic).
    """
    n = len(rows)

    def column(key: str) -> np.ndarray:
        return np.fromiter((r.get(key, np.nan) for r in rows), dtype=np.float64, count=n)

    positions = np.fromiter((r["layer"] for r in rows), dtype=np.int64, count=n)
    metric = np.array([r["metric"] for r in rows], dtype=object)
    level, teacher = column("level"), column("teacher_layer")
    layer = np.asarray(meta["layer_indices"], dtype=np.int64)[positions] + 1
    # Layer-major order, the profile metrics first (the table reads like the reductions table): a stable sort by
    # metric (first-seen order, entropy and magnitude first), teacher layer, layer and level, NaN first.
    rank = {m: k for k, m in enumerate(dict.fromkeys(["entropy", "magnitude", *metric]))}
    order = np.lexsort((np.where(np.isnan(level), -np.inf, level), layer,
                        np.where(np.isnan(teacher), -np.inf, teacher),
                        np.fromiter((rank[m] for m in metric), dtype=np.int64, count=n)))
    columns = {"model": labels["model"], "run_id": labels["run_id"],
               "seed": pd.array([labels["seed"]] * n, dtype="Int64"), "checkpoint": labels["checkpoint"],
               "epoch": pd.array([labels["epoch"]] * n, dtype="Int64"), "layer": layer[order],
               "layer_name": np.asarray(meta["layer_names"], dtype=object)[positions[order]],
               "teacher_layer": pd.array(teacher[order], dtype="Int64"), "metric": metric[order],
               "level": level[order], "value": column("value")[order], "ci_low": column("ci_low")[order],
               "ci_high": column("ci_high")[order], "n_images": np.full(n, n_images, dtype=np.int64)}
    return pd.DataFrame(columns, columns=list(STATISTICS_COLUMNS))


def statistics_summary(table: pd.DataFrame, shape_tolerance: float) -> pd.DataFrame:
    """The shape reading (:func:`~pipeline_steps.analysis.shapes.profile_summary`) of every profile in
    :data:`PROFILE_SCALES`, per model, run and checkpoint of a statistics table.

    A profile with an undefined layer (``entropy_without_massive`` where a layer keeps no token) is left out.

    Returns:
        One row per (model, run_id, seed, checkpoint, epoch, metric): those keys and ``profile_summary``'s columns.
    """
    from pipeline_steps.analysis.shapes import profile_summary

    keys = ["model", "run_id", "seed", "checkpoint", "epoch"]
    rows = []
    profiles = table[table["metric"].isin(list(PROFILE_SCALES))]
    for key, group in profiles.groupby(keys, sort=False, dropna=False):
        for metric, scale in PROFILE_SCALES.items():
            values = group[group["metric"] == metric].sort_values("layer")["value"].to_numpy()
            if values.size and np.all(np.isfinite(values)) and (scale == "linear" or np.all(values > 0)):
                rows.append({**dict(zip(keys, key)), "metric": metric,
                             **profile_summary(values, tol=shape_tolerance, scale=scale)})
    return pd.DataFrame(rows).astype({"seed": "Int64", "epoch": "Int64"})


#: Columns :func:`read_statistics_table` checks, and the kind of value each must hold.
_CHECKED_COLUMNS = {"model": "str", "run_id": "str", "checkpoint": "str", "layer": "int", "metric": "str",
                    "value": "float"}


def read_statistics_table(path: str | Path, what: str, fix: str) -> pd.DataFrame:
    """Read a statistics table, checked, so that a foreign or damaged file stops with one line.

    Args:
        path: The Parquet file.
        what: What the file is, for messages ("teacher statistics").
        fix: How to make a good one, for messages ("re-run the statistics step").

    Raises:
        UserError: The file is missing, not Parquet, empty, lacks a column of :data:`STATISTICS_COLUMNS`, or a
            checked column holds the wrong type of value or a null.
    """
    from pipeline_steps.artifacts import read_parquet

    path = Path(path)
    table = read_parquet(path, what, fix)
    missing = [c for c in STATISTICS_COLUMNS if c not in table.columns]
    if missing:
        raise UserError(f"{what} {path} lacks column(s) {', '.join(missing)} (not a statistics table of this "
                        f"pipeline); {fix}")
    if len(table) == 0:
        raise UserError(f"{what} {path} has no rows; {fix}")
    for column, kind in _CHECKED_COLUMNS.items():
        col = table[column]
        ok = {"int": pd.api.types.is_integer_dtype, "float": pd.api.types.is_float_dtype,
              "str": lambda c: pd.api.types.infer_dtype(c, skipna=False) == "string"}[kind](col)
        if not ok or (kind != "float" and col.isna().any()):
            raise UserError(f"{what} {path}: column '{column}' holds {col.dtype} values or nulls, expected {kind}; "
                            f"{fix}")
    return table
