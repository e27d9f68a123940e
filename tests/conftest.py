"""Shared fixtures: the repository root, a CLI runner, and tiny configs.

Tests never depend on, read or write the user's results in the repository: every session runs in a
scratch working directory (so a step's relative default, e.g. ``results/data/synthetic.npz``, points
there), Snakemake and DVC run in scratch copies (tests/test_workflow.py), and :func:`users_files_untouched`
checks at the end that ``results/``, ``.snakemake/``, ``dvc.lock`` and the other run state in the
repository are as they were.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

#: What running the pipeline in the repository writes there (the user's results and run state).
USER_STATE = ("results", ".snakemake", "dvc.lock", "logs", "dvc_plots", ".dvc/cache", ".dvc/tmp")


def user_state(root: Path = REPO) -> dict[str, tuple[str, int, int] | None]:
    """Every entry of :data:`USER_STATE` under ``root``: relative path -> (kind, size, mtime_ns), None if absent."""
    state: dict[str, tuple[str, int, int] | None] = {}
    for name in USER_STATE:
        top = root / name
        if not top.exists() and not top.is_symlink():
            state[name] = None
            continue
        for path in [top, *(sorted(top.rglob("*")) if top.is_dir() else [])]:
            st = path.lstat()
            kind = "dir" if path.is_dir() and not path.is_symlink() else "file"
            state[path.relative_to(root).as_posix()] = (kind, st.st_size if kind == "file" else 0, st.st_mtime_ns)
    return state


@pytest.fixture(scope="session", autouse=True)
def users_files_untouched(tmp_path_factory):
    """Run the session in a scratch directory and check that the user's results and run state are unchanged."""
    before = user_state()
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    try:
        yield
    finally:
        os.chdir(previous)
    after = user_state()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"the tests changed the user's files in {REPO}: {changed[:10]}"


def tool_env(**extra: str) -> dict[str, str]:
    """Environment for subprocesses: the venv's tools first on PATH, a git identity, no colour."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("GIT_AUTHOR_NAME", "pipeline tests")
    env.setdefault("GIT_AUTHOR_EMAIL", "tests@localhost")
    env.setdefault("GIT_COMMITTER_NAME", "pipeline tests")
    env.setdefault("GIT_COMMITTER_EMAIL", "tests@localhost")
    env["DVC_NO_ANALYTICS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    # `python -m pipeline_steps` from any working directory imports this checkout's package.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run_step(*args: str, cwd: Path | str | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m pipeline_steps <args>`` and capture its output (in the session's scratch directory,
    unless ``cwd`` says otherwise)."""
    proc = subprocess.run([sys.executable, "-m", "pipeline_steps", *args], cwd=cwd, env=tool_env(),
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"step failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """A user error: non-zero exit, one stderr line starting with 'error:', no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def assert_error_after_progress(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """A fault met mid-work (a full disk): besides the step's progress bars, exactly the one error line."""
    bar = re.compile(r".*\|.*\[\d+:\d+")  # a tqdm line: "desc:  40%|####  | 2/5 [00:01<00:01, ...]"
    stripped = "\n".join(line for line in proc.stderr.splitlines() if not bar.match(line.strip()))
    assert_one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout, stripped), *fragments)


@pytest.fixture
def repo() -> Path:
    return REPO


# ---------------------------------------------------------------------------------------------------------
# Distillation runs through the real CLI (tests/test_resume.py, test_ddp.py, test_distill.py)
# ---------------------------------------------------------------------------------------------------------

#: A tiny student (3 blocks of width 32) and teacher (3 blocks of width 48) on 16 px images: a run of a few
#: epochs over 600 images takes about a second; process start-up (importing torch and timm) dominates.
KD_STUDENT = {"img_size": 16, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2, "num_classes": 10}
KD_TEACHER = {**KD_STUDENT, "embed_dim": 48}
KD_CONFIG = {
    "dataset": {"kind": "synthetic",
                "synthetic": {"seed": 0, "num_classes": 10, "image_size": 16, "train_size": 600, "test_size": 200}},
    "teacher": {"model": {"arch": "vit_tiny_patch16_224", "kwargs": KD_TEACHER, "weights": {"source": "train"}},
                "train": {"epochs": 1, "batch_size": 50, "lr": 3e-3, "warmup_epochs": 0, "sched_on": "step",
                          "checkpoint_every": 0, "device": "cpu", "threads": 0, "num_workers": 0}},
    "student": {"model": {"arch": "vit_tiny_patch16_224", "kwargs": KD_STUDENT, "weights": {"source": "random"}}},
    "distill": {
        "seeds": [0], "teacher_cache": "off",
        "train": {"epochs": 3, "batch_size": 50, "lr": 3e-3, "min_lr": 1e-5, "warmup_epochs": 1, "warmup_lr": 1e-6,
                  "sched_on": "step", "checkpoint_every": 1, "device": "cpu", "threads": 1, "num_workers": 0,
                  "amp": "none", "randaugment": None, "reprob": 0.0, "repeated_aug": 1, "mixup": 0.0,
                  "cutmix": 0.0},
        "runs": [{"name": "softkd", "method": "softkd"},
                 {"name": "spectralkd_f1l1", "method": "spectralkd", "layers": "F1 L1"},
                 {"name": "projectorkd_l1", "method": "projectorkd", "layers": "L1"},
                 {"name": "projectorkd_released_l1", "method": "projectorkd_released", "layers": "L1"}],
    },
}


