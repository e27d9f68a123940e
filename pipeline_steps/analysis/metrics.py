"""Layer-wise activation metrics: channel spectrum, Shannon entropy and magnitude (method.md sections 2-4).

Activations are laid out ``[L, B, C, H, W]`` (layers, images, channels, token grid), as numpy arrays or
torch tensors, float32 or float64. Every metric reduces over images and tokens and returns one value (or
one spectrum) per layer:

* :func:`channel_spectrum` -- paper Eq. 1-2: mean magnitude of the FFT along the channel axis, ``[L, C]``.
* :func:`channel_entropy` -- paper Eq. 3-5: mean Shannon entropy (bits) of each token's channel vector,
  histogrammed into equal-width bins over a global, per-layer or fixed range, ``[L]``.
* :func:`activation_magnitude` -- paper Eq. 6: mean absolute activation, ``[L]``.
* :func:`profile_summary` -- where a per-layer profile bottoms out, how much it compresses / expands, and its
  shape class (:func:`profile_shape`: flat, increasing, decreasing, U, inverted U, other) up to a tolerance.

For many images, :class:`RangeAccumulator` (pass 1: min / max) and :class:`MetricAccumulator` (pass 2:
everything else) reduce chunk by chunk with memory independent of the number of images. The one-shot
functions are thin wrappers over the same per-chunk internals, so both routes give the same numbers.

Entropy is bit-exact against a per-vector ``np.histogram`` loop (see ``tests/metrics_oracle.py``): each value
gets the bin numpy would give it. The bulk of the values is binned with one fused multiply-add and a
truncation; the few values whose estimate lies within a proven error bound of a bin edge are re-binned
with numpy's own algorithm (float estimate, clamp, one-bin correction against the edges).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import numpy as np
import torch

from pipeline_steps.analysis._inputs import as_acts, as_chunk, check_layer
from pipeline_steps.errors import UserError

__all__ = ["RANGE_POLICIES", "activation_magnitude", "channel_entropy", "channel_spectrum", "MetricAccumulator",
           "RangeAccumulator"]

RANGE_POLICIES = ("global", "per_layer")


# Elements per sub-chunk: temporaries (bin indices, FFT output) stay a few MB whatever the chunk size.
# 2^18 - 2^20 all ran equally fast on the 2-core development machine; smaller pieces pay Python overhead.
_CHUNK_ELEMS = 1 << 19


# A value whose fast bin estimate is within this many bins of an edge is re-binned with numpy's exact
# algorithm; beyond it the error bound is too loose to be useful and every value takes the exact path.
_MAX_DELTA = 0.25


def _np_dtype(t: torch.Tensor) -> np.dtype:
    return np.dtype(np.float32) if t.dtype == torch.float32 else np.dtype(np.float64)


def _minmax(t: torch.Tensor) -> tuple[np.floating, np.floating]:
    """(min, max) of a tensor as numpy scalars of its dtype; rejects NaN and inf."""
    lo, hi = torch.aminmax(t)
    dtype = _np_dtype(t)
    lo, hi = dtype.type(lo.item()), dtype.type(hi.item())  # exact: the item is the same float widened
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise UserError("activations contain NaN or inf; check the model and its inputs "
                        "(entropy ranges need finite values)")
    return lo, hi


def _out_of_range(t: torch.Tensor, spec: _BinSpec) -> bool:
    """Whether any value of ``t`` falls outside the histogram range (and must be dropped, as numpy does)."""
    lo, hi = _minmax(t)
    return bool(lo < spec.first or hi > spec.last)


def _check_bins(bins: int) -> int:
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise UserError(f"bins must be a positive integer, got {bins!r}")
    return int(bins)


@dataclasses.dataclass(frozen=True)
class _BinSpec:
    """Everything needed to bin values exactly like ``np.histogram(v, bins, range=(lo, hi))``."""

    bins: int
    first: np.floating      # first / last edge after numpy's expansion of an empty range; data dtype
    last: np.floating
    denom: np.floating      # last - first in the data dtype: numpy's norm_denom
    edges: np.ndarray       # numpy's bin edges, data dtype
    scale: float            # fast estimate: w = offset + scale * x = bin position + delta
    offset: float
    delta: float | None     # proven bound on |fast estimate - exact bin position|; None: exact path only


@functools.lru_cache(maxsize=256)
def _bin_spec(lo: float, hi: float, bins: int, dtype_str: str) -> _BinSpec:
    """Bin spec for the range ``(lo, hi)`` cast to ``dtype`` (cached: one per layer and dtype)."""
    dtype = np.dtype(dtype_str)
    lo_d, hi_d = dtype.type(lo), dtype.type(hi)
    if not (np.isfinite(lo_d) and np.isfinite(hi_d)):
        raise UserError(f"entropy value range ({lo}, {hi}) is not finite in {dtype}; pass finite bounds")
    if lo_d > hi_d:
        raise UserError(f"entropy value range ({lo}, {hi}) has lo > hi; swap the bounds")
    try:
        edges = np.histogram_bin_edges(np.empty(0, dtype), bins, range=(lo_d, hi_d))
    except ValueError as exc:  # numpy refuses ranges too narrow for `bins` distinct edges at this magnitude
        raise UserError(f"entropy value range ({lo}, {hi}) cannot hold {bins} bins in {dtype} ({exc}); "
                        "use fewer bins, a wider range or float64 data") from None
    # The same expansion numpy applies to an empty range (min == max); NEP 50 keeps the data dtype.
    first, last = (lo_d - 0.5, hi_d + 0.5) if lo_d == hi_d else (lo_d, hi_d)
    assert edges.dtype == dtype and edges[0] == first and edges[-1] == last

    # Error bound of the fast estimate w = offset + scale * x against g(x) = (x - first) * bins / width, the
    # exact position in bin units. Rounding of scale, offset, the product and the sum each contribute at most
    # one unit roundoff u of |scale * x| <= bins * M / width or of |w| <= bins + 1; numpy's own estimate
    # errs by a few u * bins. 16 u covers all of them with a wide margin. The edges themselves are rounded
    # too: edge_err is how far each actual edge lies from its ideal position, measured exactly in float64.
    u = float(np.finfo(dtype).eps) / 2
    f_first, f_last = float(first), float(last)
    width = f_last - f_first
    big = max(abs(f_first), abs(f_last))
    est_err = 16.0 * u * (bins * big / width + bins + 2)
    pos = (edges.astype(np.float64) - f_first) * (bins / width)
    edge_err = float(np.max(np.abs(pos - np.arange(bins + 1))))
    delta = est_err + edge_err
    scale = bins / width
    return _BinSpec(bins=bins, first=first, last=last, denom=np.subtract(last, first), edges=edges,
                    scale=scale, offset=-f_first * scale + delta,
                    delta=delta if delta < _MAX_DELTA else None)


def _spec_for(value_range: tuple, bins: int, dtype: np.dtype) -> _BinSpec:
    lo, hi = value_range
    # Cast to the data dtype first so the cache key is the exact value numpy will see.
    return _bin_spec(float(dtype.type(float(lo))), float(dtype.type(float(hi))), bins, dtype.str)


def _exact_bins(values: np.ndarray, spec: _BinSpec) -> np.ndarray:
    """Bin index of each value by numpy's own uniform-bin algorithm; ``spec.bins`` for dropped values.

    This is the body of ``np.histogram``'s fast path (numpy 1.x and 2.x), applied elementwise.
    """
    out = np.full(values.shape, spec.bins, dtype=np.intp)
    keep = (values >= spec.first) & (values <= spec.last)
    v = values[keep]
    f = (np.subtract(v, spec.first) / spec.denom) * spec.bins
    idx = f.astype(np.intp)
    idx[idx == spec.bins] -= 1
    idx[v < spec.edges[idx]] -= 1
    idx[(v >= spec.edges[idx + 1]) & (idx != spec.bins - 1)] += 1
    out[keep] = idx
    return out


class _Workspace:
    """Scratch buffers reused across sub-chunks.

    Multi-MB temporaries come from mmap in glibc's malloc, so a fresh one per sub-chunk page-faults its
    way in. (Reusing them and fixing candidates once per chunk took the CaiT-S24 entropy 0.24 -> 0.16 s.)
    """

    def __init__(self) -> None:
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        n = math.prod(shape)
        buf = self._bufs.get(name)
        if buf is None or buf.dtype != dtype or buf.numel() < n:
            buf = self._bufs[name] = torch.empty(n, dtype=dtype)
        return buf[:n].view(shape)


def _bin_into(x: torch.Tensor, spec: _BinSpec, out_of_range: bool, counts: torch.Tensor,
              ws: _Workspace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Add the fast bin of every value of ``x`` ``[b, C, N]`` to the per-vector ``counts`` ``[b, N, bins + 1]``.

    Column ``bins`` collects values outside the range (and, until :func:`_finish_counts` moves it, the max
    value, whose estimate is ``bins``).

    Returns:
        The values whose fast bin may differ from numpy's: flat positions in ``x``, values, fast bins.
    """
    b, c, n = x.shape
    ones = torch.ones((), dtype=counts.dtype).expand(b, n, c)
    if spec.delta is None:
        idx = torch.from_numpy(_exact_bins(x.reshape(-1).numpy(), spec)).view(b, c, n)
        counts.scatter_add_(2, idx.transpose(1, 2), ones)
        return np.empty(0, dtype=np.intp), np.empty(0, dtype=_np_dtype(x)), np.empty(0, dtype=np.int64)
    w = ws.get("w", (b, c, n), x.dtype)
    torch.add(torch.tensor(spec.offset, dtype=x.dtype), x, alpha=spec.scale, out=w)
    # Token-major indices: each vector's C values then scatter into its own contiguous row of counts,
    # ~25% faster than scattering along the strided channel axis (the transpose rides on the int cast).
    idx = ws.get("idx", (b, n, c), torch.int64)
    idx.copy_(w.transpose(1, 2))  # trunc == floor: in-range values have w > 0
    if out_of_range:
        idx.masked_fill_(((x < float(spec.first)) | (x > float(spec.last))).transpose(1, 2), spec.bins)
    counts.scatter_add_(2, idx, ones)
    # Candidates: w within 2 delta above an integer, i.e. the exact position within delta of an edge (the
    # max value included). Everything else provably lands in bin trunc(w), the bin numpy picks.
    w.frac_()
    near = ws.get("near", (b, c, n), torch.bool).numpy()
    np.less(w.numpy(), 2.0 * spec.delta, out=near)  # numpy: ~5x faster than torch's bool-output compare
    pos = np.flatnonzero(near)
    image, channel, token = np.unravel_index(pos, (b, c, n))
    return pos, x.numpy().reshape(-1)[pos], idx.numpy()[image, token, channel]


