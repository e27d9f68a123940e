"""Atomic artifact writing, the step's temporaries, and content hashing.

Every output of a step is written through :func:`atomic_outputs` (or :func:`atomic_path`, its one-output
form): the data goes to hidden temporaries beside the outputs and is renamed onto them only when all of it
is written. Temporaries are named ``.<output name>.<8 random characters><suffix>`` (``tempfile``'s
pattern), so a later run of the same step can recognise and remove the ones a killed run left behind
(:func:`remove_stale_temporaries`). That is safe because only one process writes a given output at a time:
Snakemake never runs two jobs with the same output at once, and a step writes each of its outputs from one
process (rank 0 under torchrun).

An operating-system error while writing an output (a read-only directory or filesystem, a parent that is a
file, an output path that is a directory, a full disk) becomes a :class:`~pipeline_steps.errors.UserError`
that names the output and the cause; errors of anything else (an input, a bug) pass through unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

from pipeline_steps.errors import UserError

__all__ = ["atomic_outputs", "atomic_path", "output_error", "read_json", "read_parquet", "remove_stale_temporaries",
           "sha256_bytes", "sha256_file", "temporary_directory_beside", "write_json", "write_parquet",
           "write_safetensors", "write_text"]

#: Temporaries this process is writing now; :func:`remove_stale_temporaries` leaves them alone.
_LIVE: set[Path] = set()

#: Errors that say the disk is full, whatever file they come from (a write() carries no file name).
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _disk_full(exc: OSError) -> bool:
    # pyarrow reports a full disk as a plain OSError whose message carries the errno.
    return exc.errno in _DISK_FULL or os.strerror(errno.ENOSPC) in str(exc)


def output_error(paths: Sequence[str | os.PathLike], exc: OSError,
                 temporaries: Sequence[Path] = ()) -> UserError:
    """The one-line error for output(s) that cannot be written: which, why, and how to fix it.

    Args:
        paths: The output(s) being written.
        exc: The operating system's error.
        temporaries: The outputs' temporaries (never named in the message: they are gone by then).
    """
    finals = [Path(p) for p in paths]
    where = " and ".join(map(str, finals))
    if _disk_full(exc):
        cause = os.strerror(exc.errno) if exc.errno in _DISK_FULL else os.strerror(errno.ENOSPC)
        fix = "free space on that filesystem (or choose an output path on another one) and run the step again"
    elif exc.errno in (errno.EEXIST, errno.ENOTDIR):
        blocker = next((p for final in finals for p in reversed(final.parents) if p.exists() and not p.is_dir()),
                       exc.filename)
        cause = f"{blocker} is a file, not a directory"
        fix = "move it away or choose another output path"
    elif exc.errno == errno.EISDIR:
        # os.replace names the temporary first and the output second
        directory = exc.filename2 if getattr(exc, "filename2", None) is not None else exc.filename
        if directory is None or Path(directory) in temporaries:
            directory = where
        cause = f"{directory} is a directory"
        fix = "remove it or choose another output path"
    else:
        cause = exc.strerror or str(exc)
        if exc.filename is not None:
            name = Path(os.fspath(exc.filename))
            if name not in finals and not any(name == t or t in name.parents for t in temporaries):
                cause += f" ({name})"
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            fix = "make its directory writable or choose another output path"
        else:
            fix = "check the output path and run the step again"
    return UserError(f"cannot write {where}: {cause}; {fix}")


def _is_about(exc: OSError, temporaries: Sequence[Path]) -> bool:
    """Whether ``exc`` is an error of writing the given temporaries (or a full disk)."""
    if _disk_full(exc):
        return True
    if exc.filename is None:
        return False
    name = Path(os.fspath(exc.filename))
    return any(name == t or t in name.parents for t in temporaries)


def _stale_pattern(path: Path) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}(\.[A-Za-z0-9_]+)*")


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries that an earlier, killed writer of ``path`` left beside it.

    Matches exactly this module's temporary names for ``path`` (``.<name>.<8 random characters><suffix>``,
    files or directories), except the ones this process is writing now. Only safe when no other process
    writes ``path`` at the same time, which Snakemake guarantees for a job's outputs.

    Returns:
        The removed paths.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = _stale_pattern(path)
    removed = []
    for entry in path.parent.iterdir():
        if pattern.fullmatch(entry.name) and entry not in _LIVE:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _new_temporary(path: Path, suffix: str, directory: bool = False, created: list[Path] | None = None) -> Path:
    """Create a fresh temporary beside ``path`` (after removing stale ones), with plain-open() permissions.

    Directories made for it are appended to ``created`` (outermost first), for :func:`_remove_empty`.
    """
    missing = [p for p in reversed(path.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    if created is not None:
        created.extend(missing)
    remove_stale_temporaries(path)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        # mkstemp creates the file 0600; give the artifact the permissions a plain open() would (umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    _LIVE.add(tmp)
    return tmp


def _remove_empty(created: Sequence[Path]) -> None:
    """Remove the directories a failed step made for its outputs, innermost first, if they are still empty."""
    for directory in reversed(created):
        with contextlib.suppress(OSError):
            directory.rmdir()


def _discard(tmp: Path) -> None:
    _LIVE.discard(tmp)
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)


def _commit(temporaries: Sequence[Path], finals: Sequence[Path]) -> None:
    """Rename every temporary onto its output; on a failure, put every output back as it was."""
    if len(finals) == 1:
        os.replace(temporaries[0], finals[0])
        return
    committed: list[tuple[Path, Path | None]] = []  # (output, hard link to its previous content, or None)
    try:
        for tmp, final in zip(temporaries, finals):
            backup = None
            if final.is_file():
                backup = _new_temporary(final, ".old")
                backup.unlink()
                try:
                    os.link(final, backup)  # the output stays in place: readers see old or new, never nothing
                except OSError:
                    shutil.copy2(final, backup)
            try:
                os.replace(tmp, final)
            except BaseException:
                if backup is not None:
                    _discard(backup)  # this output is unchanged
                raise
            committed.append((final, backup))
    except BaseException:
        for final, backup in reversed(committed):
            with contextlib.suppress(OSError):  # best effort: put back as much as can be
                if backup is not None:
                    os.replace(backup, final)
                    _LIVE.discard(backup)
                else:
                    final.unlink()
        raise
    for _, backup in committed:
        if backup is not None:
            _discard(backup)


@contextlib.contextmanager
def atomic_outputs(*paths: str | os.PathLike, suffixes: Sequence[str | None] | None = None) -> Iterator[list[Path]]:
    """Yield one temporary path per output; rename them onto the outputs only if the block succeeds.

    Guarantee: each rename is atomic (the temporaries live beside their outputs, on the same
    filesystem), so a reader sees either an output's previous content or its complete new content. The
    group is committed only after the block has written every temporary; if the block or any rename
    fails, every output is put back as it was (previous content, or absent) and every temporary is
    removed. Only a crash during the commit itself (a few renames) can leave some outputs new and others
    old; a crash before it leaves temporaries, which the next run of the step removes.

    Args:
        *paths: The outputs.
        suffixes: Per output, the temporary's suffix; default the output's own suffix (some writers,
            e.g. ``np.savez`` and matplotlib, choose the format from it).

    Raises:
        UserError: An output cannot be written (see the module docstring); nothing is written then.
    """
    finals = [Path(p) for p in paths]
    suffixes = list(suffixes) if suffixes is not None else [None] * len(finals)
    temporaries: list[Path] = []
    created: list[Path] = []
    committed = False
    try:
        try:
            for final, suffix in zip(finals, suffixes):
                if final.is_dir():
                    raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(final))
                temporaries.append(_new_temporary(final, suffix if suffix is not None else final.suffix,
                                                  created=created))
        except OSError as exc:
            raise output_error(finals, exc) from None
        try:
            yield temporaries
        except OSError as exc:
            if _is_about(exc, temporaries):  # not an input's error or a bug: those pass through as they are
                raise output_error(finals, exc, temporaries) from None
            raise
        try:
            _commit(temporaries, finals)
        except OSError as exc:
            raise output_error(finals, exc, temporaries) from None
        committed = True
    finally:
        for tmp in temporaries:
            _discard(tmp)
        if not committed:
            _remove_empty(created)  # no output: not even the directories made for it


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The one-output form of :func:`atomic_outputs` (same guarantee and errors).
    """
    with atomic_outputs(path, suffixes=[suffix]) as (tmp,):
        yield tmp


