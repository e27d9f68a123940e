"""Tests for pipeline_steps.distillation.methods: golden values, identities, registry and layer-pair parsing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline_steps.errors import UserError
from pipeline_steps.distillation.methods import (
    AUTHORS_LOG_NAMES, METHODS, DistillMethod, build_method, kd_kl_loss, pool_channels, register_method,
    spectral_pair_loss,
)
from pipeline_steps.distillation.layer_pairs import format_layer_pairs, parse_layer_pairs
from pipeline_steps.models.layers import order_features
from pipeline_steps.training.recipe import Recipe, build_optimizer
from pipeline_steps.training.loop import Trainee

GOLDEN = json.loads((Path(__file__).parent / "data" / "loss_golden.json").read_text())["cases"]
PARTS = ("loss", "loss_base", "loss_dist", "loss_feat")


def _t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def _build_from_case(case: dict, method: str) -> DistillMethod:
    kwargs = {}
    if "pairs" in case:
        kwargs = {"pairs": [tuple(p) for p in case["pairs"]], "student_channels": case["student_channels"],
                  "teacher_channels": case["teacher_channels"]}
    m = build_method(method, **kwargs, **case["options"])
    params = dict(m.named_parameters())
    with torch.no_grad():
        for name, value in case.get("state", {}).items():
            params[name].copy_(_t(value))
    return m


def _call(m: DistillMethod, inputs: dict) -> dict[str, torch.Tensor]:
    return m(_t(inputs["student_logits"]), torch.tensor(inputs["labels"]), _t(inputs["teacher_logits"]),
             [_t(f) for f in inputs["student_feats"]] if "student_feats" in inputs else None,
             [_t(f) for f in inputs["teacher_feats"]] if "teacher_feats" in inputs else None)


# ---- golden values ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("case,method", [(c, m) for c in GOLDEN for m in c["methods"]],
                         ids=[f"{c['name']}-{m}" for c in GOLDEN for m in c["methods"]])
def test_golden_loss_parts(case: dict, method: str) -> None:
    out = _call(_build_from_case(case, method), case["inputs"])
    assert set(out) == set(PARTS)
    for part in PARTS:
        torch.testing.assert_close(out[part].double(), torch.tensor(case["expected"][part], dtype=torch.float64),
                                   rtol=1e-5, atol=1e-6, msg=lambda m, p=part: f"{case['name']} {method} {p}: {m}")
    torch.testing.assert_close(out["loss"], out["loss_base"] + out["loss_dist"] + out["loss_feat"])


@pytest.mark.parametrize("case", [c for c in GOLDEN if "pair_losses" in c], ids=lambda c: c["name"])
def test_golden_pair_losses(case: dict) -> None:
    m = _build_from_case(case, case["methods"][0])
    for i, expected in enumerate(case["pair_losses"]):
        got = m.pair_loss(i, _t(case["inputs"]["student_feats"][i]), _t(case["inputs"]["teacher_feats"][i]))
        assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


# ---- SpectralKD identities --------------------------------------------------------------------------------

@pytest.mark.parametrize("width", [6, 5])
def test_spectral_parseval_weighted_half_spectrum(width: int) -> None:
    # Full spectrum = half spectrum with columns 0 and W/2 (even W) once, the others twice.
    g = torch.Generator().manual_seed(1)
    d = torch.randn(2, 3, 5, width, generator=g, dtype=torch.float64)
    spec = torch.fft.rfft2(d, dim=(-2, -1), norm="ortho")
    weights = torch.full((width // 2 + 1,), 2.0, dtype=torch.float64)
    weights[0] = 1.0
    if width % 2 == 0:
        weights[-1] = 1.0
    torch.testing.assert_close((spec.abs() ** 2 * weights).sum(), (d ** 2).sum(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("width", [6, 5])
def test_spectral_loss_is_reweighted_spatial_mse(width: int) -> None:
    g = torch.Generator().manual_seed(2)
    fs = torch.randn(2, 3, 4, width, generator=g)
    ft = torch.randn(2, 3, 4, width, generator=g)
    d = (fs - ft).double()
    b, c, h, w = d.shape
    extra = d.sum(-1).pow(2).sum() / w  # |DFT_w(d)(0)|^2 per row (ortho), summed
    if w % 2 == 0:
        sign = torch.tensor([(-1.0) ** q for q in range(w)], dtype=torch.float64)
        extra = extra + (d * sign).sum(-1).pow(2).sum() / w  # the Nyquist column
    expected = (d.pow(2).sum() + extra) / (4 * b * c * h * (w // 2 + 1))
    got = spectral_pair_loss(fs, ft)
    assert got.dtype == torch.float32
    assert abs(got.item() - expected.item()) < 1e-6


def test_pool_channels_384_to_192_is_mean_of_adjacent_pairs() -> None:
    x = torch.randn(2, 384, 3, 3, generator=torch.Generator().manual_seed(3))
    assert torch.equal(pool_channels(x, 192), (x[:, 0::2] + x[:, 1::2]) / 2)
    assert pool_channels(x, 384) is x


def test_spectral_identical_maps_zero_and_wider_student_unsupported() -> None:
    x = torch.randn(2, 4, 3, 3)
    assert spectral_pair_loss(x, x).item() == 0.0
    with pytest.raises(UserError, match="unsupported"):
        spectral_pair_loss(torch.randn(2, 8, 3, 3), x)
    with pytest.raises(UserError, match="unsupported"):
        build_method("spectralkd", pairs=[(0, 0)], student_channels=[8], teacher_channels=[4])


# ---- SoftKD identities ------------------------------------------------------------------------------------

def test_softkd_alpha_zero_is_label_smoothed_ce() -> None:
    g = torch.Generator().manual_seed(4)
    zs, zt = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    y = torch.tensor([0, 3, 6, 2])
    out = build_method("softkd", alpha=0.0, label_smoothing=0.1)(zs, y, zt)
    ce = build_method("ce", label_smoothing=0.1)(zs, y)
    torch.testing.assert_close(out["loss"], ce["loss"])
    torch.testing.assert_close(out["loss"], F.cross_entropy(zs, y, label_smoothing=0.1))
    assert out["loss_dist"].item() == 0.0
    # alpha = 0 needs no teacher at all.
    assert not build_method("softkd", alpha=0.0).needs_teacher_logits
    torch.testing.assert_close(build_method("softkd", alpha=0.0)(zs, y)["loss"], ce["loss"])


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_kl_of_identical_logits_is_zero(tau: float) -> None:
    z = torch.randn(3, 5)
    assert kd_kl_loss(z, z.clone(), tau).item() == 0.0
    out = build_method("softkd", tau=tau)(z, torch.tensor([0, 1, 2]), z.clone())
    assert out["loss_dist"].item() == 0.0


def test_kl_is_batch_mean_not_numel_mean() -> None:
    zs, zt = torch.randn(3, 5), torch.randn(3, 5)
    per_sample = (F.softmax(zt, 1) * (F.log_softmax(zt, 1) - F.log_softmax(zs, 1))).sum(1)
    torch.testing.assert_close(kd_kl_loss(zs, zt), per_sample.mean())


# ---- ProjectorKD parameters -------------------------------------------------------------------------------

def _projector_inputs():
    g = torch.Generator().manual_seed(5)
    zs = torch.randn(2, 5, generator=g, requires_grad=True)
    fs = [torch.randn(2, 4, 3, 3, generator=g, requires_grad=True) for _ in range(2)]
    ft = [torch.randn(2, 8, 3, 3, generator=g) for _ in range(2)]
    return zs, torch.tensor([1, 3]), torch.randn(2, 5, generator=g), fs, ft


def _projector(name: str, **options) -> DistillMethod:
    return build_method(name, pairs=[(0, 0), (11, 23)], student_channels=[4, 4], teacher_channels=[8, 8],
                        **options)


def test_projectorkd_parameters_are_registered_saved_and_trained() -> None:
    m = _projector("projectorkd")
    names = {n for n, _ in m.named_parameters()}
    expected = {f"projectors.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")}
    assert names == expected  # the projector only: nothing learnable acts on the teacher's map
    assert set(m.state_dict()) == expected  # no BN, no running statistics
    assert all(p.requires_grad for p in m.parameters())
    zs, y, zt, fs, ft = _projector_inputs()
    m(zs, y, zt, fs, ft)["loss"].backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(f.grad is not None for f in fs)
    # An optimizer built from the method's parameters moves them.
    before = m.projectors[0].weight.detach().clone()
    torch.optim.SGD(m.parameters(), lr=0.1).step()
    assert not torch.equal(before, m.projectors[0].weight)


def test_projectorkd_target_is_the_teacher_map_standardised_per_channel() -> None:
    m = _projector("projectorkd")
    zs, y, zt, fs, ft = _projector_inputs()
    out = m(zs, y, zt, fs, ft)["loss_feat"]
    # Invariant to each teacher channel's scale and offset (massive channels do not dominate) ...
    scale = torch.logspace(0, 3, 8).view(1, 8, 1, 1)  # (from 1: eps = 1e-5 is then negligible)
    shifted = [f * scale - 7.0 for f in ft]
    torch.testing.assert_close(m(zs, y, zt, fs, shifted)["loss_feat"], out, rtol=1e-4, atol=1e-6)
    # ... the same in eval mode (batch statistics, nothing tracked) ...
    m.eval()
    torch.testing.assert_close(m(zs, y, zt, fs, ft)["loss_feat"], out)
    # ... and target="raw" is the literal Eq. 8, MSE against the raw teacher map.
    raw = _projector("projectorkd", target="raw")
    proj = raw.projectors[0](fs[0].detach().permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(raw.pair_loss(0, fs[0], shifted[0]), ((proj - shifted[0]) ** 2).mean())
    with pytest.raises(UserError, match="target"):
        _projector("projectorkd", target="batchnorm")


def test_projectorkd_feature_term_converges_to_the_least_squares_optimum_not_to_zero() -> None:
    # Student features frozen; only the method's projector trains, with the training loop's AdamW groups,
    # on one fixed full batch. The best a projector can do is the least-squares regression (with intercept)
    # of the standardised teacher map on the student map; teacher channels are partly unexplained by the
    # student, so that optimum is well above 0. (The old objective, affine BN on both maps, reached 2e-7 here
    # with both BN scales shrunk from 1.0 to 0.022.)
    rng = np.random.default_rng(0)
    b, c_s, c_t, h, w = 8, 16, 32, 4, 4
    x = rng.normal(size=(b, h, w, c_s)) @ rng.normal(size=(c_s, c_s)) * 0.5 + rng.normal(size=c_s)
    linear = x @ rng.normal(size=(c_s, c_t))
    linear = (linear - linear.mean((0, 1, 2))) / linear.std((0, 1, 2))
    explained = np.linspace(1.0, 0.0, c_t)  # channel c: this fraction of its variance comes from the student
    t = np.sqrt(explained) * linear + np.sqrt(1 - explained) * rng.normal(size=(b, h, w, c_t))
    t = t * np.geomspace(0.1, 100.0, c_t) + 3 * rng.normal(size=c_t)  # raw ViT-like channel scales
    fs = torch.tensor(x, dtype=torch.float32).permute(0, 3, 1, 2).contiguous()
    ft = torch.tensor(t, dtype=torch.float32).permute(0, 3, 1, 2).contiguous()

    tokens_t = ft.double().numpy().transpose(0, 2, 3, 1).reshape(-1, c_t)
    target = (tokens_t - tokens_t.mean(0)) / np.sqrt(tokens_t.var(0) + 1e-5)
    design = np.hstack([fs.double().numpy().transpose(0, 2, 3, 1).reshape(-1, c_s), np.ones((b * h * w, 1))])
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    optimum = float(((target - design @ coef) ** 2).mean())
    assert optimum > 0.3

    method = build_method("projectorkd", pairs=[(0, 0)], student_channels=[c_s], teacher_channels=[c_t], beta=0.2)
    recipe = Recipe(epochs=1, batch_size=b, lr=1e-2, min_lr=1e-5, warmup_epochs=0, warmup_lr=1e-6,
                    sched_on="step", weight_decay=0.05, label_smoothing=0.1, seed=0)
    optimizer = build_optimizer(Trainee(torch.nn.Identity(), method), recipe)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in method.parameters()}
    logits, labels = torch.zeros(b, 3), torch.zeros(b, dtype=torch.long)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: extra threads only add synchronisation (20x slower on a busy machine)
    try:
        for _ in range(3000):
            out = method(logits, labels, logits, [fs], [ft])
            optimizer.zero_grad()
            out["loss"].backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    feature_loss = method(logits, labels, logits, [fs], [ft])["loss_feat"].item() / method.beta
    assert feature_loss == pytest.approx(optimum, rel=0.02)


def test_projectorkd_init_is_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, b = _projector("projectorkd", seed=7), _projector("projectorkd", seed=7)
    c = _projector("projectorkd", seed=8)
    assert torch.equal(torch.rand(1), expected_next)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert not torch.equal(a.projectors[0].weight, c.projectors[0].weight)
    # Same seed, same frozen projector in the released variant.
    assert torch.equal(a.projectors[1].weight, _projector("projectorkd_released", seed=7).projectors[1].weight)


def test_projectorkd_released_is_frozen_but_passes_gradients_to_the_student() -> None:
    m = _projector("projectorkd_released")
    assert len(list(m.parameters())) == 12
    assert not any(p.requires_grad for p in m.parameters())
    assert "projectors.0.weight" in m.state_dict()
    zs, y, zt, fs, ft = _projector_inputs()
    out = m(zs, y, zt, fs, ft)
    out["loss"].backward()
    assert all(p.grad is None for p in m.parameters())
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in fs)
    # Batch statistics in every mode, as in the authors' never-evaluated loss module.
    m.eval()
    torch.testing.assert_close(m(zs, y, zt, fs, ft)["loss_feat"], out["loss_feat"])


def test_teacher_features_get_no_gradient() -> None:
    m = _projector("projectorkd")
    zs, y, zt, fs, _ = _projector_inputs()
    ft = [torch.randn(2, 8, 3, 3, requires_grad=True) for _ in range(2)]
    m(zs, y, zt, fs, ft)["loss"].backward()
    assert all(f.grad is None for f in ft)


# ---- registry and method interface ------------------------------------------------------------------------

def test_registry_names_and_flags() -> None:
    assert {"ce", "softkd", "spectralkd", "projectorkd", "projectorkd_released"} <= set(METHODS)
    assert AUTHORS_LOG_NAMES["loss_feat"] == "loss_fft"
    assert not build_method("ce").needs_teacher_logits
    soft = build_method("softkd")
    assert soft.needs_teacher_logits and not soft.needs_teacher_features and soft.teacher_layers == ()
    spec = build_method("spectralkd", pairs=parse_layer_pairs("F1 L1", 12, 24), student_channels=[192] * 2,
                        teacher_channels=[384] * 2)
    assert spec.needs_teacher_features
    assert spec.student_layers == (0, 11) and spec.teacher_layers == (0, 23)
    assert (spec.alpha, spec.tau, spec.beta, spec.label_smoothing) == (0.9, 1.0, 0.2, 0.1)


def test_unknown_method_lists_registered_names() -> None:
    with pytest.raises(UserError) as err:
        build_method("fitnet")
    msg = str(err.value)
    assert "fitnet" in msg and "\n" not in msg
    for name in METHODS:
        assert name in msg


@pytest.mark.parametrize("name,kwargs,match", [
    ("softkd", {"temperature": 2.0}, "unknown option"),
    ("softkd", {"alpha": 1.5}, "alpha"),
    ("softkd", {"tau": 0.0}, "tau"),
    ("ce", {"pairs": [(0, 0)]}, "no feature term"),
    ("spectralkd", {}, "at least one layer pair"),
    ("spectralkd", {"pairs": [(0, 0)], "student_channels": [4], "teacher_channels": []}, "teacher_channels"),
])
def test_build_method_errors(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        build_method(name, **kwargs)


def test_forward_input_errors() -> None:
    zs, y = torch.randn(2, 5), torch.tensor([0, 1])
    with pytest.raises(UserError, match="teacher_logits"):
        build_method("softkd")(zs, y)
    m = build_method("spectralkd", pairs=[(0, 0)], student_channels=[4], teacher_channels=[8])
    with pytest.raises(UserError, match="feature maps in pair order"):
        m(zs, y, zs, None, None)
    with pytest.raises(UserError, match="channels"):
        m(zs, y, zs, [torch.randn(2, 4, 3, 3)], [torch.randn(2, 6, 3, 3)])
    with pytest.raises(UserError, match="token grid"):
        m(zs, y, zs, [torch.randn(2, 4, 3, 3)], [torch.randn(2, 8, 4, 4)])


def test_register_method_adds_a_method() -> None:
    @register_method("_test_zero")
    class Zero(DistillMethod):
        DEFAULTS = {"label_smoothing": 0.0}

        def forward(self, student_logits, labels, teacher_logits=None, student_feats=None, teacher_feats=None):
            z = student_logits.sum() * 0
            return {"loss": z, "loss_base": z, "loss_dist": z, "loss_feat": z}

    try:
        assert METHODS["_test_zero"] is Zero and Zero.name == "_test_zero"
        assert build_method("_test_zero")(torch.ones(1, 2), torch.tensor([0]))["loss"].item() == 0.0
        with pytest.raises(ValueError, match="already registered"):
            register_method("_test_zero")(Zero)
    finally:
        METHODS.pop("_test_zero", None)


def test_order_features() -> None:
    a, b = torch.zeros(1), torch.ones(1)
    assert order_features([a, b], [3, 7], [7, 3, 7]) == [b, a, b]
    with pytest.raises(UserError, match="not extracted"):
        order_features([a], [3], [4])


# ---- layer pairs ------------------------------------------------------------------------------------------

PAIR_ROWS = {  # docs/method.md section 5, 12-block student / 24-block teacher
    "F1": ([0], [0]),
    "L1": ([11], [23]),
    "F1 L1": ([0, 11], [0, 23]),
    "F2 L1": ([0, 1, 11], [0, 1, 23]),
    "F2 L6": ([0, 1, *range(6, 12)], [0, 1, *range(18, 24)]),
    "L8": (list(range(4, 12)), list(range(16, 24))),
}


@pytest.mark.parametrize("spec", list(PAIR_ROWS))
def test_parse_layer_pairs_paper_rows(spec: str) -> None:
    students, teachers = PAIR_ROWS[spec]
    expected = list(zip(students, teachers))
    assert parse_layer_pairs(spec, 12, 24) == expected
    assert parse_layer_pairs(spec.lower().replace(" ", ""), 12, 24) == expected
    assert parse_layer_pairs({"student": students, "teacher": teachers}, 12, 24) == expected
    assert format_layer_pairs(expected, 12, 24) == spec


def test_parse_layer_pairs_spacing_and_explicit_format() -> None:
    assert parse_layer_pairs("  f 2 ,  l 6 ", 12, 24) == parse_layer_pairs("F2 L6", 12, 24)
    pairs = parse_layer_pairs({"student": [5, 0], "teacher": [7, 3]}, 12, 24)
    assert pairs == [(5, 7), (0, 3)]
    assert format_layer_pairs(pairs, 12, 24) == "s5-t7,s0-t3"
    assert format_layer_pairs([(0, 3), (5, 7)], 12, 24) == "s0-t3,s5-t7"


@pytest.mark.parametrize("spec,match", [
    ("", "malformed"),
    ("F", "malformed"),
    ("X1", "malformed"),
    ("L1 F1", "malformed"),
    ("F1 L1 F2", "malformed"),
    (3, "string or a mapping"),
    ("F0", "selects no blocks"),
    ("F13", "exceeds a depth"),
    ("L13", "exceeds a depth"),
    ("F7 L6", "overlap"),
    ({"student": [12], "teacher": [0]}, "out of range"),
    ({"student": [0], "teacher": [24]}, "out of range"),
    ({"student": [-1], "teacher": [0]}, "out of range"),
    ({"student": [1, 1], "teacher": [0, 2]}, "more than one layer pair"),
    ({"student": [], "teacher": []}, "no layer pairs"),
    ({"student": [0, 1], "teacher": [0]}, "one teacher block per student block"),
    ({"student": [0]}, "exactly the keys"),
    ("random:F1 L1", "needs a seed"),
    ("reverse:2:F1 L1", "takes no seed"),
    ("reverse:", "needs a base spec"),
    ("reverse:random:1:F1", "needs a base spec"),
    ("random:1:L13", "exceeds a depth"),
])
def test_parse_layer_pairs_errors(spec, match: str) -> None:
    with pytest.raises(UserError, match=match) as err:
        parse_layer_pairs(spec, 12, 24)
    assert "\n" not in str(err.value)


def test_parse_layer_pairs_depth_limits_use_the_shallower_model() -> None:
    with pytest.raises(UserError, match="exceeds a depth"):
        parse_layer_pairs("L5", 24, 4)
    assert parse_layer_pairs("L4", 24, 4) == [(20, 0), (21, 1), (22, 2), (23, 3)]


def test_control_specs_keep_the_student_blocks_and_change_their_teachers() -> None:
    """reverse: the base's teacher blocks in reverse order; random: distinct teacher blocks drawn by
    random.Random(seed).sample (golden values: the draw is part of what a run records)."""
    assert parse_layer_pairs("reverse:F1 L1", 12, 24) == [(0, 23), (11, 0)]
    assert parse_layer_pairs(" Reverse : l3", 6, 12) == [(3, 11), (4, 10), (5, 9)]
    assert parse_layer_pairs("random:0:F1 L1", 12, 24) == [(0, 12), (11, 13)]
    assert parse_layer_pairs("random:3:F2 L2", 6, 12) == [(0, 3), (1, 9), (4, 8), (5, 2)]
    assert parse_layer_pairs("random:3:F2 L2", 6, 12) == parse_layer_pairs("RANDOM:3:f2l2", 6, 12)
    assert parse_layer_pairs("random:4:F2 L2", 6, 12) != parse_layer_pairs("random:3:F2 L2", 6, 12)
    for seed in range(50):  # always distinct teacher blocks, in range, the base's student blocks
        pairs = parse_layer_pairs(f"random:{seed}:F3 L3", 6, 12)
        assert [s for s, _ in pairs] == [0, 1, 2, 3, 4, 5]
        assert len({t for _, t in pairs}) == 6 and all(0 <= t < 12 for _, t in pairs)
    assert format_layer_pairs(parse_layer_pairs("reverse:F1 L1", 12, 24), 12, 24) == "s0-t23,s11-t0"
