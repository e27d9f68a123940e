"""Table 1 (ImageNet top-1 per distillation method) from per-epoch training logs.

Reads the JSON-lines logs that DeiT-style training writes (one object per epoch; the authors'
published logs and this pipeline's ``train`` step share the format), summarises each run
(best / final top-1, best epoch) and aggregates runs that differ only in their seed into one table
row: mean, sample standard deviation and a 95% Student-t interval over seeds, plus the difference to
the SoftKD baseline of the same source trained for the same number of epochs.

Every row has a ``source``: ``this pipeline`` (our grid runs) or ``authors' released`` (the authors'
published logs). Sources are never merged: a published log and one of our runs with the same
configuration and seed are two rows, and each row's statistics and its difference to SoftKD use runs of
its own source only. The authors' ProjectorKD logs are method ``ProjectorKD (released)``
(``projectorkd_released``: their code trained a projector frozen at its random initialisation), not
the paper's ProjectorKD. Writers emit the table as CSV (full
precision, for machines), GitHub Markdown and a booktabs LaTeX tabular (two decimals, for people).

The reported "best top-1" is, as in the paper, the highest per-epoch evaluation accuracy of a run:
model selection on the evaluation set. Every published row is a single seed, so the Markdown
caption warns that best-vs-final differences are as large as the differences between methods.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline_steps.artifacts import atomic_outputs
from pipeline_steps.config import METHOD_NAMES
from pipeline_steps.errors import UserError

__all__ = ["BASELINE_METHOD", "PAIRED_COLUMNS", "PUBLISHED_TABLE1_LOGS", "SINGLE_SEED_CAPTION", "SOURCE_CAPTION",
           "SOURCE_PIPELINE", "SOURCE_RELEASED", "SOURCES", "TABLE1_COLUMNS", "grid_runs", "paired_differences", "paired_statistics",
           "published_table1_runs", "read_run_log", "read_table1", "run_summary", "RunSpec", "t_quantile_975",
           "table1", "table1_latex", "table1_markdown", "table1_metrics", "table1_row_name", "tex_escape",
           "write_table1"]

#: Method name of the baseline that ``delta_vs_softkd`` is measured against.
BASELINE_METHOD = METHOD_NAMES["softkd"]


#: ``source`` of a run trained by this pipeline (``--runs-dir``).
SOURCE_PIPELINE = "this pipeline"


#: ``source`` of the authors' published logs (``--published-logs``, reference/logs).
SOURCE_RELEASED = "authors' released"


#: The sources, in the order Table 1 lists them.
SOURCES = (SOURCE_PIPELINE, SOURCE_RELEASED)


#: Two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30 (index = df). Hard-coded because
#: scipy is not a dependency; tests check each against the closed-form t CDF for integer df.
_T975 = (
    float("nan"),
    12.706204736174707, 4.302652729749464, 3.182446305284263, 2.7764451051977987, 2.5705818356363146,
    2.4469118511449692, 2.3646242515927844, 2.306004135204166, 2.262157162798205, 2.2281388519862744,
    2.200985160082949, 2.1788128296634177, 2.1603686564627926, 2.1447866879178044, 2.131449545559323,
    2.1199052992210112, 2.1098155778331806, 2.10092204024096, 2.093024054408263, 2.0859634472658364,
    2.079613844727662, 2.0738730679040147, 2.0686576104190406, 2.0638985616280205, 2.059538552753294,
    2.055529438642871, 2.0518305164802833, 2.048407141795244, 2.0452296421327034, 2.0422724563012373,
)


#: Normal quantile used beyond df = 30 (slightly narrow: t_{0.975, 31} = 2.04; irrelevant at the
#: seed counts a GPU budget allows).
_Z975 = 1.96


#: Columns of :func:`table1`'s result, in order.
TABLE1_COLUMNS = (
    "source", "method", "label", "layers", "beta", "epochs", "n_seeds", "seeds",
    "best_top1", "best_top1_std", "best_top1_ci_low", "best_top1_ci_high",
    "best_epoch", "best_epochs", "final_top1", "gap_best_final", "top5_at_best",
    "delta_vs_softkd", "logs", "architecture", "parameters", "gflops",
    "paired_n", "paired_delta", "paired_ci_low", "paired_ci_high",
)


#: Column dtypes for reading a written CSV back (``seeds``/``best_epochs`` are ";"-joined lists).
_TABLE1_DTYPES = {
    "source": "string", "method": "string", "label": "string", "layers": "string", "beta": "float64", "epochs": "int64",
    "n_seeds": "int64", "seeds": "string", "best_top1": "float64", "best_top1_std": "float64",
    "best_top1_ci_low": "float64", "best_top1_ci_high": "float64", "best_epoch": "Int64",
    "best_epochs": "string", "final_top1": "float64", "gap_best_final": "float64",
    "top5_at_best": "float64", "delta_vs_softkd": "float64", "logs": "string", "architecture": "string",
    "parameters": "Int64", "gflops": "float64", "paired_n": "int64", "paired_delta": "float64",
    "paired_ci_low": "float64", "paired_ci_high": "float64",
}


#: The authors' published logs (reference/logs in the repository) that correspond to a paper Table 1 row:
#: file name -> (method, layers, beta, epochs). The MAE-teacher logs are not in the paper's table. Their
#: ProjectorKD runs trained a frozen random projector: method ``projectorkd_released``, not ``projectorkd``.
PUBLISHED_TABLE1_LOGS: dict[str, tuple[str, str, float | None, int]] = {
    "SoftKD.txt": (METHOD_NAMES["softkd"], "-", None, 300),
    "SoftKD_500_epochs.txt": (METHOD_NAMES["softkd"], "-", None, 500),
    "SpectralKD_First_1_Last_1.txt": (METHOD_NAMES["spectralkd"], "F1 L1", 0.2, 300),
    "SpectralKD_First_1.txt": (METHOD_NAMES["spectralkd"], "F1", 0.2, 300),
    "SpectralKD_Last_1.txt": (METHOD_NAMES["spectralkd"], "L1", 0.2, 300),
    "SpectralKD_Last_1_500_epochs.txt": (METHOD_NAMES["spectralkd"], "L1", 0.2, 500),
    "ProjectorKD_First_1.txt": (METHOD_NAMES["projectorkd_released"], "F1", 0.2, 300),
    "ProjectorKD_Last_1.txt": (METHOD_NAMES["projectorkd_released"], "L1", 0.2, 300),
    "ProjectorKD_First_1_Last_1.txt": (METHOD_NAMES["projectorkd_released"], "F1 L1", 0.2, 300),
}


SOURCE_CAPTION = (f"Source: \"{SOURCE_RELEASED}\" rows are the authors' published logs (reference/logs; their "
                  f"ProjectorKD ran a frozen random projector, \"ProjectorKD (released)\"), \"{SOURCE_PIPELINE}\" "
                  "rows are runs of this pipeline; rows of different sources are never pooled.")


SINGLE_SEED_CAPTION = ("Single seed per row: best-vs-final differences (up to 0.1 points in the published logs) "
                       "are as large as the differences between methods.")


# ----------------------------------------------------------------------------------------------- logs
def read_run_log(path: str | os.PathLike) -> pd.DataFrame:
    """Read a per-epoch JSON-lines training log into a DataFrame.

    Each non-blank line is one JSON object (DeiT ``log.txt`` format). Columns are the union of the
    lines' keys in order of first appearance (``train_lr``, ``train_loss``, ``train_loss_base``,
    ``train_loss_fft``, ``train_loss_dist``, ``test_loss``, ``test_acc1``, ``test_acc5``, ``epoch``,
    ``n_parameters``, whichever are present, and any other keys); a key missing from some lines is
    NaN there. Rows are sorted by ``epoch`` (int64), index 0..n-1.

    An epoch logged twice (a run resumed from a checkpoint re-trains and re-logs the epochs after
    it) keeps its LAST line: that is the record of the training that the run's later epochs and
    checkpoints continue from. The replaced epochs are listed in ``df.attrs["replaced_epochs"]``;
    ``df.attrs["path"]`` is the log's path. Gaps in the epoch sequence are not an error here
    (:func:`table1` checks completeness against the run's planned epochs).

    Args:
        path: The log file.

    Returns:
        One row per epoch.

    Raises:
        UserError: The file is missing or empty, a line is not a JSON object, or a line lacks a
            non-negative integer ``epoch`` or a finite numeric ``test_acc1``.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"training log not found: {path}; check the path or finish the training run first")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"training log {path} is not UTF-8 text ({exc.reason}); pass the run's JSON-lines log.txt")
    records: dict[int, dict[str, Any]] = {}
    replaced: list[int] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue  # DeiT ends the file with a newline; tolerate stray blank lines too.
        where = f"{path} line {lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where} is not JSON ({exc.msg}); repair or remove that line "
                            "(a crash mid-write can truncate the last line)") from None
        if not isinstance(record, dict):
            raise UserError(f"{where} is a JSON {type(record).__name__}, not an object; "
                            "each line must be one epoch's {\"epoch\": ..., \"test_acc1\": ...} record")
        epoch = _epoch_of(record, where)
        acc = record.get("test_acc1")
        if "test_acc1" not in record:
            raise UserError(f"{where} has no 'test_acc1'; the log must record the evaluation top-1 of every epoch")
        if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not math.isfinite(acc):
            raise UserError(f"{where} has test_acc1 = {acc!r}; it must be a finite number (percent)")
        if epoch in records:
            replaced.append(epoch)
            del records[epoch]  # re-insert so the column order still follows the file
        record["epoch"] = epoch
        records[epoch] = record
    if not records:
        raise UserError(f"training log {path} is empty; the run has not finished an epoch yet")
    df = pd.DataFrame.from_records(list(records.values()))
    df["epoch"] = df["epoch"].astype("int64")
    df = df.sort_values("epoch", kind="stable").reset_index(drop=True)
    df.attrs["path"] = str(path)
    df.attrs["replaced_epochs"] = sorted(set(replaced))
    return df


