"""The local single-node SLURM cluster (scripts/slurm/up.sh) really runs jobs.

Every test submits real jobs with ``sbatch`` and checks what SLURM did with
them: output files, ``sacct`` accounting records (slurmdbd), resources,
signal delivery to the batch script, and requeueing.

When ``sinfo`` cannot reach a cluster the tests are skipped, except under CI
(``CI=true``), where the cluster is part of the test environment and its
absence is a failure. Bring it up with ``bash scripts/slurm/up.sh`` (as root).

Every wait is a bounded poll; the whole module takes well under two minutes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CMD_TIMEOUT = 20          # seconds for any single slurm client command
JOB_TIMEOUT = 45          # seconds for a job to reach a final state
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY",
            "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=CMD_TIMEOUT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc


def cluster_missing(reason: str) -> None:
    """The local cluster (or a part of it) is missing: a failure under CI (``CI=true``), else a skip."""
    msg = f"{reason}; start the local cluster with `bash scripts/slurm/up.sh` (as root)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """Check once that a SLURM cluster answers; return the partition to use."""
    reason = None
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        reason = "SLURM client tools (sinfo/sbatch) are not installed"
    else:
        try:
            proc = subprocess.run(["sinfo", "-h", "-o", "%P %a %T"], capture_output=True,
                                  text=True, timeout=CMD_TIMEOUT)
        except subprocess.TimeoutExpired:
            reason = "sinfo timed out"
        else:
            if proc.returncode != 0:
                reason = f"sinfo failed ({proc.returncode}): {proc.stderr.strip()}"
            elif not proc.stdout.strip():
                reason = "sinfo shows no partitions"
    if reason is not None:
        cluster_missing(f"no reachable SLURM cluster: {reason}")
    partition = os.environ.get("SLURM_TEST_PARTITION", "debug")
    return partition


def sbatch(partition: str, workdir: Path, *args: str, script: str | None = None,
           user: str | None = None) -> str:
    """Submit a job and return its id. ``script`` is a batch script's text."""
    cmd = ["sbatch", "--parsable", "-p", partition, "-t", "5", "-J", "pytest-slurm",
           f"--chdir={workdir}", f"--output={workdir}/slurm-%j.out", *args]
    if script is not None:
        path = workdir / f"job-{time.monotonic_ns()}.sh"
        path.write_text(script)
        path.chmod(0o755)
        cmd.append(str(path))
    if user is not None:
        cmd = ["runuser", "-u", user, "--", *cmd]
    out = _run(*cmd).stdout.strip()
    job_id = out.split(";")[0]
    assert job_id.isdigit(), out
    return job_id


