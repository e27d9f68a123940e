"""Loading and validating ``params.yaml`` against ``workflow/schemas/params.schema.yaml``.

The Snakefile and every CLI validate through :func:`validate_params`, so an unknown or mistyped
key fails the same way everywhere: one line naming the key, the problem and where to fix it.
Validation fills the schema's defaults in place.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import jsonschema
import yaml

from pipeline_steps.errors import UserError

__all__ = ["ARCHITECTURE_NAMES", "FEATURE_METHODS", "METHOD_ARCHITECTURES", "METHOD_NAMES", "SCHEMA_PATH", "SYNTHETIC_PATH", "deep_merge", "distill_run",
           "distill_runs", "DistillRun", "evolution_panels", "layers_text", "load_params", "load_schema",
           "read_yaml", "recipe_augments", "format_run_id", "run_name", "run_seed", "select", "single_run_params", "student_spec",
           "teacher_spec", "uses_teacher_cache", "validate_params"]

REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "params.schema.yaml"
#: Where the generate-data step writes the synthetic dataset (the steps' default ``--data``).
SYNTHETIC_PATH = "results/data/synthetic.npz"


@functools.cache
def load_schema() -> dict:
    """The params schema (parsed once)."""
    if not SCHEMA_PATH.is_file():
        raise UserError(f"params schema not found at {SCHEMA_PATH}; install the package from a checkout "
                        "with `pip install -e .`")
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _extend_with_defaults(validator_class):
    """A validator that fills ``default`` values of missing properties before validating them."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _extend_with_defaults(jsonschema.Draft202012Validator)


def _format_error(err: jsonschema.ValidationError) -> str:
    where = ".".join(str(p) for p in err.absolute_path) or "<top level>"
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed)) if isinstance(err.instance, dict) else []
        keys = ", ".join(f"'{k}'" for k in extra)
        scope = f"in '{where}'" if err.absolute_path else "at the top level"
        return (f"unknown params key {keys} {scope}; allowed keys: {', '.join(allowed)} "
                f"(see {SCHEMA_PATH.relative_to(REPO_ROOT)})")
    desc = err.schema.get("description", "") if isinstance(err.schema, dict) else ""
    desc = " ".join(desc.split()).rstrip(".")  # folded YAML descriptions carry newlines
    hint = f" ({desc})" if desc else ""
    return f"invalid params value at '{where}': {err.message}{hint}"


def validate_params(params: dict) -> dict:
    """Validate ``params`` in place against the schema, filling defaults.

    Args:
        params: The parsed config (``params.yaml`` merged with any overrides).

    Returns:
        The same dict, with defaults filled.

    Raises:
        UserError: One line naming the first offending key.
    """
    validator = _Validator(load_schema())
    errors = sorted(validator.iter_errors(params), key=lambda e: (len(e.absolute_path), e.path))
    if errors:
        raise UserError(_format_error(jsonschema.exceptions.best_match(errors)))
    _check_cross_field(params)
    return params


def _check_cross_field(params: dict) -> None:
    """Constraints a JSON schema can't express neatly."""
    ds = params.get("dataset", {})
    if ds.get("kind") == "imagefolder" and not ds.get("imagefolder", {}).get("root"):
        raise UserError("dataset.kind is 'imagefolder' but dataset.imagefolder.root is not set; "
                        "set it to your ImageNet-style directory")
    if "distill" in params:
        distill_runs(params)
        if "evolution_panels" in params.get("figures", {}):
            evolution_panels(params)
        if params["distill"]["teacher_cache"] == "on" and recipe_augments(params["distill"]["train"]):
            raise UserError("distill.teacher_cache is on but the recipe augments (randaugment / reprob / mixup / "
                            "cutmix), so cached teacher outputs would not match the student's images; set "
                            "teacher_cache: off or auto")


def recipe_augments(train: Mapping) -> bool:
    """Whether a ``train`` recipe makes a training image differ between epochs (RandAugment, random erasing,
    mixup, cutmix): then teacher outputs cannot be cached. Here, not in ``train``, so the Snakefile can ask
    without importing torch."""
    return bool(train.get("randaugment") or train.get("reprob", 0) > 0 or train.get("mixup", 0) > 0
                or train.get("cutmix", 0) > 0)


