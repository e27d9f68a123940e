"""The workflow on the local SLURM cluster, through the user's profile (workflow/profiles/slurm).

Every run here is ``snakemake --profile slurm`` (or the profile's path) plus only what differs on the local
test cluster (:data:`CI_ENV`, :data:`CI_ARGS`), so the tested path is the one a user runs. Checked:

- the smoke preset's analysis targets, built by SLURM jobs only (``sacct``: one record per submitted
  job, the rule in its sbatch ``--comment``, all COMPLETED, with ``--requeue``, partition and account;
  the training rules with their own resources, not the profile's defaults), give byte-identical
  outputs to a local ``snakemake --cores 2`` run of the same targets;
- a job that fails on its first attempt is resubmitted (the profile's ``retries``) and the workflow
  succeeds; a job that always fails is tried 1 + retries times, every attempt FAILED in ``sacct``,
  and Snakemake exits non-zero.

All runs start together in one module fixture (they share the cluster's 2 CPUs) and each test waits
for its own. Without a cluster the module is skipped, except under ``CI=true`` (then it fails).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO, tool_env
from test_slurm_cluster import _run, slurm_cluster  # noqa: F401  (slurm_cluster is a fixture)
from test_workflow import scratch_copy

pytestmark = pytest.mark.integration

PROFILE = "workflow/profiles/slurm"
RUN_TIMEOUT = 420  # seconds for any one snakemake run (they take 0.5-3 min)

#: The smoke preset's analysis targets (teacher chain and Fig. 1-3).
TARGETS = ["results/reductions/teacher.parquet",
           *[f"results/figures/{stem}.{ext}" for stem in ("fig1_entropy", "fig2_magnitude", "fig3_spectra",
                                                          "fig3_spectra_all") for ext in ("pdf", "png")]]
#: Outputs that must be byte-identical between the cluster and the local run (PNGs included).
SAME_BYTES = ["results/data/synthetic.npz", "results/samples/manifest.parquet", "results/teacher/log.txt",
              "results/activations/teacher.npz", "results/reductions/teacher.parquet",
              "results/reductions/teacher_summary.parquet", *[t for t in TARGETS if t.endswith(".png")]]
#: The same but for one field: matplotlib writes the time into a PDF's /CreationDate.
SAME_PDF = [t for t in TARGETS if t.endswith(".pdf")]
#: The same tensors and metadata; the safetensors header's metadata order varies from process to process.
SAME_WEIGHTS = ["results/teacher/model.safetensors"]


def ci_env(partition: str) -> dict[str, str]:
    """The local cluster's partition and account, read by the profile's default-resources."""
    return {"SBATCH_PARTITION": partition, "SBATCH_ACCOUNT": os.environ.get("SLURM_TEST_ACCOUNT", "default")}


#: On top of the profile: the cluster's 2 CPUs in all, and a fast first status query (short jobs).
CI_ARGS = ["--cores", "2", "--slurm-init-seconds-before-status-checks", "1"]

FAIL_ONCE = """\
rule all:
    input: "once.txt"

rule fail_once:
    output: "once.txt"
    resources: try_no=lambda wildcards, attempt: attempt
    shell: "if [ ! -e first-try.marker ]; then touch first-try.marker; exit 3; fi; echo attempt={resources.try_no} > {output}"
"""

ALWAYS_FAILS = """\
rule always_fails:
    output: "never.txt"
    shell: "echo trying; exit 3"
"""


@dataclass
class Run:
    name: str
    cwd: Path
    proc: subprocess.Popen
    log: Path
    started: float
    seconds: float | None = None  # wall time of the snakemake process, once it has ended

    def __post_init__(self):
        threading.Thread(target=self._time, daemon=True).start()

    def _time(self):
        self.proc.wait()
        self.seconds = time.monotonic() - self.started

    def wait(self) -> "Run":
        try:
            self.proc.wait(timeout=max(1.0, RUN_TIMEOUT - (time.monotonic() - self.started)))
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"{self.name}: snakemake ran over {RUN_TIMEOUT}s:\n{self.tail()}") from None
        return self

    def stop(self):
        """SIGTERM first: Snakemake then cancels its SLURM jobs (scancel)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def rc(self) -> int | None:
        return self.proc.returncode

    @property
    def output(self) -> str:
        return self.log.read_text()

    def tail(self, n: int = 6000) -> str:
        return self.output[-n:]