def _finish_counts(counts: torch.Tensor, spec: _BinSpec, out_of_range: bool, channels: int, pos: np.ndarray,
                   values: np.ndarray, fast: np.ndarray, ws: _Workspace, per_image: bool = False) -> np.ndarray:
    """Move the candidates to numpy's bins, then count the counts.

    Entropy needs only ``G[n]``, the number of (vector, bin) pairs holding exactly ``n`` values: the sum
    over vectors of E is ``sum_n G[n] T[n]``. Integer accumulation makes chunked and one-shot results
    identical.

    Args:
        counts: ``[b, N, bins + 1]`` per-vector bin counts from :func:`_bin_into` (modified in place).
        spec: The bin spec they were counted with.
        out_of_range: Whether some values fell outside the range (into the last column).
        channels: C.
        pos: Candidates' flat positions in ``[b, C, N]``.
        values: Their values.
        fast: Their fast bins, as counted.
        ws: Scratch buffers.
        per_image: Count each image's vectors apart.

    Returns:
        ``G`` as int64 ``[C + 1]`` (``[b, C + 1]`` per image, whose sum over images is exactly the ``G`` of the
        whole chunk); ``G[..., 0]`` is 0 (empty bins carry no entropy).
    """
    b, n, _ = counts.shape
    if pos.size:
        exact = _exact_bins(values, spec)
        moved = exact != fast
        if moved.any():
            image, _, token = np.unravel_index(pos[moved], (b, channels, n))
            view = counts.numpy()
            np.subtract.at(view, (image, token, fast[moved]), 1)
            np.add.at(view, (image, token, exact[moved]), 1)
    if per_image:
        return _per_image_counts(counts, spec, out_of_range, channels)
    g = _bincount_interleaved(counts, channels + 1, ws)
    if out_of_range:  # remove the column of dropped values
        g -= torch.bincount(counts[:, :, spec.bins].reshape(-1), minlength=channels + 1).numpy()
    g[0] = 0
    return g


