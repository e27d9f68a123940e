"""The authors' published per-checkpoint entropy tables (``reference/entropy``), read into this pipeline's
long format so that Fig. 4 draws them with the same code as our own runs."""

from __future__ import annotations

from pathlib import Path

from pipeline_steps.analysis.checkpoints import BEST_CHECKPOINT
from pipeline_steps.errors import UserError

__all__ = ["PUBLISHED_ARCH", "PUBLISHED_ENTROPY", "published_best_epoch", "read_published", "read_published_entropy"]

#: The authors' per-checkpoint entropy tables (``reference/entropy``) -> (run id, panel title, the training log
#: in ``reference/logs`` of the same run), in the order of the paper's Fig. 4 panels.
PUBLISHED_ENTROPY: dict[str, tuple[str, str, str]] = {
    "SoftKD.csv": ("softkd", "SoftKD", "SoftKD.txt"),
    "SpectralKD10.csv": ("spectralkd_f1", "SpectralKD F1", "SpectralKD_First_1.txt"),
    "SpectralKD01.csv": ("spectralkd_l1", "SpectralKD L1", "SpectralKD_Last_1.txt"),
    "SpectralKD11.csv": ("spectralkd_f1l1", "SpectralKD F1 L1", "SpectralKD_First_1_Last_1.txt"),
}


#: The student architecture of the published tables (DeiT-Tiny, 12 blocks).
PUBLISHED_ARCH = "deit_tiny_patch16_224"


def read_published_entropy(path: str | Path, run_id: str,
                           best_epoch: int | None = None) -> "pd.DataFrame":  # noqa: F821
    """One of the authors' per-checkpoint entropy tables, in the evolution step's long format.

    The file is wide (header ``Model/Epoch,Layer_1,...,Layer_L``, one row per checkpoint). Row
    ``checkpoint_epoch_N`` becomes ``checkpoint`` = that name, ``epoch`` = N (training epochs completed, as
    in this pipeline); ``model_best`` becomes the :data:`BEST_CHECKPOINT` row with ``epoch`` = ``best_epoch``
    (the tables do not say it; missing = ``<NA>``).

    Args:
        path: The CSV (``reference/entropy/<name>.csv``).
        run_id: Value of the ``run_id`` and ``model`` columns.
        best_epoch: Epochs completed when ``model_best`` was saved (see :func:`published_best_epoch`).

    Returns:
        Columns ``model``, ``arch``, ``checkpoint``, ``epoch`` (nullable Int64), ``layer`` (1-based),
        ``metric`` (``entropy``), ``value`` (bits, as published), ``run_id``; the epoch rows by epoch, then
        the best row. The evolution step's other columns (sample, histogram range, hashes) are not
        published and absent.

    Raises:
        UserError: Missing file, no ``Layer_<n>`` columns, or a row name other than the two forms above.
    """
    import re

    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise UserError(f"published entropy table not found: {path}; it is vendored in reference/entropy")
    wide = pd.read_csv(path)
    layers = {c: int(m.group(1)) for c in wide.columns if (m := re.fullmatch(r"Layer_(\d+)", str(c)))}
    if wide.empty or wide.columns[0] != "Model/Epoch" or not layers:
        raise UserError(f"{path} is not a published entropy table (header 'Model/Epoch,Layer_1,...'); restore it "
                        "from reference/entropy (reference/SHA256SUMS)")
    rows = []
    for name, *values in wide[["Model/Epoch", *layers]].itertuples(index=False):
        if name == "model_best":
            checkpoint, epoch = BEST_CHECKPOINT, best_epoch
        elif m := re.fullmatch(r"checkpoint_epoch_(\d+)", str(name)):
            checkpoint, epoch = str(name), int(m.group(1))
        else:
            raise UserError(f"{path}: row '{name}' is neither checkpoint_epoch_<N> nor model_best; restore it from "
                            "reference/entropy")
        rows += [{"checkpoint": checkpoint, "epoch": epoch, "layer": layer, "value": float(v)}
                 for layer, v in zip(layers.values(), values)]
    long = pd.DataFrame(rows).astype({"epoch": "Int64"})
    order = long["checkpoint"].eq(BEST_CHECKPOINT).astype(int)  # epoch rows by epoch, then the best
    long = long.assign(_best=order).sort_values(["_best", "epoch", "layer"], kind="stable").drop(columns="_best")
    return long.assign(model=run_id, arch=PUBLISHED_ARCH, metric="entropy", run_id=run_id)[
        ["model", "arch", "checkpoint", "epoch", "layer", "metric", "value", "run_id"]].reset_index(drop=True)


def published_best_epoch(log_path: str | Path) -> int:
    """Epochs completed when DeiT's ``main.py`` saved ``model_best``: 1 + the first epoch (0-based in the log)
    with the highest ``test_acc1`` (it saves whenever the top-1 beats the previous maximum)."""
    from pipeline_steps.reporting.tables import read_run_log, run_summary

    return run_summary(read_run_log(log_path))["best_epoch"] + 1


def read_published(entropy_dir: str | Path,
                   logs_dir: str | Path | None = None) -> tuple["pd.DataFrame", dict[str, str]]:  # noqa: F821
    """The authors' four Fig. 4 tables (:data:`PUBLISHED_ENTROPY`) as one long table, and their panel titles.

    Args:
        entropy_dir: ``reference/entropy``.
        logs_dir: ``reference/logs``, for the best checkpoint's epoch; ``None``: unknown (``<NA>``).

    Returns:
        ``(values, labels)``: :func:`read_published_entropy` of every table, concatenated; run id -> title,
        in the paper's panel order.
    """
    import pandas as pd

    parts, labels = [], {}
    for csv, (run_id, label, log) in PUBLISHED_ENTROPY.items():
        best = published_best_epoch(Path(logs_dir) / log) if logs_dir is not None else None
        parts.append(read_published_entropy(Path(entropy_dir) / csv, run_id, best))
        labels[run_id] = label
    return pd.concat(parts, ignore_index=True), labels
