"""A model's layers: how many, which ones an analysis names, their features, and input checks.

For a ViT-style model the "layers" of the analysis are the entries of ``model.blocks``, exactly what timm's
``forward_intermediates`` enumerates (for CaiT the class-attention ``blocks_token_only`` are not layers);
their kind is ``"block"``.

For a timm ResNet (``timm.models.resnet.ResNet``: resnet*, resnext*, seresnet*, wide_resnet*, ...) the layers
are its residual *stages*, kind ``"stage"``: the ``model.feature_info`` entries whose module is ``layer<N>``.
Other CNNs are refused: each family enumerates ``forward_intermediates`` its own way (a stem at index 0 or
not), and only ResNet's is checked here. ResNet's ``forward_intermediates`` indexes five feature maps, 0 being the
stem (``act1``: conv-bn-act before the max-pool) and 1..4 ``layer1..layer4``; the stem is left out, as a
ViT's patch embedding is, so analysis layer ``i`` (0-based) is ``forward_intermediates`` index
``i + 1`` (:func:`intermediate_indices`). Only the analysis (extract, reduce, figures) takes stage models;
distillation is ViT-only.
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from pipeline_steps.errors import UserError

__all__ = ["block_channels", "check_input_size", "check_num_classes", "forward_with_features", "intermediate_indices",
           "kind_of_layer_names", "layer_kind", "layer_names", "model_arch", "num_blocks", "num_layers",
           "order_features", "resolve_layers"]

#: A ``feature_info`` module that is a residual stage of a ResNet (``layer1`` .. ``layer4``).
_STAGE_MODULE = re.compile(r"^layer\d+$")


def _stage_offset(model: torch.nn.Module) -> int | None:
    """For a timm ResNet: the ``forward_intermediates`` index of its first stage (1: index 0 is the stem);
    ``None`` for any other model."""
    from timm.models.resnet import ResNet

    if getattr(model, "blocks", None) is not None or not isinstance(model, ResNet):
        return None
    info = getattr(model, "feature_info", None)
    if not isinstance(info, (list, tuple)) or not info:
        return None
    modules = [str(entry.get("module", "")) if isinstance(entry, dict) else "" for entry in info]
    # The enumeration checked (timm 1.0's ResNet.forward_intermediates): the stem, then layer1..layer4.
    stages = [bool(_STAGE_MODULE.match(m)) for m in modules]
    return 1 if stages == [False, True, True, True, True] else None


def layer_kind(model: torch.nn.Module) -> str:
    """``"block"`` for a ViT-style model (``model.blocks``), ``"stage"`` for a CNN's residual stages.

    Raises:
        UserError: The model has neither.
    """
    if getattr(model, "blocks", None) is not None:
        return "block"
    if _stage_offset(model) is not None:
        return "stage"
    raise UserError(f"model '{model_arch(model)}' has no 'blocks' and no residual stages in its feature_info; "
                    "use a ViT-style timm model or a ResNet")


def kind_of_layer_names(names: Iterable[str]) -> str:
    """``"stage"`` when every name is a ResNet stage's module (``layer3``), else ``"block"``: the
    layer kind of a reductions table, from its ``layer_name`` column (the table has no ``layer_kind``
    column, so that a ViT's table keeps its bytes)."""
    names = [str(n) for n in names]
    return "stage" if names and all(_STAGE_MODULE.match(n) for n in names) else "block"


def num_layers(model: torch.nn.Module) -> int:
    """Number of analysable layers: the blocks of a ViT (:func:`num_blocks`) or the stages of a CNN."""
    if layer_kind(model) == "block":
        return num_blocks(model)
    return len(model.feature_info) - _stage_offset(model)


def intermediate_indices(model: torch.nn.Module, indices: Iterable[int]) -> list[int]:
    """The ``forward_intermediates`` indices of the 0-based analysis layers ``indices`` (the same for a ViT;
    shifted past the stem for a ResNet)."""
    offset = 0 if layer_kind(model) == "block" else _stage_offset(model)
    return [int(i) + offset for i in indices]


def num_blocks(model: torch.nn.Module) -> int:
    """Number of blocks of a ViT-style model: ``len(model.blocks)``, the blocks ``forward_intermediates`` indexes.

    CaiT's class-attention ``blocks_token_only`` are not counted (method.md section 1). Distillation needs
    blocks; the analysis also takes a CNN's stages (:func:`num_layers`).
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        stages = " (a CNN: only its analysis is supported, distillation needs a ViT)" \
            if _stage_offset(model) is not None else ""
        raise UserError(f"model '{model_arch(model)}' has no 'blocks'{stages}; use a ViT-style timm model")
    return len(blocks)


def block_channels(model: torch.nn.Module) -> list[int]:
    """The channel count of each block's output map (what ``forward_intermediates`` returns per block).

    ``model.embed_dim`` for every block of a plain ViT; a block that changes the width (the last block of
    the follow-up's Lift and WideLast students, :mod:`pipeline_steps.models.remedies`) says its own with an
    ``out_channels`` attribute.

    Raises:
        UserError: The model has no ``blocks`` or no integer ``embed_dim``.
    """
    n = num_blocks(model)
    width = getattr(model, "embed_dim", None)
    if isinstance(width, bool) or not isinstance(width, int):
        raise UserError(f"model '{model_arch(model)}' has no integer embed_dim; use a ViT-style timm model")
    return [int(getattr(model.blocks[i], "out_channels", width)) for i in range(n)]


def resolve_layers(model: torch.nn.Module, layers: str | Iterable[int]) -> list[int]:
    """The 0-based layer (block or stage) indices ``analysis.layers`` selects, sorted ascending.

    Sorted because ``forward_intermediates`` returns intermediates in layer order whatever the order
    of ``indices``; keeping both the same makes array names line up with the layers by construction.

    Args:
        model: The model (its block or stage count bounds the indices).
        layers: ``"all"`` or a list of 0-based layer indices.

    Raises:
        UserError: An index out of range, a repeated index, or a value that is not an integer.
    """
    kind = layer_kind(model)
    n = num_layers(model)
    if isinstance(layers, str):
        if layers != "all":
            raise UserError(f"analysis.layers is '{layers}'; use \"all\" or a list of 0-based {kind} indices")
        return list(range(n))
    out: list[int] = []
    for i in layers:
        if isinstance(i, bool) or not isinstance(i, int):
            raise UserError(f"analysis.layers contains {i!r}, not an integer; use 0-based {kind} indices")
        if not 0 <= i < n:
            raise UserError(f"analysis.layers contains {i} but the model has {n} {kind}s (valid 0..{n - 1})")
        if i in out:
            raise UserError(f"analysis.layers contains {i} twice; list each {kind} once")
        out.append(i)
    if not out:
        raise UserError(f"analysis.layers is empty; use \"all\" or a non-empty list of {kind} indices")
    return sorted(out)


def layer_names(model: torch.nn.Module, indices: Iterable[int]) -> list[str]:
    """Module names of the selected layers: ``["blocks.0", "blocks.5"]`` for a ViT, the ``feature_info``
    modules (``["layer1", "layer4"]``) for a ResNet."""
    kind = layer_kind(model)
    n = num_layers(model)
    names = []
    for i in indices:
        if not 0 <= i < n:
            raise UserError(f"layer index {i} is out of range: the model has {n} {kind}s (valid 0..{n - 1})")
        names.append(f"blocks.{i}" if kind == "block"
                     else str(model.feature_info[_stage_offset(model) + i]["module"]))
    return names


def check_num_classes(model: torch.nn.Module, n_classes: int, *, where: str = "model.kwargs.num_classes") -> None:
    """Fail with a one-line message when the classifier's output size is not the dataset's class count."""
    classes = getattr(model, "num_classes", None)
    if classes is not None and classes != n_classes:
        raise UserError(f"{where} is {classes} but the dataset has {n_classes} classes; make them equal")


def check_input_size(model: torch.nn.Module, size: tuple[int, int], *, where: str = "model.kwargs.img_size") -> None:
    """Fail with a clear message when images of ``size`` (H, W) cannot go through ``model``.

    timm's patch embedding asserts on a size mismatch deep in ``forward``; this check says which
    setting to change instead. Models built with ``dynamic_img_size`` accept any multiple of the patch.
    A model without a patch embedding (a ResNet) takes any size and is not checked.

    Args:
        model: A timm ViT-style model (or a ResNet).
        size: Image height and width.
        where: The params key to name in the message.
    """
    pe = getattr(model, "patch_embed", None)
    if pe is None:
        return
    h, w = int(size[0]), int(size[1])
    patch = tuple(getattr(pe, "patch_size", (1, 1)))
    if getattr(pe, "dynamic_img_size", False) or not getattr(pe, "strict_img_size", True):
        if h % patch[0] or w % patch[1]:
            raise UserError(f"images are {h}x{w} but model '{model_arch(model)}' has patch size "
                            f"{patch[0]}x{patch[1]}, which must divide them; change the image size or patch_size")
        return
    img = tuple(getattr(pe, "img_size", None) or ())
    if img and (h, w) != tuple(img):
        raise UserError(f"images are {h}x{w} but model '{model_arch(model)}' expects {img[0]}x{img[1]}; "
                        f"set {where} to {h} (or change the data's image size)")


def model_arch(model: torch.nn.Module) -> str:
    """The timm architecture name of ``model`` (from its ``pretrained_cfg``), or its class name."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model).__name__


def forward_with_features(model: nn.Module, images: Tensor, layers: Sequence[int]) -> tuple[Tensor, list[Tensor]]:
    """Logits and the raw block outputs ``[B, C, H, W]`` of blocks ``layers`` (in that order) in one pass."""
    if not layers:
        return model(images), []
    extracted = sorted(set(layers))
    final, feats = model.forward_intermediates(images, indices=extracted, norm=False, output_fmt="NCHW")
    return model.forward_head(final), order_features(feats, extracted, list(layers))


def order_features(features: Sequence[Tensor], extracted: Sequence[int], wanted: Sequence[int]) -> list[Tensor]:
    """Re-arrange extracted block outputs into pair order.

    timm's ``forward_intermediates(indices=...)`` returns blocks in ascending block order, once each; a
    method wants them in pair order (``method.teacher_layers``), possibly with repeats.

    Args:
        features: The maps ``forward_intermediates`` returned.
        extracted: The block index of each map in ``features`` (e.g. ``sorted(set(wanted))``).
        wanted: Block indices in the order the method expects.

    Returns:
        ``[features[extracted.index(i)] for i in wanted]``.

    Raises:
        UserError: A wanted block was not extracted, or the two lengths differ.
    """
    if len(features) != len(extracted):
        raise UserError(f"got {len(features)} feature maps for {len(extracted)} block indices; extract "
                        "exactly the blocks you name")
    by_block = dict(zip(extracted, features))
    missing = sorted(set(wanted) - set(by_block))
    if missing:
        raise UserError(f"blocks {missing} were not extracted; pass indices=sorted(set(method.teacher_layers))"
                        " (or student_layers) to forward_intermediates")
    return [by_block[i] for i in wanted]