def uses_teacher_cache(params: Mapping) -> bool:
    """Whether distill runs read the per-dataset teacher cache: ``distill.teacher_cache`` on, or auto and a
    recipe without augmentation (validation rejects on + augmentation)."""
    mode = params["distill"]["teacher_cache"]
    return mode == "on" or (mode == "auto" and not recipe_augments(params["distill"]["train"]))


#: Methods with a feature term (they need ``layers``); kept here so validating the config does not import
#: torch. ``tests/test_config.py`` checks it against ``distillation.methods.METHODS``.
FEATURE_METHODS = ("spectralkd", "projectorkd", "projectorkd_released", "lift", "widelast")

#: Methods that imply a student architecture (their class's ``architecture``; tests/test_config.py checks it).
METHOD_ARCHITECTURES = {"lift": "lift", "widelast": "widelast"}

#: Student architecture (``distill.runs[].architecture``) -> the name tables and labels show.
ARCHITECTURE_NAMES = {"base": "base", "lift": "Lift", "widelast": "WideLast"}

#: The layer pairs of a method that implies an architecture when ``layers`` is absent: the follow-up's only
#: pair, the last student block with the last teacher block.
_REMEDY_LAYERS = "L1"


@dataclass(frozen=True)
class DistillRun:
    """One training run of the distillation grid: a configuration (``distill.runs`` entry) and a seed."""

    run_id: str
    name: str
    label: str
    method: str
    layers: str | dict | None
    alpha: float
    tau: float
    beta: float | None  # the feature term's weight; None for methods without one
    seed: int
    epochs: int
    #: The student architecture: ``base`` (the configured student), ``lift`` or ``widelast``
    #: (:mod:`pipeline_steps.models.remedies`).
    architecture: str = "base"

    def fingerprint_fields(self) -> dict[str, Any]:
        """The fields the run's resume fingerprint covers: all of them, except ``architecture`` when it is
        ``base``, so that a base run's fingerprint is what it was before the field existed."""
        fields = dict(self.__dict__)
        if fields["architecture"] == "base":
            del fields["architecture"]
        return fields

    def loss_options(self) -> dict[str, float]:
        """Options for ``distillation.methods.build_method`` (label smoothing comes from the recipe)."""
        options = {"alpha": self.alpha, "tau": self.tau}
        if self.method == "ce":
            return {}
        if self.beta is not None:
            options["beta"] = self.beta
        if self.method.startswith("projectorkd"):
            options["seed"] = self.seed
        return options


#: Registry method name -> the name tables and figures show.
METHOD_NAMES = {"ce": "CE", "softkd": "SoftKD", "spectralkd": "SpectralKD", "projectorkd": "ProjectorKD",
                "projectorkd_released": "ProjectorKD (released)", "lift": "Lift", "widelast": "WideLast"}


def layers_text(layers: str | Mapping | None) -> str:
    """A layer spec as tables show it: ``"F1 L1"``, ``"reverse:F1 L1"``, ``"random:3:F1 L1"``,
    ``"phase:compression"``, ``"cka:softkd@best:L1"``, ``"S[0, 1] T[0, 2]"``, ``"-"`` for none."""
    if layers is None:
        return "-"
    if isinstance(layers, str):
        # A prefix (distillation.layer_pairs) stays as written, lower-case; the F/L base is upper-case.
        *head, base = layers.split(":")
        prefix = ["".join(part.split()) for part in head]
        if prefix:
            prefix[0] = prefix[0].lower()
        if prefix == ["phase"]:
            return "phase:" + "".join(base.split()).lower()
        return ":".join([*prefix, " ".join(base.upper().replace(",", " ").split())])
    return f"S{list(layers['student'])} T{list(layers['teacher'])}"


