"""The datasets every step reads, behind one :func:`open_dataset`.

:class:`SyntheticDataset` (the generated NPZ) and :class:`ImageFolderDataset` (an ImageNet-style tree) are
torch Datasets returning ``(float32 tensor [3, H, W], int label)`` with stable ``ids``, ``labels`` and
``classes``. ImageFolder images get the analysis preprocessing (``dataset.preprocess``) or, for training and
scoring models, DeiT's evaluation transform (``dataset.eval_preprocess``). Both also offer
``content_hash(index)`` and ``load(index) -> (tensor, label, hash)``, which the sample manifest builds on.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from pipeline_steps.artifacts import sha256_bytes
from pipeline_steps.config import SYNTHETIC_PATH
from pipeline_steps.data.synthetic import read_npz, split_index
from pipeline_steps.errors import UserError, one_line

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "IMG_EXTENSIONS", "AnalysisDataset", "ImageFolderDataset",
           "open_dataset", "SyntheticDataset"]

#: ImageFolder's image extensions (``torchvision.datasets.folder.IMG_EXTENSIONS``; a test keeps them equal).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


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
        split_index(split)
        arrays = read_npz(path, (f"{split}_images", f"{split}_labels", "class_names", "mean", "std"))
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
            raise UserError(f"cannot read image {path} ({exc.strerror or one_line(exc)}); check the file "
                            "and its permissions") from None
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()  # decodes the whole image, so truncation shows here
                return data, _to_rgb8(img, path)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise UserError(f"image {path} is unreadable or corrupt ({one_line(exc)}); replace or remove "
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


def open_dataset(dataset: Mapping[str, Any], split: str, *, synthetic_path: str | os.PathLike = SYNTHETIC_PATH,
                 preprocessing: str = "analysis") -> SyntheticDataset | ImageFolderDataset:
    """The dataset a validated ``dataset`` params section names.

    Args:
        dataset: The ``dataset`` section of a validated config (``kind``, ``synthetic``, ``imagefolder``,
            ``preprocess``, ``eval_preprocess``).
        split: ``"train"`` or ``"test"`` (for imagefolder data: ``train_dir`` or ``val_dir``).
        synthetic_path: The generated NPZ, for ``dataset.kind: synthetic``.
        preprocessing: Which transform imagefolder images get: ``"analysis"`` (``dataset.preprocess``, the
            paper's analysis preprocessing: sample, extract, evolution) or ``"evaluation"``
            (``dataset.eval_preprocess``, DeiT's evaluation transform: training and scoring models).
            Synthetic images are only normalised either way.
    """
    split_index(split)
    if preprocessing not in _PREPROCESSING_KEYS:
        raise ValueError(f"preprocessing must be one of {sorted(_PREPROCESSING_KEYS)}, got {preprocessing!r}")
    if dataset["kind"] == "synthetic":
        return SyntheticDataset(synthetic_path, split)
    if dataset["kind"] == "imagefolder":
        folder = dataset["imagefolder"]
        if not folder.get("root"):
            raise UserError("dataset.kind is 'imagefolder' but dataset.imagefolder.root is not set; set it to "
                            "your ImageNet-style directory")
        split_dir = folder.get("train_dir", "train") if split == "train" else folder.get("val_dir", "val")
        key = _PREPROCESSING_KEYS[preprocessing]
        return ImageFolderDataset(folder["root"], split_dir, dataset[key], key=f"dataset.{key}")
    raise UserError(f"unknown dataset.kind '{dataset['kind']}'; use synthetic or imagefolder")
