"""Crash-safe resume of the distill step, with real processes and real signals.

A run killed (SIGKILL) or stopped (SIGTERM -> exit 75) at a random moment and started again with the same
command must end exactly where an uninterrupted run ends: log.txt byte for byte, the weights tensor for
tensor. The kill moment is drawn at random each session; set KD_KILL_SEED to replay one (the seed is in
every failure message).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch

from pipeline_steps.artifacts import sha256_file
from pipeline_steps.errors import EXIT_RETRY
from pipeline_steps.models.weights import read_weights_metadata

from conftest import check_ok, finish, kd_env, run_all, start

SEED = int(os.environ.get("KD_KILL_SEED", random.SystemRandom().randrange(2**32)))
RNG = random.Random(SEED)

EPOCHS = 5
#: (a) ProjectorKD (its projector, BN weights and BN running statistics live in the resume state), the
#: teacher live, a checkpoint every epoch.
KILLED = {"distill": {"train": {"epochs": EPOCHS, "checkpoint_every": 1}}}
#: (b) RandAugment and random erasing draw from the global RNGs, so a mid-epoch resume only matches when
#: they are restored; the teacher runs live (cached outputs would not match augmented images).
AUGMENTED = {"distill": {"teacher_cache": "auto", "train": {"epochs": EPOCHS, "checkpoint_every": 2,
                                                            "randaugment": "rand-m9-mstd0.5-inc1", "reprob": 0.25}}}


def states(run_dir: Path) -> set[str]:
    return {p.name for p in (run_dir / "resume").glob("step_*.state.pt")}


def start_logged(cmd: list[str], log: Path) -> subprocess.Popen:
    """Start with output to files: a child polled for a while must never block on a full pipe."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        return subprocess.Popen(cmd, env=kd_env(), stdout=out, stderr=err)


def wait_for_states(proc: subprocess.Popen, run_dir: Path, n: int, log: Path, timeout: float = 240) -> list[float]:
    """Times at which the first ``n`` distinct resume states appeared (one per finished epoch)."""
    seen: set[str] = set()
    times: list[float] = []
    deadline = time.monotonic() + timeout
    while len(seen) < n:
        new = states(run_dir) - seen
        if new:
            seen |= new
            times.append(time.monotonic())
            continue
        if proc.poll() is not None:
            raise AssertionError(f"run ended (status {proc.returncode}) before {n} resume states "
                                 f"[KD_KILL_SEED={SEED}]:\n{log.with_suffix('.err').read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {n} resume states after {timeout} s [KD_KILL_SEED={SEED}]")
        time.sleep(0.002)
    return times


def signal_mid_run(proc: subprocess.Popen, run_dir: Path, log: Path, sig: int, fraction: float) -> float:
    """Send ``sig`` ``fraction`` of an epoch's duration after the second resume state appeared.

    The second state is written at the end of epoch 1 (of 5): the signal lands in epoch 2 or 3, or while
    evaluating or writing checkpoints between them. Returns the delay in seconds.
    """
    t1, t2 = wait_for_states(proc, run_dir, 2, log)
    delay = fraction * (t2 - t1)
    time.sleep(delay)
    assert proc.poll() is None, f"the run finished before the signal [KD_KILL_SEED={SEED}]"
    proc.send_signal(sig)
    proc.wait(timeout=240)
    return delay


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(path))


def final_state(run_dir: Path) -> dict:
    (path,) = sorted((run_dir / "resume").glob("step_*.state.pt"))
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_run(run: Path, reference: Path, context: str) -> None:
    """Every result of two run directories equal: log, manifest, final/best/kept weights, objective state."""
    msg = f"{context} [KD_KILL_SEED={SEED}]"
    assert (run / "log.txt").read_bytes() == (reference / "log.txt").read_bytes(), msg
    # The files' SHA-256 differ between processes even for equal content (safetensors writes the metadata
    # map in hash order), so the manifests are compared without them, and each hash against its own file.
    manifests = [json.loads((d / "checkpoints.json").read_text()) for d in (run, reference)]
    for manifest, directory in zip(manifests, (run, reference)):
        for k in [*manifest["checkpoints"], manifest["best"]]:
            assert sha256_file(directory / k["path"]) == k.pop("sha256"), (directory, k, msg)
    assert manifests[0] == manifests[1], msg
    kept = manifests[1]["checkpoints"]
    for name in ["model.safetensors", "best.safetensors", *(k["path"] for k in kept)]:
        a, b = tensors(run / name), tensors(reference / name)
        assert a.keys() == b.keys(), (name, msg)
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key, msg)
        assert read_weights_metadata(run / name) == read_weights_metadata(reference / name), (name, msg)
    a, b = final_state(run), final_state(reference)
    assert a["step"] == b["step"] and a["objective"].keys() == b["objective"].keys(), msg
    for key in a["objective"]:
        assert torch.equal(a["objective"][key], b["objective"][key]), (key, msg)


