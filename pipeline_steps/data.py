"""Image data: the generated shape dataset, ImageNet-style folders, and sample manifests.

Three parts:

* **Generated dataset** (:func:`generate_synthetic`, :func:`write_synthetic`, :func:`load_synthetic`): a
  procedural 10-class image set (:data:`CLASS_NAMES`) that is a pure function of its settings. Every image
  is drawn from its own random stream seeded by ``(seed, split, index)``, and rendering uses only
  correctly rounded element-wise arithmetic (no ``sin``/``exp``, no BLAS, no reductions), so the arrays are
  byte-identical on any machine and for any chunking (given numpy's Generator streams, which a golden-hash
  test pins).
* **Datasets** (:class:`SyntheticDataset`, :class:`ImageFolderDataset`, :func:`open_dataset`): torch
  Datasets returning ``(float32 tensor [3, H, W], int label)`` with stable ``ids``, ``labels`` and
  ``classes``. ImageFolder images get the analysis preprocessing (``dataset.preprocess``) or, for training
  and scoring models, DeiT's evaluation transform (``dataset.eval_preprocess``). Both datasets also offer
  ``content_hash(index)`` and ``load(index) -> (tensor, label, hash)``, which the sample manifest and
  :class:`ManifestDataset` build on.
* **Sample manifests** (:func:`sample_manifest`, :func:`manifest_hash`, :class:`ManifestDataset`): which
  images the analysis runs on, in which order, with a content hash per image so a changed image is caught
  instead of silently analysed.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from ._io import atomic_path, read_parquet, sha256_bytes
from .config import SYNTHETIC_PATH
from .errors import UserError

__all__ = [
    "CLASS_NAMES", "GENERATOR_VERSION", "SYNTHETIC_PATH", "SPLITS", "STRATEGIES", "MANIFEST_COLUMNS",
    "IMG_EXTENSIONS", "IMAGENET_MEAN", "IMAGENET_STD",
    "generate_synthetic", "write_synthetic", "load_synthetic", "SyntheticData",
    "AnalysisDataset", "SyntheticDataset", "ImageFolderDataset", "open_dataset",
    "sample_manifest", "manifest_hash", "check_manifest", "read_manifest", "ManifestDataset",
]

#: Shape classes of the generated dataset, in label order (``num_classes = K`` uses the first K).
CLASS_NAMES: tuple[str, ...] = (
    "disc", "ring", "square", "frame", "triangle", "plus", "x", "stripes", "checker", "two_dots",
)
#: Bumped whenever the rendering changes, so an artifact records which generator made it.
GENERATOR_VERSION = 1
#: Where the pipeline keeps the generated dataset (the generate-data step's default output).
SPLITS = ("train", "test")
STRATEGIES = ("random", "stratified", "first")
MANIFEST_COLUMNS = ("position", "index", "id", "label", "class_name", "split", "strategy", "seed",
                    "content_hash")
#: ImageFolder's image extensions (``torchvision.datasets.folder.IMG_EXTENSIONS``; a test keeps them equal).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# ---------------------------------------------------------------------------------------------------------
# Generated dataset
# ---------------------------------------------------------------------------------------------------------

# Per-image parameters, all drawn as one vector of uniforms in [0, 1) from the image's own stream. The
# layout is part of the generator version: reordering it changes every image.
_P_CX, _P_CY, _P_SCALE, _P_ROT, _P_ASPECT = 0, 1, 2, 3, 4
_P_BG1, _P_BG2, _P_FG = slice(5, 8), slice(8, 11), slice(11, 14)
_P_GRAD = slice(14, 16)
_P_BG_TEX, _P_FG_TEX, _P_NOISE = 16, 17, 18
_P_CLUTTER = 19
_MAX_CLUTTER = 3
_CLUTTER_FIELDS = 9  # present, x, y, direction, length, opacity, r, g, b
_P_BG_GRID = _P_CLUTTER + _MAX_CLUTTER * _CLUTTER_FIELDS
_BG_CELLS = 4  # background blotches: value noise on a 4x4-cell grid
_FG_CELLS = 6  # foreground texture: finer value noise
_P_FG_GRID = _P_BG_GRID + (_BG_CELLS + 1) ** 2
_NUM_PARAMS = _P_FG_GRID + (_FG_CELLS + 1) ** 2

# Rotation of +-25 degrees via the rational parametrisation cos = (1 - t^2) / (1 + t^2), sin = 2t / (1 + t^2)
# with t = tan(angle / 2): exact arithmetic only, so no platform-dependent libm rounding can flip a pixel.
# tan(12.5 deg), written out for the same reason.
_TAN_HALF_MAX = 0.22169466264293988
_MIN_CONTRAST = 0.3  # minimum RGB distance between the shape colour and the mean background colour


def _split_id(split: str) -> int:
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}'; use one of: {', '.join(SPLITS)}")
    return SPLITS.index(split)


def _value_noise(grid: np.ndarray, size: int) -> np.ndarray:
    """Smoothly interpolate per-image lattice values [B, n+1, n+1] onto a [B, size, size] pixel grid."""
    cells = grid.shape[-1] - 1
    pos = (np.arange(size, dtype=np.float32) + 0.5) * np.float32(cells / size)
    i0 = np.minimum(pos.astype(np.int64), cells - 1)
    f = pos - i0.astype(np.float32)
    f = f * f * (3.0 - 2.0 * f)  # smoothstep, so the cell grid does not show as creases
    fy, fx = f[:, None], f[None, :]
    iy, ix = i0[:, None], i0[None, :]
    g00, g01 = grid[:, iy, ix], grid[:, iy, ix + 1]
    g10, g11 = grid[:, iy + 1, ix], grid[:, iy + 1, ix + 1]
    top = g00 + (g01 - g00) * fx
    bottom = g10 + (g11 - g10) * fx
    return top + (bottom - top) * fy


def _box(u: np.ndarray, v: np.ndarray, hu: float, hv: float) -> np.ndarray:
    """Signed distance (Chebyshev-style) to an axis-aligned box with half-sides ``hu``, ``hv``."""
    return np.maximum(np.abs(u) - hu, np.abs(v) - hv)


def _bar(u: np.ndarray, v: np.ndarray, cos: float, sin: float, half_len: float, half_width: float) -> np.ndarray:
    along = u * cos + v * sin
    across = v * cos - u * sin
    return np.maximum(np.abs(along) - half_len, np.abs(across) - half_width)


def _shape_sdf(label: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) of class ``label``'s shape in its local frame (about [-1, 1]^2).

    The geometry is fixed per class so that no random draw of one class can look like another: the X
    crosses at 60 degrees (not 90), so a rotated plus never becomes an X; stripes (3 bars) and checker
    (4x4 cells) fill a square; two dots never touch.
    """
    name = CLASS_NAMES[label]
    if name == "disc":
        return np.sqrt(u * u + v * v) - 0.95
    if name == "ring":
        return np.abs(np.sqrt(u * u + v * v) - 0.7) - 0.27
    if name == "square":
        return _box(u, v, 0.8, 0.8)
    if name == "frame":
        return np.abs(_box(u, v, 0.65, 0.65)) - 0.2
    if name == "triangle":
        # Equilateral, apex up (image y grows downwards), circumradius 1.1: three half-planes.
        c, s, inradius = 0.8660254, 0.5, 0.55
        return np.maximum(np.maximum(v, -v * s + u * c), -v * s - u * c) - inradius
    if name == "plus":
        return np.minimum(_box(u, v, 1.0, 0.25), _box(u, v, 0.25, 1.0))
    if name == "x":
        c, s = 0.8660254, 0.5  # arms at +-30 degrees from horizontal
        return np.minimum(_bar(u, v, c, s, 1.05, 0.22), _bar(u, v, c, -s, 1.05, 0.22))
    if name == "stripes":
        period, half_width = 0.6, 0.16  # three bars, at v = -0.6, 0, 0.6
        bars = np.abs(v - period * np.floor(v / period + 0.5)) - half_width
        return np.maximum(_box(u, v, 0.85, 0.78), bars)
    if name == "checker":
        cell = 0.425  # 4 x 4 cells over [-0.85, 0.85]^2
        fu, fv = u / cell, v / cell
        ku, kv = np.floor(fu), np.floor(fv)
        edge = np.minimum(np.minimum(fu - ku, ku + 1 - fu), np.minimum(fv - kv, kv + 1 - fv)) * cell
        parity = np.mod(ku + kv, 2.0)
        return np.maximum(_box(u, v, 0.85, 0.85), np.where(parity == 0, -edge, edge))
    if name == "two_dots":
        du = np.abs(u) - 0.55
        return np.sqrt(du * du + v * v) - 0.38
    raise AssertionError(f"no shape for class {label}")