def _per_image_counts(counts: torch.Tensor, spec: _BinSpec, out_of_range: bool, channels: int) -> np.ndarray:
    """:func:`_finish_counts`' ``G`` for each image: one bincount over keys offset by ``image * (C + 1)``."""
    b = counts.shape[0]
    size = channels + 1
    offset = (torch.arange(b, dtype=torch.int64) * size).view(b, 1, 1)
    g = torch.bincount((counts.to(torch.int64) + offset).view(-1), minlength=b * size).view(b, size).numpy()
    if out_of_range:
        dropped = counts[:, :, spec.bins].to(torch.int64) + offset.view(b, 1)
        g = g - torch.bincount(dropped.view(-1), minlength=b * size).view(b, size).numpy()
    g[:, 0] = 0
    return g


_LANES = 4


def _counts_dtype(channels: int) -> torch.dtype:
    """int16 holds any count and the interleaved keys of :func:`_bincount_interleaved` up to C = 8191."""
    return torch.int16 if _LANES * (channels + 1) <= torch.iinfo(torch.int16).max else torch.int32


def _bincount_interleaved(counts: torch.Tensor, size: int, ws: _Workspace) -> np.ndarray:
    """``np.bincount(counts.ravel(), minlength=size)`` for ``[..., K]`` counts, 2-3x faster.

    Most per-vector bin counts are 0, and incrementing one counter over and over serialises on the
    store-to-load dependency. Neighbouring bins go to ``_LANES`` separate sub-histograms instead.
    """
    lanes = (torch.arange(counts.shape[-1], dtype=counts.dtype) % _LANES) * size
    keys = torch.add(counts, lanes, out=ws.get("keys", tuple(counts.shape), counts.dtype))
    return torch.bincount(keys.view(-1), minlength=_LANES * size).view(_LANES, size).sum(0).numpy()