class KDWork:
    """A generated dataset and a trained teacher, and command lines for the steps that distil from it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data.npz"
        self.teacher = root / "teacher" / "model.safetensors"

    def config(self, *overrides: dict) -> str:
        from pipeline_steps.config import deep_merge

        merged = KD_CONFIG
        for override in overrides:
            merged = deep_merge(merged, override)
        return json.dumps(merged)

    def step(self, step: str, *args: str, overrides: tuple[dict, ...] = (), launcher: tuple[str, ...] | None = None,
             ) -> list[str]:
        """``python -m pipeline_steps <step>`` (or ``<launcher> -m pipeline_steps <step>``) on this work dir."""
        head = [sys.executable] if launcher is None else list(launcher)
        return [*head, "-m", "pipeline_steps", step, "--params", str(REPO / "configs" / "smoke.yaml"),
                "--config-json", self.config(*overrides), "--teacher-weights", str(self.teacher),
                "--data", str(self.data), *args]

    def distill(self, run_id: str, out_dir: Path, *overrides: dict, teacher_cache: Path | None = None,
                launcher: tuple[str, ...] | None = None) -> list[str]:
        extra = ["--teacher-cache", str(teacher_cache)] if teacher_cache is not None else []
        return self.step("distill", "--run-id", run_id, "--out-dir", str(out_dir), *extra, overrides=overrides,
                         launcher=launcher)


def kd_env() -> dict[str, str]:
    """One intra-op thread per child: the tests run two children at a time on small machines."""
    return tool_env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def start(cmd: list[str], **kwargs) -> subprocess.Popen:
    """Start a step with captured text output."""
    return subprocess.Popen(cmd, env=kd_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)


def finish(proc: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_all(*cmds: list[str]) -> list[subprocess.CompletedProcess]:
    """Run the commands concurrently; their completed processes, in order."""
    return [finish(p) for p in [start(cmd) for cmd in cmds]]


def check_ok(*procs: subprocess.CompletedProcess) -> None:
    for proc in procs:
        assert proc.returncode == 0, f"{' '.join(map(str, proc.args[:5]))} ... exited {proc.returncode}:\n{proc.stderr}"


def small_sample(directory: Path, n_images: int = 3) -> tuple[Path, "SyntheticDataset", Path, "pd.DataFrame"]:  # noqa: F821
    """A tiny generated dataset (12 test images of 32 x 32) and a sample manifest of ``n_images`` of them in
    ``directory``: ``(data.npz, its test split, manifest.parquet, the manifest's rows in feeding order)``."""
    from pipeline_steps.data.datasets import SyntheticDataset
    from pipeline_steps.data.manifest import read_manifest, sample_manifest
    from pipeline_steps.data.synthetic import write_synthetic

    data = write_synthetic(directory / "data.npz", num_classes=10, image_size=32, train_size=20, test_size=12,
                           seed=0, progress=False)
    test_set = SyntheticDataset(data, "test")
    manifest = directory / "manifest.parquet"
    sample_manifest(test_set, n_images, "random", 5, "test", progress=False).to_parquet(manifest)
    return data, test_set, manifest, read_manifest(manifest).sort_values("position")


def vit_activations(path: Path, depth: int = 3, n: int = 11, seed: int = 0, width: int = 32) -> Path:
    """An activations file of a random small ViT (``depth`` blocks of ``width``, weights seeded by ``seed``) on
    ``n`` random images that are the same for every call, so files of different models pair up for CKA."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from pipeline_steps.analysis.activations import write_activations
    from pipeline_steps.models.build import create_model

    torch.manual_seed(seed)
    model = create_model({"arch": "vit_tiny_patch16_224", "kwargs": {
        "img_size": 32, "patch_size": 8, "embed_dim": width, "depth": depth, "num_heads": 2, "num_classes": 10}})
    images = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(123))
    loader = DataLoader(TensorDataset(images, torch.arange(n) % 10), batch_size=4, shuffle=False)
    write_activations(path, model, loader, list(range(depth)), {"image_ids": list(range(n))})
    return path


@pytest.fixture(scope="session")
def kd(tmp_path_factory) -> KDWork:
    """The dataset (generated in-process) and a teacher trained on it (in-process, about a second)."""
    from pipeline_steps.config import load_params
    from pipeline_steps.steps import generate_data, train_teacher
    from pipeline_steps.training.recipe import Recipe

    work = KDWork(tmp_path_factory.mktemp("kd"))
    synthetic = KD_CONFIG["dataset"]["synthetic"]
    generate_data.run(work.data, num_classes=synthetic["num_classes"], image_size=synthetic["image_size"],
                      train_size=synthetic["train_size"], test_size=synthetic["test_size"], seed=synthetic["seed"],
                      progress=False)
    params = load_params([REPO / "configs" / "smoke.yaml"], [work.config()])
    teacher = params["teacher"]
    train_teacher.run(work.teacher.parent, spec=teacher["model"], recipe=Recipe.from_params(teacher["train"]),
                      dataset=params["dataset"], name=teacher["name"], fingerprint="kd teacher",
                      synthetic_path=work.data, progress=False)
    return work
