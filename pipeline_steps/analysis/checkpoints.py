"""A training run's checkpoint index (``checkpoints.json``), read and checked before any checkpoint is analysed.

The file, written by the training loop::

    {"run_id": "spectralkd_f1-s0", "epochs": 4,
     "checkpoints": [{"epoch": 0, "path": "checkpoints/epoch_0000.safetensors", "sha256": "<hex>"}, ...],
     "best": {"epoch": 3, "path": "best.safetensors", "sha256": "<hex>", "test_acc1": 61.2}}

``path`` is relative to the run directory and ``epoch`` is the number of completed training epochs (0 = the
initial random student); ``best`` is the best test top-1 checkpoint, whose analysis rows carry
``checkpoint`` = :data:`BEST_CHECKPOINT`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline_steps.errors import UserError

__all__ = ["BEST_CHECKPOINT", "read_checkpoints"]

#: ``checkpoint`` value of the best test top-1 checkpoint's rows (``best.safetensors``; the authors' ``model_best``).
BEST_CHECKPOINT = "best"


def read_checkpoints(run_dir: str | Path, *, verify: bool = True) -> tuple[str, list[dict[str, Any]]]:
    """Read and check a run's ``checkpoints.json``.

    Args:
        run_dir: The run directory (``results/runs/<run_id>``).
        verify: Check that every listed file exists and has the recorded SHA-256.

    Returns:
        ``(run_id, checkpoints)``: the run id (from the file, else the directory name) and the entries, the
        epoch checkpoints sorted by epoch then the best one, each with ``checkpoint`` (``epoch_NNNN``, or
        :data:`BEST_CHECKPOINT` for the best), ``epoch`` (int), ``path`` (absolute :class:`Path`) and
        ``sha256``.

    Raises:
        UserError: Missing or malformed ``checkpoints.json``, no ``best`` entry, a duplicate epoch, a missing
            checkpoint file or one whose SHA-256 differs from the recorded one.
    """
    from pipeline_steps.artifacts import read_json, sha256_file

    run_dir = Path(run_dir)
    index = run_dir / "checkpoints.json"
    if not index.is_file():
        raise UserError(f"no checkpoints.json in run directory {run_dir}; run the distill step for this run first")
    doc = read_json(index, "checkpoint index", "re-run the distill step for this run")
    entries = doc.get("checkpoints") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{index} lists no checkpoints; re-run the distill step for this run")
    run_id = str(doc.get("run_id") or run_dir.name)
    if "best" not in doc:
        raise UserError(f"{index} has no 'best' checkpoint (the distill step records best.safetensors there when "
                        f"training ends); re-run the distill step for {run_id}")

    def entry_of(entry: Any, what: str) -> dict[str, Any]:
        if not (isinstance(entry, dict) and isinstance(entry.get("epoch"), int) and isinstance(entry.get("path"), str)
                and isinstance(entry.get("sha256"), str)):
            raise UserError(f"{index}: {what} needs integer 'epoch', string 'path' and 'sha256'; "
                            "re-run the distill step for this run")
        return {"epoch": entry["epoch"], "path": (run_dir / entry["path"]).resolve(), "sha256": entry["sha256"].lower()}

    checkpoints = [entry_of(entry, f"checkpoint entry {n}") for n, entry in enumerate(entries)]
    epochs = [c["epoch"] for c in checkpoints]
    duplicated = sorted({e for e in epochs if epochs.count(e) > 1})
    if duplicated:
        raise UserError(f"{index} lists epoch {duplicated[0]} more than once; re-run the distill step for this run")
    checkpoints.sort(key=lambda c: c["epoch"])
    for c in checkpoints:
        c["checkpoint"] = c["path"].stem
    checkpoints.append({**entry_of(doc["best"], "the 'best' entry"), "checkpoint": BEST_CHECKPOINT})

    if verify:
        for c in checkpoints:
            path = c["path"]
            what = "best checkpoint" if c["checkpoint"] == BEST_CHECKPOINT else "epoch"
            if not path.is_file():
                raise UserError(f"checkpoint file {path} ({what} {c['epoch']}, listed in {index}) is missing; "
                                f"restore it or re-run the distill step for {run_id}")
            actual = sha256_file(path)
            if actual != c["sha256"]:
                raise UserError(f"checkpoint file {path} ({what} {c['epoch']}) has SHA-256 {actual[:12]}... but "
                                f"{index} records {c['sha256'][:12]}...; the file changed after training, restore "
                                f"it or re-run the distill step for {run_id}")
    return run_id, checkpoints
