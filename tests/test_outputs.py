"""A step's outputs: all of them or none, no stale temporaries, and one line for an output that cannot be written.

The output-side faults go through the real CLI: a second output that cannot be written (its parent is a
file, a directory stands at its path), a full disk (a 64 KiB tmpfs) and a read-only filesystem (a
read-only tmpfs: the tests run as root, which ``chmod`` does not stop). Mounting needs root (or
CAP_SYS_ADMIN); where it is refused those two cases are skipped, saying so.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path

import pytest

from pipeline_steps.artifacts import atomic_outputs, atomic_path, remove_stale_temporaries
from pipeline_steps.errors import UserError

from conftest import REPO, assert_error_after_progress, assert_one_line_error, run_step

TINY = {"arch": "vit_tiny_patch16_224",
        "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2, "num_classes": 10},
        "weights": {"source": "random", "seed": 0}}
CONFIG = json.dumps({"dataset": {"kind": "synthetic", "synthetic": {"train_size": 20, "test_size": 40, "seed": 0}},
                     "sample": {"n_images": 8}, "teacher": {"model": TINY}})


def hidden(directory: Path) -> list[str]:
    """The hidden entries of a directory: where the temporaries would be."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A dataset, a manifest, a tiny teacher's activations and their reduction."""
    work = tmp_path_factory.mktemp("outputs")
    common = ["--config-json", CONFIG]
    run_step("generate-data", *common, "--out", str(work / "data.npz"), check=True)
    run_step("sample", *common, "--data", str(work / "data.npz"), "--out", str(work / "manifest.parquet"), check=True)
    run_step("extract", *common, "--manifest", str(work / "manifest.parquet"), "--data", str(work / "data.npz"),
             "--out", str(work / "acts.npz"), check=True)
    run_step("reduce", *common, "--activations", str(work / "acts.npz"), "--out", str(work / "values.parquet"),
             "--summary", str(work / "summary.parquet"), check=True)
    return work


def extract(work: Path, out: Path) -> subprocess.CompletedProcess:
    return run_step("extract", "--config-json", CONFIG, "--manifest", str(work / "manifest.parquet"),
                    "--data", str(work / "data.npz"), "--out", str(out))


def reduce(work: Path, out: Path, summary: Path) -> subprocess.CompletedProcess:
    return run_step("reduce", "--config-json", CONFIG, "--activations", str(work / "acts.npz"), "--out", str(out),
                    "--summary", str(summary))


@contextlib.contextmanager
def tmpfs(where: Path, options: str):
    """A tiny tmpfs mounted at ``where`` for the block (skips the test where mounting is not allowed)."""
    where.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


# ------------------------------------------------------------------------------- all outputs or none

def test_reduce_second_output_under_a_file(work, tmp_path):
    """The summary's parent is a regular file: one line naming the summary and the blocker, no values table."""
    (tmp_path / "blocker").write_text("a file, not a directory")
    out, summary = tmp_path / "values.parquet", tmp_path / "blocker" / "summary.parquet"
    proc = reduce(work, out, summary)
    assert_one_line_error(proc, f"cannot write {out} and {summary}", f"{tmp_path / 'blocker'} is a file")
    assert not out.exists() and hidden(tmp_path) == []


def test_reduce_second_output_is_a_directory(work, tmp_path):
    out, summary = tmp_path / "values.parquet", tmp_path / "summary.parquet"
    summary.mkdir()
    proc = reduce(work, out, summary)
    assert_one_line_error(proc, str(summary), "is a directory", "remove it or choose another output path")
    assert not out.exists() and hidden(tmp_path) == []


def test_figure_png_path_is_a_directory(work, tmp_path):
    """Figures are written as PDF + PNG: both or neither."""
    (tmp_path / "fig.png").mkdir()
    proc = run_step("figures", "--config-json", CONFIG, "--figure", "entropy", "--reductions",
                    str(work / "values.parquet"), "--out", str(tmp_path / "fig.pdf"))
    assert_one_line_error(proc, f"{tmp_path / 'fig.png'} is a directory")
    assert not (tmp_path / "fig.pdf").exists() and hidden(tmp_path) == []


def test_table1_one_of_four_outputs_is_a_directory(tmp_path):
    """Table 1 is four files (csv, md, tex, json): a directory at the .tex path leaves none of them."""
    (tmp_path / "t1.tex").mkdir()
    proc = run_step("table1", "--published-logs", str(REPO / "reference" / "logs"), "--out", str(tmp_path / "t1"))
    assert_one_line_error(proc, f"{tmp_path / 't1.tex'} is a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t1.tex"]


def test_failed_commit_puts_every_output_back(tmp_path):
    """A rename that fails mid-commit (a directory appeared at the second output) restores the first output's
    previous content: the group is never left half-replaced, and no temporary stays."""
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("old a")
    second.write_text("old b")
    with pytest.raises(UserError, match=f"cannot write {first} and {second}: {second} is a directory"):
        with atomic_outputs(first, second) as (tmp_a, tmp_b):
            tmp_a.write_text("new a")
            tmp_b.write_text("new b")
            second.unlink()
            second.mkdir()  # the commit's second rename fails after the first succeeded
    assert first.read_text() == "old a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


