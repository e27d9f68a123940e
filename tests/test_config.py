"""params.yaml, the presets and the schema: validation, defaults, one-line errors."""

from __future__ import annotations

import json

import pytest
import yaml

from pipeline_steps.config import deep_merge, load_params, select, validate_params
from pipeline_steps.dependencies import RULE_PARAMS
from pipeline_steps.errors import UserError

from conftest import REPO, assert_one_line_error, run_step

PRESETS = [REPO / "params.yaml", REPO / "configs" / "smoke.yaml", REPO / "configs" / "paper.yaml"]


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_presets_validate(path):
    params = load_params([path])
    assert params["analysis"]["bins"] == 100
    assert params["analysis"]["range_policy"] == "global"


def test_defaults_are_filled():
    params = validate_params({})
    assert params["sample"] == {"n_images": 32, "strategy": "random", "seed": 0, "split": "test"}
    assert params["teacher"]["model"]["weights"]["source"] == "train"
    assert params["dataset"]["preprocess"]["mean"] == [0.485, 0.456, 0.406]


@pytest.mark.parametrize("snippet, fragments", [
    ({"analysis": {"binz": 3}}, ["unknown params key 'binz'", "analysis", "bins"]),
    ({"foo": 1}, ["unknown params key 'foo'", "top level"]),
    ({"analysis": {"bins": "x"}}, ["analysis.bins", "not of type 'integer'"]),
    ({"analysis": {"bins": 1}}, ["analysis.bins", "minimum"]),
    ({"sample": {"strategy": "bogus"}}, ["sample.strategy", "bogus"]),
    ({"teacher": {"model": {"arch": "x", "weights": {"source": "hub"}}}}, ["teacher.model.weights.source"]),
    ({"dataset": {"kind": "imagefolder"}}, ["dataset.imagefolder.root"]),
])
def test_invalid_params_name_the_key(snippet, fragments):
    with pytest.raises(UserError) as exc:
        validate_params(snippet)
    message = str(exc.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_cli_rejects_invalid_params_in_one_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump({"analysis": {"bins": -3}}))
    out = tmp_path / "manifest.parquet"
    proc = run_step("sample", "--params", str(bad), "--out", str(out))
    assert_one_line_error(proc, "analysis.bins")
    assert not out.exists()


