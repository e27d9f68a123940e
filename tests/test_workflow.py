"""Real Snakemake and DVC runs of the smoke preset in a scratch copy of the repository.

Covers: `snakemake -n` plans every preset; `snakemake --cores 2` builds every output and a
second call has nothing to do; a fresh `dvc repro` rebuilds everything, a second is a no-op, a
figure-only param re-runs only that figure, and `dvc checkout` does not make Snakemake redo work;
the two orchestrators produce identical reductions.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO, USER_STATE, tool_env

pytestmark = pytest.mark.integration

#: configs/smoke.yaml's distillation grid (one seed).
SMOKE_RUNS = ("softkd-s0", "spectralkd_f1l1-s0", "projectorkd_l1-s0")
SMOKE_OUTPUTS = [
    "results/data/synthetic.npz",
    "results/samples/manifest.parquet",
    "results/teacher/model.safetensors",
    "results/teacher/log.txt",
    "results/activations/teacher.npz",
    "results/reductions/teacher.parquet",
    "results/reductions/teacher_summary.parquet",
    "results/statistics/teacher.parquet",
    "results/statistics/teacher_summary.parquet",
    "results/teacher/checkpoints.json",
    "results/teacher/evolution.parquet",
    "results/teacher/evolution_summary.parquet",
    "results/teacher/evolution_statistics.parquet",
    *[f"results/figures/{stem}.{ext}" for stem in ("fig1_entropy", "fig2_magnitude", "fig3_spectra",
                                                    "fig3_spectra_all", "fig4_evolution", "fig5_cka",
                                                    "fig6_cka_match", "fig7_statistics", "fig8_robustness",
                                                    "fig9_teacher_evolution") for ext in ("pdf", "png")],
    "results/teacher/cache.safetensors",
    *[f"results/runs/{run}/{name}" for run in SMOKE_RUNS
      for name in ("model.safetensors", "log.txt", "checkpoints.json", "best.safetensors")],
    *[f"results/evolution/{run}{suffix}.parquet" for run in SMOKE_RUNS for suffix in ("", "_summary", "_statistics")],
    *[f"results/tables/table1.{ext}" for ext in ("csv", "md", "tex", "json")],
    "results/headline.md",
    # The authors' published data (reference/), drawn and tabulated by our code.
    *[f"results/figures/paper_fig4_published.{ext}" for ext in ("pdf", "png")],
    *[f"results/tables/table1_published.{ext}" for ext in ("csv", "md", "tex", "json")],
]


def sh(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-4000:]}")
    return proc


def project_files(src: Path = REPO) -> list[str]:
    """The working tree's project files (tracked + untracked, not ignored), never the user's results or run
    state (conftest.USER_STATE: results/, .snakemake/, dvc.lock, ...; dvc.lock is not ignored by git)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=src, capture_output=True,
                           text=True, check=True).stdout.split("\n")
    return [rel for rel in filter(None, files)
            if not any(rel == name or rel.startswith(f"{name}/") for name in USER_STATE)]


def scratch_copy(dst: Path, preset: str | None = "configs/smoke.yaml", src: Path = REPO) -> Path:
    """Copy the project files of ``src`` (:func:`project_files`) into a new git repo."""
    for rel in project_files(src):
        src_file = src / rel
        if src_file.is_symlink():  # the `slurm` profile link in the repository root
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            (dst / rel).symlink_to(src_file.readlink())
        elif src_file.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src_file, dst / rel)
    if preset:
        shutil.copy(dst / preset, dst / "params.yaml")
    sh(["git", "init", "-q"], dst)
    sh(["git", "add", "-A"], dst)
    sh(["git", "commit", "-qm", "scratch copy"], dst)
    return dst


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


@pytest.fixture(scope="module")
def planning_copy(tmp_path_factory) -> Path:
    """A scratch copy of the project as a clone has it (params.yaml the default), for dry runs: planning in
    the repository itself would see the user's results and write its .snakemake/."""
    return scratch_copy(tmp_path_factory.mktemp("plan"), preset=None)


