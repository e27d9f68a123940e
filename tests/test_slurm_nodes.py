"""Training jobs past one node and with GPUs, on the local cluster, through the user's profile.

The local cluster (scripts/slurm/up.sh) has this host's node (partition ``debug``, 2 dummy GPUs) and two
virtual nodes ``vnode1``/``vnode2`` (partition ``multinode``): each one more slurmd in its own UTS namespace,
so a job over them is a real 2-node SLURM job (one allocation, one srun task a node, each seeing its own
hostname) on one machine. The distillation run of tests/test_slurm_training.py (spectralkd F1 L1, smoke
preset, 3 epochs; data and teacher built locally first) is built with ``snakemake --profile
workflow/profiles/slurm`` + the CI overrides. Checked:

- ``distill.resources: {nodes: 2, processes: 1}``: one sbatch job over both virtual nodes (``--nodes=2
  --ntasks=2``), one srun step of 2 tasks, one torchrun a node, ranks 0 and 1 on different hostnames, c10d
  rendezvous; the run matches a single-process local run within tests/test_ddp.py's tolerances.
- The same job sent SIGTERM mid-epoch (``scancel --signal=TERM``, what ``--signal=TERM@120`` sends): the
  ranks save the state and stop, the job ends FAILED, the retry resumes at that epoch and batch, and the
  run again matches the single-process one.
- ``distill.resources: {gpus: 2}`` on one node: one sbatch job with ``--gpus=2`` (no ``--ntasks-per-gpu``:
  the SLURM plugin's GPU task geometry once started jobs once per GPU), one task, torchrun started once with
  2 processes, each rank seeing the GPUs SLURM assigned (``CUDA_VISIBLE_DEVICES=0,1``) and, without CUDA,
  training on the CPU with gloo; ``sacct`` records ``gres/gpu=2``.

Without the cluster (or its virtual nodes / GPUs) the module is skipped, except under ``CI=true`` (then it
fails).
"""

from __future__ import annotations

import re
import time

import pytest

from test_ddp import assert_ddp_matches_single
from test_slurm_cluster import _run, cluster_missing, slurm_cluster  # noqa: F401  (slurm_cluster is a fixture)
from test_slurm_training import RUN_DIR, STEP_LOG, TARGET, Interruption, prepared_copies, submitted
from test_slurm_workflow import (CI_ARGS, PROFILE, Run, ci_env, rule_of, run_uuid, sacct_jobs, start,
                                 stop_and_report)

pytestmark = pytest.mark.integration

MULTINODE = "multinode"
EPOCHS = 3  # tests/test_ddp.py's tolerances are measured over 3 epochs
TRAIN = {"distill": {"train": {"epochs": EPOCHS}}}
NODES = {"distill": {"resources": {"nodes": 2, "processes": 1, "gpus": 0, "cpus": 1, "mem_mb": 2000,
                                   "runtime": 10}}}
GPUS = {"distill": {"resources": {"nodes": 1, "gpus": 2, "processes": 0, "cpus": 2, "mem_mb": 3000,
                                  "runtime": 10}}}
SINGLE = {"distill": {"resources": {"nodes": 1, "gpus": 0, "processes": 1}}}
RANK_LINE = re.compile(r"rank (\d+) of (\d+) \(local rank (\d+)\) on (\S+): device (\S+), process group backend "
                       r"(\S+), CUDA_VISIBLE_DEVICES=(\S+)")


@pytest.fixture(scope="module")
def cluster(slurm_cluster):  # noqa: F811
    """The default partition, after checking it has GPU GRES and that the multinode partition has 2 nodes."""
    nodes = _run("sinfo", "-h", "-N", "-p", MULTINODE, "-o", "%N %T", check=False).stdout.split("\n")
    up = [line.split()[0] for line in nodes if line.strip() and not line.split()[1].startswith(("down", "drain"))]
    if len(up) < 2:
        cluster_missing(f"multi-node tests: partition {MULTINODE} has {len(up)} usable nodes, they need 2")
    gres = _run("sinfo", "-h", "-p", slurm_cluster, "-o", "%G", check=False).stdout
    if "gpu:2" not in gres:
        cluster_missing(f"GPU tests: partition {slurm_cluster} declares no gpu:2 GRES (sinfo %G: {gres.strip()!r})")
    return slurm_cluster


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory, request):
    profile = ["--profile", PROFILE, *CI_ARGS, "--slurm-keep-successful-logs"]
    copy = prepared_copies(tmp_path_factory, TRAIN)
    multinode = ci_env(MULTINODE)
    started = {
        "nodes": start("nodes", copy("nodes", NODES), [TARGET, *profile], multinode),
        "nodes_sigterm": start("nodes_sigterm", copy("nodes_sigterm", NODES), [TARGET, *profile], multinode),
        "gpus": start("gpus", copy("gpus", GPUS), [TARGET, *profile], ci_env(cluster)),
        "single": start("single", copy("single", SINGLE), [TARGET, "--cores", "2"], {}),
    }
    watcher = Interruption(started["nodes_sigterm"], [])
    yield {"runs": started, "watcher": watcher}
    stop_and_report(request, started, "slurm nodes")


# ------------------------------------------------------------------------------------------- helpers --

def steps_of(job: str) -> list[dict[str, str]]:
    """sacct's records of a job's steps other than batch and extern (the job's own srun steps)."""
    fields = ["JobID", "State", "NNodes", "NTasks", "NodeList", "AllocTRES"]
    deadline = time.monotonic() + 30
    while True:
        out = _run("sacct", "-n", "-P", "-j", job, f"--format={','.join(fields)}").stdout
        rows = [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]
        steps = [r for r in rows if re.fullmatch(rf"{job}\.\d+", r["JobID"])]
        if (steps and all(r["State"] not in ("RUNNING", "PENDING") for r in steps)) or time.monotonic() > deadline:
            return steps
        time.sleep(0.5)


