"""What each step depends on, stated once: the params keys it reads and its code.

Every Snakemake rule (and the DVC stage of the same name) runs one step of :mod:`pipeline_steps.steps`.
:data:`RULES` lists, per rule, that step and the dotted params keys the rule hands it. The step's code is not
listed by hand: :func:`step_code` follows the step module's imports (every ``import`` statement, those inside
functions included) through the package and returns the files reached. From this one table come

- the rule's ``--config-json`` (:func:`pipeline_steps.config.select` of the keys) and its ``params:``, so
  Snakemake's params trigger sees every value the step reads;
- the rule's code inputs and a ``params: code=`` digest (:func:`code_digest`), so Snakemake re-runs a step
  whose code changed, decided by content (its params trigger), whatever the files' modification times;
- dvc.yaml's ``deps`` and ``params`` per stage, checked against this table by ``tests/test_dependencies.py``
  (``python -m pipeline_steps.dependencies`` prints the expected lists);
- the training runs' resume fingerprints (:func:`pipeline_steps.training.run_dir.run_fingerprint`).

The CLI (``__main__.py``) and the package ``__init__`` files on the way count as code of every step: they run
for every step.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ANALYSIS_DATA_PARAMS", "RULE_PARAMS", "RULES", "TRAINING_DATA_PARAMS", "code_digest", "RuleDependencies",
           "step_code"]

PACKAGE = "pipeline_steps"
REPO_ROOT = Path(__file__).resolve().parent.parent

#: The dataset params of steps that train or score models (DeiT's evaluation transform for imagefolder data).
TRAINING_DATA_PARAMS = ("dataset.kind", "dataset.synthetic", "dataset.imagefolder", "dataset.eval_preprocess")
#: The dataset params of steps that analyse activations (the paper's analysis preprocessing).
ANALYSIS_DATA_PARAMS = ("dataset.kind", "dataset.synthetic", "dataset.imagefolder", "dataset.preprocess")

_FIGURE = ("teacher.name", "teacher.model", "figures.dpi", "figures.title")
_GRID_RESULTS = ("distill.runs", "distill.seeds", "distill.beta", "distill.train.epochs")
#: Figures of the distillation runs' statistics: panels per configuration, as Fig. 4.
_GRID_FIGURE = ("teacher.model", "student.model", "figures.dpi", "figures.evolution_panels", "distill.runs",
                "distill.seeds")


@dataclass(frozen=True)
class RuleDependencies:
    """One rule's step (a module of :mod:`pipeline_steps.steps`) and the params keys it reads."""

    step: str
    params: tuple[str, ...]


#: Rule (and DVC stage) name -> its step and params keys.
RULES: dict[str, RuleDependencies] = {
    "generate_data": RuleDependencies("generate_data", ("dataset.kind", "dataset.synthetic")),
    "sample": RuleDependencies("sample", ("dataset.kind", "dataset.imagefolder", "sample")),
    "train_teacher": RuleDependencies("train_teacher", (*TRAINING_DATA_PARAMS, "teacher.model", "teacher.train")),
    "extract": RuleDependencies("extract", (*ANALYSIS_DATA_PARAMS, "teacher.model", "analysis.batch_size",
                                            "analysis.num_workers", "analysis.layers")),
    "reduce": RuleDependencies("reduce", ("teacher.name", "analysis.bins", "analysis.range_policy",
                                          "analysis.chunk_images", "analysis.shape_tolerance")),
    "statistics": RuleDependencies("statistics", ("teacher.name", "analysis.bins", "analysis.range_policy",
                                                  "analysis.chunk_images", "analysis.shape_tolerance",
                                                  "analysis.statistics")),
    "fig_entropy": RuleDependencies("figures", _FIGURE),
    "fig_magnitude": RuleDependencies("figures", _FIGURE),
    "fig_spectra": RuleDependencies("figures", (*_FIGURE, "figures.spectra_layers", "figures.spectra_scale")),
    "fig_spectra_all": RuleDependencies("figures", (*_FIGURE, "figures.spectra_scale")),
    "fig_robustness": RuleDependencies("figures", (*_FIGURE, "analysis.shape_tolerance")),
    "teacher_evolution": RuleDependencies("evolution", (*ANALYSIS_DATA_PARAMS, "analysis")),
    "fig_teacher_evolution": RuleDependencies("figures", (*_FIGURE, "analysis.shape_tolerance")),
    # Of the grid, only what decides which teacher blocks are cached (see common.smk's teacher_cache_config).
    "teacher_cache": RuleDependencies("teacher_cache", (*TRAINING_DATA_PARAMS, "teacher.model", "student.model",
                                                        "distill.runs", "distill.train.device")),
    "distill": RuleDependencies("distill", (*TRAINING_DATA_PARAMS, "teacher.model", "student.model", "distill")),
    "evolution": RuleDependencies("evolution", (*ANALYSIS_DATA_PARAMS, "analysis")),
    "fig_evolution": RuleDependencies("figures", _GRID_FIGURE),
    "fig_cka": RuleDependencies("figures", _GRID_FIGURE),
    "fig_cka_match": RuleDependencies("figures", _GRID_FIGURE),
    "fig_statistics": RuleDependencies("figures", _GRID_FIGURE),
    # The student and teacher models and the image size: each row's inference cost (parameters, GFLOPs).
    "table1": RuleDependencies("table1", (*_GRID_RESULTS, "teacher.model", "student.model", "dataset.kind",
                                          "dataset.synthetic", "dataset.eval_preprocess")),
    "fig_evolution_published": RuleDependencies("figures", ("figures.dpi",)),
    "table1_published": RuleDependencies("table1", ()),
    "headline": RuleDependencies("headline", (*_GRID_RESULTS, "analysis.statistics.massive_min_ratio",
                                             "analysis.statistics.massive_min_magnitude")),
}

