"""Speed of the layer-wise reductions against the literal reference implementations.

On the paper's CaiT-S24 activation shape [24, 32, 384, 14, 14] float32 (seeded normal data with a few
massive channels, as in real ViTs; see make_activations), times:

  (a) the reference entropy loop (one np.histogram per token vector; run once: 5-10 s, machine-dependent),
  (b) pipeline_steps.analysis.metrics.channel_entropy,
  (c) the reference loop + numpy FFT spectrum + numpy magnitude,
  (d) channel_entropy + channel_spectrum + activation_magnitude,
  (e) the streaming route: RangeAccumulator + MetricAccumulator over chunks of 8 images,

checks that the results agree and prints a markdown table with the speedups. Run from the repository root:

    .venv/bin/python benchmarks/bench_reductions.py

Timings on a shared machine are noisy: ours are the best of ``--repeats`` runs, the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the oracle lives with the tests
import metrics_oracle as ref  # noqa: E402
from pipeline_steps.analysis.metrics import (
    MetricAccumulator, RangeAccumulator, activation_magnitude, channel_entropy, channel_spectrum,
)


def make_activations(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Seeded normal activations whose spread grows with depth (std 1 -> 4, like a residual stream); from
    the 4th layer on, three channels hold massive values (+-50..100) at ~2% of the tokens, as in real ViTs.
    The global range is then set by those few outliers, as the paper's global-range entropy is."""
    rng = np.random.default_rng(seed)
    acts = rng.standard_normal(shape, dtype=np.float32)
    n_layers, n_images, c, height, width = shape
    massive = rng.choice(c, size=3, replace=False)
    for layer in range(n_layers):
        acts[layer] *= np.float32(1 + 3 * layer / max(1, n_layers - 1))
        if layer >= 3:
            where = rng.random((n_images, height, width)) < 0.02
            for ch in massive:
                values = rng.uniform(50, 100, size=int(where.sum())) * rng.choice([-1, 1], size=int(where.sum()))
                acts[layer, :, ch][where] = values.astype(np.float32)
    return acts


def best_of(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def ours_all(acts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return channel_entropy(acts), channel_spectrum(acts), activation_magnitude(acts)


def ours_streaming(acts: np.ndarray, chunk: int = 8) -> dict:
    n_layers, n_images = acts.shape[:2]
    ranges = RangeAccumulator(n_layers)
    for i in range(0, n_images, chunk):
        for layer in range(n_layers):
            ranges.update(layer, acts[layer, i:i + chunk])
    acc = MetricAccumulator(n_layers, ranges=[ranges.value_range("global", l) for l in range(n_layers)])
    for i in range(0, n_images, chunk):
        for layer in range(n_layers):
            acc.update(layer, acts[layer, i:i + chunk])
    return acc.result()


def spectrum_float64(acts: np.ndarray) -> np.ndarray:
    """Ground truth: the reference spectrum in float64, one layer at a time to bound memory."""
    c = acts.shape[2]
    return np.stack([np.abs(np.fft.fft(layer.astype(np.float64), axis=1) / c).mean(axis=(0, 2, 3))
                     for layer in acts])


def max_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.abs(b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=5, default=[24, 32, 384, 14, 14],
                        metavar=("L", "B", "C", "H", "W"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="runs of our functions (best is reported)")
    args = parser.parse_args()

    acts = make_activations(tuple(args.shape), args.seed)
    load_before = os.getloadavg()
    print(f"shape {tuple(args.shape)} float32, {acts.nbytes / 1e6:.0f} MB; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), numpy {np.__version__}")

    t_ref_entropy, e_ref = best_of(lambda: ref.channel_entropy(acts), 1)
    t_ref_spectrum, s_ref = best_of(lambda: ref.channel_spectrum(acts), 1)
    t_ref_magnitude, m_ref = best_of(lambda: ref.activation_magnitude(acts), 1)
    t_entropy, e_ours = best_of(lambda: channel_entropy(acts), args.repeats)
    t_spectrum, s_ours = best_of(lambda: channel_spectrum(acts), args.repeats)
    t_magnitude, m_ours = best_of(lambda: activation_magnitude(acts), args.repeats)
    t_all, (e_all, s_all, m_all) = best_of(lambda: ours_all(acts), args.repeats)
    t_stream, streamed = best_of(lambda: ours_streaming(acts), args.repeats)
    load_after = os.getloadavg()

    s_exact = spectrum_float64(acts)
    m_exact = np.abs(acts.astype(np.float64)).mean(axis=(1, 2, 3, 4))
    t_ref_all = t_ref_entropy + t_ref_spectrum + t_ref_magnitude

    rows = [
        ("(a) reference entropy loop (np.histogram per vector)", t_ref_entropy, ""),
        ("(b) channel_entropy", t_entropy, f"{t_ref_entropy / t_entropy:.0f}x vs (a)"),
        ("reference numpy FFT spectrum", t_ref_spectrum, ""),
        ("channel_spectrum", t_spectrum, f"{t_ref_spectrum / t_spectrum:.1f}x vs numpy FFT"),
        ("reference numpy magnitude", t_ref_magnitude, ""),
        ("activation_magnitude", t_magnitude, f"{t_ref_magnitude / t_magnitude:.1f}x vs numpy"),
        ("(c) reference loop + numpy FFT + numpy magnitude", t_ref_all, ""),
        ("(d) our three functions", t_all, f"{t_ref_all / t_all:.0f}x vs (c)"),
        ("(e) streaming: Range+MetricAccumulator, 8-image chunks", t_stream,
         f"{t_ref_all / t_stream:.0f}x vs (c)"),
    ]
    print("\n| step | time (s) | speedup |\n|---|---:|---:|")
    for name, seconds, speedup in rows:
        print(f"| {name} | {seconds:.3f} | {speedup} |")

    print("\nagreement:")
    print(f"  entropy  max |ours - reference loop| = {np.max(np.abs(e_ours - e_ref)):.1e} bits "
          f"(streaming: {np.max(np.abs(streamed['entropy'] - e_ref)):.1e}; three-together run: "
          f"{np.max(np.abs(e_all - e_ref)):.1e})")
    print(f"  spectrum max rel diff vs numpy float32 FFT = {max_rel(s_ours, s_ref):.1e}, "
          f"vs float64 FFT = {max_rel(s_ours, s_exact):.1e} "
          f"(numpy float32 FFT vs float64: {max_rel(s_ref, s_exact):.1e}; "
          f"streaming vs one-shot: {max_rel(np.stack(streamed['spectrum']), s_all):.1e})")
    print(f"  magnitude max rel diff vs numpy float32 mean = {max_rel(m_ours, m_ref):.1e}, "
          f"vs float64 = {max_rel(m_ours, m_exact):.1e} "
          f"(streaming vs one-shot: {max_rel(streamed['magnitude'], m_all):.1e})")
    print(f"  entropy profile (bits): {np.array2string(e_ours, precision=3, max_line_width=200)}")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1-min)")


if __name__ == "__main__":
    main()