# ---------------------------------------------------------------------------------------------------------
# (a) SIGKILL at a random moment
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def killed(kd, tmp_path_factory):
    root = tmp_path_factory.mktemp("killed")
    run_id = "projectorkd_l1-s0"
    reference = start(kd.distill(run_id, root / "reference", KILLED))
    cmd = kd.distill(run_id, root / "run", KILLED)
    proc = start_logged(cmd, root / "logs" / "killed")
    fraction = RNG.uniform(0.0, 1.5)
    delay = signal_mid_run(proc, root / "run", root / "logs" / "killed", signal.SIGKILL, fraction)
    killed_rc = proc.returncode
    left = sorted(p.name for p in (root / "run").rglob("*") if p.is_file())
    resumed = finish(start(cmd))
    reference = finish(reference)
    check_ok(reference, resumed)
    return {"root": root, "rc": killed_rc, "delay": delay, "fraction": fraction, "left": left, "resumed": resumed}


def test_sigkill_then_rerun_equals_uninterrupted_run(killed):
    root = killed["root"]
    context = f"SIGKILL {killed['fraction']:.2f} epochs after the second state; files left: {killed['left']}"
    assert killed["rc"] == -signal.SIGKILL, context
    assert "resuming at epoch" in killed["resumed"].stdout, context
    assert "model.safetensors" not in killed["left"], context  # killed before it finished
    assert_same_run(root / "run", root / "reference", context)


# ---------------------------------------------------------------------------------------------------------
# (b) SIGTERM mid-epoch: exit 75, then a resume that restores the RNGs
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def terminated(kd, tmp_path_factory):
    root = tmp_path_factory.mktemp("terminated")
    run_id = "spectralkd_f1l1-s0"
    reference = start(kd.distill(run_id, root / "reference", AUGMENTED))
    cmd = kd.distill(run_id, root / "run", AUGMENTED)
    log = root / "logs" / "terminated"
    proc = start_logged(cmd, log)
    fraction = RNG.uniform(0.05, 0.9)
    signal_mid_run(proc, root / "run", log, signal.SIGTERM, fraction)
    stopped = subprocess.CompletedProcess(cmd, proc.returncode, log.with_suffix(".out").read_text(),
                                          log.with_suffix(".err").read_text())
    saved = final_state(root / "run")
    shutil.copytree(root / "run", root / "snapshot")  # for test (c): a mid-epoch state of this config
    resumed = finish(start(cmd))
    reference = finish(reference)
    check_ok(reference, resumed)
    return {"root": root, "stopped": stopped, "saved": saved, "fraction": fraction, "resumed": resumed}


