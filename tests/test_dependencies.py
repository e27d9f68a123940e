"""The one dependency table (pipeline_steps.dependencies): each step's code derived from its imports, and
dvc.yaml, the package layout and the public surface agreeing with it."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest
import yaml

import pipeline_steps
from pipeline_steps.dependencies import RULES, code_digest, step_code

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "pipeline_steps"
STEPS = sorted(p.stem for p in (PACKAGE / "steps").glob("*.py") if p.stem != "__init__")


def test_dvc_stages_list_the_derived_code_and_params():
    """Every DVC stage's code deps are its step's import closure and its params are the rule's keys."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert set(stages) == set(RULES)
    for name, stage in stages.items():
        code = [dep for dep in stage["deps"] if dep.startswith("pipeline_steps/")]
        assert code == step_code(name), name
        assert sorted(stage.get("params", [])) == sorted(RULES[name].params), name


def test_the_closure_follows_imports_inside_functions():
    """The bug the table fixes: the teacher's training runs the loss module (the loop builds its
    cross-entropy objective), and the data generator runs no model code."""
    assert "pipeline_steps/distillation/methods.py" in step_code("train_teacher")
    assert "pipeline_steps/training/teacher_targets.py" in step_code("teacher_cache")
    generate = step_code("generate_data")
    assert not [p for p in generate if p.startswith(("pipeline_steps/models/", "pipeline_steps/training/",
                                                     "pipeline_steps/distillation/"))], generate
    for step in STEPS:  # the CLI and the package __init__ files run for every step
        assert {"pipeline_steps/__init__.py", "pipeline_steps/__main__.py", f"pipeline_steps/steps/{step}.py",
                "pipeline_steps/steps/__init__.py"} <= set(step_code(step)), step


def test_steps_never_import_steps_and_the_library_never_imports_a_step():
    for step in STEPS:
        others = [p for p in step_code(step) if p.startswith("pipeline_steps/steps/")
                  and p not in (f"pipeline_steps/steps/{step}.py", "pipeline_steps/steps/__init__.py")]
        assert not others, (step, others)
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "steps" or path.name == "__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("pipeline_steps.steps"), path


def test_code_digest_changes_with_the_code_and_only_then(tmp_path):
    """A step's digest covers exactly its closure, read from the repository it is given (the workflow's own):
    editing the loss module of a copy changes the copy's teacher digest and not its data generator's."""
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(PACKAGE, copy / "pipeline_steps", ignore=shutil.ignore_patterns("__pycache__"))
    before = {step: code_digest(step, copy) for step in ("train_teacher", "generate_data")}
    assert before == {step: code_digest(step) for step in before}  # same files, same digests
    assert step_code("train_teacher", copy) == step_code("train_teacher")
    methods = copy / "pipeline_steps/distillation/methods.py"
    methods.write_text(methods.read_text() + "\n# an edit\n")
    assert code_digest("train_teacher", copy) != before["train_teacher"]
    assert code_digest("generate_data", copy) == before["generate_data"]
    assert code_digest("train_teacher") == before["train_teacher"]  # this repository's files are untouched


def _library_modules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages(pipeline_steps.__path__, "pipeline_steps.")
            if ".steps" not in m.name and not m.name.endswith("__main__") and not m.ispkg]


@pytest.mark.parametrize("name", _library_modules())
def test_all_lists_every_public_name(name):
    """``__all__`` is the module's whole public surface: every public function, class and constant it
    defines, and nothing it does not."""
    module = importlib.import_module(name)
    tree = ast.parse(Path(module.__file__).read_text())
    defined = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Assign):
            defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            defined.add(node.target.id)
    public = {n for n in defined if not n.startswith("_")} - {"PACKAGE", "REPO_ROOT"}
    assert sorted(module.__all__) == sorted(public), name
