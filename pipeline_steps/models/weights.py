"""Weight files: reading torch and safetensors checkpoints without executing pickled code, and writing ours.

``.safetensors`` files are read directly, ``.pth``/``.pt``/``.bin``/``.ckpt`` through
``torch.load(weights_only=True)``; common checkpoint containers are unwrapped. Files this pipeline writes
(:func:`save_weights`) carry the spec that rebuilds the model (:func:`load_checkpoint_spec`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from pipeline_steps.artifacts import write_safetensors
from pipeline_steps.errors import UserError, one_line
from pipeline_steps.models.layers import model_arch

__all__ = ["TORCH_SUFFIXES", "load_checkpoint_spec", "load_weights", "read_weights_metadata", "save_weights",
           "weights_hash"]

#: Suffixes read with ``torch.load(weights_only=True)``.
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


#: Checkpoint containers unwrapped by :func:`load_weights`, in order of preference. The raw model
#: weights come before the EMA copy (timm's own loader prefers EMA): the pipeline analyses the model
#: that was trained, and DeiT-style checkpoints (the authors' code) keep it under ``model``.
_STATE_DICT_KEYS = ("model", "state_dict", "state_dict_ema", "model_ema")


#: Stored in the safetensors metadata by :func:`save_weights`, so files of this pipeline are recognisable.
_WEIGHTS_FORMAT = "distillation-dynamics/weights"


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"weight file not found: {path}; check model.weights.path or the --model-weights / "
                        "--teacher-weights argument")
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
        reason = detail.group(1).strip() if detail else one_line(exc)
        raise UserError(f"weight file {path} is not a readable PyTorch file ({reason}); "
                        "re-create or re-download it") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise UserError(f"weight file {path} is not a readable PyTorch file ({one_line(exc)}); "
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