def _epoch_of(record: dict[str, Any], where: str) -> int:
    """The record's epoch as a non-negative int (integral floats such as 3.0 are accepted)."""
    if "epoch" not in record:
        raise UserError(f"{where} has no 'epoch'; every line must say which (0-based) epoch it records")
    epoch = record["epoch"]
    if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or not float(epoch).is_integer() \
            or epoch < 0:
        raise UserError(f"{where} has epoch = {epoch!r}; it must be a non-negative integer")
    return int(epoch)


def run_summary(log: pd.DataFrame) -> dict[str, Any]:
    """Summarise one run's log.

    Args:
        log: A :func:`read_run_log` result (needs ``epoch`` and ``test_acc1``; ``test_acc5`` optional).

    Returns:
        ``best_top1`` (max test top-1), ``best_epoch`` (0-based, the FIRST epoch reaching it),
        ``final_top1`` / ``final_epoch`` (the last logged epoch), ``n_epochs`` (epochs logged),
        ``best_top5`` (max test top-5 over epochs, NaN without ``test_acc5``), ``top5_at_best``
        (top-5 of the best top-1 epoch: the model one would select) and ``gap_best_final``
        (``best_top1 - final_top1``, >= 0). Plain Python numbers, JSON-serialisable except NaN.

    Raises:
        UserError: The log has no rows or lacks ``epoch`` / ``test_acc1``.
    """
    missing = [c for c in ("epoch", "test_acc1") if c not in log.columns]
    if missing:
        raise UserError(f"run log lacks column(s) {', '.join(missing)}; read it with tables.read_run_log")
    if log.empty:
        raise UserError("run log has no epochs; the run has not finished an epoch yet")
    log = log.sort_values("epoch", kind="stable")
    acc1 = log["test_acc1"].to_numpy(dtype=float)
    epochs = log["epoch"].to_numpy()
    best_i = int(np.argmax(acc1))  # argmax returns the first maximum: the earliest best epoch
    has5 = "test_acc5" in log.columns
    acc5 = log["test_acc5"].to_numpy(dtype=float) if has5 else np.full(len(log), np.nan)
    return {
        "best_top1": float(acc1[best_i]),
        "best_epoch": int(epochs[best_i]),
        "final_top1": float(acc1[-1]),
        "final_epoch": int(epochs[-1]),
        "n_epochs": int(len(log)),
        "best_top5": float(np.nanmax(acc5)) if has5 and not np.isnan(acc5).all() else float("nan"),
        "top5_at_best": float(acc5[best_i]),
        "gap_best_final": float(acc1[best_i] - acc1[-1]),
    }