def _default_label(method: str, layers: str | dict | None, architecture: str = "base") -> str:
    label = METHOD_NAMES[method] if layers is None else f"{METHOD_NAMES[method]} {layers_text(layers)}"
    # A method that implies its architecture names it already ("Lift L1"); a control says which student.
    if architecture != "base" and METHOD_ARCHITECTURES.get(method) != architecture:
        label += f", {ARCHITECTURE_NAMES[architecture]} student"
    return label


def _run_architecture(entry: Mapping) -> str:
    """A ``distill.runs`` entry's student architecture: its ``architecture``, the one its method implies, or
    ``base``; a method that implies another one than the entry gives is refused."""
    given, implied = entry.get("architecture"), METHOD_ARCHITECTURES.get(entry["method"])
    if implied is not None and given not in (None, implied):
        raise UserError(f"distill.runs entry '{entry['name']}': method {entry['method']} trains a {implied} student "
                        f"but architecture is {given}; remove architecture or set it to {implied}")
    return given or implied or "base"


def format_run_id(name: str, seed: int) -> str:
    """A grid run's id: its ``distill.runs`` entry name and seed, ``<name>-s<seed>``."""
    return f"{name}-s{seed}"


def _parse_run_id(run_id: str) -> tuple[str, int | None]:
    """:func:`format_run_id` read back: ``(name, seed)``; ``(run_id, None)`` for an id of another form."""
    name, sep, seed = str(run_id).rpartition("-s")
    return (name, int(seed)) if sep and seed.isdigit() else (str(run_id), None)


def run_name(run_id: str) -> str:
    """The ``distill.runs`` entry name of a run id: ``spectralkd_f1-s0`` -> ``spectralkd_f1``."""
    return _parse_run_id(run_id)[0]


def run_seed(run_id: str) -> int | None:
    """The seed of a run id: ``spectralkd_f1-s0`` -> 0; None for another id (the teacher's)."""
    return _parse_run_id(run_id)[1]


def distill_runs(params: Mapping) -> list[DistillRun]:
    """The distillation grid: every ``distill.runs`` entry once per ``distill.seeds`` seed, in that order.

    Raises:
        UserError: Two entries share a name; a feature method has no ``layers`` or another method has some;
            an architecture its method contradicts.
    """
    distill = params["distill"]
    names = [r["name"] for r in distill["runs"]]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise UserError(f"distill.runs has duplicate name(s) {', '.join(duplicated)}; give every entry its own name")
    runs = []
    for entry in distill["runs"]:
        method, layers = entry["method"], entry.get("layers")
        architecture = _run_architecture(entry)
        if method in METHOD_ARCHITECTURES and layers is None:
            layers = _REMEDY_LAYERS
        if method in FEATURE_METHODS and layers is None:
            raise UserError(f"distill.runs entry '{entry['name']}': method {method} needs layers, "
                            'e.g. layers: "F1 L1"')
        if method not in FEATURE_METHODS and layers is not None:
            raise UserError(f"distill.runs entry '{entry['name']}': method {method} has no feature term; "
                            "remove its layers")
        beta = None if method not in FEATURE_METHODS else float(
            distill["beta"] if entry.get("beta") is None else entry["beta"])
        for seed in distill["seeds"]:
            runs.append(DistillRun(
                run_id=format_run_id(entry["name"], seed), name=entry["name"],
                label=entry.get("label") or _default_label(method, layers, architecture), method=method,
                layers=layers, alpha=float(distill["alpha"]), tau=float(distill["tau"]), beta=beta, seed=int(seed),
                epochs=int(entry.get("epochs") or distill["train"]["epochs"]), architecture=architecture))
    return runs


def single_run_params(params: Mapping, run: DistillRun, keys: Iterable[str]) -> dict:
    """``select(params, keys)`` with the grid narrowed to ``run``: its own entry (beta resolved into it) and
    seed only, so that adding, removing or changing another run of the grid leaves this run's params alone."""
    selected = select(params, keys)
    distill = selected["distill"]
    entry = next(dict(e) for e in params["distill"]["runs"] if e["name"] == run.name)
    if run.beta is not None:
        entry["beta"] = run.beta
    distill.pop("beta", None)  # resolved into the entry: a SoftKD run does not depend on it
    distill["runs"], distill["seeds"] = [entry], [run.seed]
    return selected


