"""The analysis a ``phase`` or ``cka`` layer-pair spec is chosen from, read from the pipeline's artifacts.

``phase:<name>`` reads the teacher's entropy per block from the teacher's reductions table
(``results/reductions/teacher.parquet``, the profile Fig. 1 draws); ``cka:<entry>[@<checkpoint>]:<spec>``
reads the linear CKA of a grid run's checkpoint to the teacher from that run's evolution statistics
(``results/evolution/<run id>_statistics.parquet``). :func:`read_pair_evidence` returns what
:func:`pipeline_steps.distillation.layer_pairs.parse_layer_pairs` resolves the spec from.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline_steps.distillation.layer_pairs import PairEvidence, PairSource
from pipeline_steps.errors import UserError

__all__ = ["read_cka_matrix", "read_pair_evidence", "read_teacher_entropy"]


def _read_table(path: str | os.PathLike, what: str, columns: list[str]) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} not found; run the step that writes it first (snakemake does)")
    try:
        table = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file: one line, the fix
        raise UserError(f"{what} {path} is unreadable ({type(exc).__name__}); delete it and rerun its step") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise UserError(f"{what} {path} lacks the column(s) {missing}; delete it and rerun its step")
    return table


def read_teacher_entropy(path: str | os.PathLike) -> list[float]:
    """The teacher's entropy per block, block 0 first, from its reductions table (its final weights).

    Raises:
        UserError: The file is missing or unreadable, has no entropy rows, or skips a block.
    """
    table = _read_table(path, "teacher reductions", ["metric", "layer", "value"])
    rows = table[table["metric"] == "entropy"]
    if "checkpoint" in rows.columns and rows["checkpoint"].nunique() > 1:
        rows = rows[rows["checkpoint"] == "final"]
    if rows.empty:
        raise UserError(f"teacher reductions {path} has no entropy rows; rerun the teacher's reduce step")
    rows = rows.sort_values("layer")
    layers = rows["layer"].astype(int).tolist()
    if layers != list(range(1, len(layers) + 1)):
        raise UserError(f"teacher reductions {path} hold blocks {layers}, not every block once; a phase is read "
                        "from the whole profile: set analysis.layers: all")
    return rows["value"].astype(float).tolist()


def read_cka_matrix(path: str | os.PathLike, checkpoint: str) -> tuple[np.ndarray, str]:
    """A checkpoint's ``[student_blocks, teacher_blocks]`` CKA matrix from a run's evolution statistics.

    Args:
        path: ``results/evolution/<run id>_statistics.parquet``.
        checkpoint: ``"final"`` (the highest epoch's checkpoint), ``"best"`` or ``"epoch_<NNNN>"``.

    Returns:
        The matrix (row ``s`` = student block ``s``, column ``t`` = teacher block ``t``, both 0-based) and
        which checkpoint it is, for the log (``"<file> at epoch_0004"``).

    Raises:
        UserError: The file is missing or unreadable, lacks that checkpoint or CKA rows, or the matrix has
            holes.
    """
    table = _read_table(path, "evolution statistics", ["metric", "checkpoint", "layer", "teacher_layer", "value"])
    cka = table[table["metric"] == "cka"]
    available = sorted(cka["checkpoint"].astype(str).unique())
    if checkpoint == "final":
        epochs = [c for c in available if c.startswith("epoch_")]
        if not epochs:
            raise UserError(f"evolution statistics {path} has no epoch checkpoint with CKA rows; rerun its "
                            "evolution step")
        checkpoint = max(epochs)
    if checkpoint not in available:
        raise UserError(f"evolution statistics {path} has no CKA rows of checkpoint {checkpoint}; it has "
                        f"{', '.join(available) or 'none'}: choose one of them")
    rows = cka[cka["checkpoint"] == checkpoint]
    student = rows["layer"].astype(int).to_numpy() - 1
    teacher = rows["teacher_layer"].astype(int).to_numpy() - 1
    matrix = np.full((int(student.max()) + 1, int(teacher.max()) + 1), np.nan)
    matrix[student, teacher] = rows["value"].astype(float).to_numpy()
    if len(rows) != matrix.size:
        raise UserError(f"evolution statistics {path}: the CKA rows of {checkpoint} are not one per block pair "
                        f"({len(rows)} rows for a {matrix.shape[0]} x {matrix.shape[1]} matrix); rerun its "
                        "evolution step with analysis.layers: all")
    return matrix, f"{Path(path).name} at {checkpoint}"


def read_pair_evidence(source: PairSource, *, teacher_reductions: str | os.PathLike | None = None,
                       cka_statistics: str | os.PathLike | None = None, shape_tolerance: float) -> PairEvidence:
    """What ``source`` is resolved from, read from the artifact it needs.

    Raises:
        UserError: The artifact ``source`` needs was not given, or is unreadable (see the readers).
    """
    if source.kind == "phase":
        if teacher_reductions is None:
            raise UserError(f"layer pairs phase:{source.phase} are chosen from the teacher's entropy profile; pass "
                            "--teacher-reductions results/reductions/teacher.parquet")
        return PairEvidence(teacher_entropy=read_teacher_entropy(teacher_reductions),
                            shape_tolerance=float(shape_tolerance),
                            described=f"{Path(teacher_reductions).name} (teacher entropy, "
                                      f"shape tolerance {shape_tolerance:g})")
    if cka_statistics is None:
        raise UserError(f"layer pairs cka:{source.run} are chosen from that run's CKA matrix; pass --cka-statistics "
                        f"results/evolution/{source.run}-s<seed>_statistics.parquet")
    matrix, described = read_cka_matrix(cka_statistics, source.checkpoint or "final")
    return PairEvidence(cka=matrix, described=described)