# ------------------------------------------------------------------------------------------- table 1
@dataclass(frozen=True)
class RunSpec:
    """One training run to put in Table 1.

    Attributes:
        method: Distillation method, e.g. ``"SoftKD"``, ``"SpectralKD"``, ``"ProjectorKD"``.
        layers: Layer pairs, e.g. ``"F1 L1"``; ``"-"`` for none (SoftKD).
        beta: Feature-loss weight; None for none (SoftKD).
        epochs: Planned training epochs; the log must hold exactly epochs 0..epochs-1.
        seed: Training seed; runs equal in everything but the seed form one row.
        log_path: The run's JSON-lines log.
        label: Display name for the row (default: ``method``). Runs of one row must not carry
            different labels: that would mean they are different configurations.
        source: Who ran it, one of :data:`SOURCES`; runs of different sources are never one row.
        architecture: The student architecture (``base``, ``lift``, ``widelast``): part of the row, so a
            SoftKD run on a Lift student is never pooled with plain SoftKD.
        parameters: The student's parameter count (``models.cost.inference_cost``); None if unknown.
        flops: The FLOPs of one image's forward pass at the dataset's image size; None if unknown.
    """

    method: str
    layers: str
    beta: float | None
    epochs: int
    seed: int
    log_path: Path
    label: str | None = None
    source: str = SOURCE_PIPELINE
    architecture: str = "base"
    parameters: int | None = None
    flops: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "log_path", Path(self.log_path))

    @property
    def key(self) -> tuple[str, str, str, float | None, int, str]:
        """The grouping key ``(source, method, layers, beta, epochs, architecture)``."""
        return (self.source, self.method, self.layers, self.beta, self.epochs, self.architecture)


def published_table1_runs(logs_dir: str | os.PathLike) -> list[RunSpec]:
    """RunSpecs for the authors' published logs that have a paper Table 1 row (seed 0 each, source
    :data:`SOURCE_RELEASED`).

    Args:
        logs_dir: The directory holding the published logs (``reference/logs``).

    Returns:
        Nine runs, in :data:`PUBLISHED_TABLE1_LOGS` order.
    """
    logs_dir = Path(logs_dir)
    return [RunSpec(method=m, layers=layers, beta=beta, epochs=epochs, seed=0, log_path=logs_dir / name,
                    source=SOURCE_RELEASED)
            for name, (m, layers, beta, epochs) in PUBLISHED_TABLE1_LOGS.items()]