def start(name: str, cwd: Path, args: list[str], env: dict[str, str]) -> Run:
    log = cwd.parent / f"{cwd.name}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(["snakemake", *args], cwd=cwd, env=tool_env(**env), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return Run(name, cwd, proc, log, time.monotonic())


@pytest.fixture(scope="module")
def runs(slurm_cluster, tmp_path_factory, request):  # noqa: F811
    env = ci_env(slurm_cluster)
    profile = ["--profile", str(REPO / PROFILE)]
    cluster = scratch_copy(tmp_path_factory.mktemp("cluster"), preset=None)
    local = scratch_copy(tmp_path_factory.mktemp("local"), preset=None)
    once = tmp_path_factory.mktemp("fail_once")
    (once / "Snakefile").write_text(FAIL_ONCE)
    never = tmp_path_factory.mktemp("always_fails")
    (never / "Snakefile").write_text(ALWAYS_FAILS)
    started = {
        # The user's words, from the repository root: `snakemake --profile slurm` (the others: the profile's path).
        "cluster": start("cluster", cluster, [*TARGETS, "--profile", "slurm", *CI_ARGS,
                                              "--configfile", "configs/smoke.yaml"], env),
        "local": start("local", local, [*TARGETS, "--cores", "2", "--configfile", "configs/smoke.yaml"], {}),
        "fail_once": start("fail_once", once, [*profile, *CI_ARGS], env),
        "always_fails": start("always_fails", never, [*profile, *CI_ARGS], env),
    }
    yield started
    stop_and_report(request, started, "slurm workflow")


