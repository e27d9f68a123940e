"""The tidy store: every per-layer statistic of every analysed model in one long DataFrame.

The pipeline writes its statistics tables (columns
:data:`~pipeline_steps.analysis.layer_statistics.STATISTICS_COLUMNS`, docs/artifacts.md) in three places:

=============================================  ==========================================================
``results/statistics/teacher.parquet``         the teacher (``checkpoint`` = ``final``)
``results/teacher/evolution_statistics.parquet``  every checkpoint of the teacher's own training (if trained here)
``results/evolution/<run_id>_statistics.parquet``  every checkpoint of every distillation run, best included
=============================================  ==========================================================

:func:`load_statistics` reads all of them into one table keyed by ``model, run_id, seed, checkpoint, epoch,
layer, teacher_layer, metric, level``, adding ``source`` (which of the three) and ``configuration`` (the
``distill.runs`` entry name of a run, :func:`pipeline_steps.config.run_name`; ``teacher`` for the teacher)::

    from pipeline_steps.analysis.store import load_statistics
    stats = load_statistics("results")
    cka = stats.query("metric == 'cka' and checkpoint == 'best'")
    cka.groupby(["configuration", "teacher_layer", "layer"])["value"].mean().unstack()

The entropy spectrum (Fig. 3) stays in the values tables of the reduce and evolution steps: it is indexed by
frequency bin, not by layer and level.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline_steps.errors import UserError

__all__ = ["SOURCES", "load_statistics", "statistics_files"]

#: ``source`` value -> the files of that source, relative to the results directory (glob patterns).
SOURCES = {
    "teacher": ("statistics/teacher.parquet",),
    "teacher_training": ("teacher/evolution_statistics.parquet",),
    "distillation": ("evolution/*_statistics.parquet",),
}


def statistics_files(results_dir: str | Path = "results") -> list[tuple[str, Path]]:
    """``(source, path)`` of every statistics table under ``results_dir``, in :data:`SOURCES` order, files of a
    source sorted by name."""
    root = Path(results_dir)
    return [(source, path) for source, patterns in SOURCES.items()
            for pattern in patterns for path in sorted(root.glob(pattern))]


def load_statistics(results_dir: str | Path = "results") -> pd.DataFrame:
    """Every statistics table under ``results_dir`` as one DataFrame (see the module docstring).

    Args:
        results_dir: The pipeline's results directory.

    Returns:
        The tables' rows, with their columns in order, then ``source`` and ``configuration``.

    Raises:
        UserError: No table is there, or a table is not a statistics table of this pipeline.
    """
    from pipeline_steps.analysis.layer_statistics import STATISTICS_COLUMNS, read_statistics_table
    from pipeline_steps.config import run_name

    files = statistics_files(results_dir)
    if not files:
        raise UserError(f"no statistics tables under {results_dir} (looked for "
                        f"{', '.join(p for patterns in SOURCES.values() for p in patterns)}); run the pipeline first")
    parts = []
    for source, path in files:
        table = read_statistics_table(path, "statistics table", "rerun the step that wrote it")
        parts.append(table[list(STATISTICS_COLUMNS)].assign(source=source))
    stats = pd.concat(parts, ignore_index=True)
    stats["configuration"] = [run_name(r) if s == "distillation" else "teacher"
                              for r, s in zip(stats["run_id"], stats["source"])]
    return stats