def t_quantile_975(df: int) -> float:
    """Student-t quantile t_{0.975, df} (two-sided 95%); 1.96 beyond df = 30.

    Args:
        df: Degrees of freedom, >= 1.
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return _T975[df] if df < len(_T975) else _Z975


def _validate_spec(spec: RunSpec) -> None:
    where = f"run {spec.log_path}"
    if spec.source not in SOURCES:
        raise UserError(f"{where} has source = {spec.source!r}; give one of {', '.join(map(repr, SOURCES))}")
    if not isinstance(spec.method, str) or not spec.method.strip():
        raise UserError(f"{where} has an empty method name; name the method, e.g. 'SoftKD'")
    if not isinstance(spec.layers, str) or not spec.layers.strip():
        raise UserError(f"{where} has empty layers; write '-' for a run without feature layers")
    if spec.beta is not None and (isinstance(spec.beta, bool) or not isinstance(spec.beta, (int, float))
                                  or not math.isfinite(spec.beta)):
        raise UserError(f"{where} has beta = {spec.beta!r}; give a finite number, or None for no feature loss")
    if isinstance(spec.epochs, bool) or not isinstance(spec.epochs, int) or spec.epochs < 1:
        raise UserError(f"{where} has epochs = {spec.epochs!r}; give the planned number of epochs (>= 1)")
    if isinstance(spec.seed, bool) or not isinstance(spec.seed, int):
        raise UserError(f"{where} has seed = {spec.seed!r}; give the integer training seed")


def _check_complete(spec: RunSpec, log: pd.DataFrame) -> None:
    """A row must only compare finished runs: the log holds exactly epochs 0..epochs-1."""
    epochs = log["epoch"].to_numpy()
    if len(epochs) != spec.epochs or epochs[0] != 0 or epochs[-1] != spec.epochs - 1:
        raise UserError(f"{spec.log_path} logs {len(epochs)} epoch(s) ({epochs[0]}..{epochs[-1]}) but the run "
                        f"spec says {spec.epochs} (0..{spec.epochs - 1}); finish the run or correct its epochs")


def table1(runs: Sequence[RunSpec], baseline: str = BASELINE_METHOD) -> pd.DataFrame:
    """Aggregate runs into Table 1: one row per (source, method, layers, beta, epochs, architecture), over seeds.

    Runs of different sources (:data:`SOURCES`) are never one row and never one statistic: a published
    log and a run of ours with the same configuration and seed are two rows.

    Per row: ``n_seeds``; ``seeds`` and ``best_epochs`` (";"-joined, in seed order);
    ``best_top1`` (mean over seeds of each run's best top-1), ``best_top1_std`` (sample std,
    ddof=1; NaN for one seed), ``best_top1_ci_low``/``_high`` (mean -+ t_{0.975,n-1} * std / sqrt(n);
    NaN for one seed); ``best_epoch`` (the best epoch for a single seed, <NA> for several: a mean of
    per-seed argmax epochs is not an epoch of any run, so the per-seed list is in ``best_epochs``);
    ``final_top1`` and ``gap_best_final`` and ``top5_at_best`` (means); ``delta_vs_softkd``
    (``best_top1`` minus the baseline row's with the SAME source and epochs: the row with method
    ``baseline``, layers ``"-"``, beta None; NaN without one; 0 on the baseline row); ``label``
    (display name); ``logs`` (";"-joined log paths); ``architecture`` (the student's); ``parameters`` and
    ``gflops`` (the student's inference cost per image, from the runs' :class:`RunSpec`; empty when
    unknown, e.g. for the published logs); ``paired_n``, ``paired_delta``, ``paired_ci_low`` /
    ``paired_ci_high``: the per-seed difference to the baseline over the seeds both have
    (:func:`paired_statistics`; 0 / NaN without a paired seed, NaN interval for one, all NaN on the baseline
    row). The baseline is a ``base``-architecture row. Rows: by source
    (:data:`SOURCES` order), then the baseline first, then by method, layers, beta (None first), epochs,
    architecture (base first).

    Args:
        runs: The runs; each log must hold exactly its planned epochs.
        baseline: Method name of the baseline rows.

    Returns:
        The table, columns :data:`TABLE1_COLUMNS`.

    Raises:
        UserError: No runs, a bad spec, an unreadable or incomplete log, one seed listed twice in a
            row, or one row's runs carrying different labels.
    """
    if not runs:
        raise UserError("no runs for Table 1; list at least one training run (method, layers, beta, epochs, seed, log)")
    groups: dict[tuple, list[tuple[RunSpec, dict[str, Any]]]] = {}
    for spec in runs:
        _validate_spec(spec)
        log = read_run_log(spec.log_path)
        _check_complete(spec, log)
        groups.setdefault(spec.key, []).append((spec, run_summary(log)))

    rows = []
    best_by_seed: dict[tuple, dict[int, float]] = {}
    for (source, method, layers, beta, epochs, architecture), members in groups.items():
        members.sort(key=lambda m: m[0].seed)
        seeds = [m[0].seed for m in members]
        if len(set(seeds)) != len(seeds):
            dup = sorted({s for s in seeds if seeds.count(s) > 1})
            raise UserError(f"seed(s) {dup} listed twice for {source} {method} {layers} beta={beta} {epochs} ep "
                            f"{'' if architecture == 'base' else architecture + ' student '}"
                            f"({'; '.join(str(m[0].log_path) for m in members)}); list each run once")
        labels = {m[0].label for m in members if m[0].label is not None}
        if len(labels) > 1:
            raise UserError(f"runs of {method} {layers} beta={beta} {epochs} ep carry different labels "
                            f"{sorted(labels)}; give them distinct methods if they differ, else one label")
        costs = {(m[0].parameters, m[0].flops) for m in members}
        if len(costs) > 1:
            raise UserError(f"runs of {method} {layers} beta={beta} {epochs} ep carry different inference costs "
                            f"{sorted(costs, key=str)}; they are different students, give them distinct rows")
        parameters, flops = costs.pop()
        best = np.array([m[1]["best_top1"] for m in members])
        n = len(best)
        mean = float(best.mean())
        if n > 1:
            std = float(best.std(ddof=1))
            half = t_quantile_975(n - 1) * std / math.sqrt(n)
            lo, hi = mean - half, mean + half
        else:
            std = lo = hi = float("nan")
        best_by_seed[(source, method, layers, beta, epochs, architecture)] = {
            m[0].seed: m[1]["best_top1"] for m in members}
        rows.append({
            "source": source,
            "method": method,
            "label": labels.pop() if labels else method,
            "layers": layers,
            "beta": float(beta) if beta is not None else float("nan"),
            "epochs": epochs,
            "n_seeds": n,
            "seeds": ";".join(str(s) for s in seeds),
            "best_top1": mean,
            "best_top1_std": std,
            "best_top1_ci_low": lo,
            "best_top1_ci_high": hi,
            "best_epoch": members[0][1]["best_epoch"] if n == 1 else pd.NA,
            "best_epochs": ";".join(str(m[1]["best_epoch"]) for m in members),
            "final_top1": float(np.mean([m[1]["final_top1"] for m in members])),
            "gap_best_final": float(np.mean([m[1]["gap_best_final"] for m in members])),
            "top5_at_best": float(np.mean([m[1]["top5_at_best"] for m in members])),
            "delta_vs_softkd": float("nan"),
            "logs": ";".join(str(m[0].log_path) for m in members),
            "architecture": architecture,
            "parameters": pd.NA if parameters is None else int(parameters),
            "gflops": float("nan") if flops is None else flops / 1e9,
            "_is_baseline": method == baseline and layers == "-" and beta is None and architecture == "base",
        })
    # Seeds pair (same initialisation and data order): each row's per-seed differences to its baseline.
    for row in rows:
        beta = None if pd.isna(row["beta"]) else row["beta"]
        key = (row["source"], row["method"], row["layers"], beta, row["epochs"], row["architecture"])
        base = best_by_seed.get((row["source"], baseline, "-", None, row["epochs"], "base"), {})
        stats = paired_statistics(best_by_seed[key], {} if row["_is_baseline"] else base)
        row.update({"paired_n": stats["n_pairs"], "paired_delta": stats["diff_mean"],
                    "paired_ci_low": stats["diff_ci_low"], "paired_ci_high": stats["diff_ci_high"]})
    df = pd.DataFrame(rows)
    # Each row against the baseline of its own source: never one source's runs against the other's.
    base = df[df["_is_baseline"]].set_index(["source", "epochs"])["best_top1"]
    df["delta_vs_softkd"] = df["best_top1"] - pd.Series(
        [base.get((src, ep), np.nan) for src, ep in zip(df["source"], df["epochs"])], index=df.index)
    # Sort key: source, baseline first; beta None (stored as NaN) before any value.
    df["_source_order"] = df["source"].map(SOURCES.index)
    df["_not_baseline"] = df["method"] != baseline
    df["_beta_set"] = df["beta"].notna()
    df["_arch_order"] = df["architecture"].map(lambda a: (a != "base", a))
    df = df.sort_values(["_source_order", "_not_baseline", "method", "layers", "_beta_set", "beta", "epochs",
                         "_arch_order"], kind="stable")
    df = df.drop(columns=["_is_baseline", "_source_order", "_not_baseline", "_beta_set",
                          "_arch_order"]).reset_index(drop=True)
    df = df[list(TABLE1_COLUMNS)].astype(_TABLE1_DTYPES)
    df.attrs["baseline"] = baseline
    return df


# ------------------------------------------------------------------------------------------- writers
def _fmt(x: float, signed: bool = False) -> str:
    """Two decimals; "-" for a missing value."""
    if x is None or pd.isna(x):
        return "-"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def _paired_cell(row: pd.Series, latex: bool = False) -> str:
    """"+0.42 [-0.10, +0.94] (3)" for several paired seeds; "+0.42 (1)" for one; "-" for none or the baseline.
    ``latex``: each number in math mode (a true minus sign), "--" for none."""
    if row["paired_n"] == 0 or pd.isna(row["paired_delta"]):
        return "--" if latex else "-"
    num = (lambda x: f"${x:+.2f}$") if latex else (lambda x: f"{x:+.2f}")
    if row["paired_n"] == 1:
        return f"{num(row['paired_delta'])} (1)"
    return (f"{num(row['paired_delta'])} [{num(row['paired_ci_low'])}, {num(row['paired_ci_high'])}] "
            f"({int(row['paired_n'])})")


def _zero_caption(df: pd.DataFrame) -> str:
    """The caption line that says which paired intervals contain 0 (the differences not resolved)."""
    with_ci = df[(df["paired_n"] > 1) & df["paired_ci_low"].notna()]
    if with_ci.empty:
        return "Paired intervals: none in this table (fewer than 2 paired seeds per row)."
    contains = with_ci[(with_ci["paired_ci_low"] <= 0) & (with_ci["paired_ci_high"] >= 0)]
    resolved = with_ci.drop(contains.index)
    # "; " between rows: labels may hold commas ("SoftKD, Lift student").
    names = lambda rows: "; ".join(f"{r['label']}" + (f" ({r['source']})" if df["source"].nunique() > 1 else "")
                                   for _, r in rows.iterrows())
    parts = []
    if len(contains):
        parts.append(f"The paired 95% interval contains 0 (no difference to {_baseline_name(df)} resolved) for "
                     f"{len(contains)} of {len(with_ci)} rows: {names(contains)}.")
    else:
        parts.append(f"No paired 95% interval contains 0: all {len(with_ci)} differences are resolved.")
    if len(contains) and len(resolved):
        parts.append(f"Resolved: {names(resolved)}.")
    return " ".join(parts)


def _beta_text(beta: float) -> str:
    return "-" if pd.isna(beta) else f"{beta:g}"


def _best_cell(row: pd.Series, pm: str) -> str:
    """"76.99 (296)" for one seed; "77.05 ± 0.12 [76.80, 77.30]" for several."""
    if row["n_seeds"] == 1:
        return f"{row['best_top1']:.2f} ({row['best_epoch']})"
    return (f"{row['best_top1']:.2f}{pm}{row['best_top1_std']:.2f} "
            f"[{row['best_top1_ci_low']:.2f}, {row['best_top1_ci_high']:.2f}]")


def _params_text(parameters: Any) -> str:
    """"5.98 M"; "-" when unknown."""
    return "-" if parameters is None or pd.isna(parameters) else f"{int(parameters) / 1e6:.2f} M"


def _gflops_text(gflops: float) -> str:
    """Three decimals, as the follow-up reports them ("2.536"); "-" when unknown."""
    return "-" if gflops is None or pd.isna(gflops) else f"{gflops:.3f}"


def _md_escape(text: str) -> str:
    # A pipe would split the cell; backslash first so the escape itself survives.
    return str(text).replace("\\", "\\\\").replace("|", "\\|")


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text (one pass, so escapes are not re-escaped)."""
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


def _check_table(df: pd.DataFrame) -> None:
    missing = [c for c in TABLE1_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"table lacks column(s) {', '.join(missing)}; build it with tables.table1")
    if df.empty:
        raise UserError("table has no rows; build it from at least one run with tables.table1")


def _baseline_name(df: pd.DataFrame) -> str:
    # table1() records its baseline; a table read back from CSV has lost attrs and gets the default.
    return str(df.attrs.get("baseline", BASELINE_METHOD))


def table1_markdown(df: pd.DataFrame) -> str:
    """Render a :func:`table1` result as a GitHub Markdown table with a caption.

    Args:
        df: A :func:`table1` result.

    Returns:
        The Markdown text (ends with a newline).
    """
    _check_table(df)
    header = ["source", "method", "layers", "beta", "epochs", "seeds", "best top-1 (epoch)", "final top-1",
              f"Δ vs {_baseline_name(df)}", "paired Δ [95% CI]", "params", "GFLOPs"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["--:"] * 9) + "|"]
    for _, r in df.iterrows():
        cells = [_md_escape(r["source"]), _md_escape(r["label"]), _md_escape(r["layers"]), _beta_text(r["beta"]),
                 str(r["epochs"]), str(r["n_seeds"]), _best_cell(r, " ± "), _fmt(r["final_top1"]),
                 _fmt(r["delta_vs_softkd"], True), _paired_cell(r), _params_text(r["parameters"]),
                 _gflops_text(r["gflops"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Top-1 (%): the best epoch's test top-1 (model selection on the evaluation set, as in the paper); "
                 "several seeds: mean ± sample std [95% Student-t interval]; final top-1 = last epoch (mean); "
                 f"Δ = best top-1 minus {_baseline_name(df)}'s with the same source and epochs (a base student); "
                 "paired Δ = mean over seeds of (best top-1 minus the same seed's baseline run), which shares "
                 "its initialisation and data order, [its 95% Student-t interval] (paired seeds); "
                 "params and GFLOPs: the student's inference cost per image at the dataset's image size "
                 "(2 x multiply-accumulates; - = not known).")
    lines.append("")
    lines.append(_zero_caption(df))
    lines.append("")
    lines.append(SOURCE_CAPTION)
    if (df["n_seeds"] == 1).all():
        lines.append("")
        lines.append(f"{SINGLE_SEED_CAPTION} Largest best-vs-final gap in this table: "
                     f"{df['gap_best_final'].max():.2f} points.")
    return "\n".join(lines) + "\n"


def table1_latex(df: pd.DataFrame) -> str:
    """Render a :func:`table1` result as a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``).

    Args:
        df: A :func:`table1` result.

    Returns:
        The LaTeX text (ends with a newline); text cells are escaped.
    """
    _check_table(df)

    def signed(x: float) -> str:
        return "--" if pd.isna(x) else f"${x:+.2f}$"

    def dash(text: str) -> str:
        return "--" if text == "-" else tex_escape(text)

    header = ["Source", "Method", "Layers", r"$\beta$", "Epochs", "Seeds", "Best top-1 (epoch)", "Final top-1",
              rf"$\Delta$ vs {tex_escape(_baseline_name(df))}", r"Paired $\Delta$ [95\% CI]", "Params (M)", "GFLOPs"]
    lines = ["% Generated by pipeline_steps.reporting.tables; requires \\usepackage{booktabs}.",
             r"\begin{tabular}{lllrrrrrrrrr}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
    for _, r in df.iterrows():
        final = "--" if pd.isna(r["final_top1"]) else f"{r['final_top1']:.2f}"
        cells = [tex_escape(r["source"]), tex_escape(r["label"]), dash(r["layers"]), dash(_beta_text(r["beta"])),
                 str(r["epochs"]), str(r["n_seeds"]), _best_cell(r, r" $\pm$ "), final, signed(r["delta_vs_softkd"]),
                 _paired_cell(r, latex=True),
                 dash(_params_text(r["parameters"]).removesuffix(" M")), dash(_gflops_text(r["gflops"]))]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", "% " + tex_escape(_zero_caption(df)), "% " + SOURCE_CAPTION]
    if (df["n_seeds"] == 1).all():
        lines.append("% " + SINGLE_SEED_CAPTION)
    return "\n".join(lines) + "\n"


def write_table1(df: pd.DataFrame, stem: str | os.PathLike, *, metrics: bool = False) -> list[Path]:
    """Write a :func:`table1` result as ``<stem>.csv``, ``<stem>.md`` and ``<stem>.tex``, all or none.

    The CSV keeps full precision (read it back with :func:`read_table1`); Markdown and LaTeX show
    two decimals. The files are committed together (``artifacts.atomic_outputs``).

    Args:
        df: A :func:`table1` result.
        stem: Output path without suffix, e.g. ``results/tables/table1`` (dots in it are kept).
        metrics: Also write ``<stem>.json``, the ``dvc metrics`` form (:func:`table1_metrics`).

    Returns:
        The written paths (csv, md, tex[, json]).
    """
    _check_table(df)
    # Appending (not with_suffix) keeps a stem such as "table1.v2" whole.
    exts = (".csv", ".md", ".tex", ".json") if metrics else (".csv", ".md", ".tex")
    paths = [Path(f"{os.fspath(stem)}{ext}") for ext in exts]
    with atomic_outputs(*paths) as temporaries:
        df[list(TABLE1_COLUMNS)].to_csv(temporaries[0], index=False)
        temporaries[1].write_text(table1_markdown(df))
        temporaries[2].write_text(table1_latex(df))
        if metrics:
            temporaries[3].write_text(json.dumps(table1_metrics(df), indent=2, sort_keys=True) + "\n")
    return paths


def read_table1(path: str | os.PathLike) -> pd.DataFrame:
    """Read a Table 1 CSV written by :func:`write_table1` back with its dtypes and exact floats.

    Args:
        path: The ``.csv`` file.

    Raises:
        UserError: The file is missing or lacks Table 1's columns.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"table not found: {path}; write it with tables.write_table1 first")
    # pandas 3 parses floats round-trip exactly by default and deprecates the option; pandas 2 needs it.
    exact = {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}
    df = pd.read_csv(path, dtype=_TABLE1_DTYPES, keep_default_na=False,
                     na_values={c: [""] for c in _TABLE1_DTYPES if c != "layers"}, **exact)
    missing = [c for c in TABLE1_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"{path} lacks column(s) {', '.join(missing)}; it is not a Table 1 CSV")
    return df


# ------------------------------------------------------------------------------------------------ CLI
def grid_runs(params: dict, runs_dir: str | os.PathLike) -> list[RunSpec]:
    """RunSpecs for the config's distillation grid (source :data:`SOURCE_PIPELINE`), reading
    ``<runs_dir>/<run id>/log.txt``, with each student's architecture and inference cost per image
    (:func:`pipeline_steps.models.cost.inference_cost` of the run's student spec, built on the meta device, at
    the dataset's image size: ``dataset.synthetic.image_size`` or ``dataset.eval_preprocess.crop``)."""
    from pipeline_steps.config import distill_runs, layers_text

    runs = distill_runs(params)
    costs = {arch: _student_cost(params, arch) for arch in sorted({run.architecture for run in runs})}
    return [RunSpec(method=METHOD_NAMES[run.method], layers=layers_text(run.layers),
                    beta=run.beta, epochs=run.epochs, seed=run.seed,
                    log_path=Path(runs_dir) / run.run_id / "log.txt", label=run.label, source=SOURCE_PIPELINE,
                    architecture=run.architecture, parameters=costs[run.architecture][0],
                    flops=costs[run.architecture][1])
            for run in runs]


def _student_cost(params: dict, architecture: str) -> tuple[int, int]:
    """``(parameters, flops)`` of the grid's student of ``architecture`` (the seed does not change them)."""
    from pipeline_steps.config import student_spec
    from pipeline_steps.models.build import meta_model
    from pipeline_steps.models.cost import inference_cost
    from pipeline_steps.models.remedies import student_spec_for

    dataset = params["dataset"]
    size = dataset["synthetic"]["image_size"] if dataset["kind"] == "synthetic" else dataset["eval_preprocess"]["crop"]
    width = int(meta_model(params["teacher"]["model"]).embed_dim)  # only the teacher's width is needed
    return inference_cost(student_spec_for(student_spec(params, 0), architecture, width), size)


def table1_row_name(row: pd.Series) -> str:
    """A Table 1 row's name, unique in any table: its source and whole configuration (not its label).

    E.g. ``"this pipeline: SoftKD, 300 ep"``, ``"authors' released: SpectralKD L1, beta 0.2, 300 ep"``.
    """
    parts = [row["method"] if row["layers"] == "-" else f"{row['method']} {row['layers']}"]
    architecture = row.get("architecture", "base")
    if not pd.isna(architecture) and architecture != "base":  # base rows keep their names
        parts.append(f"{architecture} student")
    if not pd.isna(row["beta"]):
        parts.append(f"beta {float(row['beta'])!r}")
    parts.append(f"{row['epochs']} ep")
    return f"{row['source']}: {', '.join(parts)}"


#: Columns of :func:`paired_differences`.
PAIRED_COLUMNS = ("source", "method", "label", "layers", "beta", "epochs", "n_pairs", "seeds", "diff_mean",
                  "diff_std", "diff_ci_low", "diff_ci_high", "ci_contains_zero")


def paired_statistics(ours: Mapping[int, float], baseline: Mapping[int, float]) -> dict[str, Any]:
    """Per-seed differences ``ours[seed] - baseline[seed]`` over the seeds both have, with a 95% t-interval.

    Returns:
        ``n_pairs``, ``seeds`` (sorted), ``diff_mean``, ``diff_std`` (ddof 1), ``diff_ci_low`` /
        ``diff_ci_high`` (mean -+ t_{0.975, n-1} * std / sqrt(n)) and ``ci_contains_zero``; the mean is NaN
        without a pair, the last four NaN / NA for a single pair.
    """
    seeds = sorted(set(ours) & set(baseline))
    diffs = np.array([ours[s] - baseline[s] for s in seeds], dtype=np.float64)
    n = len(diffs)
    mean = float(diffs.mean()) if n else float("nan")
    std = lo = hi = float("nan")
    if n > 1:
        std = float(diffs.std(ddof=1))
        half = t_quantile_975(n - 1) * std / math.sqrt(n)
        lo, hi = mean - half, mean + half
    return {"n_pairs": n, "seeds": seeds, "diff_mean": mean, "diff_std": std, "diff_ci_low": lo,
            "diff_ci_high": hi, "ci_contains_zero": pd.NA if n < 2 else bool(lo <= 0 <= hi)}


PAIRED_COLUMNS = ("source", "method", "label", "layers", "beta", "epochs", "n_pairs", "seeds", "diff_mean",
                  "diff_std", "diff_ci_low", "diff_ci_high", "ci_contains_zero")


def paired_differences(runs: Sequence[RunSpec], baseline: str = BASELINE_METHOD) -> pd.DataFrame:
    """Each configuration's best top-1 minus the baseline's, seed by seed, with a 95% interval over seeds.

    Runs of this pipeline with the same seed share the student's initialisation and the data order, so the
    per-seed difference ``best_top1(config, seed) - best_top1(baseline, seed)`` removes that shared variation:
    the paired interval is the one to read when seeds pair (Table 1's unpaired intervals are wider). The
    baseline is the row of method ``baseline`` (no layers, no beta, a base student) of the same source and
    epochs; only seeds present in both count (:func:`paired_statistics`).

    Args:
        runs: The runs, as for :func:`table1`.
        baseline: Method name of the baseline rows.

    Returns:
        One row per non-baseline configuration with at least one paired seed, in Table 1's order: the
        configuration columns, ``n_pairs``, ``seeds`` (";"-joined), ``diff_mean``, ``diff_std`` (ddof 1),
        ``diff_ci_low`` / ``diff_ci_high`` and ``ci_contains_zero``; the last four are NaN / NA for a single
        pair.

    Raises:
        UserError: As :func:`table1` for the runs' logs.
    """
    table = table1(runs, baseline)  # validates the runs and their logs, and gives the row order
    best: dict[tuple, dict[int, float]] = {}
    for spec in runs:
        best.setdefault(spec.key, {})[spec.seed] = run_summary(read_run_log(spec.log_path))["best_top1"]
    rows = []
    for _, r in table.iterrows():
        beta = None if pd.isna(r["beta"]) else float(r["beta"])
        if r["method"] == baseline and r["layers"] == "-" and beta is None and r["architecture"] == "base":
            continue
        ours = best[(r["source"], r["method"], r["layers"], beta, int(r["epochs"]), r["architecture"])]
        stats = paired_statistics(ours, best.get((r["source"], baseline, "-", None, int(r["epochs"]), "base"), {}))
        if not stats["n_pairs"]:
            continue
        rows.append({"source": r["source"], "method": r["method"], "label": r["label"], "layers": r["layers"],
                     "beta": r["beta"], "epochs": int(r["epochs"]), **stats,
                     "seeds": ";".join(map(str, stats["seeds"]))})
    return pd.DataFrame(rows, columns=list(PAIRED_COLUMNS))


def table1_metrics(df: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Table 1 as a ``dvc metrics`` JSON: :func:`table1_row_name` -> its numbers (NaN left out)."""
    keys = ("best_top1", "best_top1_std", "final_top1", "gap_best_final", "delta_vs_softkd", "n_seeds")
    out: dict[str, dict[str, float]] = {}
    for _, row in df.iterrows():
        name = table1_row_name(row)
        if name in out:  # table1() makes one row per (source, method, layers, beta, epochs, architecture)
            raise UserError(f"two Table 1 rows are both '{name}'; build the table with tables.table1")
        out[name] = {k: float(row[k]) for k in keys if not pd.isna(row[k])}
    return out