#: Rule name -> the params keys it reads (the view of :data:`RULES` the workflow uses).
RULE_PARAMS: dict[str, tuple[str, ...]] = {rule: deps.params for rule, deps in RULES.items()}


def _module_file(module: str, root: Path) -> Path | None:
    """The file of a ``pipeline_steps`` module under repository ``root`` (a module or a package's
    ``__init__.py``)."""
    base = root.joinpath(*module.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _imported_modules(module: str, path: Path, root: Path) -> set[str]:
    """The ``pipeline_steps`` modules ``module`` (at ``path``) imports, anywhere in its body."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # `from package import name` imports the submodule `name` when there is one.
            names = [origin] + [f"{origin}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name == PACKAGE or name.startswith(PACKAGE + "."))
    return {name for name in found if _module_file(name, root) is not None}


def _with_parents(module: str) -> set[str]:
    """``module`` and the packages that contain it (importing it runs their ``__init__``)."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


@functools.cache
def _closure(step: str, root: Path) -> tuple[str, ...]:
    start = f"{PACKAGE}.steps.{step}"
    if _module_file(start, root) is None:
        raise KeyError(f"no step module {start} under {root}")
    seen: set[str] = set()
    todo = [start, f"{PACKAGE}.__main__"]
    while todo:
        module = todo.pop()
        for name in _with_parents(module) - seen:
            seen.add(name)
            todo.extend(_imported_modules(name, _module_file(name, root), root) - seen)
    return tuple(sorted(seen))


def step_code(step: str, root: str | Path | None = None) -> list[str]:
    """The repository-relative paths of the Python files step ``step`` runs (its import closure).

    Args:
        step: A module name of :mod:`pipeline_steps.steps` (``"distill"``), or a rule name of :data:`RULES`.
        root: The repository whose files to read: the workflow's own (Snakemake passes its directory, which
            need not be where this package was imported from); default this package's repository.

    Returns:
        Sorted POSIX paths such as ``pipeline_steps/training/loop.py``.
    """
    root = Path(root).resolve() if root is not None else REPO_ROOT
    step = RULES[step].step if step in RULES else step
    return sorted(_module_file(m, root).relative_to(root).as_posix() for m in _closure(step, root))


def code_digest(step: str, root: str | Path | None = None) -> str:
    """SHA-256 over the content of :func:`step_code`'s files (with their paths): changes exactly when the
    step's code does."""
    root = Path(root).resolve() if root is not None else REPO_ROOT
    h = hashlib.sha256()
    for rel in step_code(step, root):
        h.update(rel.encode() + b"\0" + (root / rel).read_bytes() + b"\0")
    return h.hexdigest()


def _print_table() -> None:
    for rule, deps in RULES.items():
        print(f"{rule}:\n  params: {list(deps.params)}\n  code:")
        for path in step_code(rule):
            print(f"    - {path}")


if __name__ == "__main__":
    _print_table()