#: Jobs `snakemake -n` plans in a fresh clone, per preset (None: params.yaml). The paper preset's Fig. 4 draws 4 of
#: its 13 runs (figures.evolution_panels); the headline lists every run's final entropy profile, so all 13
#: evolution jobs are planned. The study: 36 distill and 36 evolution jobs (12 configurations x 3 seeds).
PLANNED_JOBS = {None: 47, "configs/smoke.yaml": 29, "configs/paper.yaml": 44, "configs/study.yaml": 95}


def planned_jobs(workdir: Path, *extra: str) -> int:
    proc = sh(["snakemake", "-n", *extra], workdir)
    total = re.search(r"^total\s+(\d+)", proc.stdout, re.M)
    assert total, proc.stdout[-2000:]
    return int(total.group(1))


def test_snakemake_dry_run_plans_every_preset(planning_copy):
    for preset, jobs in PLANNED_JOBS.items():
        assert planned_jobs(planning_copy, *(["--configfile", preset] if preset else [])) == jobs, preset


def test_a_used_clone_is_planned_from_scratch(planning_copy, tmp_path):
    """A clone where the pipeline has run (results/, .snakemake/, dvc.lock present) gives scratch copies
    without them: the test suite plans and builds the same in a used clone as in a fresh one."""
    used = shutil.copytree(planning_copy, tmp_path / "used", symlinks=True, ignore=shutil.ignore_patterns(".git"))
    sh(["git", "init", "-q"], used)
    sh(["git", "add", "-A"], used)
    sh(["git", "commit", "-qm", "clone"], used)
    for rel in SMOKE_OUTPUTS:
        (used / rel).parent.mkdir(parents=True, exist_ok=True)
        (used / rel).write_text("an earlier run's output")
    (used / ".snakemake" / "metadata").mkdir(parents=True, exist_ok=True)
    (used / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (tmp_path / "copy").mkdir()
    copy = scratch_copy(tmp_path / "copy", preset=None, src=used)
    assert not any((copy / name).exists() for name in USER_STATE)
    assert sorted(project_files(copy)) == sorted(project_files(planning_copy))
    assert planned_jobs(copy) == PLANNED_JOBS[None]


def test_paper_preset_plans_table1_grid_without_mixing_in_the_default(planning_copy):
    """The paper preset replaces params.yaml (no deep merge: CaiT-S24 keeps its own architecture) and plans
    Table 1's 13 runs, each an 8-process torchrun job with its own epochs."""
    proc = sh(["snakemake", "-n", "-p", "--configfile", "configs/paper.yaml"], planning_copy)
    runs = dict(re.findall(r"Distilling (\S+) \((\d+) epochs\)", proc.stdout))
    assert len(runs) == 13 and runs["softkd_500ep-s0"] == "500" and runs["spectralkd_f2l6-s0"] == "300", runs
    commands = [line for line in proc.stdout.splitlines() if " distill --config-json" in line]
    assert len(commands) == 13 and all("--nproc_per_node 8 -m pipeline_steps" in c for c in commands)
    config = json.loads(re.search(r"--config-json '([^']+)'", commands[0]).group(1))
    assert config["teacher"]["model"] == {"arch": "cait_s24_224", "kwargs": {}, "weights": {
        "source": "timm", "tag": "cait_s24_224.fb_dist_in1k", "path": None, "seed": 0}}
    assert config["student"]["model"]["kwargs"] == {"drop_path_rate": 0.0}


def test_the_paper_preset_on_four_gpu_nodes_plans_two_node_jobs(planning_copy):
    """configs/four_gpu_nodes.yaml after the paper preset: the same 13 runs, each one job over 2 nodes with one
    torchrun of 4 processes a node (8 ranks, as on one 8-GPU node), the recipe unchanged."""
    proc = sh(["snakemake", "-n", "-p", "--configfile", "configs/paper.yaml", "configs/four_gpu_nodes.yaml"],
              planning_copy)
    commands = [line for line in proc.stdout.splitlines() if " distill --config-json" in line]
    assert len(commands) == 13
    assert all("-m pipeline_steps.training.nodes --nodes 2 --processes-per-node 4 --cpus 40 -- distill" in c
               for c in commands)
    config = json.loads(re.search(r"--config-json '([^']+)'", commands[0]).group(1))
    assert config["distill"]["train"]["batch_size"] == 2048 and config["distill"]["train"]["epochs"] == 300


def test_runs_whose_pairs_come_from_the_analysis_wait_for_it(planning_copy, tmp_path):
    """A phase run's distill job reads the teacher's reductions, a cka run's the named run's evolution
    statistics at the same seed; the teacher cache then holds every block (its rule plans no phase input)."""
    preset = yaml.safe_load((planning_copy / "configs/smoke.yaml").read_text())
    preset["distill"]["seeds"] = [0, 1]
    preset["distill"]["runs"] += [{"name": "phase", "method": "spectralkd", "layers": "phase:expansion"},
                                  {"name": "cka", "method": "spectralkd", "layers": "cka:softkd@best:F1 L1"}]
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(preset))
    plan = sh(["snakemake", "distill_grid", "-n", "-p", "--configfile", str(tmp_path / "grid.yaml")],
              planning_copy).stdout
    commands = {m.group(1): m.group(0) for m in re.finditer(r"distill --config-json .*?--run-id (\S+).*", plan)}
    assert "--teacher-reductions results/reductions/teacher.parquet" in commands["phase-s1"]
    assert "--cka-statistics results/evolution/softkd-s1_statistics.parquet" in commands["cka-s1"]
    assert not any(flag in commands["softkd-s0"] for flag in ("--teacher-reductions", "--cka-statistics"))
    tolerance = json.loads(re.search(r"--config-json '([^']+)'", commands["phase-s0"]).group(1))["analysis"]
    assert tolerance == {"shape_tolerance": preset["analysis"]["shape_tolerance"]}
    # The named run's analysis is planned before the run that reads it (the whole chain, from one target).
    assert "evolution --config-json" in plan and "--statistics results/evolution/softkd-s0_statistics.parquet" in plan
    preset["distill"]["runs"][-1]["layers"] = "cka:nope:F1"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(preset))
    bad = sh(["snakemake", "-n", "--configfile", str(tmp_path / "bad.yaml")], planning_copy, check=False)
    assert bad.returncode != 0 and "cka names 'nope', which is not a distill.runs entry" in bad.stdout + bad.stderr