def stop_and_report(request, started: dict[str, Run], label: str) -> None:
    """A module fixture's teardown: stop the runs still going, print how long the others took."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    for run in started.values():
        if run.proc.poll() is None:
            run.stop()
        elif reporter is not None and run.seconds is not None:
            reporter.write_line(f"[{label}] {run.name}: exit {run.rc} after {run.seconds:.1f}s")


# ------------------------------------------------------------------------------------------- helpers --

def run_uuid(run: Run) -> str:
    match = re.search(r"SLURM run ID: (\S+)", run.output)
    assert match, f"{run.name}: no SLURM run ID in the log:\n{run.tail()}"
    return match.group(1)


def submitted(run: Run) -> dict[str, str]:
    """Snakemake job id -> SLURM job id, from the log."""
    return dict(re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", run.output))


def finished(run: Run) -> dict[str, str]:
    """Snakemake job id -> rule, of every job the run finished."""
    return dict(re.findall(r"Finished jobid: (\d+) \(Rule: (\w+)\)", run.output))


def local_rules(workdir: Path) -> set[str]:
    """The rules the workflow runs on the submit host (its `localrules:` directives)."""
    names: set[str] = set()
    for path in [workdir / "workflow/Snakefile", *sorted((workdir / "workflow/rules").glob("*.smk"))]:
        # `localrules: a, b` on one line, or one indented name per line below it.
        for block in re.findall(r"^localrules:(.*(?:\n[ \t]+\S.*)*)", path.read_text(), re.M):
            names.update(re.findall(r"\w+", block))
    return names


def sacct_jobs(uuid: str, expected: int, timeout: float = 30) -> list[dict[str, str]]:
    """sacct's records of a run's jobs (job name = the run's UUID), once it lists ``expected`` finished ones."""
    fields = ["JobID", "State", "ExitCode", "Partition", "Account", "ReqMem", "Timelimit", "AllocCPUS", "SubmitLine"]
    deadline = time.monotonic() + timeout
    while True:
        out = _run("sacct", "-X", "-n", "-P", "-D", "-S", "now-1days", "--name", uuid,
                   f"--format={','.join(fields)}").stdout
        rows = [dict(zip(fields, line.split("|", len(fields) - 1))) for line in out.splitlines() if line.strip()]
        done = [r for r in rows if r["State"].split()[0] not in ("PENDING", "RUNNING", "REQUEUED", "COMPLETING")]
        if len(done) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def rule_of(row: dict[str, str]) -> str:
    match = re.search(r"--comment rule_(\w+?)(?:_wildcards_\S*)?(?:\s|$)", row["SubmitLine"])
    assert match, row
    return match.group(1)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pdf_sha256(path: Path) -> str:
    return hashlib.sha256(re.sub(rb"/CreationDate \(D:[^)]*\)", b"", path.read_bytes())).hexdigest()


def weights_sha256(path: Path) -> str:
    """SHA-256 over the tensors (sorted by name: dtype, shape, bytes) and the sorted metadata."""
    from safetensors import safe_open

    digest = hashlib.sha256()
    with safe_open(path, "np") as f:
        digest.update(repr(sorted((f.metadata() or {}).items())).encode())
        for name in sorted(f.keys()):
            tensor = f.get_tensor(name)
            digest.update(f"{name} {tensor.dtype} {tensor.shape}".encode())
            digest.update(tensor.tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------- tests --

def test_every_job_is_a_completed_slurm_job(runs, slurm_cluster):  # noqa: F811
    run = runs["cluster"].wait()
    assert run.rc == 0, run.tail()
    jobs, done = submitted(run), finished(run)
    local = local_rules(run.cwd)
    remote = {jid: rule for jid, rule in done.items() if rule not in local}
    assert {"generate_data", "sample", "train_teacher", "extract", "reduce", "fig_entropy", "fig_magnitude",
            "fig_spectra", "fig_spectra_all"} - local <= set(remote.values()), done
    assert set(remote) <= set(jobs), f"jobs that did not go through sbatch: {set(remote) - set(jobs)}"

    rows = sacct_jobs(run_uuid(run), expected=len(jobs))
    assert {r["JobID"] for r in rows} == set(jobs.values()), rows
    by_id = {r["JobID"]: r for r in rows}
    account = ci_env(slurm_cluster)["SBATCH_ACCOUNT"]
    for snakemake_id, slurm_id in jobs.items():
        row = by_id[slurm_id]
        assert row["State"] == "COMPLETED" and row["ExitCode"] == "0:0", row
        assert rule_of(row) == done[snakemake_id], (row, done[snakemake_id])
        assert row["Partition"] == slurm_cluster and row["Account"] == account, row
        assert " --requeue" in row["SubmitLine"], row  # slurm-requeue: true

    # The training rule keeps its own resources (configs/smoke.yaml teacher.resources); the rest get the
    # profile's defaults (mem_mb=2000, runtime=60).
    rules = {rule_of(r): r for r in rows}
    assert rules["train_teacher"]["ReqMem"] == "1500M" and rules["train_teacher"]["Timelimit"] == "00:10:00", rules
    assert rules["reduce"]["ReqMem"] == "2000M" and rules["reduce"]["Timelimit"] == "01:00:00", rules
    assert rules["reduce"]["AllocCPUS"] == "1", rules


def test_cluster_outputs_are_byte_identical_to_a_local_run(runs):
    cluster, local = runs["cluster"].wait(), runs["local"].wait()
    assert cluster.rc == 0, cluster.tail()
    assert local.rc == 0, local.tail()
    assert "SLURM jobid" not in local.output
    differ = [rel for digest, paths in ((sha256, SAME_BYTES), (pdf_sha256, SAME_PDF), (weights_sha256, SAME_WEIGHTS))
              for rel in paths if digest(cluster.cwd / rel) != digest(local.cwd / rel)]
    assert not differ, f"cluster and local outputs differ: {differ}"


def test_a_job_failing_once_is_resubmitted_and_the_workflow_succeeds(runs):
    run = runs["fail_once"].wait()
    assert run.rc == 0, run.tail()
    assert (run.cwd / "once.txt").read_text().strip() == "attempt=2"
    rows = sacct_jobs(run_uuid(run), expected=2)
    assert [(rule_of(r), r["State"]) for r in rows] == [("fail_once", "FAILED"), ("fail_once", "COMPLETED")], rows


def test_a_job_that_always_fails_fails_the_workflow_after_the_retries(runs):
    run = runs["always_fails"].wait()
    assert run.rc != 0, run.tail()
    rows = sacct_jobs(run_uuid(run), expected=3)  # 1 + retries: 2
    assert [(rule_of(r), r["State"]) for r in rows] == [("always_fails", "FAILED")] * 3, rows
    assert all(r["ExitCode"] != "0:0" for r in rows), rows
    assert len(re.findall(r"has been submitted with SLURM jobid", run.output)) == 3
    assert not (run.cwd / "never.txt").exists()
