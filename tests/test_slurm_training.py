"""Training jobs on the local SLURM cluster, through the user's profile (workflow/profiles/slurm).

One distillation run (spectralkd F1 L1, smoke preset, 8 epochs, a checkpoint every epoch, the teacher
live) is built with ``snakemake --profile workflow/profiles/slurm`` (+ the CI overrides of
tests/test_slurm_workflow.py) in scratch copies whose data and teacher were built locally first, so
only the distill job goes through ``sbatch``. Checked:

- SIGTERM while the distill job is mid-epoch, delivered as SLURM delivers it:

  * ``scancel --signal=TERM <job>`` signals the job's steps only (what ``sbatch --signal=TERM@N``, i.e.
    ``slurm_extra="'--signal=TERM@N'"``, sends N seconds before the time limit). The step saves its
    state mid-epoch and reports ``interrupted: SIGTERM`` (exit 75); the job ends FAILED; Snakemake
    resubmits it (``retries``); the new job resumes at that epoch and batch; log.txt and the weights are
    byte-identical to an uninterrupted local run.
  * ``scancel --signal=TERM --full <job>`` signals the batch step too (what SLURM does at the time limit
    and on preemption). The job ends FAILED, is resubmitted and the result is byte-identical too, but
    the mid-epoch save is a race: ``srun`` (run by the plugin's job step executor in the batch step)
    answers its own SIGTERM with SIGKILL to its step ("srun: forcing job termination"), which often
    kills the step before it reaches the end of its current batch (4 of 5 tries when measured); the retry
    then resumes from the last end-of-epoch state. This is why the training rules ask for
    ``--signal=TERM@120`` (steps only, 2 minutes before the time limit).
  * The job's own Snakemake exits 1 whatever the step's status (75 after a save), so sacct shows FAILED;
    ``interrupted: SIGTERM`` in the rule's log is printed by the CLI immediately before it exits 75.

- ``distill.resources.processes: 2`` (2 CPUs, no GPU, 3 epochs) runs the step under torchrun (gloo) in one job
  (``--cpus-per-task=2``), COMPLETED, and matches a single-process local run within tests/test_ddp.py's
  tolerances.

Without a cluster the module is skipped, except under ``CI=true`` (then it fails).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import yaml

from conftest import tool_env
from test_ddp import assert_ddp_matches_single
from test_slurm_cluster import _run, slurm_cluster, squeue_state  # noqa: F401  (slurm_cluster is a fixture)
from test_slurm_workflow import CI_ARGS, PROFILE, Run, ci_env, rule_of, run_uuid, sacct_jobs, sha256, start
from test_workflow import scratch_copy

pytestmark = pytest.mark.integration

RUN = "spectralkd_f1l1-s0"
TARGET = f"results/runs/{RUN}/model.safetensors"
RUN_DIR = f"results/runs/{RUN}"
STEP_LOG = f"results/logs/distill/{RUN}.log"
EPOCHS = 8
#: On top of the smoke preset: one grid run, long enough to interrupt (~1 s an epoch on one core).
OVERRIDES = {"distill": {"runs": [{"name": "spectralkd_f1l1", "method": "spectralkd", "layers": "F1 L1"}],
                         "teacher_cache": "off",
                         "train": {"epochs": EPOCHS, "checkpoint_every": 1, "batch_size": 100}}}
#: The same run as 2 DDP processes in one job (batch_size 100: 50 images a rank), 3 epochs as in
#: tests/test_ddp.py (whose tolerances are measured over 3 epochs), and its single-process twin.
DDP_EPOCHS = 3
DDP = {"distill": {"train": {"epochs": DDP_EPOCHS},
                   "resources": {"processes": 2, "cpus": 2, "gpus": 0, "mem_mb": 3000, "runtime": 10}}}
SINGLE = {"distill": {"train": {"epochs": DDP_EPOCHS}, "resources": {"processes": 1}}}
#: On top of CI_ARGS: keep the SLURM logs of successful jobs (the step's stdout, "resuming at ...").
KEEP_LOGS = ["--slurm-keep-successful-logs"]
SIGNAL_DELAY = 0.5  # seconds after the first resume state (end of epoch 0): mid-epoch 1


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def write_params(workdir: Path, *extra: dict) -> None:
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    for e in extra:
        params = merge(params, e)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@dataclass
class Interruption:
    """A watcher that sends SIGTERM to a run's first distill job once it is mid-epoch."""

    run: Run
    scancel: list[str]
    job: str | None = None
    sent_after: float | None = None       # seconds after the first resume state
    queue_state: str | None = None        # squeue state when the signal was sent
    step_log: str = ""                    # the step's log (stderr) of the interrupted attempt
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self):
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self):
        try:
            self._interrupt()
        except Exception as exc:  # reported by the tests
            self.error = repr(exc)
        finally:
            self.done.set()

    def _interrupt(self):
        resume, log = self.run.cwd / RUN_DIR / "resume", self.run.cwd / STEP_LOG
        deadline = time.monotonic() + 300
        while not list(resume.glob("step_*.state.pt")):
            if self.run.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no resume state before snakemake ended / timed out:\n{self.run.tail()}")
            time.sleep(0.01)
        first = time.monotonic()
        time.sleep(SIGNAL_DELAY)
        (self.job,) = submitted(self.run)
        self.queue_state = squeue_state(self.job)
        _run("scancel", "--signal=TERM", *self.scancel, self.job)
        self.sent_after = time.monotonic() - first
        # Keep the first attempt's part of the log, until it is complete or the job has left the queue.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace") if log.exists() else ""
            if len(text) >= len(self.step_log):
                self.step_log = text
            if "interrupted:" in text or "Traceback" in text or len(submitted(self.run)) > 1:
                break
            time.sleep(0.05)