def test_the_followup_rows_plan_on_the_paper_preset(planning_copy):
    """configs/paper_followup.yaml after the paper preset: its 12 configurations x 3 seeds, each an 8-process
    job; the phase runs read CaiT-S24's reductions, the cka run its SoftKD twin's statistics, the remedies
    build their students at the teacher's width."""
    proc = sh(["snakemake", "-n", "-p", "--configfile", "configs/paper.yaml", "configs/paper_followup.yaml"],
              planning_copy)
    runs = dict(re.findall(r"Distilling (\S+) \((\d+) epochs\)", proc.stdout))
    assert len(runs) == 36 and set(runs.values()) == {"300"}, runs
    commands = {m.group(1): m.group(0)
                for m in re.finditer(r"^.* distill --config-json .*?--run-id (\S+).*$", proc.stdout, re.M)}
    assert all("--nproc_per_node 8 -m pipeline_steps" in c for c in commands.values())
    assert "--teacher-reductions results/reductions/teacher.parquet" in commands["phase_compression-s2"]
    assert "--cka-statistics results/evolution/softkd-s1_statistics.parquet" in commands["cka_f1l1-s1"]
    entry = json.loads(re.search(r"--config-json '([^']+)'", commands["widelast_softkd-s0"]).group(1))
    assert entry["distill"]["runs"] == [{"name": "widelast_softkd", "method": "softkd", "architecture": "widelast",
                                         "label": None, "layers": None, "beta": None, "epochs": None}]
    assert entry["teacher"]["model"]["arch"] == "cait_s24_224" and entry["distill"]["train"]["batch_size"] == 2048