def test_sigterm_saves_mid_epoch_and_exits_75(terminated):
    stopped, saved = terminated["stopped"], terminated["saved"]
    context = f"SIGTERM {terminated['fraction']:.2f} epochs after the second state [KD_KILL_SEED={SEED}]"
    assert stopped.returncode == EXIT_RETRY, (context, stopped.stderr)
    assert "Traceback" not in stopped.stderr, context
    last = [line for line in stopped.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("interrupted: SIGTERM at epoch "), (context, last)
    assert "run again to resume" in last
    assert 0 < saved["batch"] < 600 // 50 and 2 <= saved["epoch"] < EPOCHS, (context, saved["epoch"], saved["batch"])
    assert not (terminated["root"] / "snapshot" / "model.safetensors").exists()


def test_sigterm_then_rerun_equals_uninterrupted_run(terminated):
    saved = terminated["saved"]
    assert f"resuming at epoch {saved['epoch']} batch {saved['batch']}" in terminated["resumed"].stdout
    assert_same_run(terminated["root"] / "run", terminated["root"] / "reference",
                    f"SIGTERM at epoch {saved['epoch']} batch {saved['batch']}")


def test_environment_record_lists_every_attempt(terminated):
    """environment.json: one record per attempt, the resumed one starting where the state was saved."""
    import torch

    saved = terminated["saved"]
    attempts = json.loads((terminated["root"] / "run" / "environment.json").read_text())["attempts"]
    assert [(a["from_epoch"], a["from_batch"]) for a in attempts] == [(0, 0), (saved["epoch"], saved["batch"])]
    for a in attempts:
        assert a["versions"]["torch"] == torch.__version__ and a["device"] == "cpu" and a["processes"] == 1
        assert a["cpu_isa"] == torch.backends.cpu.get_cpu_capability() and a["threads"] == 1
    reference = json.loads((terminated["root"] / "reference" / "environment.json").read_text())["attempts"]
    assert [(a["from_epoch"], a["from_batch"]) for a in reference] == [(0, 0)]


# ---------------------------------------------------------------------------------------------------------
# (c) a state of another configuration is not resumed
# ---------------------------------------------------------------------------------------------------------

def test_state_of_another_config_starts_afresh(kd, terminated, tmp_path):
    """The snapshot holds a mid-epoch state of the lr 3e-3 run; the same directory run with lr 2e-3 must
    equal a fresh lr 2e-3 run, not a continuation."""
    changed = {**AUGMENTED, "distill": {**AUGMENTED["distill"],
                                        "train": {**AUGMENTED["distill"]["train"], "lr": 2e-3}}}
    run_dir = tmp_path / "run"
    shutil.copytree(terminated["root"] / "snapshot", run_dir)
    other, fresh = run_all(kd.distill("spectralkd_f1l1-s0", run_dir, changed),
                           kd.distill("spectralkd_f1l1-s0", tmp_path / "fresh", changed))
    check_ok(other, fresh)
    assert "ignoring a resume state from a different configuration" in other.stdout
    assert "resuming" not in other.stdout
    assert_same_run(run_dir, tmp_path / "fresh", "lr changed")
    reference = terminated["root"] / "reference"
    assert (run_dir / "log.txt").read_bytes() != (reference / "log.txt").read_bytes()  # the lr matters


# ---------------------------------------------------------------------------------------------------------
# (d) checkpoints.json and best.safetensors
# ---------------------------------------------------------------------------------------------------------

def test_checkpoints_manifest_and_best(terminated):
    run = terminated["root"] / "reference"  # epochs 5, checkpoint_every 2
    manifest = json.loads((run / "checkpoints.json").read_text())
    assert manifest["run_id"] == "spectralkd_f1l1-s0" and manifest["epochs"] == EPOCHS
    kept = manifest["checkpoints"]
    assert [k["epoch"] for k in kept] == [0, 2, 4, 5]  # the initial weights, every 2nd epoch, the last
    for k in kept:
        assert k["path"] == f"checkpoints/epoch_{k['epoch']:04d}.safetensors"
        assert sha256_file(run / k["path"]) == k["sha256"]
        assert read_weights_metadata(run / k["path"])["epoch"] == k["epoch"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [Path(k["path"]).name for k in kept]

    rows = [json.loads(line) for line in (run / "log.txt").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(EPOCHS))
    best = max(range(EPOCHS), key=lambda e: (rows[e]["test_acc1"], -e))  # the first epoch with the top acc1
    meta = read_weights_metadata(run / "best.safetensors")
    assert meta["epoch"] == best + 1 and meta["test_acc1"] == rows[best]["test_acc1"]  # epochs completed
    assert manifest["best"] == {"epoch": best + 1, "path": "best.safetensors",
                                "sha256": sha256_file(run / "best.safetensors"), "test_acc1": rows[best]["test_acc1"]}
    final = read_weights_metadata(run / "model.safetensors")
    assert final["epoch"] == EPOCHS and final["test_acc1"] == rows[-1]["test_acc1"]
    last = tensors(run / kept[-1]["path"])
    assert all(torch.equal(t, last[k]) for k, t in tensors(run / "model.safetensors").items())
    if best + 1 in {k["epoch"] for k in kept}:
        at_best = tensors(run / f"checkpoints/epoch_{best + 1:04d}.safetensors")
        assert all(torch.equal(t, at_best[k]) for k, t in tensors(run / "best.safetensors").items())