def test_failed_block_keeps_previous_outputs(tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("old a")
    with pytest.raises(ZeroDivisionError):  # not an OS error on an output: passes through unchanged
        with atomic_outputs(first, second) as (tmp_a, tmp_b):
            tmp_a.write_text("new a")
            1 / 0
    assert first.read_text() == "old a" and not second.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_successful_commit_replaces_every_output(tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("old a")
    with atomic_outputs(first, second) as (tmp_a, tmp_b):
        tmp_a.write_text("new a")
        tmp_b.write_text("new b")
    assert (first.read_text(), second.read_text()) == ("new a", "new b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


def test_input_errors_are_not_reported_as_output_errors(tmp_path):
    """An OS error that is not about the outputs (here: reading a missing input) is not relabelled."""
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "out.txt") as tmp:
            tmp.write_text((tmp_path / "missing-input.txt").read_text())
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- stale temporaries

def test_rerun_removes_a_killed_extractions_temporaries(work, tmp_path):
    """What a SIGKILLed extraction leaves (its parts directory and a half-assembled archive, named as the
    _io temporaries are) is removed by the next run of the step; other hidden files are left alone."""
    out = tmp_path / "acts.npz"
    parts = tmp_path / ".acts.npz.k1ll3d_x.parts"
    parts.mkdir()
    (parts / "layer_00.npy").write_bytes(b"\0" * 4096)
    (tmp_path / ".acts.npz.a8_zq0rt.npz").write_bytes(b"PK half an archive")
    keep = [".acts.npz.json", ".other.npz.a8_zq0rt.npz", ".acts.npz.toolong12.npz.x y"]
    for name in keep:
        (tmp_path / name).write_text("not ours")
    proc = extract(work, out)
    assert proc.returncode == 0, proc.stderr
    assert hidden(tmp_path) == sorted(keep)
    assert out.read_bytes() == (work / "acts.npz").read_bytes()  # the same content as a clean run


def test_sigkilled_extraction_then_rerun(work, tmp_path):
    """A real SIGKILL while the extraction's temporaries exist, then a rerun: no temporary is left."""
    import sys
    import time

    from conftest import tool_env

    out = tmp_path / "acts.npz"
    cmd = [sys.executable, "-m", "pipeline_steps", "extract", "--config-json", CONFIG, "--manifest",
           str(work / "manifest.parquet"), "--data", str(work / "data.npz"), "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not hidden(tmp_path) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    proc.kill()
    proc.wait()
    if not hidden(tmp_path):
        pytest.skip("the extraction finished before it could be killed with its temporaries on disk")
    assert not out.exists()
    rerun = extract(work, out)
    assert rerun.returncode == 0, rerun.stderr
    assert hidden(tmp_path) == []
    assert out.read_bytes() == (work / "acts.npz").read_bytes()


def test_remove_stale_temporaries_matches_only_the_outputs_own(tmp_path):
    out = tmp_path / "values.parquet"
    ours = [".values.parquet.abcd_123.parquet", ".values.parquet.zzzzzzzz.tmp", ".values.parquet.0a1b2c3d"]
    others = [".values.parquet.summary.abcd_123.parquet", ".values.parquetx.abcd_123.parquet", "values.parquet",
              ".values.parquet.ABCDEFGH.parquet"]
    for name in ours + others:
        (tmp_path / name).write_text("x")
    assert sorted(p.name for p in remove_stale_temporaries(out)) == sorted(ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others)


# ------------------------------------------------------------------------------- the filesystem refuses

def test_full_disk_during_extraction(work, tmp_path):
    """ENOSPC while writing the activations: one line naming the output and the cause, nothing left behind."""
    with tmpfs(tmp_path / "full", "size=64k") as full:
        out = full / "acts.npz"
        proc = extract(work, out)
        assert_error_after_progress(proc, f"cannot write {out}: No space left on device", "free space")
        assert list(full.iterdir()) == []


def test_full_disk_for_the_second_table(work, tmp_path):
    """The reduce step's values table fits, its summary does not: neither is left."""
    size = (work / "values.parquet").stat().st_size
    assert size > (work / "summary.parquet").stat().st_size
    with tmpfs(tmp_path / "full", f"size={size + 4096}") as full:  # room for the values table, not for both
        proc = reduce(work, full / "values.parquet", full / "summary.parquet")
        assert_error_after_progress(proc, "No space left on device")
        assert list(full.iterdir()) == []


def test_read_only_output_directory(work, tmp_path):
    with tmpfs(tmp_path / "ro", "size=64k,ro") as ro:
        out = ro / "values.parquet"
        proc = reduce(work, out, ro / "summary.parquet")
        assert_one_line_error(proc, f"cannot write {out}", "Read-only file system",
                              "make its directory writable or choose another output path")


def test_bad_input_leaves_no_output_directory(tmp_path):
    """The reduce step opens its outputs before reading its input: a missing input leaves neither the tables
    nor the directories made for them."""
    out = tmp_path / "new" / "deeper" / "values.parquet"
    proc = run_step("reduce", "--config-json", CONFIG, "--activations", str(tmp_path / "missing.npz"),
                    "--out", str(out), "--summary", str(tmp_path / "new" / "summary.parquet"))
    assert_one_line_error(proc, "activations file not found")
    assert list(tmp_path.iterdir()) == []
