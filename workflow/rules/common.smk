import re
import json
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from pipeline_steps.config import (SYNTHETIC_PATH, distill_runs, evolution_panels, select, single_run_params,
                                   uses_teacher_cache, validate_params)
from pipeline_steps.dependencies import RULE_PARAMS, RULES, code_digest, step_code
from pipeline_steps.distillation.layer_pairs import cka_reference, grid_pair_sources
from pipeline_steps.analysis.published import PUBLISHED_ENTROPY
from pipeline_steps.reporting.tables import PUBLISHED_TABLE1_LOGS
from pipeline_steps.errors import UserError

try:
    validate_params(config)
except UserError as exc:
    raise WorkflowError(f"params: {exc}") from None

# The repository this Snakefile belongs to: each rule's code inputs and code digest are read from its files
# (pipeline_steps.dependencies), whichever copy of the package Python imported.
REPO_ROOT = Path(workflow.basedir).parent


def step_code_of(rule_name):
    return step_code(rule_name, REPO_ROOT)


def code_digest_of(rule_name):
    return code_digest(rule_name, REPO_ROOT)


# Steps run with the interpreter that runs Snakemake (the project's venv), also on cluster nodes.
STEP = f"{sys.executable} -m pipeline_steps"
TEACHER = config["teacher"]

DATA = SYNTHETIC_PATH
MANIFEST = "results/samples/manifest.parquet"
TEACHER_WEIGHTS = "results/teacher/model.safetensors"
TEACHER_LOG = "results/teacher/log.txt"
TEACHER_ENVIRONMENT = "results/teacher/environment.json"
ACTIVATIONS = "results/activations/teacher.npz"
REDUCTIONS = "results/reductions/teacher.parquet"
SUMMARY = "results/reductions/teacher_summary.parquet"
STATISTICS = "results/statistics/teacher.parquet"
STATISTICS_SUMMARY = "results/statistics/teacher_summary.parquet"
FIGURES = {
    "entropy": "results/figures/fig1_entropy",
    "magnitude": "results/figures/fig2_magnitude",
    "spectra": "results/figures/fig3_spectra",
    "spectra_all": "results/figures/fig3_spectra_all",
}
FIG_ROBUSTNESS = "results/figures/fig8_robustness"
ANALYSIS_FIGURES = [f"{stem}.{ext}" for stem in (*FIGURES.values(), FIG_ROBUSTNESS) for ext in ("pdf", "png")]


def rule_config(rule_name):
    """The config sections a rule's step reads, as one JSON argument (see RULE_PARAMS)."""
    return json.dumps(select(config, RULE_PARAMS[rule_name]), sort_keys=True)


def synthetic_data(wildcards=None):
    return [DATA] if config["dataset"]["kind"] == "synthetic" else []


def trained_teacher_weights(wildcards=None):
    return [TEACHER_WEIGHTS] if TEACHER["model"]["weights"]["source"] == "train" else []


# The teacher's own training, analysed checkpoint by checkpoint (only when the pipeline trains it).
TEACHER_CHECKPOINTS = "results/teacher/checkpoints.json"
TEACHER_EVOLUTION = "results/teacher/evolution.parquet"
TEACHER_EVOLUTION_SUMMARY = "results/teacher/evolution_summary.parquet"
TEACHER_EVOLUTION_STATISTICS = "results/teacher/evolution_statistics.parquet"
FIG_TEACHER_EVOLUTION = "results/figures/fig9_teacher_evolution"
TEACHER_EVOLUTION_OUTPUTS = ([TEACHER_EVOLUTION_SUMMARY] + [f"{FIG_TEACHER_EVOLUTION}.{ext}" for ext in ("pdf", "png")]
                             if trained_teacher_weights() else [])


# Distillation grid (see params.yaml `distill`): run id -> DistillRun.
RUNS = {run.run_id: run for run in distill_runs(config)}
RUN_DIR = "results/runs/{run}"
TEACHER_CACHE = "results/teacher/cache.safetensors"
EVOLUTION = "results/evolution/{run}.parquet"
EVOLUTION_SUMMARY = "results/evolution/{run}_summary.parquet"
EVOLUTION_STATISTICS = "results/evolution/{run}_statistics.parquet"
FIG4 = "results/figures/fig4_evolution"
TABLE1 = "results/tables/table1"
HEADLINE = "results/headline.md"
# The distillation runs' statistics: CKA heatmaps, best-matching teacher layer over epochs, rank / SEP /
# massive-activation profiles of teacher and students.
STATISTICS_FIGURES = {
    "cka": "results/figures/fig5_cka",
    "cka_match": "results/figures/fig6_cka_match",
    "statistics": "results/figures/fig7_statistics",
}
DISTILL_OUTPUTS = ([f"{stem}.{ext}" for stem in (FIG4, *STATISTICS_FIGURES.values()) for ext in ("pdf", "png")]
                   + [f"{TABLE1}.{ext}" for ext in ("csv", "md", "tex", "json")])
# Fig. 4's panels (figures.evolution_panels): configuration name -> title; the runs whose tables it draws.
FIG4_PANELS = evolution_panels(config)
FIG4_RUNS = [run_id for run_id, run in RUNS.items() if run.name in FIG4_PANELS]