def test_cli_rejects_malformed_yaml(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("analysis: {bins: [1, 2\n")
    proc = run_step("sample", "--params", str(bad), "--out", str(tmp_path / "m.parquet"))
    assert_one_line_error(proc, "not valid YAML")


def test_select_and_merge():
    params = validate_params({})
    sub = select(params, ["analysis.bins", "figures"])
    assert sub == {"analysis": {"bins": 100}, "figures": params["figures"]}
    merged = deep_merge({"a": {"b": 1, "c": [1]}}, {"a": {"c": [2]}})
    assert merged == {"a": {"b": 1, "c": [2]}}


def test_rule_params_name_keys_of_a_validated_config():
    """No typo in the dependency table: every key a rule reads exists in a validated config (dvc.yaml's
    agreement with the table: tests/test_dependencies.py)."""
    params = validate_params({})
    for keys in RULE_PARAMS.values():
        json.dumps(select(params, keys))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_presets_spell_out_every_tracked_param(path):
    """DVC reads tracked params from the file itself (schema defaults are invisible to it), so every
    key a rule reads must be written out in params.yaml and in each preset that can replace it."""
    raw = yaml.safe_load(path.read_text())
    for keys in RULE_PARAMS.values():
        for key in keys:
            node = raw
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{path.name} lacks '{key}'"
                node = node[part]


def test_feature_methods_match_the_registry():
    from pipeline_steps.config import FEATURE_METHODS
    from pipeline_steps.distillation.methods import METHODS

    assert set(FEATURE_METHODS) == {name for name, cls in METHODS.items() if cls.uses_features}


def test_distill_grid_expands_runs_times_seeds():
    from pipeline_steps.config import distill_runs

    params = validate_params({"distill": {"seeds": [0, 3], "beta": 0.2, "train": {"epochs": 7}, "runs": [
        {"name": "softkd", "method": "softkd"},
        {"name": "sp_l1", "method": "spectralkd", "layers": "l1", "beta": 0.1, "epochs": 9},
    ]}})
    runs = distill_runs(params)
    assert [r.run_id for r in runs] == ["softkd-s0", "softkd-s3", "sp_l1-s0", "sp_l1-s3"]
    assert [r.label for r in runs] == ["SoftKD", "SoftKD", "SpectralKD L1", "SpectralKD L1"]
    assert [r.epochs for r in runs] == [7, 7, 9, 9]
    assert runs[2].loss_options() == {"alpha": 0.9, "tau": 1.0, "beta": 0.1}
    assert runs[0].loss_options() == {"alpha": 0.9, "tau": 1.0}



def test_remedy_architectures_in_the_grid():
    from pipeline_steps.config import METHOD_ARCHITECTURES, distill_runs
    from pipeline_steps.distillation.methods import METHODS

    assert METHOD_ARCHITECTURES == {n: c.architecture for n, c in METHODS.items() if c.architecture is not None}
    params = validate_params({"distill": {"seeds": [0], "beta": 0.2, "runs": [
        {"name": "lift", "method": "lift"},
        {"name": "widelast", "method": "widelast", "layers": "F1 L1", "architecture": "widelast"},
        {"name": "lift_softkd", "method": "softkd", "architecture": "lift"},
        {"name": "lift_ce", "method": "ce", "architecture": "lift"},
        {"name": "softkd", "method": "softkd", "architecture": "base"},
    ]}})
    runs = distill_runs(params)
    assert [(r.architecture, r.layers, r.label) for r in runs] == [
        ("lift", "L1", "Lift L1"), ("widelast", "F1 L1", "WideLast F1 L1"),
        ("lift", None, "SoftKD, Lift student"), ("lift", None, "CE, Lift student"), ("base", None, "SoftKD")]
    assert runs[0].loss_options() == {"alpha": 0.9, "tau": 1.0, "beta": 0.2}
    # A base run's fingerprint fields are those before the field existed; a remedy's name it.
    assert "architecture" not in runs[4].fingerprint_fields() and runs[2].fingerprint_fields()["architecture"] == "lift"
    # No schema default: an entry without architecture keeps its params (and its Snakemake params) as they were.
    assert "architecture" not in params["distill"]["runs"][0]


@pytest.mark.parametrize("entry,match", [
    ({"name": "x", "method": "lift", "architecture": "widelast"},
     "method lift trains a lift student but architecture is widelast; remove architecture or set it to lift"),
    ({"name": "x", "method": "widelast", "architecture": "base"}, "trains a widelast student but architecture is base"),
    ({"name": "x", "method": "softkd", "architecture": "wide"}, "distill.runs.0.architecture"),
])
def test_remedy_architecture_errors(entry, match):
    from pipeline_steps.config import distill_runs

    with pytest.raises(UserError, match=match) as err:
        distill_runs(validate_params({"distill": {"runs": [entry]}}))
    assert "\n" not in str(err.value)

def test_control_layer_specs_label_their_rows_with_the_prefix():
    from pipeline_steps.config import distill_runs, layers_text

    assert [layers_text(x) for x in ("f1 l1", " Reverse : f1 l1", "random: 3 :F2, L2")] == [
        "F1 L1", "reverse:F1 L1", "random:3:F2 L2"]
    params = validate_params({"distill": {"seeds": [0], "runs": [
        {"name": "sp_rev", "method": "spectralkd", "layers": "reverse:F1 L1"},
        {"name": "sp_rand", "method": "spectralkd", "layers": "random:7:F1 L1"}]}})
    assert [r.label for r in distill_runs(params)] == ["SpectralKD reverse:F1 L1", "SpectralKD random:7:F1 L1"]

def test_one_resolution_of_beta_and_run_ids():
    """beta is resolved once, in the grid (an entry's own, else distill.beta; none for a method without a
    feature term), and the single-run params a distill job sees carry that value; run ids are formatted and
    read back by one pair of functions."""
    from pipeline_steps.config import distill_runs, format_run_id, run_name, single_run_params

    params = validate_params({"distill": {"seeds": [0, 1], "beta": 0.3, "runs": [
        {"name": "soft", "method": "softkd"},
        {"name": "sp_f1", "method": "spectralkd", "layers": "F1"},
        {"name": "sp_l1", "method": "spectralkd", "layers": "L1", "beta": 0.1},
    ]}})
    runs = {r.run_id: r for r in distill_runs(params)}
    assert [runs[i].beta for i in ("soft-s0", "sp_f1-s1", "sp_l1-s0")] == [None, 0.3, 0.1]
    assert all(run_name(i) == r.name and format_run_id(r.name, r.seed) == i for i, r in runs.items())
    one = single_run_params(params, runs["sp_f1-s1"], RULE_PARAMS["distill"])
    assert one["distill"]["runs"] == [{"name": "sp_f1", "method": "spectralkd", "layers": "F1", "label": None,
                                       "beta": 0.3, "epochs": None}]
    assert one["distill"]["seeds"] == [1] and "beta" not in one["distill"]
    soft = single_run_params(params, runs["soft-s1"], RULE_PARAMS["distill"])
    # The validated entry has the schema's defaults (beta null): changing distill.beta does not touch SoftKD.
    assert soft["distill"]["runs"] == [{"name": "soft", "method": "softkd", "layers": None, "label": None,
                                        "beta": None, "epochs": None}]
    assert [r.run_id for r in distill_runs(validate_params(one))] == ["sp_f1-s1"]


@pytest.mark.parametrize("runs, message", [
    ([{"name": "a", "method": "softkd"}, {"name": "a", "method": "ce"}], "duplicate name(s) a"),
    ([{"name": "a", "method": "spectralkd"}], 'needs layers, e.g. layers: "F1 L1"'),
    ([{"name": "a", "method": "softkd", "layers": "F1"}], "has no feature term; remove its layers"),
])
def test_distill_grid_errors(runs, message):
    with pytest.raises(UserError) as err:
        validate_params({"distill": {"runs": runs}})
    assert message in str(err.value)


def test_paper_preset_has_table1_grid():
    from pipeline_steps.config import distill_runs

    runs = distill_runs(load_params([REPO / "configs" / "paper.yaml"]))
    assert len(runs) == 13
    assert {r.label for r in runs if r.epochs == 500} == {"SoftKD (500 ep)", "SpectralKD L1 (500 ep)"}
    assert [r.beta for r in runs if r.name == "spectralkd_l1_beta0.1"] == [0.1]


def test_evolution_panels_select_grid_entries_in_their_order():
    from pipeline_steps.config import evolution_panels

    paper = load_params([REPO / "configs" / "paper.yaml"])
    assert evolution_panels(paper) == {"softkd": "SoftKD", "spectralkd_f1": "SpectralKD F1",
                                       "spectralkd_l1": "SpectralKD L1", "spectralkd_f1l1": "SpectralKD F1 L1"}
    default = load_params([REPO / "params.yaml"])
    assert list(evolution_panels(default)) == [r["name"] for r in default["distill"]["runs"]]  # all, grid order
    with pytest.raises(UserError, match="figures.evolution_panels lists 'softkd_f1', which is not a distill.runs "
                                        "entry; choose from softkd, .* or use all"):
        validate_params(deep_merge(yaml.safe_load((REPO / "params.yaml").read_text()),
                                   {"figures": {"evolution_panels": ["softkd", "softkd_f1"]}}))
    with pytest.raises(UserError, match="figures.evolution_panels"):
        validate_params({"figures": {"evolution_panels": []}})