def teacher_spec(params: Mapping, weights_path: str | os.PathLike | None) -> dict:
    """The teacher's model spec; a teacher trained by this pipeline needs its ``weights_path``."""
    spec = copy.deepcopy(params["teacher"]["model"])
    if spec["weights"]["source"] == "train" and weights_path is None:
        raise UserError("the teacher is trained by this pipeline (teacher.model.weights.source: train); pass "
                        "--teacher-weights results/teacher/model.safetensors (run the train_teacher rule first)")
    return spec


def student_spec(params: Mapping, seed: int) -> dict:
    """The student's model spec, randomly initialised with ``seed`` (students are trained from scratch)."""
    spec = copy.deepcopy(params["student"]["model"])
    if spec.get("weights", {}).get("source", "random") != "random":
        raise UserError("student.model.weights.source must be random (students are trained from scratch here)")
    spec["weights"] = {"source": "random", "seed": seed, "tag": None, "path": None}
    return spec


def evolution_panels(params: Mapping) -> dict[str, str]:
    """Fig. 4's panels: grid configuration name -> panel title, in panel order.

    ``figures.evolution_panels`` is ``all`` (every ``distill.runs`` entry, in grid order) or a list of entry
    names (that order).

    Raises:
        UserError: A listed name is not a ``distill.runs`` entry.
    """
    titles = {}
    for run in distill_runs(params):
        titles.setdefault(run.name, run.label)
    chosen = params["figures"]["evolution_panels"]
    if chosen == "all":
        return titles
    unknown = [name for name in chosen if name not in titles]
    if unknown:
        raise UserError(f"figures.evolution_panels lists '{unknown[0]}', which is not a distill.runs entry; choose "
                        f"from {', '.join(titles)} or use all")
    return {name: titles[name] for name in chosen}


def distill_run(params: Mapping, run_id: str) -> DistillRun:
    """The grid run called ``run_id`` (``<name>-s<seed>``), with a one-line error listing the valid ids."""
    runs = {r.run_id: r for r in distill_runs(params)}
    if run_id not in runs:
        raise UserError(f"unknown distillation run '{run_id}'; the grid has: {', '.join(runs)}")
    return runs[run_id]


def deep_merge(base: dict, override: Mapping) -> dict:
    """Recursively merge ``override`` into a copy of ``base`` (dicts merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: str | Path) -> dict:
    """Parse a YAML mapping with a one-line error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"params file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"params file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"params file {path} is not valid YAML{at}; fix its syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"params file {path} must contain a mapping at the top level (key: value lines), not a "
                        f"{_json_type(data)}; see params.yaml for the layout")
    return data


def _json_type(value: Any) -> str:
    """What a parsed YAML/JSON value is, in the words a user knows (for messages)."""
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "null" if value is None else type(value).__name__


def load_params(paths: Iterable[str | Path] = (), json_overrides: Iterable[str] = ()) -> dict:
    """Merge YAML files then JSON snippets (later wins), validate, and return the config."""
    params: dict = {}
    for path in paths:
        params = deep_merge(params, read_yaml(path))
    for snippet in json_overrides:
        try:
            override = json.loads(snippet)
        except json.JSONDecodeError as exc:
            raise UserError(f"--config-json is not valid JSON ({exc.msg}); quote it as one argument") from None
        if not isinstance(override, dict):
            raise UserError(f"--config-json must be a JSON object of params keys, not a {_json_type(override)}; "
                            "e.g. '{\"sample\": {\"n_images\": 8}}'")
        params = deep_merge(params, override)
    return validate_params(params)


def select(params: Mapping, keys: Iterable[str]) -> dict:
    """The nested sub-dict of ``params`` holding only the dotted ``keys``."""
    out: dict = {}
    for key in keys:
        *parents, leaf = key.split(".")
        src, dst = params, out
        for part in parents:
            src = src[part]
            dst = dst.setdefault(part, {})
        dst[leaf] = copy.deepcopy(src[leaf])
    return out