def test_the_slurm_profile_by_its_short_name_and_by_its_path(planning_copy):
    """`snakemake --profile slurm`, as a user types it in the repository root (the `slurm` link there), and
    `--profile workflow/profiles/slurm` plan the default grid through the SLURM executor with the cluster
    profile's limits: the local default profile, which Snakemake applies on top, must not override them."""
    probe = ("from snakemake.cli import parse_args; import sys; _, a = parse_args(sys.argv[1:]); "
             "print(a.executor, a.jobs, a.cores, a.local_cores)")
    for profile in ("slurm", "workflow/profiles/slurm"):
        proc = sh(["snakemake", "--profile", profile, "-n"], planning_copy)
        out = proc.stdout + proc.stderr
        assert f"Using profiles {profile} and workflow specific profile workflow/profiles/default" in out, out[:2000]
        assert int(re.search(r"^total\s+(\d+)", proc.stdout, re.M).group(1)) == PLANNED_JOBS[None]
        assert "slurm_partition=" in out  # the cluster profile's default-resources on every job
        settings = sh([sys.executable, "-c", probe, "--profile", profile, "-n"], planning_copy).stdout.split()
        assert settings == ["slurm", "50", "256", "2"], settings


@pytest.fixture(scope="module")
def snakemake_run(tmp_path_factory) -> Path:
    work = scratch_copy(tmp_path_factory.mktemp("snakemake"))
    sh(["snakemake", "--cores", "2"], work)
    return work


def test_snakemake_builds_everything_then_has_nothing_to_do(snakemake_run):
    for rel in SMOKE_OUTPUTS:
        assert (snakemake_run / rel).stat().st_size > 0, rel
    for rule in ("generate_data", "sample", "train_teacher", "extract", "reduce", "fig_entropy",
                 "fig_evolution_published", "table1_published"):
        assert (snakemake_run / "results" / "logs" / f"{rule}.log").exists(), rule
    again = sh(["snakemake", "-n"], snakemake_run)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_reductions_table_shape(snakemake_run):
    values = pd.read_parquet(snakemake_run / "results/reductions/teacher.parquet")
    depth, width = 6, 64  # configs/smoke.yaml
    assert sorted(values["layer"].unique()) == list(range(1, depth + 1))
    counts = values.groupby("metric").size().to_dict()
    assert counts == {"entropy": depth, "magnitude": depth, "spectrum": depth * width}
    assert set(values["n_images"]) == {16}
    entropy = values[values.metric == "entropy"]["value"]
    assert ((entropy > 0) & (entropy <= 6.0)).all()  # 64 channels -> at most log2(64) bits
    summary = pd.read_parquet(snakemake_run / "results/reductions/teacher_summary.parquet")
    assert set(summary["metric"]) == {"entropy", "magnitude"}


def test_distillation_outputs(snakemake_run):
    for run in SMOKE_RUNS:
        log = [json.loads(line) for line in (snakemake_run / f"results/runs/{run}/log.txt").read_text().splitlines()]
        assert [row["epoch"] for row in log] == [0, 1]
        manifest = json.loads((snakemake_run / f"results/runs/{run}/checkpoints.json").read_text())
        assert [c["epoch"] for c in manifest["checkpoints"]] == [0, 1, 2]  # checkpoint_every: 1
        evolution = pd.read_parquet(snakemake_run / f"results/evolution/{run}.parquet")
        assert sorted(evolution["epoch"].unique()) == [0, 1, 2]
        # The best checkpoint is analysed too: its rows carry the epoch it was saved after, which is the
        # first epoch with the top test_acc1 in the log (+1: epochs completed).
        best_epoch = 1 + max(range(len(log)), key=lambda e: (log[e]["test_acc1"], -e))
        assert manifest["best"]["epoch"] == best_epoch and manifest["best"]["path"] == "best.safetensors"
        best = evolution[evolution["checkpoint"] == "best"]
        assert set(best["epoch"]) == {best_epoch} and len(best[best["metric"] == "entropy"]) == 3
        same = evolution[evolution["checkpoint"] == f"epoch_{best_epoch:04d}"]
        assert list(best["value"]) == list(same["value"])  # the same weights as that epoch's checkpoint
        assert sorted(evolution["layer"].unique()) == [1, 2, 3]  # the smoke student's depth
    table = pd.read_csv(snakemake_run / "results/tables/table1.csv")
    assert list(table["label"]) == ["SoftKD", "ProjectorKD L1", "SpectralKD F1 L1"]
    published = pd.read_csv(snakemake_run / "results/tables/table1_published.csv")
    assert len(published) == 9 and published["best_top1"].max() == 78.07400235168457  # SoftKD 500 ep, as logged
    assert table.loc[0, "delta_vs_softkd"] == 0.0
    metrics = json.loads((snakemake_run / "results/tables/table1.json").read_text())
    assert set(metrics) == {"this pipeline: SoftKD, 2 ep", "this pipeline: ProjectorKD L1, beta 0.2, 2 ep",
                            "this pipeline: SpectralKD F1 L1, beta 0.2, 2 ep"}
    assert set(table["source"]) == {"this pipeline"}


