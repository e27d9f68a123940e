"""DDP: the distill step under ``torchrun --nproc_per_node 2`` (CPU, gloo) against one process.

``batch_size`` is the global batch and each rank trains on its half of the batch a single process draws,
so the two runs differ only by float summation order (DDP averages the two halves' gradients).
Evaluation adds no difference of its own: every rank scores its share of the single-process test batches,
so the same weights give the same test metrics bit for bit (checked here for a small ViT and for the runs'
saved weights); test_loss differs between the runs only because their weights do.

Measured on a 2-core CPU machine (torch 2.14.1, spectralkd F1 L1, 3 epochs, 12 steps of 50 images each):
train_loss, train_loss_base and train_loss_fft within 4.2e-8 relative, test_loss within 3.3e-8 (equal in
the last epoch; 6.6e-8 when rank 0 alone evaluated in batches of 50 instead of 100), train_loss_dist (a
value ~1e-3) within 1.6e-6 relative, train_lr / test_acc1 / test_acc5 equal, weights within 3.2e-6
absolute. The tolerances below are a few times that, for other CPUs' kernels.

ProjectorKD is not compared: its teacher-map standardisation (and the released variant's BatchNorm) uses
each rank's own half-batch statistics (no SyncBatchNorm), so under DDP it optimises a slightly different
objective and is not expected to match.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import safetensors.torch

from conftest import KD_CONFIG, KD_STUDENT, REPO, VENV_BIN, assert_one_line_error, check_ok, run_all

LOSS_RTOL = 1e-5     # measured <= 1.6e-6 (train_loss_dist), <= 4.2e-8 for the others
WEIGHTS_ATOL = 2e-5  # measured 3.2e-6
ACC_IMAGES = 1       # test_acc1 / test_acc5 may differ by one test image (measured: equal)
RUN_ID = "spectralkd_f1l1-s0"


@pytest.fixture(scope="module")
def torchrun() -> tuple[str, ...]:
    """The launcher; missing torchrun is a failure (the DDP path would go untested), not a skip."""
    path = VENV_BIN / "torchrun"
    if not path.is_file():
        found = shutil.which("torchrun")
        assert found, f"torchrun not found (looked in {VENV_BIN} and on PATH); install torch's launcher"
        path = Path(found)
    return (str(path), "--standalone", "--nproc_per_node", "2")


@pytest.fixture(scope="module")
def runs(kd, torchrun, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    ddp, single = run_all(kd.distill(RUN_ID, root / "ddp", launcher=torchrun),
                          kd.distill(RUN_ID, root / "single"))
    check_ok(ddp, single)
    return root


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.txt").read_text().splitlines()]


def assert_ddp_matches_single(ddp_dir: Path, single_dir: Path, epochs: int, test_images: int) -> None:
    """Two run directories (DDP, one process) agree within the tolerances above: every log value, weights."""
    ddp, single = _rows(ddp_dir), _rows(single_dir)
    assert len(ddp) == len(single) == epochs
    one_image = 100.0 / test_images * ACC_IMAGES  # percent of the test images
    for a, b in zip(ddp, single):
        assert a.keys() == b.keys()
        assert a["epoch"] == b["epoch"] and a["n_parameters"] == b["n_parameters"]
        assert a["train_lr"] == b["train_lr"]
        for key in ("train_loss", "train_loss_base", "train_loss_dist", "train_loss_fft", "test_loss"):
            assert a[key] == pytest.approx(b[key], rel=LOSS_RTOL, abs=0), (a["epoch"], key)
        for key in ("test_acc1", "test_acc5"):
            assert abs(a[key] - b[key]) <= one_image + 1e-9, (a["epoch"], key)
    wa = safetensors.torch.load_file(str(ddp_dir / "model.safetensors"))
    wb = safetensors.torch.load_file(str(single_dir / "model.safetensors"))
    assert wa.keys() == wb.keys()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst < WEIGHTS_ATOL, worst


def test_two_processes_match_one(runs):
    assert_ddp_matches_single(runs / "ddp", runs / "single", epochs=3, test_images=200)


@pytest.mark.parametrize("name", ["ddp", "single"])
def test_logged_test_metrics_are_one_process_scoring_the_weights(kd, runs, name):
    """The last logged test metrics are exactly (==) one process's :func:`evaluate` of the saved weights, under
    DDP too: every rank scores its share of the single-process batches (2 x the global batch) and the sums are
    added in batch order."""
    import torch

    from pipeline_steps.data.datasets import SyntheticDataset
    from pipeline_steps.models.build import create_model
    from pipeline_steps.training.loop import evaluate

    model = create_model({"arch": "vit_tiny_patch16_224", "kwargs": KD_STUDENT},
                         weights_path=runs / name / "model.safetensors")
    threads = torch.get_num_threads()
    torch.set_num_threads(KD_CONFIG["distill"]["train"]["threads"])  # the runs' kernels
    try:
        test = evaluate(model, SyntheticDataset(kd.data, "test"), 2 * KD_CONFIG["distill"]["train"]["batch_size"])
    finally:
        torch.set_num_threads(threads)
    last = _rows(runs / name)[-1]
    assert (last["test_loss"], last["test_acc1"], last["test_acc5"]) == (test["loss"], test["acc1"], test["acc5"])


def test_rank_zero_writes_one_run_directory(runs):
    manifest = json.loads((runs / "ddp" / "checkpoints.json").read_text())
    assert [k["epoch"] for k in manifest["checkpoints"]] == [0, 1, 2, 3]
    assert sorted(p.name for p in (runs / "ddp").iterdir()) == sorted(p.name for p in (runs / "single").iterdir())
    assert len(list((runs / "ddp" / "resume").glob("step_*.state.pt"))) == 1


def test_batch_not_divisible_by_processes(kd, torchrun, tmp_path):
    """Every rank stops with the one-line error and status 2 (torchrun itself then reports the failure)."""
    logs = tmp_path / "logs"
    launcher = (*torchrun[:1], "--log-dir", str(logs), "--redirects", "3", *torchrun[1:])
    (proc,) = run_all(kd.distill(RUN_ID, tmp_path / "run", {"distill": {"train": {"batch_size": 25}}},
                                 launcher=launcher))
    assert proc.returncode != 0
    assert re.search(r"exitcode\s*:\s*2\b", proc.stderr), proc.stderr  # torchrun's report of a failed rank
    children = sorted(logs.rglob("stderr.log"))
    assert len(children) == 2, children
    written = [path.read_text() for path in children]
    assert any(written), proc.stderr  # torchrun may stop the second rank before it gets there
    for text in filter(None, written):
        child = type(proc)(proc.args, 2, "", text)
        assert_one_line_error(child, "train.batch_size = 25 is not divisible by the 2 processes")
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_evaluation_over_two_ranks_equals_one_process(torchrun, tmp_path):
    """Each rank scores its share of the evaluation batches (101 images in 11 batches of 10): the metrics are
    the single-process ones bit for bit, and the shares cover every image once (no padded duplicates)."""
    script = str(REPO / "tests" / "data" / "evaluate_ranks.py")
    ddp, single = run_all([*torchrun, script, str(tmp_path / "ddp")],
                          [sys.executable, script, str(tmp_path / "single")])
    check_ok(ddp, single)
    (one,) = [json.loads(path.read_text()) for path in sorted((tmp_path / "single").glob("rank*.json"))]
    ranks = [json.loads(path.read_text()) for path in sorted((tmp_path / "ddp").glob("rank*.json"))]
    assert one["world"] == 1 and [r["world"] for r in ranks] == [2, 2]
    for rank in ranks:
        assert rank["metrics"] == one["metrics"]  # ==, not approx: same batches, same sums in the same order
    assert 0 < one["metrics"]["acc5"] < 100  # a model that neither always nor never hits
    assert one["served"] == list(range(101))
    served = [r["served"] for r in ranks]
    assert sorted(served[0] + served[1]) == list(range(101))  # each image once, on one rank
    # Batches 0, 2, ..., 10 (the partial one) on rank 0 and 1, 3, ..., 9 on rank 1.
    assert served[0] == [i for b in range(0, 11, 2) for i in range(10 * b, min(10 * b + 10, 101))]
    assert served[1] == [i for b in range(1, 11, 2) for i in range(10 * b, 10 * b + 10)]
