"""Model construction, weight files and layer selection for the analysed Vision Transformers.

Every model the pipeline analyses or trains is a timm model built from one spec, the ``$defs/model``
dict of ``params.yaml``::

    {"arch": "cait_s24_224", "kwargs": {...},
     "weights": {"source": "train" | "random" | "timm" | "file", "tag": ..., "path": ..., "seed": 0}}

:func:`create_model` turns a spec into an eval-mode float32 model. The "layers" of the analysis are the
entries of ``model.blocks``, exactly what timm's ``forward_intermediates`` enumerates (for CaiT the
class-attention ``blocks_token_only`` are not layers). Weight files are read without executing pickled
code: ``.safetensors``, or ``.pth``/``.pt``/``.bin`` through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from ._io import write_safetensors
from .errors import UserError

__all__ = [
    "create_model", "load_weights", "save_weights", "read_weights_metadata", "load_checkpoint_spec",
    "weights_hash", "num_blocks", "resolve_layers", "layer_names", "check_input_size", "model_arch",
]

#: Suffixes read with ``torch.load(weights_only=True)``.
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")

#: Checkpoint containers unwrapped by :func:`load_weights`, in order of preference. The raw model
#: weights come before the EMA copy (timm's own loader prefers EMA): the pipeline analyses the model
#: that was trained, and DeiT-style checkpoints (the authors' code) keep it under ``model``.
_STATE_DICT_KEYS = ("model", "state_dict", "state_dict_ema", "model_ema")

#: Stored in the safetensors metadata by :func:`save_weights`, so files of this pipeline are recognisable.
_WEIGHTS_FORMAT = "distillation-dynamics/weights"


def _weights_spec(spec: Mapping[str, Any]) -> dict:
    """The spec's ``weights`` with the schema's defaults filled (specs also come from tests and code)."""
    weights = dict(spec.get("weights") or {})
    weights.setdefault("source", "random")
    weights.setdefault("tag", None)
    weights.setdefault("path", None)
    weights.setdefault("seed", 0)
    return weights


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
        detail = str(exc).splitlines()[0] if str(exc) else "rejected"
        raise UserError(f"model.kwargs not accepted by '{arch}' ({type(exc).__name__}: {detail}); check the "
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
                            "trained weights (--weights results/<name>/model.safetensors) or use source=random")
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


def _check_model(model: torch.nn.Module, arch: str) -> None:
    if not callable(getattr(model, "forward_intermediates", None)):
        raise UserError(f"model '{arch}' has no forward_intermediates in timm {_timm_version()}; "
                        "use a ViT-style timm model (vit_*, deit_*, cait_*) or upgrade timm (>= 1.0.3)")
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (torch.nn.Sequential, torch.nn.ModuleList)):
        raise UserError(f"model '{arch}' has no 'blocks' sequence of transformer blocks; the analysis needs a "
                        "plain ViT-style model (vit_*, deit_*, cait_*, eva_*, ...)")


def _timm_version() -> str:
    import timm

    return timm.__version__


def model_arch(model: torch.nn.Module) -> str:
    """The timm architecture name of ``model`` (from its ``pretrained_cfg``), or its class name."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model).__name__


# --------------------------------------------------------------------------------------------------
# Weight files
# --------------------------------------------------------------------------------------------------

def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"weight file not found: {path}; check model.weights.path or the --weights argument")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        import safetensors.torch

        try:
            return safetensors.torch.load_file(str(path), device="cpu")
        except Exception as exc:  # SafetensorError and OSError: a truncated or foreign file
            raise UserError(f"weight file {path} is not a readable safetensors file ({exc}); "
                            "re-create or re-download it") from None
    if suffix not in TORCH_SUFFIXES:
        raise UserError(f"weight file {path} has unsupported suffix '{path.suffix}'; "
                        f"use .safetensors or one of {', '.join(TORCH_SUFFIXES)}")
    try:
        # weights_only=True never runs pickled code. argparse.Namespace is allowed because DeiT-style
        # training checkpoints (the authors' code) store their 'args' in it: a plain attribute bag.
        # torch's own warnings (and its error text, which suggests weights_only=False) are not shown: the
        # one line below says what is wrong and the safe fix.
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        blocked = _blocked_globals(path, str(exc))
        if blocked:
            raise UserError(f"weight file {path} holds pickled Python objects ({', '.join(blocked)}), which are "
                            "refused because loading them could run code; convert it to .safetensors (or a plain "
                            "state dict of tensors) in a trusted environment") from None
        text = str(exc)
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        reason = detail.group(1).strip() if detail else (text.strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"weight file {path} is not a readable PyTorch file ({reason}); "
                        "re-create or re-download it") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"weight file {path} is not a readable PyTorch file ({first}); "
                        "re-create or re-download it") from None
    return _unwrap(obj, path)


