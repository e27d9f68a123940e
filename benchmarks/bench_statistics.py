"""Peak memory and per-checkpoint cost of the statistics beyond entropy (analysis.layer_statistics).

Activations come from the default preset's models, randomly initialised (params.yaml ``student`` and ``teacher``:
ViTs on 32x32 images, patch 8, so 4x4 tokens; student 6 blocks of width 64, teacher 12 of width 128), extracted
with :func:`~pipeline_steps.analysis.extraction.extract_activations` on a generated dataset and sample manifest,
as the evolution step does. The statistics run with the ``analysis`` settings of params.yaml (bins, range policy,
chunk_images) and the default statistics settings (bootstrap 1000, seed 0, confidence 0.95, massive thresholds
1000 and 100), with CKA against the teacher's activations on the same images.

``--memory``: for each size, the activation files are written first, then a fresh process imports the pipeline,
records its peak RSS (``ru_maxrss``: the baseline), runs ``layer_statistics(student, reference=teacher)`` and
records its peak RSS again.

``--cost``: one process, 1 torch thread (what each evolution job uses). Per checkpoint (a student of another
seed), the old evolution work (extract_activations + reduce_activations on the sample) against the same work plus
layer_statistics; interleaved, median over ``--repeats`` rounds of ``--checkpoints`` checkpoints each, after one
untimed round (the teacher's token means are cached per reference file, as over a run's checkpoints).

    .venv/bin/python benchmarks/bench_statistics.py --memory --sizes 32 2048
    .venv/bin/python benchmarks/bench_statistics.py --cost --repeats 3
    .venv/bin/python benchmarks/bench_statistics.py --profile     # cProfile of layer_statistics, 32 images
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent

#: The default statistics settings (layer_statistics' defaults; params.yaml ``analysis.statistics``).
STATISTICS = {"bootstrap": 1000, "bootstrap_seed": 0, "confidence": 0.95, "massive_min_ratio": 1000.0,
              "massive_min_magnitude": 100.0}


def _params(path: str) -> dict:
    return yaml.safe_load(open(path))


def _spec(params: dict, key: str, seed: int) -> dict:
    model = params[key]["model"]
    return {"arch": model["arch"], "kwargs": dict(model["kwargs"]),
            "weights": {"source": "random", "seed": seed, "tag": None, "path": None}}


def _analysis(params: dict) -> dict:
    a = params["analysis"]
    return {"bins": a["bins"], "range_policy": a["range_policy"], "chunk_images": a["chunk_images"]}


def _sample(directory: Path, params: dict, n_images: int) -> tuple[Path, Path, dict]:
    """A generated dataset with ``n_images`` test images and a sample manifest of all of them."""
    from pipeline_steps.data.datasets import SyntheticDataset
    from pipeline_steps.data.manifest import sample_manifest
    from pipeline_steps.data.synthetic import write_synthetic

    synthetic = dict(params["dataset"]["synthetic"], train_size=10, test_size=n_images)
    data = write_synthetic(directory / "data.npz", **synthetic, progress=False)
    manifest = directory / "manifest.parquet"
    sample_manifest(SyntheticDataset(data, "test"), n_images, "random", 0, "test", progress=False).to_parquet(manifest)
    dataset = {**params["dataset"], "synthetic": synthetic}
    return data, manifest, dataset


def _extract(params: dict, key: str, seed: int, out: Path, data: Path, manifest: Path, dataset: dict) -> None:
    from pipeline_steps.analysis.extraction import extract_activations

    extract_activations(_spec(params, key, seed), out, dataset=dataset, manifest_path=manifest,
                        layers=params["analysis"]["layers"], batch_size=params["analysis"]["batch_size"],
                        synthetic_path=data, model_key=key)


# ------------------------------------------------------------------ memory


def _memory_child(student: str, teacher: str, settings: dict) -> dict:
    import numpy  # noqa: F401
    import pandas  # noqa: F401
    import torch  # noqa: F401

    from pipeline_steps.analysis.layer_statistics import layer_statistics

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    table = layer_statistics(student, reference=teacher, **settings)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"baseline_mb": base, "peak_mb": peak, "seconds": seconds, "rows": len(table)}


def _generate_child(params_path: str, n_images: int, directory: str) -> None:
    params = _params(params_path)
    tmp = Path(directory)
    data, manifest, dataset = _sample(tmp, params, n_images)
    _extract(params, "student", 0, tmp / "student.npz", data, manifest, dataset)
    _extract(params, "teacher", 0, tmp / "teacher.npz", data, manifest, dataset)


def memory(args: argparse.Namespace) -> None:
    # This process imports neither torch nor the pipeline: a child's ru_maxrss starts from its parent's RSS at
    # the fork (Linux carries the high-water mark across exec), so the files are written by another child.
    params = _params(args.params)
    settings = {**_analysis(params), **STATISTICS}
    results = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            subprocess.run([sys.executable, __file__, "--generate-child", args.params, str(n), str(tmp)],
                           capture_output=True, text=True, check=True)
            student, teacher = tmp / "student.npz", tmp / "teacher.npz"
            sizes = student.stat().st_size / 2**20, teacher.stat().st_size / 2**20
            out = subprocess.run([sys.executable, __file__, "--memory-child", str(student), str(teacher),
                                  json.dumps(settings)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r.update(n_images=n, student_mb=sizes[0], teacher_mb=sizes[1])
        results.append(r)
        print(f"# {n} images done: {r}", file=sys.stderr, flush=True)
    print("| images | student / teacher NPZ | layer_statistics | baseline RSS (imports) | peak RSS | "
          "peak above baseline |")
    print("|--:|--:|--:|--:|--:|--:|")
    for r in results:
        print(f"| {r['n_images']:,} | {r['student_mb']:.1f} / {r['teacher_mb']:.1f} MB | {r['seconds']:.2f} s | "
              f"{r['baseline_mb']:.0f} MB | {r['peak_mb']:.0f} MB | {r['peak_mb'] - r['baseline_mb']:.0f} MB |")
    first, last = results[0], results[-1]
    print(f"\npeak RSS ratio {last['n_images']} vs {first['n_images']} images: "
          f"{last['peak_mb'] / first['peak_mb']:.3f} (aim <= 1.2); above baseline: "
          f"{(last['peak_mb'] - last['baseline_mb']) / (first['peak_mb'] - first['baseline_mb']):.2f}x")


# ------------------------------------------------------------------ cost


def cost(args: argparse.Namespace) -> None:
    import torch

    from pipeline_steps.analysis.layer_statistics import layer_statistics
    from pipeline_steps.analysis.reductions import reduce_activations

    torch.set_num_threads(args.threads)
    params = _params(args.params)
    a = params["analysis"]
    n_images = params["sample"]["n_images"]
    settings = {**_analysis(params), **STATISTICS}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, manifest, dataset = _sample(tmp, params, n_images)
        teacher = tmp / "teacher.npz"
        _extract(params, "teacher", 0, teacher, data, manifest, dataset)

        def checkpoint(seed: int, with_statistics: bool) -> float:
            npz = tmp / f"student_{seed}.npz"
            start = time.perf_counter()
            _extract(params, "student", seed, npz, data, manifest, dataset)
            reduce_activations(npz, bins=a["bins"], range_policy=a["range_policy"],
                               shape_tolerance=a["shape_tolerance"], chunk_images=a["chunk_images"],
                               model_label="run", checkpoint=f"epoch_{seed}", epoch=seed, progress=False)
            if with_statistics:
                layer_statistics(npz, reference=teacher, model_label="run", seed=0, checkpoint=f"epoch_{seed}",
                                 epoch=seed, **settings)
            seconds = time.perf_counter() - start
            npz.unlink()
            return seconds

        for seed in range(args.checkpoints):  # untimed round
            checkpoint(seed, True)
        rounds: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):
            for with_statistics in (False, True):
                total = sum(checkpoint(seed, with_statistics) for seed in range(args.checkpoints))
                rounds[with_statistics].append(total / args.checkpoints)
    old, new = statistics.median(rounds[False]), statistics.median(rounds[True])
    print(f"# {n_images} images, {args.checkpoints} checkpoints x {args.repeats} rounds, torch "
          f"{torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print("rounds (s per checkpoint): old", [round(t, 4) for t in rounds[False]], "with statistics",
          [round(t, 4) for t in rounds[True]])
    print("\n| per checkpoint | median (s) | vs old |")
    print("|---|--:|--:|")
    print(f"| old: extract + reduce | {old:.3f} | 1.00x |")
    print(f"| with layer_statistics | {new:.3f} | {new / old:.2f}x |")
    print(f"| layer_statistics alone (difference) | {new - old:.3f} | {(new - old) / old:.2f}x |")
    print(f"\ncost ratio {new / old:.2f} (aim <= 2)")


def profile(args: argparse.Namespace) -> None:
    import cProfile
    import pstats

    import torch

    from pipeline_steps.analysis.layer_statistics import layer_statistics

    torch.set_num_threads(args.threads)
    params = _params(args.params)
    settings = {**_analysis(params), **STATISTICS}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, manifest, dataset = _sample(tmp, params, params["sample"]["n_images"])
        student, teacher = tmp / "student.npz", tmp / "teacher.npz"
        _extract(params, "student", 0, student, data, manifest, dataset)
        _extract(params, "teacher", 0, teacher, data, manifest, dataset)
        layer_statistics(student, reference=teacher, **settings)  # warm-up (and the teacher's cached token means)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            layer_statistics(student, reference=teacher, **settings)
            times.append(time.perf_counter() - start)
        print(f"layer_statistics: median {1000 * statistics.median(times):.1f} ms over {args.repeats}")
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(10):
            layer_statistics(student, reference=teacher, **settings)
        prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(30)
    pstats.Stats(prof).sort_stats("cumtime").print_stats(45)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", action="store_true", help="peak RSS per sample size")
    parser.add_argument("--cost", action="store_true", help="per-checkpoint time, old step vs with statistics")
    parser.add_argument("--profile", action="store_true", help="cProfile of layer_statistics on the sample")
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoints", type=int, default=7, help="checkpoints per round (a run's default)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--generate-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate_child:
        _generate_child(args.generate_child[0], int(args.generate_child[1]), args.generate_child[2])
        return
    if args.memory_child:
        student, teacher, settings = args.memory_child
        print(json.dumps(_memory_child(student, teacher, json.loads(settings))))
        return
    if not (args.memory or args.cost or args.profile):
        parser.error("choose --memory, --cost and/or --profile")
    if args.memory:
        memory(args)
    if args.cost:
        cost(args)
    if args.profile:
        profile(args)


if __name__ == "__main__":
    main()