def prepared_copies(tmp_path_factory, *extra: dict) -> Callable[..., Path]:
    """Build the data and the teacher once, locally, in a scratch copy with :data:`OVERRIDES` (and ``extra``);
    return ``copy(name, *more)``, which makes a new copy of that directory with ``more`` params on top, so every
    run starts from the same inputs and metadata."""
    base = scratch_copy(tmp_path_factory.mktemp("base"))
    write_params(base, OVERRIDES, *extra)
    proc = subprocess.run(["snakemake", "--cores", "2", "results/teacher/model.safetensors"], cwd=base,
                          env=tool_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    def copy(name: str, *more: dict) -> Path:
        dst = tmp_path_factory.mktemp(name) / "work"
        shutil.copytree(base, dst, symlinks=True)
        write_params(dst, *more)
        return dst

    return copy


@pytest.fixture(scope="module")
def runs(slurm_cluster, tmp_path_factory, request):  # noqa: F811
    t0 = time.monotonic()
    env = ci_env(slurm_cluster)
    cluster = ["--profile", PROFILE, *CI_ARGS, *KEEP_LOGS]
    copy = prepared_copies(tmp_path_factory)
    prepared = time.monotonic() - t0
    started = {
        "steps": start("steps", copy("steps"), [TARGET, *cluster], env),
        "full": start("full", copy("full"), [TARGET, *cluster], env),
        "local": start("local", copy("local"), [TARGET, "--cores", "2"], {}),
    }
    started["ddp"] = start("ddp", copy("ddp", DDP), [TARGET, *cluster], env)
    started["single"] = start("single", copy("single", DDP, SINGLE), [TARGET, "--cores", "2"], {})
    watchers = {"steps": Interruption(started["steps"], []), "full": Interruption(started["full"], ["--full"])}
    yield {"runs": started, "watchers": watchers}
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    for run in started.values():
        if run.proc.poll() is None:
            run.stop()
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            report_timings(reporter, prepared, started, watchers)


def report_timings(reporter, prepared: float, started: dict[str, Run], watchers: dict[str, "Interruption"]) -> None:
    """Wall times and what each SIGTERM did (printed at the end of the module)."""
    reporter.write_line("")
    reporter.write_line(f"[slurm training] data + teacher locally: {prepared:.1f}s")
    for run in started.values():
        if run.seconds is not None:
            reporter.write_line(f"[slurm training] {run.name}: exit {run.rc} after {run.seconds:.1f}s")
    for name, w in watchers.items():
        saved = "interrupted:" in w.step_log
        reporter.write_line(f"[slurm training] {name}: job {w.job} ({w.queue_state}) got SIGTERM "
                            f"{w.sent_after or 0:.2f}s into epoch 1; state saved mid-epoch: {saved}")


# ------------------------------------------------------------------------------------------- helpers --

def submitted(run: Run) -> list[str]:
    """SLURM job ids in submission order (a retry keeps its Snakemake job id, so no dict here)."""
    return re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+)", run.output)


def slurm_log(run: Run, job: str) -> str:
    return (run.cwd / ".snakemake" / "slurm_logs" / "rule_distill" / RUN / f"{job}.log").read_text()


