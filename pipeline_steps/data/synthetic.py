"""The generated shape dataset: a procedural 10-class image set that is a pure function of its settings.

:func:`generate_synthetic`, :func:`write_synthetic` (one NPZ) and :func:`load_synthetic`. Every image is
drawn from its own random stream seeded by ``(seed, split, index)``, and rendering uses only correctly rounded
element-wise arithmetic (no ``sin``/``exp``, no BLAS, no reductions), so the arrays are byte-identical on any
machine and for any chunking (given numpy's Generator streams, which a golden-hash test pins). The classes are
:data:`CLASS_NAMES`; the NPZ's members are listed in docs/artifacts.md.
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from pipeline_steps.artifacts import atomic_path
from pipeline_steps.errors import UserError, one_line

__all__ = ["CLASS_NAMES", "GENERATOR_VERSION", "SPLITS", "available_memory", "generate_synthetic", "load_synthetic",
           "read_npz", "split_index", "SyntheticData", "write_synthetic"]

#: Shape classes of the generated dataset, in label order (``num_classes = K`` uses the first K).
CLASS_NAMES: tuple[str, ...] = (
    "disc", "ring", "square", "frame", "triangle", "plus", "x", "stripes", "checker", "two_dots",
)


#: Bumped whenever the rendering changes, so an artifact records which generator made it.
GENERATOR_VERSION = 1


#: Where the pipeline keeps the generated dataset (the generate-data step's default output).
SPLITS = ("train", "test")


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


def split_index(split: str) -> int:
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
    split_id = split_index(split)
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
        split_index(name)
        return getattr(self, f"{name}_images"), getattr(self, f"{name}_labels")


_SYNTHETIC_KEYS = ("train_images", "train_labels", "test_images", "test_labels", "class_names", "mean", "std",
                   "meta")


def read_npz(path: str | os.PathLike, keys: Sequence[str]) -> dict[str, np.ndarray]:
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
        raise UserError(f"{path} is not a readable generated dataset ({one_line(exc)}); {fix}") from None
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
    arrays = read_npz(path, _SYNTHETIC_KEYS)
    return SyntheticData(
        train_images=arrays["train_images"], train_labels=arrays["train_labels"].astype(np.int64),
        test_images=arrays["test_images"], test_labels=arrays["test_labels"].astype(np.int64),
        class_names=[str(c) for c in arrays["class_names"]],
        mean=arrays["mean"].astype(np.float32), std=arrays["std"].astype(np.float32),
        meta=json.loads(str(arrays["meta"])),
    )
