"""Regenerate ``tests/data/loss_golden.json``: golden values for ``pipeline_steps.distillation.methods``.

The expected numbers come from a deliberately plain, independent implementation: float64 numpy with
explicit loops (the DFT is written out as a double sum, not ``np.fft``; channel pooling, batch norm, the
KL and the label-smoothed cross-entropy likewise), following docs/method.md section 5 and NOT importing
``pipeline_steps.distillation.methods`` or torch. Inputs are drawn from a seeded numpy generator and rounded to float32,
so the torch implementation sees exactly the values the reference used.

Run from the repository root:  ``.venv/bin/python tests/data/make_loss_golden.py``
"""

from __future__ import annotations

import cmath
import json
import math
from pathlib import Path

import numpy as np

OUT = Path(__file__).with_name("loss_golden.json")
BN_EPS = 1e-5  # torch.nn.BatchNorm2d default


def f32(a: np.ndarray) -> np.ndarray:
    """Round to float32 and back, so both implementations start from identical inputs."""
    return np.asarray(a, dtype=np.float32).astype(np.float64)


# ---- reference formulas ---------------------------------------------------------------------------------

def log_softmax_row(z: list[float]) -> list[float]:
    m = max(z)
    lse = m + math.log(sum(math.exp(v - m) for v in z))
    return [v - lse for v in z]


def ce_label_smoothed(logits: np.ndarray, labels: list[int], eps: float) -> float:
    """mean_b [ (1 - eps) * -log p[b, y_b] + eps / K * sum_k -log p[b, k] ]."""
    total = 0.0
    for row, y in zip(logits.tolist(), labels):
        logp = log_softmax_row(row)
        k = len(row)
        total += (1 - eps) * -logp[y] + eps / k * sum(-v for v in logp)
    return total / len(labels)


def kd_kl(student: np.ndarray, teacher: np.ndarray, tau: float) -> float:
    """tau^2 * (1/B) * sum_b sum_k p_t (log p_t - log p_s), at temperature tau."""
    total = 0.0
    for zs, zt in zip(student.tolist(), teacher.tolist()):
        ls = log_softmax_row([v / tau for v in zs])
        lt = log_softmax_row([v / tau for v in zt])
        total += sum(math.exp(b) * (b - a) for a, b in zip(ls, lt))
    return tau * tau * total / len(student)