# The authors' published data (reference/, vendored): their Fig. 4 and Table 1, redrawn by our code.
PUBLISHED_ENTROPY_DIR = "reference/entropy"
PUBLISHED_LOGS_DIR = "reference/logs"
FIG4_PUBLISHED = "results/figures/paper_fig4_published"
TABLE1_PUBLISHED = "results/tables/table1_published"
PUBLISHED_OUTPUTS = [f"{FIG4_PUBLISHED}.{ext}" for ext in ("pdf", "png")] + [
    f"{TABLE1_PUBLISHED}.{ext}" for ext in ("csv", "md", "tex", "json")]


# Runs whose layer pairs are chosen from the analysis (phase:<name>, cka:<entry>:<spec>): run id -> PairSource.
try:
    PAIR_SOURCES = grid_pair_sources(list(RUNS.values()))
except UserError as exc:
    raise WorkflowError(f"params: {exc}") from None


def run_config(wildcards):
    """The distill rule's config for one run: its own grid entry and seed only (single_run_params); a phase
    run also reads the shape tolerance its phase must exceed."""
    cfg = single_run_params(config, RUNS[wildcards.run], RULE_PARAMS["distill"])
    source = PAIR_SOURCES.get(wildcards.run)
    if source is not None and source.kind == "phase":
        cfg["analysis"] = {"shape_tolerance": config["analysis"]["shape_tolerance"]}
    return json.dumps(cfg, sort_keys=True)


def pair_evidence_input(wildcards):
    """The analysis a run's layer pairs are chosen from: the teacher's reductions for a phase run, the named
    run's evolution statistics (same seed) for a cka run; nothing for pairs written down."""
    source = PAIR_SOURCES.get(wildcards.run)
    if source is None:
        return []
    if source.kind == "phase":
        return [REDUCTIONS]
    return [EVOLUTION_STATISTICS.format(run=cka_reference(RUNS[wildcards.run], source))]


def pair_evidence_option(wildcards, input):
    """The distill step's option naming that analysis."""
    if not input.evidence:
        return ""
    flag = "--teacher-reductions" if PAIR_SOURCES[wildcards.run].kind == "phase" else "--cka-statistics"
    return f"{flag} {input.evidence[0]}"


def teacher_cache_config():
    """The teacher-cache rule's config: of the grid, only what decides which teacher blocks are cached (so
    changing a run's beta, label or epochs does not recompute the cache)."""
    cfg = select(config, RULE_PARAMS["teacher_cache"])
    cfg["distill"]["runs"] = [{k: e[k] for k in ("name", "method", "layers") if k in e}
                              for e in config["distill"]["runs"]]
    return json.dumps(cfg, sort_keys=True)


def teacher_cache_input(wildcards=None):
    """The teacher cache, when distill jobs read it (and some run has a teacher at all)."""
    needed = uses_teacher_cache(config) and any(r.method != "ce" for r in RUNS.values())
    return [TEACHER_CACHE] if needed else []


#: sbatch option of training jobs: SIGTERM to the job's steps (not its batch shell) 2 minutes before the time
#: limit, so the step saves its state mid-epoch and the retry resumes there. SLURM's own SIGTERM at the limit
#: also reaches the batch step, whose srun then SIGKILLs the step before it can save (measured:
#: tests/test_slurm_training.py), losing the epoch in progress.
TRAINING_SLURM_EXTRA = "--signal=TERM@120"


def training_command(resources):
    """The step launcher of a training job: one process; torchrun (DDP) when a node runs > 1 process (default:
    one per GPU); over nodes > 1, pipeline_steps.training.nodes (srun, one torchrun a node)."""
    processes = resources["processes"] or resources["gpus"]
    if resources["nodes"] > 1:
        return (f"{sys.executable} -m pipeline_steps.training.nodes --nodes {resources['nodes']} "
                f"--processes-per-node {max(processes, 1)} --cpus {resources['cpus']} --")
    if processes > 1:
        return f"{sys.executable} -m torch.distributed.run --standalone --nproc_per_node {processes} -m pipeline_steps"
    return STEP


def training_resources(resources):
    """A training rule's Snakemake resources, which the SLURM executor plugin turns into sbatch options.

    One node: ``gpu`` (-> --gpus=N); the plugin's job step runs the rule under ``srun -n1``. Over several:
    --nodes=N --ntasks=N (one task a node), --gres=gpu:K (per node; --gpus would be a total SLURM may spread
    unevenly), and ``mpi``, which tells the plugin's job step to run the rule in the batch step, where the rule's
    own srun (:func:`training_command`) starts the tasks. ``tasks_per_gpu=0`` stops the plugin from deriving
    --ntasks-per-gpu from ``tasks`` (it would start the step once per GPU).
    """
    common = {"mem_mb": resources["mem_mb"], "runtime": resources["runtime"], "slurm_extra": TRAINING_SLURM_EXTRA}
    nodes, gpus = resources["nodes"], resources["gpus"]
    if nodes == 1:
        return {**common, "gpu": gpus}
    return {**common, "nodes": nodes, "tasks": nodes, "mpi": "srun", "tasks_per_gpu": 0,
            **({"gres": f"gpu:{gpus}"} if gpus else {})}