def test_changing_one_grid_entry_retrains_only_that_run(snakemake_run):
    """Each distill job sees only its own grid entry and seed, so editing one entry replans one run."""
    params_path = snakemake_run / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    params["distill"]["runs"][1]["beta"] = 0.1  # spectralkd_f1l1
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        plan = sh(["snakemake", "-n"], snakemake_run).stdout
    finally:
        params_path.write_text(original)
    distill_jobs = re.findall(r"Distilling (\S+)", plan)
    assert distill_jobs == ["spectralkd_f1l1-s0"], plan[-3000:]


def test_headline_is_written_from_the_artifacts_and_a_repeated_run_reproduces_it(snakemake_run, tmp_path):
    """results/headline.md (what README quotes) holds the teacher's top-1 from its log, every Table 1 row and
    every run's final entropy shape, and a second smoke run in another copy writes the same bytes."""
    import torch

    from pipeline_steps.reporting.tables import read_run_log, read_table1, run_summary

    text = (snakemake_run / "results/headline.md").read_text()
    teacher = run_summary(read_run_log(snakemake_run / "results/teacher/log.txt"))
    assert f"- test top-1: {teacher['final_top1']:.2f}% after 2 epochs" in text
    for _, row in read_table1(snakemake_run / "results/tables/table1.csv").iterrows():
        assert f" | {row['n_seeds']} | {row['best_top1']:.2f} | " in text, row["label"]
    for run in SMOKE_RUNS:
        assert f"| {run} | final | 2 | " in text and f"| {run} | best | " in text, run
    assert text.count("| - | - (one seed) |") == len(SMOKE_RUNS) - 1  # paired to SoftKD, one seed: no interval
    from pipeline_steps.environment import describe

    assert f"torch {torch.__version__}" in text
    assert f"cpu {describe()['cpu']} ({torch.backends.cpu.get_cpu_capability()})" in text  # model and ISA
    again = scratch_copy(tmp_path / "again")
    sh(["snakemake", "--cores", "2", "results/headline.md"], again)
    assert (again / "results/headline.md").read_bytes() == (snakemake_run / "results/headline.md").read_bytes()


def test_snakemake_report_has_every_figure_with_its_caption(snakemake_run):
    sh(["snakemake", "--report", "results/report.html"], snakemake_run)
    html = (snakemake_run / "results/report.html").read_text()
    for name in ("fig1_entropy.png", "fig2_magnitude.png", "fig3_spectra.png", "fig4_evolution.png", "table1.csv",
                 "fig5_cka.png", "fig6_cka_match.png", "fig7_statistics.png", "fig8_robustness.png",
                 "fig9_teacher_evolution.png", "paper_fig4_published.png", "table1_published.csv"):
        assert name in html, name
    for caption in ("Fig. 1 - layer-wise Shannon entropy", "entropy evolution of the distilled students",
                    "Table 1 - test top-1", "per-checkpoint entropy tables the authors released",
                    "tabulated by the same code as our Table 1"):
        assert caption in html, caption


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    work = scratch_copy(tmp_path_factory.mktemp("dvc"))
    first = sh(["dvc", "repro"], work)
    return work, first