def _draw_params(seed: int, split_id: int, indices: range, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Each image's parameter vector and pixel-noise uniforms, from its own (seed, split, index) stream."""
    params = np.empty((len(indices), _NUM_PARAMS), dtype=np.float64)
    noise = np.empty((len(indices), 2, size, size, 3), dtype=np.float32)
    for row, index in enumerate(indices):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence((seed, split_id, index))))
        params[row] = rng.random(_NUM_PARAMS)
        noise[row] = rng.random((2, size, size, 3), dtype=np.float32)
    return params, noise


def _render(labels: np.ndarray, params: np.ndarray, noise: np.ndarray, size: int) -> np.ndarray:
    """Render a chunk of images [B, size, size, 3] uint8 from their labels and parameters.

    Element-wise float32 arithmetic only, so an image does not depend on which chunk it is rendered in.
    """
    b = len(labels)
    p = params.astype(np.float32)

    def col(k: int | slice) -> np.ndarray:
        """Parameter column(s) shaped to broadcast over [B, H, W] (or [B, 1, 1, 3] for colours)."""
        x = p[:, k]
        return x[:, None, None] if x.ndim == 1 else x[:, None, None, :]

    s = np.float32(size)
    yy, xx = np.meshgrid(np.arange(size, dtype=np.float32) + 0.5, np.arange(size, dtype=np.float32) + 0.5,
                         indexing="ij")
    xx, yy = xx[None], yy[None]

    # Background: a linear gradient between two colours, modulated by smooth blotches.
    c1, c2 = col(_P_BG1), col(_P_BG2)
    g = p[:, _P_GRAD] * 2.0 - 1.0
    norm = np.sqrt(g[:, 0] * g[:, 0] + g[:, 1] * g[:, 1]) + np.float32(1e-3)
    gx, gy = (g[:, 0] / norm)[:, None, None], (g[:, 1] / norm)[:, None, None]
    w = np.clip(((xx - s / 2) * gx + (yy - s / 2) * gy) / s + 0.5, 0.0, 1.0)[..., None]
    img = c1 + (c2 - c1) * w
    bg_grid = p[:, _P_BG_GRID:_P_BG_GRID + (_BG_CELLS + 1) ** 2].reshape(b, _BG_CELLS + 1, _BG_CELLS + 1)
    bg_amp = col(_P_BG_TEX) * 0.35
    img = img * (1.0 - bg_amp + bg_amp * _value_noise(bg_grid, size))[..., None]

    # Clutter: up to three thin, short line segments behind the shape. Single straight strokes are part of
    # no class, and they are drawn before the shape, so they cannot hide or mimic it.
    for k in range(_MAX_CLUTTER):
        base = _P_CLUTTER + k * _CLUTTER_FIELDS
        present = (p[:, base] < 0.6).astype(np.float32)[:, None, None]
        x0, y0 = col(base + 1) * s, col(base + 2) * s
        t = col(base + 3) * 2.0 - 1.0  # direction over (-90, 90) degrees, rationally
        dc, ds = (1.0 - t * t) / (1.0 + t * t), 2.0 * t / (1.0 + t * t)
        half_len = (0.06 + 0.12 * col(base + 4)) * s
        dx, dy = xx - x0, yy - y0
        along = np.clip(dx * dc + dy * ds, -half_len, half_len)
        ex, ey = dx - along * dc, dy - along * ds
        alpha = np.clip(1.1 - np.sqrt(ex * ex + ey * ey), 0.0, 1.0) * present * (0.4 + 0.6 * col(base + 5))
        colour = p[:, base + 6:base + 9][:, None, None, :]
        img = img + (colour - img) * alpha[..., None]

    # The shape: local coordinates through translation, rotation, scale and a mild aspect jitter.
    half = (0.22 + 0.20 * col(_P_SCALE)) * s  # half-size in pixels: the shape spans 44-84% of the image
    margin = 0.9 * half  # keeps the shape (almost) entirely in view
    cx = margin + (s - 2.0 * margin) * col(_P_CX)
    cy = margin + (s - 2.0 * margin) * col(_P_CY)
    t = (col(_P_ROT) * 2.0 - 1.0) * np.float32(_TAN_HALF_MAX)
    rc, rs = (1.0 - t * t) / (1.0 + t * t), 2.0 * t / (1.0 + t * t)
    aspect = 0.9 + 0.2 * col(_P_ASPECT)
    dx, dy = xx - cx, yy - cy
    u = (dx * rc + dy * rs) / (half * aspect)
    v = (dy * rc - dx * rs) * aspect / half
    sdf = np.empty((b, size, size), dtype=np.float32)
    for label in np.unique(labels):
        rows = labels == label
        sdf[rows] = _shape_sdf(int(label), u[rows], v[rows])
    # Anti-aliased coverage: the signed distance in pixels, clipped to a one-pixel ramp.
    coverage = np.clip(0.5 - sdf * half, 0.0, 1.0)[..., None]

    # Shape colour, pushed away from the background when too close (the complement, else the far end of
    # each channel), so the label is always visible; textured with finer blotches.
    fg = p[:, _P_FG]
    mean_bg = (p[:, _P_BG1] + p[:, _P_BG2]) * 0.5

    def dist(c: np.ndarray) -> np.ndarray:
        d = c - mean_bg
        return np.sqrt(d[:, :1] * d[:, :1] + d[:, 1:2] * d[:, 1:2] + d[:, 2:] * d[:, 2:])  # no reduction loop

    far = np.where(mean_bg > 0.5, fg * 0.3, 1.0 - fg * 0.3)
    fg = np.where(dist(fg) >= _MIN_CONTRAST, fg, np.where(dist(1.0 - fg) >= _MIN_CONTRAST, 1.0 - fg, far))
    fg_grid = p[:, _P_FG_GRID:_P_FG_GRID + (_FG_CELLS + 1) ** 2].reshape(b, _FG_CELLS + 1, _FG_CELLS + 1)
    fg_amp = col(_P_FG_TEX) * 0.3
    shape = fg[:, None, None, :] * (1.0 - fg_amp + fg_amp * _value_noise(fg_grid, size))[..., None]
    img = img + (shape - img) * coverage

    # Pixel noise: the sum of two uniforms (triangular, unit variance after scaling), again exact arithmetic.
    sigma = (0.02 + 0.08 * col(_P_NOISE))[..., None] * np.float32(math.sqrt(6.0))
    img = img + (noise[:, 0] + noise[:, 1] - 1.0) * sigma
    return np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def _generate_split(num_classes: int, size: int, n: int, seed: int, split: str,
                    progress: bool) -> tuple[np.ndarray, np.ndarray]:
    split_id = _split_id(split)
    # Balanced labels (index % K), shuffled by a split-level stream that no image stream shares.
    order = np.random.Generator(np.random.PCG64(np.random.SeedSequence((seed, split_id)))).permutation(n)
    labels = (order % num_classes).astype(np.int64)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    chunk = max(1, (1 << 18) // (size * size))  # ~256k pixels per chunk keeps the temporaries in cache
    with tqdm(total=n, desc=f"generate {split}", unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            params, noise = _draw_params(seed, split_id, range(start, stop), size)
            images[start:stop] = _render(labels[start:stop], params, noise, size)
            bar.update(stop - start)
    return images, labels


def _channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) std of uint8 images in [0, 1] scale.

    Exact integer sums, so the statistics are as reproducible as the pixels.
    """
    total = np.zeros(3, dtype=np.int64)
    squares = np.zeros(3, dtype=np.int64)
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].reshape(-1, 3).astype(np.int64)
        total += x.sum(axis=0)
        squares += (x * x).sum(axis=0)
    count = images.shape[0] * images.shape[1] * images.shape[2]
    mean = total / count
    var = np.maximum(squares / count - mean * mean, 0.0)
    return (mean / 255.0).astype(np.float32), (np.sqrt(var) / 255.0).astype(np.float32)


def available_memory() -> int | None:
    """Bytes of memory this process can still allocate: the system's available memory, capped by the cgroup
    (container) limit; None where neither can be read (not Linux)."""
    limits = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:  # cgroup v2: the container's limit minus what it uses ("max" = no limit)
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            limits.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(limits) if limits else None


def _check_fits_in_memory(train_size: int, test_size: int, image_size: int) -> None:
    """Refuse a dataset whose images cannot be held in memory, before allocating them."""
    needed = (train_size + test_size) * image_size * image_size * 3  # uint8 HWC, both splits held at once
    available = available_memory()
    if available is not None and needed > available:
        gib = 1 << 30
        raise UserError(f"dataset.synthetic.train_size = {train_size} (with test_size = {test_size} at image_size = "
                        f"{image_size}) needs {needed / gib:.1f} GiB of memory but {available / gib:.1f} GiB is "
                        "available; lower dataset.synthetic.train_size (or test_size, image_size)")


def generate_synthetic(num_classes: int = 10, image_size: int = 32, train_size: int = 30000,
                       test_size: int = 4000, seed: int = 0, progress: bool = True) -> dict[str, np.ndarray]:
    """Generate the procedural shape dataset.

    Each image shows one shape of its class (:data:`CLASS_NAMES`) with a random colour, position, scale
    (44-84% of the side), rotation (+-25 degrees) and mild aspect jitter, on a two-colour gradient
    background with smooth blotches, behind which lie up to three thin distractor strokes, with a
    texture on the shape and pixel noise. Classes are balanced (``index % num_classes``, shuffled).

    Args:
        num_classes: Number of classes, 2-10 (the first ``num_classes`` of :data:`CLASS_NAMES`).
        image_size: Square image side in pixels (16-256).
        train_size: Number of training images.
        test_size: Number of test images.
        seed: Non-negative generator seed; the output is a pure function of all five settings.
        progress: Show a tqdm progress bar on stderr.

    Returns:
        The NPZ members: ``train_images``/``test_images`` uint8 [N, H, W, 3], ``train_labels``/
        ``test_labels`` int64 [N], ``class_names`` (unicode [K]), ``mean``/``std`` float32 [3] (per-channel
        statistics of the training images in [0, 1] scale) and ``meta`` (a JSON string: settings and
        generator version).

    Raises:
        UserError: A setting out of range, or images that do not fit in the available memory.
    """
    settings = dict(num_classes=num_classes, image_size=image_size, train_size=train_size,
                    test_size=test_size, seed=seed)
    for key, value in settings.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise UserError(f"dataset.synthetic.{key} must be an integer, got {value!r}")
    if not 2 <= num_classes <= len(CLASS_NAMES):
        raise UserError(f"dataset.synthetic.num_classes = {num_classes} is out of range; use 2-{len(CLASS_NAMES)}")
    if not 16 <= image_size <= 256:
        raise UserError(f"dataset.synthetic.image_size = {image_size} is out of range; use 16-256")
    if train_size < 1 or test_size < 1:
        raise UserError("dataset.synthetic.train_size and test_size must be at least 1")
    if seed < 0:
        raise UserError(f"dataset.synthetic.seed = {seed} is negative; use a seed >= 0")
    _check_fits_in_memory(train_size, test_size, image_size)

    train_images, train_labels = _generate_split(num_classes, image_size, train_size, seed, "train", progress)
    test_images, test_labels = _generate_split(num_classes, image_size, test_size, seed, "test", progress)
    mean, std = _channel_stats(train_images)
    meta = {"generator": "pipeline_steps.data.generate_synthetic", "generator_version": GENERATOR_VERSION,
            "settings": {k: int(v) for k, v in settings.items()}}
    return {
        "train_images": train_images, "train_labels": train_labels,
        "test_images": test_images, "test_labels": test_labels,
        "class_names": np.array(CLASS_NAMES[:num_classes]),
        "mean": mean, "std": std,
        "meta": np.array(json.dumps(meta, sort_keys=True)),
    }


def _write_npz(file: io.BufferedWriter, arrays: Mapping[str, np.ndarray]) -> None:
    """``np.savez`` (uncompressed), but with fixed zip timestamps so equal arrays give an equal file.

    ``np.savez`` stamps each member with the current time, which would make every regeneration a "new"
    file for DVC and content-based rerun triggers.
    """
    with zipfile.ZipFile(file, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            with zf.open(info, mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def write_synthetic(path: str | os.PathLike, **settings: Any) -> Path:
    """Generate the dataset (see :func:`generate_synthetic` for ``settings``) and write it as one NPZ.

    The write is atomic (temp file + rename) and the file bytes depend only on the settings.

    Returns:
        The written path.
    """
    arrays = generate_synthetic(**settings)
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        _write_npz(f, arrays)
    return path


@dataclass(frozen=True)
class SyntheticData:
    """The generated dataset's arrays (see :func:`generate_synthetic` for their meaning)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    mean: np.ndarray
    std: np.ndarray
    meta: dict

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(images, labels)`` of split ``"train"`` or ``"test"``."""
        _split_id(name)
        return getattr(self, f"{name}_images"), getattr(self, f"{name}_labels")


_SYNTHETIC_KEYS = ("train_images", "train_labels", "test_images", "test_labels", "class_names", "mean", "std",
                   "meta")


def _read_npz(path: str | os.PathLike, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Read members ``keys`` of a generated-dataset NPZ (members not asked for are not read)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"generated dataset not found at {path}; run the generate-data step first "
                        f"(`python -m pipeline_steps generate-data --params params.yaml --out {path}`, "
                        "or snakemake)")
    fix = "delete it and re-run the generate-data step"
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path} is not a generated dataset (not an NPZ archive); {fix}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise UserError(f"{path} is not a generated dataset (missing {', '.join(missing)}); {fix}")
            arrays = {k: npz[k] for k in keys}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise UserError(f"{path} is not a readable generated dataset ({_one_line(exc)}); {fix}") from None
    _check_synthetic_arrays(arrays, path, fix)
    return arrays


def _check_synthetic_arrays(arrays: Mapping[str, np.ndarray], path: Path, fix: str) -> None:
    """The shapes, dtypes and ranges :func:`generate_synthetic` promises, for the members read.

    Members are checked with each other where both were read (labels against their split's images and
    against ``class_names``), so a foreign or hand-edited archive stops here, naming the member, instead of
    failing (or silently misbehaving) in a later step.
    """
    def bad(name: str, what: str) -> UserError:
        return UserError(f"{path}: member '{name}' {what}; {fix}")

    n_classes = None
    if "class_names" in arrays:
        names = arrays["class_names"]
        if names.ndim != 1 or names.dtype.kind != "U" or len(names) < 2:
            raise bad("class_names", f"must be a list of at least 2 names, got dtype {names.dtype} shape "
                      f"{list(names.shape)}")
        n_classes = len(names)
    for split in SPLITS:
        images, labels = arrays.get(f"{split}_images"), arrays.get(f"{split}_labels")
        if images is not None and (images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3
                                   or 0 in images.shape):
            raise bad(f"{split}_images", f"must be uint8 [N, H, W, 3] images, got {images.dtype} "
                      f"{list(images.shape)}")
        if labels is None:
            continue
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise bad(f"{split}_labels", f"must be a 1-D integer array, got {labels.dtype} {list(labels.shape)}")
        if images is not None and len(labels) != len(images):
            raise bad(f"{split}_labels", f"has {len(labels)} labels for {len(images)} images")
        if len(labels) and n_classes is not None and (labels.min() < 0 or labels.max() >= n_classes):
            wrong = int(labels[(labels < 0) | (labels >= n_classes)][0])
            raise bad(f"{split}_labels", f"holds label {wrong}, outside 0..{n_classes - 1} ({n_classes} class_names)")
    shapes = {tuple(arrays[f"{s}_images"].shape[1:]) for s in SPLITS if f"{s}_images" in arrays}
    if len(shapes) > 1:
        raise bad("test_images", f"image size differs from train_images ({sorted(shapes)})")
    for name in ("mean", "std"):
        stat = arrays.get(name)
        if stat is not None and (stat.shape != (3,) or stat.dtype.kind != "f" or not np.isfinite(stat).all()
                                 or (name == "std" and (stat <= 0).any())):
            raise bad(name, f"must be 3 finite per-channel floats{' > 0' if name == 'std' else ''}, got "
                      f"{stat.dtype} {stat.tolist() if stat.size <= 8 else list(stat.shape)}")
    if "meta" in arrays:
        meta = arrays["meta"]
        try:
            ok = meta.ndim == 0 and meta.dtype.kind == "U" and isinstance(json.loads(str(meta)), dict)
        except json.JSONDecodeError:
            ok = False
        if not ok:
            raise bad("meta", "must be a JSON object string")


def load_synthetic(path: str | os.PathLike) -> SyntheticData:
    """Load a dataset written by :func:`write_synthetic`.

    Raises:
        UserError: The file is missing, is not such an NPZ, or lacks a member.
    """
    arrays = _read_npz(path, _SYNTHETIC_KEYS)
    return SyntheticData(
        train_images=arrays["train_images"], train_labels=arrays["train_labels"].astype(np.int64),
        test_images=arrays["test_images"], test_labels=arrays["test_labels"].astype(np.int64),
        class_names=[str(c) for c in arrays["class_names"]],
        mean=arrays["mean"].astype(np.float32), std=arrays["std"].astype(np.float32),
        meta=json.loads(str(arrays["meta"])),
    )


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (for UserError messages quoting a library's error)."""
    return " ".join(str(exc).split()) or type(exc).__name__


# ---------------------------------------------------------------------------------------------------------
# Datasets for analysis
# ---------------------------------------------------------------------------------------------------------


class AnalysisDataset(Protocol):
    """What the sampling and extraction code needs from a dataset (both datasets below provide it)."""

    ids: list[str]
    labels: list[int]
    classes: list[str]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]: ...

    def content_hash(self, index: int) -> str:
        """SHA-256 of the image's stored content (raises UserError if it cannot be read or decoded)."""
        ...

    def load(self, index: int) -> tuple[torch.Tensor, int, str]:
        """``(tensor, label, content_hash)`` from a single read of the image."""
        ...

    def identity(self) -> str:
        """SHA-256 identifying the whole split as a model sees it (a cache of model outputs records it)."""
        ...