def pool_channels(x: np.ndarray, c_out: int) -> np.ndarray:
    """Adaptive average over channels: out[i] = mean of in[floor(i*C/c) : ceil((i+1)*C/c)]."""
    b, c, h, w = x.shape
    out = np.zeros((b, c_out, h, w))
    for i in range(c_out):
        start = (i * c) // c_out
        end = -((-(i + 1) * c) // c_out)
        for ch in range(start, end):
            out[:, i] += x[:, ch]
        out[:, i] /= end - start
    return out


def rfft2_ortho(x: np.ndarray) -> np.ndarray:
    """Half-spectrum orthonormal 2-D DFT of the last two axes, written out as the double sum."""
    *lead, h, w = x.shape
    flat = x.reshape(-1, h, w)
    out = np.zeros((flat.shape[0], h, w // 2 + 1), dtype=complex)
    for n in range(flat.shape[0]):
        for u in range(h):
            for v in range(w // 2 + 1):
                acc = 0j
                for m in range(h):
                    for q in range(w):
                        acc += flat[n, m, q] * cmath.exp(-2j * math.pi * (u * m / h + v * q / w))
                out[n, u, v] = acc / math.sqrt(h * w)
    return out.reshape(*lead, h, w // 2 + 1)


def spectral_pair(fs: np.ndarray, ft: np.ndarray) -> float:
    ft = pool_channels(ft, fs.shape[1])
    d = rfft2_ortho(fs) - rfft2_ortho(ft)
    # Real and imaginary parts are separate elements of the stacked tensor: 2x the element count.
    return float((d.real ** 2).sum() + (d.imag ** 2).sum()) / (2 * d.size)


def batch_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Train-mode BN: per channel, batch mean and biased variance over (B, H, W)."""
    out = np.empty_like(x)
    for c in range(x.shape[1]):
        vals = x[:, c]
        mean = vals.mean()
        var = ((vals - mean) ** 2).mean()
        out[:, c] = (vals - mean) / math.sqrt(var + BN_EPS) * gamma[c] + beta[c]
    return out


def project(fs: np.ndarray, c_t: int, p: dict[str, np.ndarray]) -> np.ndarray:
    """The per-token linear projector: out[n, o, y, x] = bias[o] + sum_i weight[o, i] * fs[n, i, y, x]."""
    b, c_s, h, w = fs.shape
    proj = np.zeros((b, c_t, h, w))
    for n in range(b):
        for y in range(h):
            for x in range(w):
                for o in range(c_t):
                    proj[n, o, y, x] = p["bias"][o] + sum(p["weight"][o, i] * fs[n, i, y, x] for i in range(c_s))
    return proj


def projector_released_pair(fs: np.ndarray, ft: np.ndarray, p: dict[str, np.ndarray]) -> float:
    """The authors' module: affine BN on the projected student map and on the teacher map, then MSE."""
    a = batch_norm(project(fs, ft.shape[1], p), p["gamma_s"], p["beta_s"])
    t = batch_norm(ft, p["gamma_t"], p["beta_t"])
    return float(((a - t) ** 2).mean())


def projector_pair(fs: np.ndarray, ft: np.ndarray, p: dict[str, np.ndarray], target: str) -> float:
    """Eq. 8: MSE(projector(student), teacher), the teacher standardised per channel (no parameters) or raw."""
    c_t = ft.shape[1]
    if target == "standardized":
        ft = batch_norm(ft, np.ones(c_t), np.zeros(c_t))
    return float(((project(fs, c_t, p) - ft) ** 2).mean())


# ---- cases ----------------------------------------------------------------------------------------------

def soft_parts(inp: dict, opts: dict) -> tuple[float, float]:
    alpha, tau, eps = opts["alpha"], opts["tau"], opts["label_smoothing"]
    base = (1 - alpha) * ce_label_smoothed(inp["student_logits"], inp["labels"], eps)
    dist = alpha * kd_kl(inp["student_logits"], inp["teacher_logits"], tau)
    return base, dist


def tolist(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, dict):
        return {k: tolist(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [tolist(v) for v in obj]
    return obj


def main() -> None:
    rng = np.random.default_rng(20260101)
    b, k = 2, 5
    logits = {
        "student_logits": f32(rng.normal(size=(b, k)) * 2),
        "teacher_logits": f32(rng.normal(size=(b, k)) * 3),
        "labels": [1, 3],
    }
    cases = []

    ce_opts = {"label_smoothing": 0.1}
    ce = ce_label_smoothed(logits["student_logits"], logits["labels"], 0.1)
    cases.append({"name": "ce_eps0.1", "methods": ["ce"], "options": ce_opts, "inputs": logits,
                  "expected": {"loss": ce, "loss_base": ce, "loss_dist": 0.0, "loss_feat": 0.0}})

    for name, opts in (("softkd_default", {"label_smoothing": 0.1, "alpha": 0.9, "tau": 1.0}),
                       ("softkd_tau2_alpha0.5_eps0.2", {"label_smoothing": 0.2, "alpha": 0.5, "tau": 2.0})):
        base, dist = soft_parts(logits, opts)
        cases.append({"name": name, "methods": ["softkd"], "options": opts, "inputs": logits,
                      "expected": {"loss": base + dist, "loss_base": base, "loss_dist": dist, "loss_feat": 0.0}})

    # SpectralKD, 2 pairs, C_s=4 < C_t=8 (pooling of channel pairs), odd 3x3 grid.
    opts = {"label_smoothing": 0.1, "alpha": 0.9, "tau": 1.0, "beta": 0.2}
    fs = [f32(rng.normal(size=(b, 4, 3, 3))) for _ in range(2)]
    ft = [f32(rng.normal(size=(b, 8, 3, 3)) * 1.5 + 0.3) for _ in range(2)]
    inp = {**logits, "student_feats": fs, "teacher_feats": ft}
    pair = [spectral_pair(s, t) for s, t in zip(fs, ft)]
    base, dist = soft_parts(logits, opts)
    feat = opts["beta"] * sum(pair) / len(pair)
    cases.append({"name": "spectralkd_2pairs_4to8_3x3", "methods": ["spectralkd"], "options": opts,
                  "pairs": [[0, 0], [11, 23]], "student_channels": [4, 4], "teacher_channels": [8, 8],
                  "inputs": inp, "pair_losses": pair,
                  "expected": {"loss": base + dist + feat, "loss_base": base, "loss_dist": dist,
                               "loss_feat": feat}})

    # SpectralKD, 1 pair, C_t=6 -> C_s=4 (overlapping adaptive windows), even 4x4 grid (Nyquist column).
    opts = {"label_smoothing": 0.1, "alpha": 0.5, "tau": 2.0, "beta": 0.5}
    fs = [f32(rng.normal(size=(b, 4, 4, 4)))]
    ft = [f32(rng.normal(size=(b, 6, 4, 4)) - 0.2)]
    inp = {**logits, "student_feats": fs, "teacher_feats": ft}
    pair = [spectral_pair(fs[0], ft[0])]
    base, dist = soft_parts(logits, opts)
    feat = opts["beta"] * pair[0]
    cases.append({"name": "spectralkd_1pair_4to6_4x4", "methods": ["spectralkd"], "options": opts,
                  "pairs": [[3, 5]], "student_channels": [4], "teacher_channels": [6], "inputs": inp,
                  "pair_losses": pair,
                  "expected": {"loss": base + dist + feat, "loss_base": base, "loss_dist": dist,
                               "loss_feat": feat}})

    # ProjectorKD as released (frozen projector, BN on both sides), 2 pairs, given projector and BN values.
    opts = {"label_smoothing": 0.1, "alpha": 0.9, "tau": 1.0, "beta": 0.2}
    fs = [f32(rng.normal(size=(b, 4, 3, 3))) for _ in range(2)]
    ft = [f32(rng.normal(size=(b, 8, 3, 3)) * 2 + 1) for _ in range(2)]
    params = []
    state = {}
    for i in range(2):
        p = {"weight": f32(rng.uniform(-0.5, 0.5, size=(8, 4))), "bias": f32(rng.uniform(-0.5, 0.5, size=8)),
             "gamma_s": f32(rng.uniform(0.5, 1.5, size=8)), "beta_s": f32(rng.normal(size=8) * 0.1),
             "gamma_t": f32(rng.uniform(0.5, 1.5, size=8)), "beta_t": f32(rng.normal(size=8) * 0.1)}
        params.append(p)
        state.update({f"projectors.{i}.weight": p["weight"], f"projectors.{i}.bias": p["bias"],
                      f"bn_student.{i}.weight": p["gamma_s"], f"bn_student.{i}.bias": p["beta_s"],
                      f"bn_teacher.{i}.weight": p["gamma_t"], f"bn_teacher.{i}.bias": p["beta_t"]})
    inp = {**logits, "student_feats": fs, "teacher_feats": ft}
    pair = [projector_released_pair(s, t, p) for s, t, p in zip(fs, ft, params)]
    base, dist = soft_parts(logits, opts)
    feat = opts["beta"] * sum(pair) / len(pair)
    cases.append({"name": "projectorkd_released_2pairs_4to8_3x3", "methods": ["projectorkd_released"],
                  "options": opts, "pairs": [[0, 0], [11, 23]], "student_channels": [4, 4],
                  "teacher_channels": [8, 8], "inputs": inp, "state": state, "pair_losses": pair,
                  "expected": {"loss": base + dist + feat, "loss_base": base, "loss_dist": dist,
                               "loss_feat": feat}})

    # ProjectorKD (Eq. 8, learnable projector), teacher standardised per channel: 2 pairs, 4 -> 8, 3x3,
    # teacher maps with channel scales from 0.1 to 50 (the standardisation must remove them).
    # Drawn after the cases above so that their inputs (and golden values) stay as they were.
    for target, name in (("standardized", "projectorkd_2pairs_4to8_3x3"), ("raw", "projectorkd_raw_1pair_3to5_4x2")):
        n_pairs, c_s, c_t, h, w = (2, 4, 8, 3, 3) if target == "standardized" else (1, 3, 5, 4, 2)
        opts = {"label_smoothing": 0.1, "alpha": 0.9, "tau": 1.0, "beta": 0.2, "target": target}
        fs = [f32(rng.normal(size=(b, c_s, h, w))) for _ in range(n_pairs)]
        scales = np.geomspace(0.1, 50.0, c_t)[None, :, None, None]
        ft = [f32(rng.normal(size=(b, c_t, h, w)) * scales + rng.normal(size=(1, c_t, 1, 1)))
              for _ in range(n_pairs)]
        params, state = [], {}
        for i in range(n_pairs):
            p = {"weight": f32(rng.uniform(-0.5, 0.5, size=(c_t, c_s))),
                 "bias": f32(rng.uniform(-0.5, 0.5, size=c_t))}
            params.append(p)
            state.update({f"projectors.{i}.weight": p["weight"], f"projectors.{i}.bias": p["bias"]})
        inp = {**logits, "student_feats": fs, "teacher_feats": ft}
        pair = [projector_pair(s, t, p, target) for s, t, p in zip(fs, ft, params)]
        base, dist = soft_parts(logits, opts)
        feat = opts["beta"] * sum(pair) / len(pair)
        pairs = [[0, 0], [11, 23]][:n_pairs]
        cases.append({"name": name, "methods": ["projectorkd"], "options": opts, "pairs": pairs,
                      "student_channels": [c_s] * n_pairs, "teacher_channels": [c_t] * n_pairs, "inputs": inp,
                      "state": state, "pair_losses": pair,
                      "expected": {"loss": base + dist + feat, "loss_base": base, "loss_dist": dist,
                                   "loss_feat": feat}})

    doc = {"about": "Golden values for pipeline_steps.distillation.methods (float64 numpy reference with explicit "
                     "loops); "
                    "regenerate with tests/data/make_loss_golden.py. Feature maps are [B, C, H, W]; 'state' "
                    "overrides the named parameters of the built method before the forward.",
           "cases": tolist(cases)}
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {OUT} ({len(cases)} cases)")


if __name__ == "__main__":
    main()