@functools.lru_cache(maxsize=64)
def _entropy_table(c: int) -> np.ndarray:
    """T[n] = -(n/C) log2(n/C) for n = 0..C (T[0] = 0), computed as the reference loop does."""
    p = np.arange(1, c + 1) / c
    table = np.zeros(c + 1)
    table[1:] = -(p * np.log2(p))
    table.flags.writeable = False
    return table


def _entropy_from_counts(g: np.ndarray, c: int, n_vectors: int) -> float:
    return float(g @ _entropy_table(c)) / n_vectors


def _spectrum_sums(x: torch.Tensor, ws: _Workspace) -> np.ndarray:
    """Sum over images and tokens of ``|rfft(x)|`` along C, float64 ``[C // 2 + 1]``; ``x`` is ``[b, C, N]``."""
    b, c, n = x.shape
    cplx = torch.complex64 if x.dtype == torch.float32 else torch.complex128
    f = ws.get("fft", (b, c // 2 + 1, n), cplx)
    torch.fft.rfft(x, dim=1, out=f)
    mag = ws.get("mag", (b, c // 2 + 1, n), x.dtype)
    # hypot: as accurate as abs() on complex input, ~2x faster, and no overflow of the squares.
    torch.hypot(f.real, f.imag, out=mag)
    return mag.sum(dim=(0, 2), dtype=torch.float64).numpy()


def _spectrum_from_sums(half: np.ndarray, c: int, n_vectors: int) -> np.ndarray:
    """All C bins: for real input |F[k]| = |F[C - k]|, so bins past C/2 mirror the half spectrum."""
    k = np.arange(c)
    return half[np.minimum(k, c - k)] / (c * n_vectors)


def _abs_sum(x: torch.Tensor, ws: _Workspace) -> float:
    return float(torch.abs(x, out=ws.get("abs", tuple(x.shape), x.dtype)).sum(dtype=torch.float64))


@dataclasses.dataclass
class _ChunkSums:
    count_hist: np.ndarray | None = None  # G, int64 [C + 1] ([b, C + 1] per image)
    spectrum: np.ndarray | None = None    # sum of |rfft|, float64 [C // 2 + 1]
    abs_sum: float = 0.0


def _reduce_chunk(t: torch.Tensor, ws: _Workspace, *, spec: _BinSpec | None = None, out_of_range: bool = False,
                  spectrum: bool = False, magnitude: bool = False, per_image: bool = False) -> _ChunkSums:
    """Sums of the requested metrics over a ``[b, C, H, W]`` chunk of one layer.

    The single implementation behind the one-shot functions and :class:`MetricAccumulator`. Works through
    the chunk in pieces of ~``_CHUNK_ELEMS`` elements, each read once for all metrics while in cache.
    """
    b, c = t.shape[:2]
    x_all = t.reshape(b, c, -1)
    n = x_all.shape[2]
    step = max(1, _CHUNK_ELEMS // (c * n))
    out = _ChunkSums(spectrum=np.zeros(c // 2 + 1) if spectrum else None)
    if spec is not None:
        counts = ws.get("counts", (b, n, spec.bins + 1), _counts_dtype(c))
        counts.zero_()
        candidates = []
    for i in range(0, b, step):
        x = x_all[i:i + step]
        if spec is not None:
            pos, values, fast = _bin_into(x, spec, out_of_range, counts[i:i + step], ws)
            candidates.append((pos + i * c * n, values, fast))
        if spectrum:
            out.spectrum += _spectrum_sums(x, ws)
        if magnitude:
            out.abs_sum += _abs_sum(x, ws)
    if spec is not None:
        pos, values, fast = (np.concatenate(parts) for parts in zip(*candidates))
        out.count_hist = _finish_counts(counts, spec, out_of_range, c, pos, values, fast, ws, per_image)
    return out


def _same_dtype(seen: np.dtype | None, t: Any) -> np.dtype:
    """The chunk's numpy dtype, checked against the one earlier chunks had (if any)."""
    dtype = _np_dtype(t)
    if seen is not None and dtype != seen:
        raise UserError(f"chunk dtype {dtype} differs from earlier chunks ({seen}); feed every layer in one dtype")
    return dtype


class RangeAccumulator:
    """Pass 1 of a streaming reduction: per-layer min and max, in the data's dtype.

    Example::

        ranges = RangeAccumulator()
        for batch in loader:
            for layer, act in enumerate(extract(batch)):
                ranges.update(layer, act)
        value_ranges = [ranges.value_range("global", layer) for layer in range(n_layers)]

    Args:
        n_layers: Number of layers that will be fed, if known (then layer indices are checked against
            it); by default the layers are those fed, 0 up to the highest index seen.
    """

    def __init__(self, n_layers: int | None = None):
        if n_layers is not None and (isinstance(n_layers, bool) or not isinstance(n_layers, (int, np.integer))
                                     or n_layers < 1):
            raise UserError(f"n_layers must be a positive integer, got {n_layers!r}")
        self.n_layers = None if n_layers is None else int(n_layers)
        self._lo: list[np.floating | None] = [None] * (self.n_layers or 0)
        self._hi: list[np.floating | None] = [None] * (self.n_layers or 0)
        self._dtype: np.dtype | None = None

    def update(self, layer: int, chunk: Any) -> None:
        """Fold a chunk of one layer's activations into that layer's range.

        Args:
            layer: 0-based layer index.
            chunk: ``[b, C, H, W]`` float32 or float64 array or tensor; every chunk must share one dtype.
        """
        layer = check_layer(layer, self.n_layers)
        t = as_chunk(chunk)
        self._dtype = _same_dtype(self._dtype, t)
        lo, hi = _minmax(t)
        if layer >= len(self._lo):
            grow = layer + 1 - len(self._lo)
            self._lo += [None] * grow
            self._hi += [None] * grow
        old_lo, old_hi = self._lo[layer], self._hi[layer]
        self._lo[layer] = lo if old_lo is None else min(old_lo, lo)
        self._hi[layer] = hi if old_hi is None else max(old_hi, hi)

    def _require_all(self) -> None:
        missing = [i for i, v in enumerate(self._lo) if v is None]
        if missing or not self._lo:
            raise UserError(f"no chunk seen for layer(s) {missing or 'any'}; update every layer before "
                            "asking for ranges")

    def layer_ranges(self) -> np.ndarray:
        """Per-layer ``[min, max]``.

        Returns:
            ``[L, 2]`` array in the data's dtype.
        """
        self._require_all()
        return np.array([[lo, hi] for lo, hi in zip(self._lo, self._hi)], dtype=self._dtype)

    def value_range(self, policy: str, layer: int) -> tuple[np.floating, np.floating]:
        """The entropy histogram range of one layer under a range policy.

        Args:
            policy: ``"global"`` (one min / max over all layers, the paper's choice) or ``"per_layer"``.
            layer: 0-based layer index.

        Returns:
            ``(lo, hi)`` as numpy scalars of the data's dtype, so the bin edges match ``np.histogram``'s.
        """
        if policy not in RANGE_POLICIES:
            raise UserError(f"unknown range policy {policy!r}; use one of {', '.join(RANGE_POLICIES)}")
        self._require_all()
        layer = check_layer(layer, len(self._lo))
        if policy == "global":
            return min(self._lo), max(self._hi)
        return self._lo[layer], self._hi[layer]


class MetricAccumulator:
    """Pass 2 of a streaming reduction: spectrum, entropy and magnitude sums per layer.

    Sums are float64 (spectrum, magnitude) or integer (entropy's counts of bin counts), so results do not
    depend on how the images are chunked: entropy is identical to :func:`channel_entropy` up to the
    order of a float64 sum, spectrum and magnitude agree to ~1e-12 relative. Memory is independent of the
    number of images.

    Args:
        n_layers: Number of layers that will be fed.
        bins: Entropy histogram bins.
        ranges: One ``(lo, hi)`` entropy range per layer, e.g. from :meth:`RangeAccumulator.value_range`.
            Values are cast to the data's dtype; values outside a range are not counted (their share of
            ``p = h / C`` is simply missing, as with ``np.histogram(range=...)``).
        per_image: Also keep each image's entropy (the mean over its tokens, same range) and mean ``|A|``:
            ``B`` numbers per layer, for intervals over images. The layer values are unchanged by it.
    """

    def __init__(self, n_layers: int, bins: int = 100, *, ranges: Sequence[tuple[float, float]] | np.ndarray,
                 per_image: bool = False):
        if isinstance(n_layers, bool) or not isinstance(n_layers, (int, np.integer)) or n_layers < 1:
            raise UserError(f"n_layers must be a positive integer, got {n_layers!r}")
        self.n_layers = int(n_layers)
        self.bins = _check_bins(bins)
        ranges = [tuple(r) for r in ranges]
        if len(ranges) != self.n_layers or any(len(r) != 2 for r in ranges):
            raise UserError(f"ranges must hold one (lo, hi) pair per layer ({self.n_layers}), got {len(ranges)}; "
                            "build them with RangeAccumulator.value_range")
        self.ranges = ranges
        self._dtype: np.dtype | None = None
        self._channels: list[int | None] = [None] * self.n_layers
        self._images = [0] * self.n_layers
        self._vectors = [0] * self.n_layers
        self._count_hist: list[np.ndarray | None] = [None] * self.n_layers
        self._spectrum: list[np.ndarray | None] = [None] * self.n_layers
        self._abs = [0.0] * self.n_layers
        self._elements = [0] * self.n_layers
        self.per_image = bool(per_image)
        self._image_entropy: list[list[np.ndarray]] = [[] for _ in range(self.n_layers)]
        self._image_magnitude: list[list[np.ndarray]] = [[] for _ in range(self.n_layers)]
        self._ws = _Workspace()

    def update(self, layer: int, chunk: Any) -> None:
        """Fold a chunk of one layer's activations into that layer's sums.

        Args:
            layer: 0-based layer index.
            chunk: ``[b, C, H, W]`` float32 or float64 array or tensor; every chunk must share one dtype,
                and all chunks of a layer one channel count.
        """
        layer = check_layer(layer, self.n_layers)
        t = as_chunk(chunk)
        self._dtype = _same_dtype(self._dtype, t)
        c = t.shape[1]
        if self._channels[layer] is not None and c != self._channels[layer]:
            raise UserError(f"layer {layer} got {c} channels but earlier chunks had {self._channels[layer]}; "
                            "keep the [b, C, H, W] layout for every chunk")
        spec = _spec_for(self.ranges[layer], self.bins, self._dtype)
        sums = _reduce_chunk(t, self._ws, spec=spec, out_of_range=_out_of_range(t, spec), spectrum=True,
                             magnitude=True, per_image=self.per_image)
        if self._channels[layer] is None:  # first chunk of this layer, and a valid one
            self._channels[layer] = c
            self._count_hist[layer] = np.zeros(c + 1, dtype=np.int64)
            self._spectrum[layer] = np.zeros(c // 2 + 1)
        if self.per_image:
            tokens = t[0, 0].numel()
            self._image_entropy[layer].append(sums.count_hist @ _entropy_table(c) / tokens)
            self._image_magnitude[layer].append(
                t.abs().sum(dim=tuple(range(1, t.dim())), dtype=torch.float64).numpy() / t[0].numel())
            sums.count_hist = sums.count_hist.sum(0)
        self._count_hist[layer] += sums.count_hist
        self._spectrum[layer] += sums.spectrum
        self._abs[layer] += sums.abs_sum
        self._images[layer] += t.shape[0]
        self._vectors[layer] += t.shape[0] * t[0, 0].numel()
        self._elements[layer] += t.numel()

    def result(self) -> dict[str, Any]:
        """The per-layer metrics of everything fed so far.

        Returns:
            Dict with ``"spectrum"`` (list of ``[C_l]`` float64 arrays, Eq. 1-2), ``"entropy"`` (``[L]``
            float64, bits, Eq. 3-5), ``"magnitude"`` (``[L]`` float64, Eq. 6), ``"n_images"`` (int, images
            per layer) and ``"n_vectors"`` (list of int: image x token vectors per layer); with ``per_image``,
            also ``"image_entropy"`` and ``"image_magnitude"`` (``[L, B]`` float64, images in the order fed).

        Raises:
            UserError: A layer was never fed, or layers saw different numbers of images.
        """
        missing = [i for i, c in enumerate(self._channels) if c is None]
        if missing:
            raise UserError(f"no chunk seen for layer(s) {missing}; update every layer before result()")
        if len(set(self._images)) != 1:
            raise UserError(f"layers saw different numbers of images ({self._images}); "
                            "feed every layer the same images")
        per_image = {}
        if self.per_image:
            per_image = {"image_entropy": np.stack([np.concatenate(p) for p in self._image_entropy]),
                         "image_magnitude": np.stack([np.concatenate(p) for p in self._image_magnitude])}
        return {
            **per_image,
            "spectrum": [_spectrum_from_sums(s, c, n)
                         for s, c, n in zip(self._spectrum, self._channels, self._vectors)],
            "entropy": np.array([_entropy_from_counts(g, c, n)
                                 for g, c, n in zip(self._count_hist, self._channels, self._vectors)]),
            "magnitude": np.array([a / n for a, n in zip(self._abs, self._elements)]),
            "n_images": self._images[0],
            "n_vectors": list(self._vectors),
        }


def channel_spectrum(acts: Any) -> np.ndarray:
    """Mean magnitude of the channel-axis FFT per layer (paper Eq. 1-2).

    ``F[l,b,k,h,w] = (1/C) sum_c A[l,b,c,h,w] exp(-2 pi j k c / C)``; ``S[l,k]`` = mean over (b, h, w) of
    ``|F|``. Computed with a real FFT in the data's precision and float64 sums; for float32 input it
    matches ``np.abs(np.fft.fft(acts, axis=2) / C).mean(axis=(1, 3, 4))`` to ~1e-6 relative.

    Args:
        acts: ``[L, B, C, H, W]`` float32 or float64 numpy array or torch tensor.

    Returns:
        ``[L, C]`` float64, all C frequency bins (k = 0 .. C-1, DC first).
    """
    t = as_acts(acts)
    n_layers, n_images, c = t.shape[:3]
    n_vectors = n_images * t.shape[3] * t.shape[4]
    ws = _Workspace()
    return np.stack([_spectrum_from_sums(_reduce_chunk(t[layer], ws, spectrum=True).spectrum, c, n_vectors)
                     for layer in range(n_layers)])


def channel_entropy(acts: Any, bins: int = 100, range_policy: str = "global",
                    value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Mean Shannon entropy of each token's channel vector, per layer (paper Eq. 3-5).

    Each ``[C]`` vector ``A[l, b, :, h, w]`` is histogrammed exactly like ``np.histogram(v, bins,
    range=(lo, hi))`` (equal-width bins, half-open except the last; ``lo == hi`` is widened to
    ``(lo - 0.5, hi + 0.5)``); with ``p = h / C``, ``E = -sum_{p > 0} p log2 p``; the result is the mean
    of E over (b, h, w). Bit-exact against that per-vector loop (differences ~1e-15 from float64 sum order).

    Args:
        acts: ``[L, B, C, H, W]`` float32 or float64 numpy array or torch tensor.
        bins: Number of equal-width bins.
        range_policy: ``"global"``: one [min, max] over the whole tensor (the paper's); ``"per_layer"``:
            each layer's own [min, max].
        value_range: Fixed ``(lo, hi)`` overriding ``range_policy``, cast to the data's dtype (numpy builds
            different edges for float64 bounds). Values outside it are not counted.

    Returns:
        ``[L]`` float64, bits.

    Raises:
        UserError: Bad options, or activations holding NaN or inf (no finite range exists).
    """
    t = as_acts(acts)
    bins = _check_bins(bins)
    if range_policy not in RANGE_POLICIES:
        raise UserError(f"unknown range_policy {range_policy!r}; use one of {', '.join(RANGE_POLICIES)}")
    n_layers, n_images, c = t.shape[:3]
    dtype = _np_dtype(t)
    if value_range is None:
        layer_ranges = RangeAccumulator(n_layers)
        for layer in range(n_layers):
            layer_ranges.update(layer, t[layer])
        ranges = [layer_ranges.value_range(range_policy, layer) for layer in range(n_layers)]
    else:
        if len(value_range) != 2:
            raise UserError(f"value_range must be a (lo, hi) pair, got {value_range!r}")
        ranges = [tuple(value_range)] * n_layers
    n_vectors = n_images * t.shape[3] * t.shape[4]
    ws = _Workspace()
    out = np.empty(n_layers)
    for layer in range(n_layers):
        spec = _spec_for(ranges[layer], bins, dtype)
        # A range taken from this very data holds all of it; skip the extra min / max pass.
        out_of_range = value_range is not None and _out_of_range(t[layer], spec)
        g = _reduce_chunk(t[layer], ws, spec=spec, out_of_range=out_of_range).count_hist
        out[layer] = _entropy_from_counts(g, c, n_vectors)
    return out


def activation_magnitude(acts: Any) -> np.ndarray:
    """Mean absolute activation per layer (paper Eq. 6), accumulated in float64.

    Args:
        acts: ``[L, B, C, H, W]`` float32 or float64 numpy array or torch tensor.

    Returns:
        ``[L]`` float64.
    """
    t = as_acts(acts)
    ws = _Workspace()
    return np.array([_reduce_chunk(t[layer], ws, magnitude=True).abs_sum / t[layer].numel()
                     for layer in range(t.shape[0])])
