import json
import sys

from snakemake.exceptions import WorkflowError

from pipeline_steps.config import RULE_PARAMS, SYNTHETIC_PATH, select, validate_params
from pipeline_steps.errors import UserError

try:
    validate_params(config)
except UserError as exc:
    raise WorkflowError(f"params: {exc}") from None

# Steps run with the interpreter that runs Snakemake (the project's venv), also on cluster nodes.
STEP = f"{sys.executable} -m pipeline_steps"
TEACHER = config["teacher"]

DATA = SYNTHETIC_PATH
MANIFEST = "results/samples/manifest.parquet"
TEACHER_WEIGHTS = "results/teacher/model.safetensors"
TEACHER_LOG = "results/teacher/log.txt"
ACTIVATIONS = "results/activations/teacher.npz"
REDUCTIONS = "results/reductions/teacher.parquet"
SUMMARY = "results/reductions/teacher_summary.parquet"
FIGURES = {
    "entropy": "results/figures/fig1_entropy",
    "magnitude": "results/figures/fig2_magnitude",
    "spectra": "results/figures/fig3_spectra",
    "spectra_all": "results/figures/fig3_spectra_all",
}
ANALYSIS_FIGURES = [f"{stem}.{ext}" for stem in FIGURES.values() for ext in ("pdf", "png")]


def rule_config(rule_name):
    """The config sections a rule's step reads, as one JSON argument (see RULE_PARAMS)."""
    return json.dumps(select(config, RULE_PARAMS[rule_name]), sort_keys=True)


def synthetic_data(wildcards=None):
    return [DATA] if config["dataset"]["kind"] == "synthetic" else []


def trained_teacher_weights(wildcards=None):
    return [TEACHER_WEIGHTS] if TEACHER["model"]["weights"]["source"] == "train" else []
