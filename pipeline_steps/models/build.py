"""Building the analysed and trained models (Vision Transformers; a ResNet for the analysis only) from one spec.

Every model is a timm model built from the ``$defs/model`` dict of ``params.yaml``::

    {"arch": "cait_s24_224", "kwargs": {...},
     "weights": {"source": "train" | "random" | "timm" | "file", "tag": ..., "path": ..., "seed": 0}}

:func:`create_model` turns a spec into an eval-mode float32 model; :func:`model_depth` reads its number of
blocks without building its weights; :func:`describe_model` names it for figure titles.
"""

from __future__ import annotations

import difflib
import os
import re
from typing import Any, Mapping

import torch

from pipeline_steps.errors import UserError, one_line
# Registers the follow-up's student architectures (vit_lift, vit_widelast) with timm, so every spec names them.
from pipeline_steps.models import remedies as _remedies  # noqa: F401
from pipeline_steps.models.layers import layer_kind, num_blocks, num_layers
from pipeline_steps.models.weights import load_weights

__all__ = ["create_model", "describe_model", "meta_model", "model_depth"]


def _check_arch(arch: str) -> None:
    import timm

    if timm.is_model(arch):
        return
    close = _close_matches(arch, timm.list_models())
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    family = arch.split("_")[0][:3] or "vit"
    raise UserError(f"unknown model '{arch}': not a timm architecture{hint}; "
                    f"see timm.list_models('{family}*')")