def assert_identical_to_local(run: Run, local: Run) -> None:
    assert local.rc == 0, local.tail()
    assert "SLURM jobid" not in local.output
    for rel in (f"{RUN_DIR}/log.txt", f"{RUN_DIR}/model.safetensors", f"{RUN_DIR}/best.safetensors",
                f"{RUN_DIR}/checkpoints/epoch_{EPOCHS:04d}.safetensors"):
        assert sha256(run.cwd / rel) == sha256(local.cwd / rel), f"{run.name}: {rel} differs from the local run"


def interrupted_then_resumed(runs: dict, name: str) -> tuple[Run, Interruption, list[dict[str, str]], str]:
    """The run (exit 0), its watcher, sacct's rows (first FAILED, then COMPLETED) and the rule's log (the step's
    stdout and stderr of both attempts: training rules append to it)."""
    run, watcher = runs["runs"][name].wait(), runs["watchers"][name]
    watcher.done.wait(60)
    assert watcher.error is None, watcher.error
    assert watcher.queue_state == "RUNNING", watcher.queue_state
    assert run.rc == 0, run.tail()
    jobs = submitted(run)
    assert len(jobs) == 2 and jobs[0] == watcher.job, (jobs, watcher.job)  # one retry, as a new sbatch job
    rows = sacct_jobs(run_uuid(run), expected=2)
    assert [(r["JobID"], rule_of(r)) for r in rows] == [(j, "distill") for j in jobs], rows
    assert [r["State"] for r in rows] == ["FAILED", "COMPLETED"], rows
    return run, watcher, rows, (run.cwd / STEP_LOG).read_text(errors="replace")


# --------------------------------------------------------------------------------------------- tests --

def test_sigterm_to_the_steps_saves_mid_epoch_and_the_retry_resumes(runs):
    """``scancel --signal=TERM`` (what ``--signal=TERM@N`` sends before the time limit)."""
    run, watcher, rows, retry_log = interrupted_then_resumed(runs, "steps")
    match = re.search(r"interrupted: SIGTERM at epoch (\d+) batch (\d+)", watcher.step_log)
    assert match, f"the step did not save on SIGTERM; its log:\n{watcher.step_log[-3000:]}"
    epoch, batch = map(int, match.groups())
    assert 0 < batch < 20, match.group(0)  # mid-epoch (2000 images / 100 a batch)
    # The CLI's status 75 is lost on the way: Snakemake's bash wrapper dies of the SIGTERM itself, the
    # job's Snakemake exits 1.
    assert rows[0]["ExitCode"] == "1:0", rows
    assert f"resuming at epoch {epoch} batch {batch}" in retry_log, retry_log[-3000:]
    assert_identical_to_local(run, runs["runs"]["local"].wait())


def test_full_sigterm_fails_the_job_and_the_retry_finishes_the_run(runs):
    """``scancel --signal=TERM --full`` (batch step included, as at the time limit or on preemption)."""
    run, watcher, rows, retry_log = interrupted_then_resumed(runs, "full")
    # The batch shell dies of SIGTERM (0:15); srun has answered its SIGTERM with SIGKILL to the step.
    assert rows[0]["ExitCode"] == "0:15", rows
    assert "srun: forcing job termination" in slurm_log(run, rows[0]["JobID"])
    assert re.search(r"resuming at epoch [1-9]\d* batch \d+", retry_log), retry_log[-3000:]
    assert_identical_to_local(run, runs["runs"]["local"].wait())


def test_torchrun_job_matches_a_single_process_run(runs):
    run = runs["runs"]["ddp"].wait()
    assert run.rc == 0, run.tail()
    assert "-m torch.distributed.run --standalone --nproc_per_node 2 -m pipeline_steps distill" in run.output
    (job,) = submitted(run)
    (row,) = sacct_jobs(run_uuid(run), expected=1)
    assert row["JobID"] == job and rule_of(row) == "distill", row
    assert row["State"] == "COMPLETED" and row["ExitCode"] == "0:0", row
    assert "--cpus-per-task=2" in row["SubmitLine"].split() and row["AllocCPUS"] == "2", row
    assert row["ReqMem"] == "3000M", row

    local = runs["runs"]["single"].wait()
    assert local.rc == 0, local.tail()
    assert "torch.distributed.run" not in local.output
    assert_ddp_matches_single(run.cwd / RUN_DIR, local.cwd / RUN_DIR, epochs=DDP_EPOCHS, test_images=400)