@contextlib.contextmanager
def temporary_directory_beside(path: str | os.PathLike, suffix: str) -> Iterator[Path]:
    """A scratch directory beside ``path`` for the parts of its output, removed when the block ends.

    Named like :func:`atomic_outputs`' temporaries, so a killed run's directory is removed by the next
    writer of ``path``. Errors writing inside it become the one-line output error for ``path``.
    """
    path = Path(path)
    tmp: Path | None = None
    created: list[Path] = []
    failed = True
    try:
        tmp = _new_temporary(path, suffix, directory=True, created=created)
        yield tmp
        failed = False
    except OSError as exc:
        if tmp is None or _is_about(exc, [tmp]):
            raise output_error([path], exc, [tmp] if tmp is not None else []) from None
        raise
    finally:
        if tmp is not None:
            _discard(tmp)
        if failed:
            _remove_empty(created)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON (sorted keys, indented) atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_parquet(path: str | os.PathLike, df: "pandas.DataFrame") -> None:  # noqa: F821
    """Write a DataFrame as Parquet atomically (no pandas index)."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def read_json(path: str | os.PathLike, what: str, fix: str) -> Any:
    """Read a JSON file an earlier step wrote, or stop with one line naming ``what`` and ``fix``.

    Args:
        path: The file.
        what: What the file is, for the message ("checkpoint index").
        fix: How to get a good one, for the message ("re-run the distill step for this run").

    Raises:
        UserError: The file is missing, not UTF-8 text or not valid JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}; {fix}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start}), so not a {what}; {fix}") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); {fix}") from None


def read_parquet(path: str | os.PathLike, what: str, fix: str) -> "pandas.DataFrame":  # noqa: F821
    """Read a Parquet table an earlier step wrote, or stop with one line naming ``what`` and ``fix``.

    Args:
        path: The file.
        what: What the file is, for the message ("sample manifest").
        fix: How to get a good one, for the message ("run the sample step first").

    Raises:
        UserError: The file is missing or is not a readable Parquet file.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}; {fix}")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises its own error types for a corrupt or foreign file
        raise UserError(f"{what} {path} is not a readable Parquet file ({type(exc).__name__}); {fix}") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def write_safetensors(path: str | os.PathLike, tensors: "dict[str, torch.Tensor]",  # noqa: F821
                      metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically, with a canonical header (JSON keys sorted).

    The safetensors library serialises its header from a hash map, so the same tensors and metadata give
    different bytes (and sha256) from one process to the next; rewriting the header with sorted keys makes
    the file a function of its content. Offsets in the header are relative to the data section, so
    reordering keys does not move any tensor.
    """
    import struct

    import safetensors.torch

    blob = safetensors.torch.save(tensors, metadata=metadata)
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.dumps(json.loads(blob[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format pads the header to 8-byte alignment with spaces
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(header)))
            f.write(header)
            f.write(blob[8 + n:])