def _close_matches(name: str, candidates: list[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """Closest candidates, also scoring each against its first ``len(name)`` characters.

    Users often type a truncated or misspelt prefix ('vitt_tiny' for 'vit_tiny_patch16_224'), which
    plain ``difflib.get_close_matches`` ranks below unrelated short names.
    """
    scored = []
    for cand in candidates:
        full = difflib.SequenceMatcher(None, name, cand).ratio()
        prefix = difflib.SequenceMatcher(None, name, cand[:len(name)]).ratio()
        score = max(full, prefix)
        if score >= cutoff:
            scored.append((-score, -full, cand))
    return [cand for _, _, cand in sorted(scored)[:n]]


def _pretrained_name(arch: str, tag: str | None) -> str:
    """The ``arch.tag`` name timm resolves pretrained weights from, validated against timm's registry.

    ``tag`` is either a full name (``cait_s24_224.fb_dist_in1k``) or only the part after the dot
    (``fb_dist_in1k``); ``None`` means timm's default tag for ``arch``.
    """
    import timm

    if not tag:
        name = arch
        available = timm.list_pretrained(f"{arch}.*")
        if not available:
            raise UserError(f"timm has no pretrained weights for '{arch}'; use model.weights.source=file "
                            "with a local weight file, or source=random")
        return name
    name = tag if "." in tag else f"{arch}.{tag}"
    tag_arch = name.split(".", 1)[0]
    if tag_arch != arch:
        raise UserError(f"model.weights.tag '{tag}' is for '{tag_arch}' but model.arch is '{arch}'; "
                        "make them name the same architecture")
    if name not in timm.list_pretrained(name):
        options = timm.list_pretrained(f"{arch}.*")
        listed = ", ".join(options[:6]) + (", ..." if len(options) > 6 else "") if options else "none"
        raise UserError(f"timm has no pretrained tag '{name}'; available for '{arch}': {listed}")
    return name


def _build(arch: str, kwargs: Mapping[str, Any], *, pretrained: bool, name: str | None = None) -> torch.nn.Module:
    import timm

    try:
        return timm.create_model(name or arch, pretrained=pretrained, **kwargs)
    except (TypeError, ValueError, AssertionError, ArithmeticError, RuntimeError) as exc:
        # timm forwards kwargs to the model constructor, which rejects them in its own ways: a bad key is a
        # TypeError, embed_dim not divisible by num_heads an AssertionError, num_heads 0 a ZeroDivisionError,
        # a negative size a RuntimeError. The kwargs are the only input here, so each is the config's.
        raise UserError(f"model.kwargs not accepted by '{arch}' ({type(exc).__name__}: {one_line(exc)}); check the "
                        f"model's kwargs {dict(kwargs)} (e.g. embed_dim must be divisible by num_heads)") from None


def create_model(spec: Mapping[str, Any], *, weights_path: str | os.PathLike | None = None) -> torch.nn.Module:
    """Build the timm model a params model spec describes, with its weights, in eval mode and float32.

    Args:
        spec: The ``$defs/model`` dict: ``arch``, ``kwargs`` and ``weights`` (``source``: ``random``
            = timm init under ``torch.manual_seed(seed)``; ``timm`` = timm pretrained ``tag``;
            ``file`` = local weight file ``path``; ``train`` = this pipeline's checkpoint, given as
            ``weights_path``).
        weights_path: A weight file that overrides whatever ``spec.weights`` says (the checkpoint a
            rule passes in). Required for ``source: train``.

    Returns:
        The model, ``eval()``, float32, on the CPU.

    Raises:
        UserError: Unknown arch (with close matches), kwargs the model rejects, a model without
            ``forward_intermediates``/``blocks``, missing pretrained weights (no network or cache),
            or a weight file that is missing, unsafe or does not match.
    """
    arch = spec.get("arch")
    if not isinstance(arch, str) or not arch:
        raise UserError("model spec has no 'arch'; set model.arch to a timm architecture name")
    kwargs = dict(spec.get("kwargs") or {})
    weights = _weights_spec(spec)
    source = weights["source"]
    _check_arch(arch)

    if weights_path is not None or source in ("random", "file", "train"):
        if source == "train" and weights_path is None:
            raise UserError(f"model '{arch}' has weights.source=train but no checkpoint was given; pass the "
                            "trained weight file (--model-weights or --teacher-weights "
                            "results/teacher/model.safetensors) or use source=random")
        if source == "file" and weights_path is None and not weights["path"]:
            raise UserError(f"model '{arch}' has weights.source=file but model.weights.path is not set; "
                            "set it to a .safetensors or .pth file")
        # A forked RNG: the init is a pure function of the seed and callers' random streams are untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(weights["seed"]))
            model = _build(arch, kwargs, pretrained=False)
        path = weights_path if weights_path is not None else (weights["path"] if source == "file" else None)
        if path is not None:
            _check_model(model, arch)
            load_weights(model, path)
    elif source == "timm":
        name = _pretrained_name(arch, weights["tag"])
        try:
            # Seeded too: a head resized for another num_classes is freshly initialised by timm.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(weights["seed"]))
                model = _build(arch, kwargs, pretrained=True, name=name)
        except OSError as exc:
            # huggingface_hub's LocalEntryNotFoundError, urllib's URLError and requests' errors are
            # all OSErrors: no network and nothing in the local cache.
            raise UserError(f"could not get timm pretrained weights '{name}' ({type(exc).__name__}: no network "
                            "and not in the local cache); download the file elsewhere and use "
                            "model.weights.source=file with model.weights.path") from None
    else:
        raise UserError(f"unknown model.weights.source '{source}'; use one of train, random, timm, file")

    _check_model(model, arch)
    return model.float().eval()


def meta_model(spec: Mapping[str, Any]) -> torch.nn.Module:
    """The model ``spec`` describes (``arch`` + ``kwargs``; ``weights`` ignored) on PyTorch's meta device: its
    structure without allocating, initialising or loading any weight.

    Raises:
        UserError: Unknown arch (with close matches) or kwargs the model rejects.
    """
    _check_arch(spec["arch"])
    with torch.device("meta"):
        return _build(spec["arch"], spec.get("kwargs") or {}, pretrained=False)


def model_depth(spec: Mapping[str, Any]) -> int:
    """The number of blocks of the model ``spec`` describes, without allocating or loading its weights
    (:func:`meta_model`)."""
    return num_blocks(meta_model(spec))


def _check_model(model: torch.nn.Module, arch: str) -> None:
    if not callable(getattr(model, "forward_intermediates", None)):
        raise UserError(f"model '{arch}' has no forward_intermediates in timm {_timm_version()}; "
                        "use a ViT-style timm model (vit_*, deit_*, cait_*) or upgrade timm (>= 1.0.3)")
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        try:
            layer_kind(model)  # a CNN's residual stages (a ResNet) can be analysed
            return
        except UserError:
            pass
    if not isinstance(blocks, (torch.nn.Sequential, torch.nn.ModuleList)):
        raise UserError(f"model '{arch}' has no 'blocks' sequence of transformer blocks nor residual stages; the "
                        "analysis needs a plain ViT-style model (vit_*, deit_*, cait_*, eva_*, ...) or a ResNet")


def _timm_version() -> str:
    import timm

    return timm.__version__


#: timm architecture prefix -> the family name figures print.
_FAMILY_NAMES = {"vit": "ViT", "deit": "DeiT", "deit3": "DeiT-III", "cait": "CaiT", "beit": "BEiT", "eva": "EVA",
                 "eva02": "EVA-02", "flexivit": "FlexiViT", "xcit": "XCiT", "swin": "Swin", "resnet": "ResNet"}


def describe_model(spec: Mapping[str, Any]) -> str:
    """The model as configured, for figure titles: ``"ViT, 12 blocks, width 128, patch 8"``, ``"ResNet, 4 stages"``.

    The timm name alone misleads once ``kwargs`` override its defaults (``vit_tiny_patch16_224`` with
    ``depth: 6, patch_size: 8``), so the numbers come from the model built from ``arch`` + ``kwargs``, on
    torch's meta device (no memory, no weights, no init cost).

    Args:
        spec: A params model spec (``arch``, ``kwargs``; ``weights`` is ignored).

    Returns:
        Family, number of blocks (:func:`num_blocks`) or of a CNN's stages (:func:`num_layers`), embedding
        width and patch size; the parts the model does not have are left out.

    Raises:
        UserError: Unknown architecture or kwargs it does not accept.
    """
    arch = spec["arch"]
    model = meta_model(spec)
    prefix = arch.split("_")[0]
    # "resnet18", "resnet10t": the family is the prefix without its depth.
    family = _FAMILY_NAMES.get(prefix) or _FAMILY_NAMES.get(re.sub(r"\d.*$", "", prefix), prefix)
    parts = [family]
    if getattr(model, "blocks", None) is not None:
        parts.append(f"{len(model.blocks)} blocks")
    else:
        try:
            if layer_kind(model) == "stage":
                parts.append(f"{num_layers(model)} stages")
        except UserError:
            pass
    width = getattr(model, "embed_dim", None)
    if isinstance(width, int):
        parts.append(f"width {width}")
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is not None:
        patch = tuple(patch) if isinstance(patch, (tuple, list)) else (patch, patch)
        parts.append(f"patch {patch[0]}" if patch[0] == patch[1] else f"patch {patch[0]}x{patch[1]}")
    return ", ".join(parts)


def _weights_spec(spec: Mapping[str, Any]) -> dict:
    """The spec's ``weights`` with the schema's defaults filled (specs also come from tests and code)."""
    weights = dict(spec.get("weights") or {})
    weights.setdefault("source", "random")
    weights.setdefault("tag", None)
    weights.setdefault("path", None)
    weights.setdefault("seed", 0)
    return weights
