"""The recipe's data augmentation: DeiT's RandAugment / random erasing view of the training set and Mixup /
CutMix (timm's implementations)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from pipeline_steps.errors import UserError
from pipeline_steps.training.recipe import DEIT_COLOR_JITTER, Recipe

__all__ = ["Augmented", "build_mixup", "training_view"]


class Augmented(Dataset):
    """A view of a dataset of pixels with a training transform (RandAugment, random erasing)."""

    def __init__(self, base: Dataset, transform: Any) -> None:
        self.base, self.transform = base, transform
        self.classes = getattr(base, "classes", None)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.transform(self.base.pil(index)), self.base.labels[index]


def training_view(dataset: Dataset, recipe: Recipe) -> Dataset:
    """``dataset`` as the training loop sees it: with RandAugment and random erasing when the recipe asks.

    ImageFolder data gets DeiT's full training transform (timm ``create_transform``: random resized crop to
    the dataset's crop size, bicubic, flip, colour jitter 0.4 (DeiT's default), RandAugment, random erasing,
    the dataset's mean and std); generated data (already the model's input size) gets RandAugment and random
    erasing only. Without augmentation the dataset is returned as is: open it with
    ``open_dataset(..., preprocessing="evaluation")`` (``dataset.eval_preprocess``, DeiT's evaluation
    transform), which also gives this view its crop size, mean and std.
    """
    if not (recipe.randaugment or recipe.reprob > 0):
        return dataset
    from timm.data import create_transform
    from timm.data.auto_augment import rand_augment_transform
    from timm.data.random_erasing import RandomErasing
    from torchvision import transforms

    from pipeline_steps.data.datasets import ImageFolderDataset, SyntheticDataset

    if isinstance(dataset, ImageFolderDataset):
        p = dataset.preprocess
        train_view = copy.copy(dataset)  # same file list; only the (cached) transform differs
        train_view.__dict__["transform"] = create_transform(
            int(p["crop"]), is_training=True, color_jitter=DEIT_COLOR_JITTER, auto_augment=recipe.randaugment,
            interpolation="bicubic", re_prob=recipe.reprob, re_mode="pixel", re_count=1,
            mean=tuple(p["mean"]), std=tuple(p["std"]))
        _posterize_zero_bits(train_view.__dict__["transform"])
        return train_view
    if not isinstance(dataset, SyntheticDataset):
        raise UserError(f"augmentation is not supported for {type(dataset).__name__}; set randaugment: null "
                        "and reprob: 0")
    steps: list[Any] = []
    if recipe.randaugment:
        mean = tuple(int(round(255 * float(m))) for m in dataset.mean.flatten().tolist())
        steps.append(rand_augment_transform(recipe.randaugment, {"translate_const": 10, "img_mean": mean}))
    steps += [transforms.PILToTensor(), transforms.ConvertImageDtype(torch.float32),
              transforms.Normalize(dataset.mean.flatten().tolist(), dataset.std.flatten().tolist())]
    if recipe.reprob > 0:
        steps.append(RandomErasing(recipe.reprob, mode="pixel", max_count=1, device="cpu"))
    return Augmented(dataset, _posterize_zero_bits(transforms.Compose(steps)))


def _posterize_zero_bits(transform: Any) -> Any:
    """Let RandAugment's posterize keep 0 bits again (a black image), as Pillow did before it raised.

    DeiT's ``rand-m9-mstd0.5-inc1`` maps a sampled magnitude of 10 to "keep 0 bits"; recent Pillow (13 here)
    raises ValueError for that in ``ImageOps.posterize``, which stopped training within the first epoch
    (roughly one image in a thousand draws it). Older Pillow's lookup table for 0 bits maps every value to 0.
    """
    from timm.data.auto_augment import RandAugment, posterize

    def zero_bits_black(img: Any, bits_to_keep: int, **kwargs: Any) -> Any:
        return img.point(lambda _: 0) if bits_to_keep <= 0 else posterize(img, bits_to_keep, **kwargs)

    for step in getattr(transform, "transforms", [transform]):
        if isinstance(step, RandAugment):
            for op in step.ops:
                if op.name.startswith("Posterize"):
                    op.aug_fn = zero_bits_black
    return transform


def build_mixup(recipe: Recipe, num_classes: int) -> Any | None:
    """timm's ``Mixup`` (batch mode, label smoothing folded into the mixed targets), or None when off."""
    if recipe.mixup <= 0 and recipe.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, label_smoothing=recipe.label_smoothing,
                 num_classes=num_classes)