def wait_until(predicate, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def squeue_state(job_id: str) -> str | None:
    """The job's state while slurmctld still lists it, else None."""
    proc = _run("squeue", "-h", "-j", job_id, "-o", "%T", check=False)
    state = proc.stdout.strip()
    return state or None


def sacct_states(job_id: str, *extra: str) -> list[str]:
    proc = _run("sacct", "-j", job_id, "--format=State", "-n", "-P", *extra, check=False)
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def wait_final(job_id: str, timeout: float = JOB_TIMEOUT) -> str:
    """Wait until the job has left the queue and sacct records a final state."""
    def final():
        if squeue_state(job_id) not in (None, *TERMINAL):
            return None
        states = sacct_states(job_id, "-X")
        return states[0] if states and states[0] in TERMINAL else None
    return wait_until(final, timeout, f"job {job_id} to finish")


def job_info(job_id: str) -> str:
    """Diagnostics for assertion messages."""
    sacct = _run("sacct", "-j", job_id, "-D", "-P", "--format=JobID,State,ExitCode,Reason,NodeList",
                 check=False).stdout
    return f"sacct:\n{sacct}"


def test_hello_job_completes_and_is_accounted(slurm_cluster, tmp_path):
    job_id = sbatch(slurm_cluster, tmp_path, "--wrap", "echo hello; hostname")
    state = wait_final(job_id)
    assert state == "COMPLETED", job_info(job_id)

    out = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert "hello" in out
    assert socket.gethostname().split(".")[0] in out

    # The accounting record (slurmdbd) of the job and its batch step.
    states = wait_until(lambda: (s := sacct_states(job_id)) and all(x == "COMPLETED" for x in s) and s,
                        15, f"sacct to record job {job_id} as COMPLETED")
    assert states[0] == "COMPLETED"


def test_job_gets_requested_memory_and_cpus(slurm_cluster, tmp_path):
    script = ("#!/bin/bash\n"
              'echo "cpus=$SLURM_CPUS_PER_TASK mem=$SLURM_MEM_PER_NODE cpus_on_node=$SLURM_CPUS_ON_NODE"\n')
    job_id = sbatch(slurm_cluster, tmp_path, "--mem=300M", "--cpus-per-task=2", script=script)
    assert wait_final(job_id) == "COMPLETED", job_info(job_id)

    out = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert "cpus=2 mem=300 cpus_on_node=2" in out, out
    # The accounting record shows the allocation (slurmdbd may fill in the
    # requested-TRES fields a moment after the job has finished, so poll).
    def alloc():
        fields = _run("sacct", "-j", job_id, "-X", "-n", "-P", "--format=AllocCPUS,AllocTRES").stdout.strip().split("|")
        return fields if len(fields) == 2 and "mem=300M" in fields[1] else None
    cpus, tres = wait_until(alloc, 15, f"sacct to record the allocation of job {job_id}")
    assert cpus == "2" and "cpu=2" in tres.split(","), (cpus, tres)


SIGNAL_SCRIPT = """#!/bin/bash
trap 'echo "caught SIGTERM" > {marker}; exit 0' TERM
echo started > {started}
# Wait in the shell (not in a foreground child) so the trap runs at once.
sleep 60 & wait $!
echo "no signal" > {marker}
"""


@pytest.mark.parametrize("how", ["signal-batch", "cancel"])
def test_sigterm_reaches_the_batch_script(slurm_cluster, tmp_path, how):
    """`scancel --signal=TERM --batch` and a plain `scancel` both run the script's TERM trap.

    Note: `scancel --signal=TERM` *without* --batch/--full signals only job steps,
    never the batch shell, so the trap would not run.
    """
    marker, started = tmp_path / "marker", tmp_path / "started"
    job_id = sbatch(slurm_cluster, tmp_path, script=SIGNAL_SCRIPT.format(marker=marker, started=started))
    wait_until(started.exists, JOB_TIMEOUT, f"job {job_id} to start")

    if how == "signal-batch":
        _run("scancel", "--signal=TERM", "--batch", job_id)
        expected = "COMPLETED"   # the trap exits 0 and the job ends normally
    else:
        _run("scancel", job_id)
        expected = "CANCELLED"

    wait_until(marker.exists, 20, f"the TERM trap of job {job_id} to write its marker")
    assert marker.read_text().strip() == "caught SIGTERM"
    assert wait_final(job_id) == expected, job_info(job_id)


REQUEUE_SCRIPT = """#!/bin/bash
echo "restart=${{SLURM_RESTART_COUNT:-0}}" >> {log}
if [ "${{SLURM_RESTART_COUNT:-0}}" = 0 ]; then
    sleep 60 & wait $!
fi
"""


def test_requeue_reruns_job_with_restart_count(slurm_cluster, tmp_path):
    log = tmp_path / "runs.log"
    job_id = sbatch(slurm_cluster, tmp_path, "--requeue", script=REQUEUE_SCRIPT.format(log=log))
    wait_until(lambda: log.exists() and "restart=0" in log.read_text(), JOB_TIMEOUT,
               f"first run of job {job_id}")

    _run("scontrol", "requeue", job_id)
    # A requeued job is held back by a BeginTime ~2 minutes ahead; start it now.
    wait_until(lambda: squeue_state(job_id) == "PENDING", 20, f"job {job_id} to be pending again")
    wait_until(lambda: _run("scontrol", "update", f"jobid={job_id}", "StartTime=now",
                            check=False).returncode == 0, 10, f"StartTime=now for job {job_id}")

    assert wait_final(job_id) == "COMPLETED", job_info(job_id)
    assert log.read_text().split() == ["restart=0", "restart=1"]
    # sacct --duplicates keeps the requeued first run as its own record.
    states = wait_until(lambda: (s := sacct_states(job_id, "-X", "-D")) and len(s) >= 2 and s,
                        15, f"sacct records of both runs of job {job_id}")
    assert states[0] == "REQUEUED" and states[-1] == "COMPLETED", states


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to submit as another user")
def test_job_runs_as_submitting_non_root_user(slurm_cluster):
    user = "nobody"
    # pytest's tmp dirs are private to root; use a world-writable one in /tmp.
    with tempfile.TemporaryDirectory(prefix="slurm-user-test-", dir="/tmp") as d:
        workdir = Path(d)
        workdir.chmod(0o1777)
        job_id = sbatch(slurm_cluster, workdir, "--wrap", "id -un", user=user)
        assert wait_final(job_id) == "COMPLETED", job_info(job_id)
        out_file = workdir / f"slurm-{job_id}.out"
        assert out_file.read_text().strip() == user
        assert out_file.owner() == user