def _blocked_globals(path: Path, error_text: str) -> list[str]:
    """The Python globals (``module.name``) that made ``torch.load(weights_only=True)`` refuse ``path``.

    Asked of torch's own scanner (which reads the pickle without executing it), so every blocked global is
    named whatever wording torch's error uses; the error text is the fallback for a file the scanner cannot
    read.
    """
    try:
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - the scanner is a best effort; the error text still names the global
        found = []
    if not found:
        found = re.findall(r"GLOBAL ([\w.]+)", error_text)
    return sorted(set(found))


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint container; ``module.`` (DDP) prefixes stripped."""
    if isinstance(obj, Mapping):
        for key in _STATE_DICT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner:
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise UserError(f"weight file {path} holds no state dict (expected a mapping of tensors, or one under "
                        f"{', '.join(repr(k) for k in _STATE_DICT_KEYS)})")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(f"weight file {path} is not a state dict: entry '{bad[0]}' is not a tensor "
                        f"({len(bad)} such entries); save model.state_dict() only")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def _fmt_shape(shape: Iterable[int]) -> str:
    return "[" + ",".join(str(s) for s in shape) + "]"


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"


def load_weights(model: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Load a weight file into ``model`` strictly (every key, every shape).

    Args:
        model: The model to fill (in place).
        path: ``.safetensors`` (read with safetensors), or ``.pth``/``.pt``/``.bin``/``.ckpt`` (read with
            ``torch.load(weights_only=True)``: tensors and plain containers only, no pickled code).
            A state dict may be wrapped as ``{'model': sd}``, ``{'state_dict': sd}``,
            ``{'state_dict_ema': sd}`` or ``{'model_ema': sd}`` (first found in that order) and may
            carry a ``module.`` (DistributedDataParallel) prefix.

    Returns:
        ``model``.

    Raises:
        UserError: A missing, corrupt or unsafe file, or one whose keys or shapes do not match the
            model (one line: counts and an example of each kind of mismatch).
    """
    path = Path(path)
    state = _read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{_plural(len(missing), 'missing key')} (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            parts.append(f"{_plural(len(shapes), 'shape mismatch', 'shape mismatches')} (e.g. {k}: file "
                         f"{_fmt_shape(state[k].shape)} vs model {_fmt_shape(own[k].shape)})")
        raise UserError(f"weight file {path} does not match model '{model_arch(model)}': {', '.join(parts)}; "
                        "check model.arch/kwargs")
    with torch.no_grad():
        model.load_state_dict(state, strict=True)
    return model


def save_weights(model: torch.nn.Module, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> str:
    """Write ``model``'s state dict as a safetensors file, atomically, with metadata.

    Args:
        model: The model to save.
        path: Destination (``.safetensors``).
        metadata: JSON-serialisable values stored in the file header, one JSON string per key. Give
            at least ``arch`` and ``kwargs`` so :func:`load_checkpoint_spec` can rebuild the model;
            ``arch`` defaults to the model's timm architecture. ``format`` and ``weights_sha256``
            (:func:`weights_hash`) are added.

    Returns:
        The :func:`weights_hash` of the saved weights.
    """
    meta = dict(metadata or {})
    meta.setdefault("arch", model_arch(model))
    digest = weights_hash(model)
    meta.update(format=_WEIGHTS_FORMAT, weights_sha256=digest)
    header = {str(k): json.dumps(v, sort_keys=True) for k, v in meta.items()}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    write_safetensors(path, tensors, header)
    return digest


def read_weights_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata :func:`save_weights` stored in a safetensors file (values JSON-decoded).

    Raises:
        UserError: The file is missing or not a readable safetensors file.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"weight file not found: {path}; run the training step first or fix the path")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except Exception as exc:  # SafetensorError: truncated or not safetensors at all
        raise UserError(f"weight file {path} is not a readable safetensors file ({exc}); re-create it") from None
    out: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v  # written by another tool: keep the plain string
    return out


def load_checkpoint_spec(path: str | os.PathLike) -> dict:
    """Rebuild the model spec of a file written by :func:`save_weights`.

    Returns:
        ``{"arch", "kwargs", "weights": {"source": "file", "path": str(path), "tag": None, "seed": 0}}``,
        ready for :func:`create_model`.

    Raises:
        UserError: The file lacks ``arch`` metadata (not written by this pipeline).
    """
    meta = read_weights_metadata(path)
    arch = meta.get("arch")
    if not isinstance(arch, str):
        raise UserError(f"weight file {path} has no 'arch' metadata (not written by this pipeline); "
                        "give the model spec in params instead")
    kwargs = meta.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise UserError(f"weight file {path} has malformed 'kwargs' metadata; give the model spec in params instead")
    return {"arch": arch, "kwargs": kwargs,
            "weights": {"source": "file", "path": str(path), "tag": None, "seed": 0}}


def weights_hash(model: torch.nn.Module) -> str:
    """SHA-256 over the state dict: for each key in sorted order, the key, dtype, shape and raw bytes.

    Independent of device and of how the tensors are strided in memory; equal for equal weights.
    """
    h = hashlib.sha256()
    state = model.state_dict()
    for key in sorted(state):
        t = state[key].detach().to("cpu").contiguous()
        h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        # A uint8 view covers every dtype (numpy has no bfloat16) without copying.
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------

def num_blocks(model: torch.nn.Module) -> int:
    """Number of analysable layers: ``len(model.blocks)``, the blocks ``forward_intermediates`` indexes.

    CaiT's class-attention ``blocks_token_only`` are not counted (method.md section 1).
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise UserError(f"model '{model_arch(model)}' has no 'blocks'; use a ViT-style timm model")
    return len(blocks)


def resolve_layers(model: torch.nn.Module, layers: str | Iterable[int]) -> list[int]:
    """The 0-based block indices ``analysis.layers`` selects, sorted ascending.

    Sorted because ``forward_intermediates`` returns intermediates in block order whatever the order
    of ``indices``; keeping both the same makes array names line up with the blocks by construction.

    Args:
        model: The model (its block count bounds the indices).
        layers: ``"all"`` or a list of 0-based block indices.

    Raises:
        UserError: An index out of range, a repeated index, or a value that is not an integer.
    """
    n = num_blocks(model)
    if isinstance(layers, str):
        if layers != "all":
            raise UserError(f"analysis.layers is '{layers}'; use \"all\" or a list of 0-based block indices")
        return list(range(n))
    out: list[int] = []
    for i in layers:
        if isinstance(i, bool) or not isinstance(i, int):
            raise UserError(f"analysis.layers contains {i!r}, not an integer; use 0-based block indices")
        if not 0 <= i < n:
            raise UserError(f"analysis.layers contains {i} but the model has {n} blocks (valid 0..{n - 1})")
        if i in out:
            raise UserError(f"analysis.layers contains {i} twice; list each block once")
        out.append(i)
    if not out:
        raise UserError("analysis.layers is empty; use \"all\" or a non-empty list of block indices")
    return sorted(out)


def layer_names(model: torch.nn.Module, indices: Iterable[int]) -> list[str]:
    """Module names of the selected blocks, e.g. ``["blocks.0", "blocks.5"]``."""
    n = num_blocks(model)
    names = []
    for i in indices:
        if not 0 <= i < n:
            raise UserError(f"layer index {i} is out of range: the model has {n} blocks (valid 0..{n - 1})")
        names.append(f"blocks.{i}")
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

    Args:
        model: A timm ViT-style model.
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


# --------------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------------

#: timm architecture prefix -> the family name figures print.
_FAMILY_NAMES = {"vit": "ViT", "deit": "DeiT", "deit3": "DeiT-III", "cait": "CaiT", "beit": "BEiT", "eva": "EVA",
                 "eva02": "EVA-02", "flexivit": "FlexiViT", "xcit": "XCiT", "swin": "Swin"}


def describe_model(spec: Mapping[str, Any]) -> str:
    """The model as configured, for figure titles: ``"ViT, 12 blocks, width 128, patch 8"``.

    The timm name alone misleads once ``kwargs`` override its defaults (``vit_tiny_patch16_224`` with
    ``depth: 6, patch_size: 8``), so the numbers come from the model built from ``arch`` + ``kwargs``, on
    torch's meta device (no memory, no weights, no init cost).

    Args:
        spec: A params model spec (``arch``, ``kwargs``; ``weights`` is ignored).

    Returns:
        Family, number of blocks (:func:`num_blocks`), embedding width and patch size; the parts the model
        does not have are left out.

    Raises:
        UserError: Unknown architecture or kwargs it does not accept.
    """
    arch, kwargs = spec["arch"], dict(spec.get("kwargs") or {})
    _check_arch(arch)
    with torch.device("meta"):
        model = _build(arch, kwargs, pretrained=False)
    family = _FAMILY_NAMES.get(arch.split("_")[0], arch.split("_")[0])
    parts = [family]
    if getattr(model, "blocks", None) is not None:
        parts.append(f"{len(model.blocks)} blocks")
    width = getattr(model, "embed_dim", None)
    if isinstance(width, int):
        parts.append(f"width {width}")
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is not None:
        patch = tuple(patch) if isinstance(patch, (tuple, list)) else (patch, patch)
        parts.append(f"patch {patch[0]}" if patch[0] == patch[1] else f"patch {patch[0]}x{patch[1]}")
    return ", ".join(parts)