def alloc_tres(job: str) -> str:
    return _run("sacct", "-X", "-n", "-P", "-j", job, "--format=AllocTRES").stdout.strip()


def rank_lines(text: str) -> list[tuple[int, int, int, str, str, str, str]]:
    return [(int(r), int(w), int(lr), host, dev, backend, cvd)
            for r, w, lr, host, dev, backend, cvd in RANK_LINE.findall(text)]


def one_completed_job(run: Run) -> tuple[str, dict[str, str]]:
    assert run.rc == 0, run.tail()
    (job,) = submitted(run)
    (row,) = sacct_jobs(run_uuid(run), expected=1)
    assert row["JobID"] == job and rule_of(row) == "distill", row
    assert row["State"] == "COMPLETED" and row["ExitCode"] == "0:0", row
    return job, row


# --------------------------------------------------------------------------------------------- tests --

def test_two_nodes_one_allocation_one_torchrun_a_node(runs):
    run = runs["runs"]["nodes"].wait()
    job, row = one_completed_job(run)
    submit = row["SubmitLine"].split()
    assert "--nodes=2" in submit and "--ntasks=2" in submit, row
    assert not any(a.startswith("--ntasks-per-gpu") for a in submit), row
    assert "-m pipeline_steps.training.nodes --nodes 2 --processes-per-node 1 --cpus 1 -- distill" in run.output
    (step,) = steps_of(job)  # the rule's srun: one task a node
    assert (step["NNodes"], step["NTasks"], step["NodeList"]) == ("2", "2", "vnode[1-2]"), step
    log = (run.cwd / STEP_LOG).read_text()
    ranks = rank_lines(log)
    assert sorted(r[:3] for r in ranks) == [(0, 2, 0), (1, 2, 0)], log[-3000:]
    assert {r[3] for r in ranks} == {"vnode1", "vnode2"}, ranks  # one rank on each node
    assert {r[4:6] for r in ranks} == {("cpu", "gloo")}, ranks

    single = runs["runs"]["single"].wait()
    assert single.rc == 0, single.tail()
    assert_ddp_matches_single(run.cwd / RUN_DIR, single.cwd / RUN_DIR, epochs=EPOCHS, test_images=400)


def test_sigterm_to_a_two_node_job_saves_and_the_retry_resumes(runs):
    run, watcher = runs["runs"]["nodes_sigterm"].wait(), runs["watcher"]
    watcher.done.wait(60)
    assert watcher.error is None, watcher.error
    assert watcher.queue_state == "RUNNING", watcher.queue_state
    assert run.rc == 0, run.tail()
    jobs = submitted(run)
    assert len(jobs) == 2 and jobs[0] == watcher.job, (jobs, watcher.job)
    rows = sacct_jobs(run_uuid(run), expected=2)
    assert [r["State"] for r in rows] == ["FAILED", "COMPLETED"], rows
    saved = re.findall(r"interrupted: SIGTERM at epoch (\d+) batch (\d+)", watcher.step_log)
    assert saved, f"no rank saved on SIGTERM; the step's log:\n{watcher.step_log[-3000:]}"
    (epoch, batch), = set(saved)  # one state, written by rank 0, the same position on every rank
    log = (run.cwd / STEP_LOG).read_text()
    assert f"resuming at epoch {epoch} batch {batch}" in log, log[-3000:]
    # Both attempts ran on both nodes, a rank on each (which node gets rank 0 is the c10d rendezvous's choice;
    # Snakemake replaced the first attempt's log, the watcher kept it).
    for attempt in (watcher.step_log, log):
        ranks = rank_lines(attempt)
        assert sorted(r[0] for r in ranks) == [0, 1] and {r[3] for r in ranks} == {"vnode1", "vnode2"}, attempt
    single = runs["runs"]["single"].wait()
    assert single.rc == 0, single.tail()
    assert_ddp_matches_single(run.cwd / RUN_DIR, single.cwd / RUN_DIR, epochs=EPOCHS, test_images=400)


def test_a_two_gpu_job_is_one_task_running_torchrun_once(runs):
    run = runs["runs"]["gpus"].wait()
    job, row = one_completed_job(run)
    submit = row["SubmitLine"].split()
    assert "--gpus=2" in submit, row
    assert not any(a.startswith(("--ntasks-per-gpu", "--gpus-per-task")) for a in submit), row
    assert "gres/gpu=2" in alloc_tres(job).split(","), alloc_tres(job)
    # One sbatch job, one srun step (the plugin's job step) of one task, which starts torchrun once.
    (step,) = steps_of(job)
    assert (step["NNodes"], step["NTasks"]) == ("1", "1"), step
    assert "gres/gpu=2" in step["AllocTRES"].split(","), step
    assert run.output.count("-m torch.distributed.run --standalone --nproc_per_node 2 -m pipeline_steps distill") == 1
    ranks = rank_lines((run.cwd / STEP_LOG).read_text())
    assert sorted(r[:3] for r in ranks) == [(0, 2, 0), (1, 2, 1)], ranks
    # Each rank sees the GPUs SLURM assigned, and trains on the CPU with gloo (no CUDA here).
    assert {r[4:] for r in ranks} == {("cpu", "gloo", "0,1")}, ranks
