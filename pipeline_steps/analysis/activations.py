"""Per-layer block activations: extraction with timm's ``forward_intermediates`` and the NPZ artifact.

Activations follow method.md section 1: the raw output of each selected block of ``model.blocks``
(``norm=False``), prefix tokens (CLS, distillation) removed, reshaped to ``[B, C, H, W]`` with token
``n`` of the patch grid at ``(h, w) = (n // W, n % W)``; eval mode, float32, no autocast, no grad.
For a CNN (a timm ResNet) the layers are its residual stages (:mod:`pipeline_steps.models.layers`), whose
raw outputs are already ``[B, C, H, W]``; its files carry ``meta["layer_kind"] = "stage"`` (a ViT's files
have no ``layer_kind`` key: absent means ``"block"``, so they are byte-identical to those of before).

The artifact is one uncompressed ``.npz`` (``numpy.load`` reads it as is)::

    layer_00, layer_01, ...   float32 [B, C, H, W], one array per selected layer, named by layer index
    meta                      0-d unicode array holding JSON (see :func:`write_activations`)

It is written streaming (memory independent of the number of images): each layer goes batch by batch
into its own ``.npy`` memmap in a temporary directory beside the output, the ``.npy`` files are then
copied in chunks into a ZIP_STORED archive, and the archive is renamed onto the destination.
:class:`ActivationsFile` reads it back without unpacking: because members are stored uncompressed,
a layer's array data is a contiguous byte range of the ``.npz`` that can be memory-mapped.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import struct
import sys
import zipfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import torch

from pipeline_steps.artifacts import atomic_path, temporary_directory_beside
from pipeline_steps.errors import UserError, one_line
from pipeline_steps.models.layers import intermediate_indices, layer_kind, layer_names, model_arch, num_layers
from pipeline_steps.models.weights import weights_hash

__all__ = ["FORMAT", "FORMAT_VERSION", "STAGE_POLICY", "TOKEN_POLICY", "ActivationsFile", "array_name",
           "iter_activations", "write_activations"]

#: ``meta["format"]`` of files this module writes; anything else is refused by :class:`ActivationsFile`.
FORMAT = "distillation-dynamics/activations"
FORMAT_VERSION = 1
TOKEN_POLICY = "prefix tokens removed; NCHW; raw block outputs, norm=False"
#: ``meta["token_policy"]`` of a CNN's file: its stage outputs have no tokens to remove.
STAGE_POLICY = "NCHW; raw stage outputs, norm=False"

_META = "meta"
#: A fixed member timestamp, so equal activations give byte-identical files (content-based rerun triggers).
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_COPY_CHUNK = 1 << 22
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zip local file header, as in zipfile.structFileHeader


def array_name(block_index: int, n_blocks: int) -> str:
    """Name of the array holding block ``block_index``: ``layer_00`` ... (wider for >= 100 blocks)."""
    width = max(2, len(str(max(n_blocks - 1, 0))))
    return f"layer_{block_index:0{width}d}"


def _prefix_tokens_in_blocks(model: torch.nn.Module) -> int:
    """Prefix tokens present in the block outputs (what ``forward_intermediates`` strips).

    CaiT reports ``num_prefix_tokens = 1`` but its class token only joins in the class-attention
    ``blocks_token_only``, so its self-attention blocks carry patch tokens only.
    """
    if getattr(model, "blocks_token_only", None) is not None:
        return 0
    return int(getattr(model, "num_prefix_tokens", 0))


def _split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0], (batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None)
    raise TypeError(f"loader batches must be an image tensor or (images, labels); got {type(batch).__name__}")


def _iter_batches(model: torch.nn.Module, loader: Iterable, layers: list[int]
                  ) -> Iterator[tuple[list[torch.Tensor], torch.Tensor | None]]:
    layers = list(layers)
    if not layers:
        raise ValueError("layers is empty")
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    if any(p.is_floating_point() and p.dtype != torch.float32 for p in params):
        raise ValueError("activations are defined in float32; convert the model with model.float()")
    indices = intermediate_indices(model, layers)  # the layers themselves for a ViT; past the stem for a ResNet
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            x, y = _split_batch(batch)
            # The contexts close before the yield: inference mode and autocast state are thread-local
            # and must not leak into the consumer while the generator is suspended.
            with torch.inference_mode(), torch.autocast(device.type, enabled=False):
                # Asynchronous from pinned memory (the extraction pins on a GPU); the forward waits for it.
                x = x.to(device=device, dtype=torch.float32, non_blocking=True)
                # stop_early: with intermediates_only the blocks after the last selected one are unused.
                outs = model.forward_intermediates(x, indices=indices, norm=False, output_fmt="NCHW",
                                                   intermediates_only=True, stop_early=True)
            if len(outs) != len(layers) or any(o.ndim != 4 for o in outs):
                raise RuntimeError(f"forward_intermediates of '{model_arch(model)}' returned "
                                   f"{[tuple(o.shape) for o in outs]} for layers {layers}; expected "
                                   f"{len(layers)} tensors [B, C, H, W]")
            yield [o.float() for o in outs], y
    finally:
        model.train(was_training)


def iter_activations(model: torch.nn.Module, loader: Iterable, layers: Iterable[int]
                     ) -> Iterator[list[torch.Tensor]]:
    """Yield, per batch, the selected layers' (blocks' or stages') raw outputs as ``[b, C, H, W]`` float32
    tensors.

    Calls ``model.forward_intermediates(x, indices=layers, norm=False, output_fmt="NCHW",
    intermediates_only=True)`` (timm >= 1.0.3) under ``eval()``, ``torch.inference_mode()`` and with
    autocast disabled; timm removes the prefix tokens. For a ResNet the indices are shifted past the stem
    (:func:`pipeline_steps.models.layers.intermediate_indices`). The model's previous train/eval mode is
    restored when the iterator finishes.

    Args:
        model: A float32 timm ViT-style model or ResNet (see :func:`pipeline_steps.models.create_model`).
        loader: Iterable of batches: an image tensor ``[b, 3, H, W]`` or ``(images, labels, ...)``.
        layers: 0-based layer indices in ascending order (:func:`pipeline_steps.models.resolve_layers`);
            the tensors come in that order.

    Yields:
        One list per batch with one tensor per layer, on the model's device.
    """
    for acts, _ in _iter_batches(model, loader, list(layers)):
        yield acts


def _n_images(loader: Iterable, meta: Mapping[str, Any]) -> int:
    dataset = getattr(loader, "dataset", None)
    if dataset is not None and hasattr(dataset, "__len__"):
        return len(dataset)
    if meta.get("n_images") is not None:
        return int(meta["n_images"])
    if meta.get("labels") is not None:
        return len(meta["labels"])
    raise ValueError("cannot tell the number of images: give a DataLoader over a sized dataset or meta['n_images']")


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asanyarray(array), allow_pickle=False)
    return buf.getvalue()


def _zip_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info


def _assemble(dest: Path, parts: Path, names: list[str], meta: Mapping[str, Any]) -> None:
    """Copy the per-layer ``.npy`` files and the meta into one uncompressed zip (an ``.npz``)."""
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name in names:
            src = parts / f"{name}.npy"
            with open(src, "rb") as fsrc, zf.open(_zip_info(f"{name}.npy"), "w", force_zip64=True) as fdst:
                shutil.copyfileobj(fsrc, fdst, _COPY_CHUNK)
            # Dropping each part once copied keeps peak disk use near one copy plus one layer.
            src.unlink()
        meta_array = np.array(json.dumps(meta, sort_keys=True))
        zf.writestr(_zip_info(f"{_META}.npy"), _npy_bytes(meta_array))


class _NpyAppender:
    """A ``.npy`` file of known final shape, written batch by batch with plain appends."""

    def __init__(self, path: Path, shape: tuple[int, ...]):
        self.shape = tuple(int(n) for n in shape)
        self._fh = open(path, "wb")
        np.lib.format.write_array_header_1_0(
            self._fh, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                       "shape": self.shape})

    def append(self, batch: np.ndarray) -> None:
        self._fh.write(np.ascontiguousarray(batch, dtype=np.float32).data)

    def close(self) -> None:
        self._fh.close()


def write_activations(path: str | os.PathLike, model: torch.nn.Module, loader: Iterable, layers: Iterable[int],
                      meta: Mapping[str, Any] | None = None) -> dict:
    """Run ``model`` over ``loader`` and write the selected layers' activations as one NPZ, atomically.

    Memory does not grow with the number of images: each batch is appended to per-layer ``.npy``
    files in a temporary directory beside ``path`` (plain writes: a writable memory map would keep
    every dirty page resident), which are then copied into the archive. On any
    error nothing is left at ``path`` and the temporary files are removed; those of a killed run are removed
    by the next call for the same ``path``. Progress (batches) is shown
    on stderr.

    Args:
        path: Destination ``.npz``.
        model: A float32 timm ViT-style model.
        loader: Batches ``(images, labels)`` or images, in a fixed order (no shuffling); a DataLoader
            over a sized dataset, or give ``meta["n_images"]``.
        layers: Ascending 0-based layer (block or stage) indices (:func:`pipeline_steps.models.resolve_layers`).
        meta: Caller's provenance, stored as is: typically ``model`` (the params spec: arch, kwargs,
            weights source/tag/path/seed), ``manifest_hash``, ``image_ids`` and ``labels``. If
            ``labels`` is given it must equal the labels the loader yields.

    Returns:
        The stored meta: the caller's keys plus ``format``, ``format_version``, ``arrays``,
        ``layer_indices``, ``layer_names``, ``n_blocks`` (the number of layers: blocks, or stages),
        ``shapes``, ``token_policy``, ``layer_kind`` (only for a CNN: ``"stage"``),
        ``prefix_tokens_removed``, ``dtype``, ``n_images``, ``labels`` (from the loader when not
        given), ``weights_hash``, ``device`` and ``timm_version``/``torch_version``/``numpy_version``.

    Raises:
        UserError: ``meta["labels"]`` disagrees with the data (a stale manifest).
    """
    import timm
    from tqdm import tqdm

    path = Path(path)
    meta = dict(meta or {})
    layers = [int(i) for i in layers]
    if layers != sorted(set(layers)):
        raise ValueError(f"layers must be ascending and unique (use models.resolve_layers); got {layers}")
    kind = layer_kind(model)
    n_blocks = num_layers(model)
    names = [array_name(i, n_blocks) for i in layers]
    total = _n_images(loader, meta)
    if total < 1:
        raise UserError("no images to extract activations from; check the sample manifest")
    writers: list[_NpyAppender] | None = None
    # A killed run's parts directory (up to the whole activations' size) is removed here by the next run.
    with temporary_directory_beside(path, ".parts") as parts:
        try:
            labels: list[int] | None = []
            seen = 0
            try:
                n_batches = len(loader)  # type: ignore[arg-type]
            except TypeError:
                n_batches = None
            with tqdm(total=n_batches, desc=f"activations {path.name}", unit="batch", file=sys.stderr) as bar:
                for acts, y in _iter_batches(model, loader, layers):
                    b = acts[0].shape[0]
                    if seen + b > total:
                        raise ValueError(f"loader yielded more than the {total} images expected")
                    if writers is None:
                        writers = [_NpyAppender(parts / f"{name}.npy", (total, *a.shape[1:]))
                                   for name, a in zip(names, acts)]
                    for writer, a in zip(writers, acts):
                        writer.append(a.detach().cpu().numpy())
                    if labels is not None and y is not None:
                        labels.extend(int(v) for v in y.reshape(-1).tolist())
                    else:
                        labels = None
                    seen += b
                    bar.update(1)
            if seen != total:
                raise ValueError(f"loader yielded {seen} images but {total} were expected")
            shapes = {}
            for name, writer in zip(names, writers or []):
                writer.close()
                shapes[name] = list(writer.shape)

            if labels is not None and meta.get("labels") is not None:
                given = [int(v) for v in meta["labels"]]
                if given != labels:
                    where = next((i for i, (a, b) in enumerate(zip(given, labels)) if a != b),
                                 min(len(given), len(labels)))
                    raise UserError(f"the manifest's labels disagree with the data at image {where} "
                                    f"(manifest {given[where] if where < len(given) else 'none'}, data "
                                    f"{labels[where] if where < len(labels) else 'none'}); the manifest is stale, "
                                    "re-run the sample step")
            params = list(model.parameters())
            meta.setdefault("model", {"arch": model_arch(model)})
            if labels is not None:
                meta.setdefault("labels", labels)
            meta.update(
                format=FORMAT, format_version=FORMAT_VERSION, arrays=names, layer_indices=layers,
                layer_names=layer_names(model, layers), n_blocks=n_blocks, shapes=shapes,
                token_policy=TOKEN_POLICY if kind == "block" else STAGE_POLICY,
                prefix_tokens_removed=_prefix_tokens_in_blocks(model), dtype="float32",
                n_images=total, weights_hash=weights_hash(model),
                device=str(params[0].device) if params else "cpu",
                timm_version=timm.__version__, torch_version=torch.__version__, numpy_version=np.__version__,
            )
            if kind != "block":
                meta["layer_kind"] = kind  # only for stage models: a ViT's meta stays as it was
            with atomic_path(path) as tmp:
                _assemble(tmp, parts, names, meta)
        finally:
            for writer in writers or []:
                writer.close()
    return meta


def _check_meta(meta: dict, path: Path) -> None:
    """The keys a reader of an activations file relies on, present and consistent (one line if not).

    ``arrays``, ``layer_indices`` and ``layer_names`` are parallel lists (one entry per stored layer);
    ``model.arch`` and ``weights_hash`` identify the model in the reduce step's table.
    """
    fix = "re-run the extract step"

    def is_list(value: Any, item: type) -> bool:
        return isinstance(value, list) and all(isinstance(v, item) and not isinstance(v, bool) for v in value)

    for key, item in (("arrays", str), ("layer_indices", int), ("layer_names", str)):
        if key not in meta:
            raise UserError(f"{path}: activations metadata lacks key '{key}'; {fix}")
        if not is_list(meta[key], item):
            raise UserError(f"{path}: activations metadata '{key}' is not a list of {item.__name__}; {fix}")
    lengths = {key: len(meta[key]) for key in ("arrays", "layer_indices", "layer_names")}
    if len(set(lengths.values())) != 1:
        raise UserError(f"{path}: activations metadata lists disagree in length "
                        f"({', '.join(f'{k}: {n}' for k, n in lengths.items())}); {fix}")
    if not meta["arrays"]:
        raise UserError(f"{path}: activations metadata lists no layers; {fix}")
    if len(set(meta["arrays"])) != len(meta["arrays"]):
        raise UserError(f"{path}: activations metadata 'arrays' names an array twice; {fix}")
    if not (isinstance(meta.get("model"), dict) and isinstance(meta["model"].get("arch"), str)):
        raise UserError(f"{path}: activations metadata lacks key 'model.arch'; {fix}")
    if not isinstance(meta.get("weights_hash"), str):
        raise UserError(f"{path}: activations metadata lacks key 'weights_hash'; {fix}")
    if meta.get("layer_kind", "block") not in ("block", "stage"):
        raise UserError(f"{path}: activations metadata 'layer_kind' is {meta['layer_kind']!r}, not \"block\" or "
                        f"\"stage\"; {fix}")


class ActivationsFile:
    """Read an activations NPZ written by :func:`write_activations`, one layer or chunk at a time.

    Layers are addressed by position in :attr:`layers` (``0 .. L-1``, the ``L`` axis of
    :meth:`load_all`) or by array name (``"layer_07"``). The file is not held open between calls.

    Args:
        path: The ``.npz``.

    Raises:
        UserError: The file is missing, not a zip, not written by this pipeline (no ``meta`` with our
            ``format``), of another format version, or compressed.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"activations file not found: {self.path}; run the extract step "
                            "(python -m pipeline_steps extract ...) first")
        foreign = (f"{self.path} is not an activations file of this pipeline; re-create it with "
                   "python -m pipeline_steps extract")
        try:
            with zipfile.ZipFile(self.path) as zf:
                infos = {info.filename: info for info in zf.infolist()}
                if f"{_META}.npy" not in infos:
                    raise UserError(foreign + " (no 'meta' array)")
                with zf.open(f"{_META}.npy") as f:
                    meta_array = np.lib.format.read_array(f, allow_pickle=False)
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
            raise UserError(f"{foreign} ({type(exc).__name__}: {one_line(exc)})") from None
        try:
            meta = json.loads(str(meta_array[()]))
        except (json.JSONDecodeError, IndexError, TypeError):
            raise UserError(foreign + " ('meta' is not JSON)") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise UserError(foreign + " (unknown 'meta' format)")
        if meta.get("format_version") != FORMAT_VERSION:
            raise UserError(f"{self.path} has activations format version {meta.get('format_version')}, this "
                            f"code reads {FORMAT_VERSION}; re-run the extract step")
        _check_meta(meta, self.path)
        self.meta: dict = meta
        self.layers: list[str] = list(meta["arrays"])
        self._members: dict[str, tuple[int, tuple[int, ...], np.dtype]] = {}
        with open(self.path, "rb") as fh:
            for name in self.layers:
                info = infos.get(f"{name}.npy")
                if info is None:
                    raise UserError(f"{self.path} lists array '{name}' but does not contain it; "
                                    "re-run the extract step")
                self._members[name] = self._locate(fh, info)
        counts = {name: member[1][0] if member[1] else None for name, member in self._members.items()}
        n_images = meta.get("n_images", next(iter(counts.values())))
        odd = [name for name, n in counts.items() if n != n_images]
        if odd:
            raise UserError(f"{self.path}: array '{odd[0]}' holds {counts[odd[0]]} images, the metadata says "
                            f"{n_images}; re-run the extract step")

    def _locate(self, fh, info: zipfile.ZipInfo) -> tuple[int, tuple[int, ...], np.dtype]:
        """Offset of the array data of a stored member, with its shape and dtype, from the headers."""
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            raise UserError(f"{self.path}: member {info.filename} is compressed or encrypted; activations "
                            "files are stored uncompressed, re-create it with the extract step")
        fh.seek(info.header_offset)
        header = fh.read(_LOCAL_HEADER.size)
        fields = _LOCAL_HEADER.unpack(header) if len(header) == _LOCAL_HEADER.size else None
        if fields is None or fields[0] != b"PK\x03\x04":
            raise UserError(f"{self.path} is corrupt (bad zip header for {info.filename}); re-run the extract step")
        # The local header's own name and extra lengths (the extra field can differ from the central
        # directory's, e.g. zip64 sizes) decide where the member's bytes start.
        data_start = info.header_offset + _LOCAL_HEADER.size + fields[10] + fields[11]
        fh.seek(data_start)
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except ValueError as exc:
            raise UserError(f"{self.path}: member {info.filename} is not a readable array ({exc}); "
                            "re-run the extract step") from None
        offset = fh.tell()
        nbytes = math.prod(shape) * dtype.itemsize
        if fortran or dtype.hasobject or offset + nbytes > data_start + info.file_size:
            raise UserError(f"{self.path}: member {info.filename} has an unexpected layout; re-run the extract step")
        return offset, tuple(shape), dtype

    def _member(self, layer: int | str) -> tuple[int, tuple[int, ...], np.dtype]:
        if isinstance(layer, str):
            if layer not in self._members:
                raise KeyError(f"no array '{layer}' in {self.path}; arrays: {', '.join(self.layers)}")
            return self._members[layer]
        if not -len(self.layers) <= layer < len(self.layers):
            raise IndexError(f"layer position {layer} out of range for {len(self.layers)} arrays in {self.path}")
        return self._members[self.layers[layer]]

    @property
    def layer_indices(self) -> list[int]:
        """0-based layer (block or stage) index of each array, in :attr:`layers` order."""
        return list(self.meta["layer_indices"])

    @property
    def layer_kind(self) -> str:
        """``"block"`` (a ViT's layers; files without the key) or ``"stage"`` (a CNN's)."""
        return str(self.meta.get("layer_kind", "block"))

    def shape(self, layer: int | str) -> tuple[int, ...]:
        """``(B, C, H, W)`` of one layer, from its header (no data read)."""
        return self._member(layer)[1]

    def _read_into(self, fh, offset: int, out: np.ndarray) -> None:
        fh.seek(offset)
        view = memoryview(out).cast("B")
        done = 0
        while done < len(view):
            n = fh.readinto(view[done:])
            if not n:
                raise UserError(f"{self.path} is truncated; re-run the extract step")
            done += n

    def load(self, layer: int | str) -> np.ndarray:
        """One layer, fully in memory: ``[B, C, H, W]`` float32."""
        offset, shape, dtype = self._member(layer)
        out = np.empty(shape, dtype=dtype)
        with open(self.path, "rb") as fh:
            self._read_into(fh, offset, out)
        return out

    def iter_chunks(self, layer: int | str, chunk_images: int) -> Iterator[np.ndarray]:
        """Yield one layer in consecutive chunks of up to ``chunk_images`` images, ``[c, C, H, W]`` each.

        Only one chunk is in memory at a time. Chunks are read with plain file reads at the layer's
        offset in the (uncompressed) archive rather than through a memory map, whose touched pages
        would stay resident and make memory grow with the number of images.
        """
        if chunk_images < 1:
            raise ValueError(f"chunk_images must be >= 1, got {chunk_images}")
        offset, shape, dtype = self._member(layer)
        per_image = int(np.prod(shape[1:])) * np.dtype(dtype).itemsize
        with open(self.path, "rb") as fh:
            for start in range(0, shape[0], chunk_images):
                chunk = np.empty((min(chunk_images, shape[0] - start), *shape[1:]), dtype=dtype)
                self._read_into(fh, offset + start * per_image, chunk)
                yield chunk

    def load_all(self) -> np.ndarray:
        """All layers stacked as ``[L, B, C, H, W]`` (for small files; needs L layers of memory)."""
        shapes = {self.shape(i) for i in range(len(self.layers))}
        if len(shapes) != 1:
            raise ValueError(f"layers of {self.path} differ in shape ({sorted(shapes)}); load them one by one")
        out = np.empty((len(self.layers), *shapes.pop()), dtype=self._member(0)[2])
        with open(self.path, "rb") as fh:
            for i in range(len(self.layers)):
                self._read_into(fh, self._member(i)[0], out[i])
        return out

    def __repr__(self) -> str:
        shape = self.shape(0) if self.layers else ()
        return f"ActivationsFile({str(self.path)!r}, layers={len(self.layers)}, shape={shape})"