def test_dvc_repro_builds_everything(dvc_repo):
    work, first = dvc_repo
    stages = set(yaml.safe_load((work / "dvc.yaml").read_text())["stages"])
    assert set(ran_stages(first.stdout)) == stages
    for rel in SMOKE_OUTPUTS:
        assert (work / rel).stat().st_size > 0, rel
    assert (work / "dvc.lock").exists()


def test_dvc_and_snakemake_agree(dvc_repo, snakemake_run):
    """Same params, two orchestrators, identical numbers (training and extraction are deterministic)."""
    work, _ = dvc_repo
    a = pd.read_parquet(work / "results/reductions/teacher.parquet")
    b = pd.read_parquet(snakemake_run / "results/reductions/teacher.parquet")
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_dvc_second_repro_is_a_noop_and_figure_param_reruns_one_stage(dvc_repo):
    work, _ = dvc_repo
    second = sh(["dvc", "repro"], work)
    assert ran_stages(second.stdout) == [], second.stdout

    params = yaml.safe_load((work / "params.yaml").read_text())
    params["figures"]["spectra_layers"] = [1, 2, 3, 4, 5, 6]
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    before = (work / "results/figures/fig1_entropy.png").read_bytes()
    third = sh(["dvc", "repro"], work)
    assert ran_stages(third.stdout) == ["fig_spectra"], third.stdout
    assert (work / "results/figures/fig1_entropy.png").read_bytes() == before


def test_dvc_checkout_does_not_make_snakemake_redo_work(dvc_repo):
    work, _ = dvc_repo
    sh(["dvc", "repro"], work)  # in case an earlier test left params changed
    sh(["git", "add", "-A"], work)
    sh(["git", "commit", "-qm", "results"], work)
    figure = work / "results/figures/fig2_magnitude.png"
    original = figure.read_bytes()
    figure.unlink()
    (work / "results/reductions/teacher.parquet").unlink()
    sh(["dvc", "checkout"], work)
    assert figure.read_bytes() == original
    plan = sh(["snakemake", "-n"], work)
    assert "Nothing to be done" in plan.stdout + plan.stderr, plan.stdout[-3000:]
    status = sh(["dvc", "status"], work)
    assert "up to date" in status.stdout, status.stdout


def test_dvc_metrics_and_an_experiment(dvc_repo):
    """`dvc metrics show` gives Table 1; `dvc exp run -S distill.beta=...` retrains only the runs with a
    feature term (Snakemake's per-run params decide inside the one distill stage) and `dvc exp show` lists it."""
    work, _ = dvc_repo
    sh(["dvc", "repro"], work)
    sh(["git", "add", "-A"], work)
    sh(["git", "commit", "-qm", "baseline", "--allow-empty"], work)
    shown = sh(["dvc", "metrics", "show"], work).stdout
    assert "SpectralKD F1 L1" in shown and "best_top1" in shown, shown
    plots = json.loads(sh(["dvc", "plots", "show", "--json"], work).stdout)["data"]
    assert plots["results/figures/fig4_evolution.png"][0]["type"] == "image"
    bars = plots["results/tables/table1.csv"][0]["content"]["data"]["values"]
    assert {row["label"] for row in bars} == {"SoftKD", "ProjectorKD L1", "SpectralKD F1 L1"}
    softkd = (work / "results/runs/softkd-s0/model.safetensors").read_bytes()
    exp = sh(["dvc", "exp", "run", "-S", "distill.beta=0.1"], work)
    out = exp.stdout + exp.stderr
    assert "distill" in ran_stages(exp.stdout) and "train_teacher" not in ran_stages(exp.stdout), out[-3000:]
    retrained = set(re.findall(r"Distilling (\S+)", out))
    assert retrained == {"spectralkd_f1l1-s0", "projectorkd_l1-s0"}, out[-3000:]
    assert (work / "results/runs/softkd-s0/model.safetensors").read_bytes() == softkd
    table = sh(["dvc", "exp", "show", "--csv"], work).stdout
    assert "distill.beta" in table and "0.1" in table, table