class SyntheticDataset(Dataset):
    """One split of the generated dataset, normalised with the artifact's own mean and std.

    Args:
        path: The NPZ written by the generate-data step.
        split: ``"train"`` or ``"test"``.
    """

    def __init__(self, path: str | os.PathLike, split: str) -> None:
        _split_id(split)
        arrays = _read_npz(path, (f"{split}_images", f"{split}_labels", "class_names", "mean", "std"))
        self.path = Path(path)
        self.split = split
        self.images: np.ndarray = arrays[f"{split}_images"]
        self.labels: list[int] = arrays[f"{split}_labels"].tolist()
        self.classes: list[str] = [str(c) for c in arrays["class_names"]]
        self.ids: list[str] = [f"synthetic/{split}/{i}" for i in range(len(self.labels))]
        self.mean = torch.from_numpy(arrays["mean"].astype(np.float32)).view(3, 1, 1)
        self.std = torch.from_numpy(arrays["std"].astype(np.float32)).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def _tensor(self, pixels: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float().div(255.0)
        return (x - self.mean) / self.std

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self._tensor(self.images[index]), self.labels[index]

    def pil(self, index: int) -> Image.Image:
        """The stored pixels as an RGB PIL image (input to training augmentation)."""
        return Image.fromarray(np.ascontiguousarray(self.images[index]), mode="RGB")

    def content_hash(self, index: int) -> str:
        return sha256_bytes(np.ascontiguousarray(self.images[index]).tobytes())

    def identity(self) -> str:
        """SHA-256 of what a model sees of this split: every image's pixels, the labels, the class names and
        the normalisation (so outputs computed from one split are recognised as belonging to it)."""
        h = hashlib.sha256(f"synthetic\0{self.split}\0{list(self.images.shape)}\0{self.classes}\0".encode())
        h.update(np.ascontiguousarray(self.images).tobytes())
        h.update(np.asarray(self.labels, dtype=np.int64).tobytes())
        h.update(self.mean.numpy().astype(np.float32).tobytes() + self.std.numpy().astype(np.float32).tobytes())
        return h.hexdigest()

    def load(self, index: int) -> tuple[torch.Tensor, int, str]:
        x, label = self[index]
        return x, label, self.content_hash(index)


def _list_images(directory: Path, classes: Sequence[str]) -> list[tuple[Path, int]]:
    """``(path, label)`` in torchvision ``make_dataset`` order: per class, ``sorted(os.walk(...))`` and sorted
    file names, extension matched case-insensitively. Written out so that listing (and sampling) does not
    pay torchvision's import time (about a second); a test checks the order against ``ImageFolder``."""
    samples = []
    for label, cls in enumerate(classes):
        for folder, _, names in sorted(os.walk(directory / cls, followlinks=True)):
            samples.extend((Path(folder) / name, label) for name in sorted(names)
                           if name.lower().endswith(IMG_EXTENSIONS))
    return samples


#: Pillow's modes of single-channel 16-bit images (16-bit PNG and TIFF grayscale open as one of these).
_MODES_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def _to_rgb8(img: Image.Image, path: Path) -> Image.Image:
    """An 8-bit RGB image with the full range of ``img``, whatever its bit depth.

    Pillow's ``convert("RGB")`` clips integer images at 255 instead of scaling them, so a 16-bit image
    (0..65535) would read as almost all white. 16-bit grayscale (modes ``I;16*``, and ``I`` holding values
    in 0..65535, as 16-bit PNGs open in some Pillow versions) is scaled by 255/65535 with rounding; 48-bit
    RGB PNG/TIFF files already open as 8-bit ``RGB``. Float images have no agreed range and are refused.

    Raises:
        UserError: A float image, or a 32-bit integer image with values outside 0..65535.
    """
    if img.mode in _MODES_16BIT or img.mode == "I":
        values = np.asarray(img)
        if values.size and (int(values.min()) < 0 or int(values.max()) > 65535):
            raise UserError(f"image {path} is a 32-bit integer image with values outside 0..65535, which has no "
                            "defined 8-bit scaling; convert it to 8- or 16-bit")
        scaled = (values.astype(np.uint32) * 255 + 32767) // 65535
        return Image.fromarray(scaled.astype(np.uint8)).convert("RGB")  # 2-D uint8 -> mode L
    if img.mode == "F":
        raise UserError(f"image {path} is a floating-point image, which has no defined 8-bit scaling; convert it "
                        "to an 8- or 16-bit image")
    return img.convert("RGB")


class ImageFolderDataset(Dataset):
    """An ImageNet-style split folder (``root/split_dir/<class>/<image>``) with a fixed preprocessing.

    Classes and images are in torchvision ``ImageFolder`` order (classes sorted; files sorted, walking
    sub-folders), so label indices match ``ImageFolder`` and "the first N" is the first N of class 0 (the
    authors' released behaviour). Preprocessing: Resize(shorter side) -> CenterCrop -> ToTensor -> Normalize.

    Args:
        root: Dataset root; ids are image paths relative to it (e.g. ``val/n01440764/x.JPEG``).
        split_dir: Split folder under ``root`` (e.g. ``val``).
        preprocess: ``resize``, ``crop``, ``interpolation``, ``mean``, ``std``: ``dataset.preprocess`` (the
            analysis) or ``dataset.eval_preprocess`` (training and evaluation).
        key: The params key ``preprocess`` came from (named in error messages).

    Raises:
        UserError: The folder is missing or empty, has no class folders, or a class folder has no images.
    """

    def __init__(self, root: str | os.PathLike, split_dir: str, preprocess: Mapping[str, Any],
                 key: str = "dataset.preprocess") -> None:
        self.root = Path(root)
        self.directory = self.root / split_dir
        fix = "set dataset.imagefolder.root (and train_dir / val_dir) to an ImageNet-style folder"
        if not self.directory.is_dir():
            raise UserError(f"data directory {self.directory} not found; {fix}")
        classes = sorted(e.name for e in os.scandir(self.directory) if e.is_dir())
        if not classes:
            raise UserError(f"data directory {self.directory} has no class folders (expected "
                            f"{self.directory}/<class>/<image>); {fix}")
        samples = _list_images(self.directory, classes)
        counts = np.bincount([label for _, label in samples], minlength=len(classes))
        if (counts == 0).any():
            empty = classes[int(np.flatnonzero(counts == 0)[0])]
            raise UserError(f"class folder {self.directory / empty} has no images ({', '.join(IMG_EXTENSIONS)}); "
                            "add images or remove the folder")
        self.classes: list[str] = classes
        self.paths: list[Path] = [path for path, _ in samples]
        self.labels: list[int] = [label for _, label in samples]
        self.ids: list[str] = [p.relative_to(self.root).as_posix() for p in self.paths]
        # No fallbacks here: the two transforms have different defaults, stated once, in the params schema.
        missing = sorted({"resize", "crop", "interpolation", "mean", "std"} - set(preprocess))
        if missing:
            raise UserError(f"{key} lacks {', '.join(missing)}; pass a validated config "
                            "(pipeline_steps.config.validate_params fills the defaults)")
        self.preprocess = dict(preprocess)
        if self.preprocess["interpolation"] not in ("bilinear", "bicubic", "nearest"):
            raise UserError(f"{key}.interpolation '{self.preprocess['interpolation']}' is unknown; "
                            "use bilinear, bicubic or nearest")

    @functools.cached_property
    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """Resize -> CenterCrop -> ToTensor -> Normalize, built on first use (torchvision is slow to import
        and hashing a sample needs none of it)."""
        from torchvision import transforms

        p = self.preprocess
        mode = transforms.InterpolationMode[p["interpolation"].upper()]
        return transforms.Compose([
            transforms.Resize(int(p["resize"]), interpolation=mode),
            transforms.CenterCrop(int(p["crop"])),
            transforms.ToTensor(),
            transforms.Normalize(list(p["mean"]), list(p["std"])),
        ])

    def __len__(self) -> int:
        return len(self.paths)

    def _read(self, index: int) -> tuple[bytes, Image.Image]:
        """The file's bytes and the decoded RGB image; any failure names the file."""
        path = self.paths[index]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UserError(f"cannot read image {path} ({exc.strerror or _one_line(exc)}); check the file "
                            "and its permissions") from None
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()  # decodes the whole image, so truncation shows here
                return data, _to_rgb8(img, path)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise UserError(f"image {path} is unreadable or corrupt ({_one_line(exc)}); replace or remove "
                            "it") from None

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        _, img = self._read(index)
        return self.transform(img), self.labels[index]

    def content_hash(self, index: int) -> str:
        data, _ = self._read(index)  # decoded too: a sampled image must be usable, not just present
        return sha256_bytes(data)

    def identity(self) -> str:
        """SHA-256 of the file list (ids, labels, file sizes) and the preprocessing.

        Not of the file contents: reading a whole ImageNet split to check a cache would cost as much as
        the teacher pass it saves. An image replaced by one of the same size in place is not noticed.
        """
        listing = [(i, label, p.stat().st_size) for i, label, p in zip(self.ids, self.labels, self.paths)]
        return sha256_bytes(json.dumps({"imagefolder": listing, "classes": self.classes,
                                        "preprocess": self.preprocess}, sort_keys=True).encode())

    def load(self, index: int) -> tuple[torch.Tensor, int, str]:
        data, img = self._read(index)
        return self.transform(img), self.labels[index], sha256_bytes(data)


#: ``open_dataset``'s ``preprocessing`` -> the params key of the ImageFolder transform it selects.
_PREPROCESSING_KEYS = {"analysis": "preprocess", "evaluation": "eval_preprocess"}


def open_dataset(params: Mapping[str, Any], split: str, *, synthetic_path: str | os.PathLike = SYNTHETIC_PATH,
                 preprocessing: str = "analysis") -> SyntheticDataset | ImageFolderDataset:
    """The dataset named by ``params["dataset"]`` (a validated config).

    Args:
        params: The validated config.
        split: ``"train"`` or ``"test"`` (for imagefolder data: ``train_dir`` or ``val_dir``).
        synthetic_path: The generated NPZ, for ``dataset.kind: synthetic``.
        preprocessing: Which transform imagefolder images get: ``"analysis"`` (``dataset.preprocess``, the
            paper's analysis preprocessing: sample, extract, evolution) or ``"evaluation"``
            (``dataset.eval_preprocess``, DeiT's evaluation transform: training and scoring models).
            Synthetic images are only normalised either way.
    """
    _split_id(split)
    if preprocessing not in _PREPROCESSING_KEYS:
        raise ValueError(f"preprocessing must be one of {sorted(_PREPROCESSING_KEYS)}, got {preprocessing!r}")
    ds = params["dataset"]
    if ds["kind"] == "synthetic":
        return SyntheticDataset(synthetic_path, split)
    if ds["kind"] == "imagefolder":
        folder = ds["imagefolder"]
        if not folder.get("root"):
            raise UserError("dataset.kind is 'imagefolder' but dataset.imagefolder.root is not set; set it to "
                            "your ImageNet-style directory")
        split_dir = folder.get("train_dir", "train") if split == "train" else folder.get("val_dir", "val")
        key = _PREPROCESSING_KEYS[preprocessing]
        return ImageFolderDataset(folder["root"], split_dir, ds[key], key=f"dataset.{key}")
    raise UserError(f"unknown dataset.kind '{ds['kind']}'; use synthetic or imagefolder")


# ---------------------------------------------------------------------------------------------------------
# Sample manifests
# ---------------------------------------------------------------------------------------------------------


def _choose(labels: np.ndarray, num_classes: int, class_names: Sequence[str], n: int, strategy: str, seed: int,
            split: str) -> np.ndarray:
    if strategy == "first":
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if strategy == "random":
        return np.sort(rng.choice(len(labels), size=n, replace=False))
    # stratified: floor(n / K) per class, the remainder to distinct randomly chosen classes.
    quota = np.full(num_classes, n // num_classes)
    quota[rng.choice(num_classes, size=n % num_classes, replace=False)] += 1
    chosen = []
    for k in range(num_classes):
        pool = np.flatnonzero(labels == k)
        if len(pool) < quota[k]:
            raise UserError(f"stratified sampling needs {quota[k]} images of class '{class_names[k]}' but the "
                            f"{split} split has only {len(pool)}; lower sample.n_images or use sample.strategy: "
                            "random")
        chosen.append(rng.choice(pool, size=quota[k], replace=False))
    return np.sort(np.concatenate(chosen))


def sample_manifest(dataset: AnalysisDataset, n: int, strategy: str, seed: int, split: str,
                    progress: bool | None = None) -> pd.DataFrame:
    """Choose ``n`` images of ``dataset`` and record them, with a content hash each.

    Strategies: ``random`` (seeded, uniform, without replacement), ``stratified`` (seeded; ``n // K`` per
    class and the remainder to randomly chosen classes), ``first`` (the first ``n`` in dataset order). The
    chosen images are fed to the model in dataset order (``position``). Every chosen image is read and
    decoded here, so a broken image fails the sampling step rather than a later one.

    Args:
        dataset: A dataset with ``ids``, ``labels``, ``classes`` and ``content_hash`` (both in this module).
        n: Number of images.
        strategy: ``random``, ``stratified`` or ``first``.
        seed: Non-negative sampling seed (``first`` ignores it, but it is recorded).
        split: Split name, recorded and used in messages.
        progress: tqdm bar while hashing; ``None`` shows it only on a terminal.

    Returns:
        One row per image: ``position, index, id, label, class_name, split, strategy, seed, content_hash``.

    Raises:
        UserError: Unknown strategy, bad ``n`` or ``seed``, too few images, or an unreadable image.
    """
    if strategy not in STRATEGIES:
        raise UserError(f"unknown sample.strategy '{strategy}'; use one of: {', '.join(STRATEGIES)}")
    if n < 1:
        raise UserError(f"sample.n_images = {n}; use at least 1")
    if seed < 0:
        raise UserError(f"sample.seed = {seed} is negative; use a seed >= 0")
    if n > len(dataset):
        raise UserError(f"sample.n_images = {n} but the {split} split has only {len(dataset)} images; lower "
                        "sample.n_images")
    labels = np.asarray(dataset.labels, dtype=np.int64)
    indices = _choose(labels, len(dataset.classes), dataset.classes, n, strategy, seed, split)
    hashes = [dataset.content_hash(int(i)) for i in tqdm(indices, desc="hash sample", unit="img",
                                                          disable=None if progress is None else not progress,
                                                          leave=False)]
    return pd.DataFrame({
        "position": np.arange(n, dtype=np.int64),
        "index": indices.astype(np.int64),
        "id": [dataset.ids[i] for i in indices],
        "label": labels[indices],
        "class_name": [dataset.classes[labels[i]] for i in indices],
        "split": split,
        "strategy": strategy,
        "seed": np.int64(seed),
        "content_hash": hashes,
    }, columns=list(MANIFEST_COLUMNS))


def manifest_hash(df: pd.DataFrame) -> str:
    """SHA-256 identifying a sample: its ids and content hashes in ``position`` order."""
    rows = df.sort_values("position")
    text = "".join(f"{i}\t{h}\n" for i, h in zip(rows["id"], rows["content_hash"]))
    return sha256_bytes(text.encode())


#: What each manifest column holds (``int``: integers; ``str``: text), checked by :func:`read_manifest`.
_MANIFEST_KINDS = {"position": "int", "index": "int", "id": "str", "label": "int", "class_name": "str",
                   "split": "str", "strategy": "str", "seed": "int", "content_hash": "str"}


def check_manifest(df: pd.DataFrame, source: str) -> None:
    """Check a sample manifest's columns, their types and positions (one-line UserError naming ``source``).

    Args:
        df: The manifest.
        source: Where it came from, for messages (its path).

    Raises:
        UserError: Empty; a missing column; a column of the wrong type or with a missing/NaN value; negative
            indices; positions that are not ``0 .. n-1``.
    """
    fix = "re-run the sample step"
    if len(df) == 0:
        raise UserError(f"sample manifest {source} is empty; check sample.n_images and {fix}")
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"sample manifest {source} lacks column(s) {', '.join(missing)}; {fix}")
    for column, kind in _MANIFEST_KINDS.items():
        col = df[column]
        if col.isna().any():
            row = int(np.flatnonzero(col.isna().to_numpy())[0])
            raise UserError(f"sample manifest {source}: column '{column}' has a missing or NaN value (row {row}); "
                            f"{fix}")
        ok = (pd.api.types.is_integer_dtype(col) if kind == "int"
              else pd.api.types.infer_dtype(col, skipna=False) == "string")
        if not ok:
            raise UserError(f"sample manifest {source}: column '{column}' holds {col.dtype} values, expected "
                            f"{'integers' if kind == 'int' else 'text'}; {fix}")
    if (df["index"] < 0).any() or (df["label"] < 0).any():
        raise UserError(f"sample manifest {source} has a negative index or label; {fix}")
    if sorted(df["position"].tolist()) != list(range(len(df))):
        raise UserError(f"sample manifest {source}: column 'position' is not 0..{len(df) - 1}, each once; {fix}")


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read and check a sample manifest written by the sample step (see :func:`check_manifest`).

    Raises:
        UserError: The file is missing, not Parquet, or not a valid manifest.
    """
    df = read_parquet(path, "sample manifest", "run the sample step first")
    check_manifest(df, str(path))
    return df


class ManifestDataset(Dataset):
    """The images of a sample manifest, in ``position`` order, each checked against its content hash.

    Args:
        dataset: The dataset the manifest was drawn from (opened the same way).
        manifest: A sample manifest (:func:`sample_manifest`, or its Parquet file read with pandas).

    Raises:
        UserError: At construction, if the dataset no longer has the manifest's ids at its indices; on
            loading an image, if its content changed since sampling.
    """

    def __init__(self, dataset: AnalysisDataset, manifest: pd.DataFrame) -> None:
        check_manifest(manifest, "given to ManifestDataset")
        self.dataset = dataset
        self.manifest = manifest.sort_values("position").reset_index(drop=True)
        self.indices: list[int] = [int(i) for i in self.manifest["index"]]
        self.ids: list[str] = list(self.manifest["id"])
        for index, id_ in zip(self.indices, self.ids):
            found = dataset.ids[index] if 0 <= index < len(dataset) else None
            if found != id_:
                raise UserError(f"the dataset no longer matches the sample manifest ({id_} expected at index "
                                f"{index}, found {found}); re-run the sample step")
        self.labels: list[int] = [int(x) for x in self.manifest["label"]]
        self.classes: list[str] = list(dataset.classes)
        self.hash: str = manifest_hash(self.manifest)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int]:
        x, label, digest = self.dataset.load(self.indices[position])
        if digest != self.manifest["content_hash"].iat[position]:
            raise UserError(f"image {self.ids[position]} changed since it was sampled (content hash differs "
                            "from the manifest); re-run the sample step")
        return x, label