#: The smoke run's artifacts whose bytes do not depend on training arithmetic (the generated data, the sample,
#: the authors' published data drawn and tabulated by our code): compared on any machine.
MACHINE_INDEPENDENT = ("data/synthetic.npz", "samples/manifest.parquet", "figures/paper_fig4_published.pdf",
                       "figures/paper_fig4_published.png", "tables/table1_published.csv",
                       "tables/table1_published.md", "tables/table1_published.tex", "tables/table1_published.json")


def artifact_hashes(results: Path) -> dict[str, str]:
    """sha256 of every file under ``results`` but logs and resume states, PDFs without their creation date."""
    import hashlib

    hashes = {}
    for path in sorted(results.rglob("*")):
        rel = path.relative_to(results).as_posix()
        if not path.is_file() or rel.startswith("logs/") or "/resume/" in rel:
            continue
        data = path.read_bytes()
        if path.suffix == ".pdf":
            data = re.sub(rb"/CreationDate \(D:[^)]*\)", b"", data)
        hashes[rel] = hashlib.sha256(data).hexdigest()
    return hashes


def test_a_smoke_run_writes_the_recorded_bytes(snakemake_run):
    """Behaviour kept through refactors: a smoke run gives the bytes recorded in tests/data/smoke_artifacts.json.

    Training is bit-reproducible only on the same library versions, CPU model, vector ISA and thread counts
    (BENCHMARKS.md, "CPU determinism"), which every run records in its environment.json. Where those records
    match the recorded ones, every artifact is compared; elsewhere only :data:`MACHINE_INDEPENDENT`.
    """
    recorded = json.loads((REPO / "tests/data/smoke_artifacts.json").read_text())["artifacts"]
    actual = artifact_hashes(snakemake_run / "results")
    actual.pop("report.html", None)  # written into the same run by the report test
    assert sorted(actual) == sorted(recorded)
    same_machine = all(actual[rel] == recorded[rel] for rel in recorded if rel.endswith("environment.json"))
    compared = sorted(recorded) if same_machine else MACHINE_INDEPENDENT
    differ = [rel for rel in compared if actual[rel] != recorded[rel]]
    assert not differ, f"{len(differ)} of {len(compared)} artifacts changed: {differ}"


def test_a_code_edit_reruns_exactly_the_steps_that_run_that_code(dvc_repo):
    """Editing a function of the loss module makes `dvc status` list the stages whose step runs it (the teacher,
    the students) and `snakemake -n` plan them with what depends on them (the teacher cache, the analyses), and
    leaves data generation and sampling alone (pipeline_steps.dependencies)."""
    from pipeline_steps.dependencies import RULES, step_code

    # The tests' environment puts this checkout first on PYTHONPATH, so the copy's Snakefile imports this
    # checkout's package: the rules must read the code of the copy they belong to, or the edit goes unseen.
    work, _ = dvc_repo
    sh(["dvc", "repro"], work)
    loss_module = work / "pipeline_steps/distillation/methods.py"
    original = loss_module.read_text()
    edited = original.replace("def kd_kl_loss(", "def kd_kl_loss(  # edited\n    ", 1)
    assert edited != original
    loss_module.write_text(edited)
    try:
        status = sh(["dvc", "status"], work).stdout
        changed = set(re.findall(r"^(\w+):\s*$", status, re.M))
        planned = set(re.findall(r"^(\w+)\s+\d+\s*$", sh(["snakemake", "-n"], work).stdout, re.M)) - {"total"}
    finally:
        loss_module.write_text(original)
    importers = {rule for rule in RULES if "pipeline_steps/distillation/methods.py" in step_code(rule)}
    assert {"train_teacher", "distill"} <= importers  # the teacher trains with the loop's CE objective
    assert changed == importers, status  # DVC lists the stages whose own deps changed
    # Snakemake plans them and what depends on their outputs: the cache of the retrained teacher, ...
    assert {"train_teacher", "teacher_cache", "distill"} <= planned, planned
    assert not {"generate_data", "sample"} & (changed | planned)
