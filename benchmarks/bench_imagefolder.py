"""The ImageFolder data path at ImageNet scale: list, sample, extract, reduce, statistics, evolution.

A val folder of 10,000 generated JPEGs (10 classes x 1,000; ImageNet's common sizes, 500 x 375 most often; a smooth
random colour field, random shapes, a class tint and noise, quality 90) is written to a temporary directory (not
timed; ``--root`` reuses one). Then each measurement runs in a fresh process (its peak RSS is its own, ``ru_maxrss``;
DataLoader workers' peak is reported apart) with configs/paper.yaml's dataset and analysis settings and the steps'
own functions:

- ``list``: open the split (``open_dataset``: lists all 10,000 files), sample ``--extract-images`` of them
  (``steps.sample.run``: each chosen image read, decoded and hashed), and one core's rate of decoding +
  preprocessing with the analysis transform and with the paper recipe's training transform (RandAugment, random
  erasing);
- ``extract``: ``steps.extract.run`` (= ``extract_activations``) of the paper's teacher, CaiT-S24 at 224 px with
  random weights (same FLOPs and activation shapes as the pretrained one, no download), every block, batch 32,
  on all sampled images; before that, short runs for each ``--workers`` value, interleaved over ``--rounds``, of
  the teacher and of the paper's student (DeiT-Tiny, random weights);
- ``reduce``: ``steps.reduce.run`` on that file (entropy, spectrum, magnitude; 100 bins, global range, 32-image
  chunks);
- ``teacher``: the paper's analysis of its teacher, on its sample size (the sample's first 32 images): extract,
  reduce and ``steps.statistics.run``;
- ``evolution``: ``steps.evolution.run`` over a run directory of DeiT-Tiny checkpoints (random weights) on the
  32 images, CKA to the teacher's file, 1 torch thread (as each evolution job): seconds per checkpoint.

    .venv/bin/python benchmarks/bench_imagefolder.py --json benchmarks/imagefolder_2cpu.json
    .venv/bin/python benchmarks/bench_imagefolder.py --extract-images 256 --workers 0 2 --root /tmp/tree
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PAPER = REPO / "configs" / "paper.yaml"
TEACHER = {"arch": "cait_s24_224", "kwargs": {}, "weights": {"source": "random", "seed": 0}}
STUDENT_ARCH = "deit_tiny_patch16_224"
#: ImageNet's most common image sizes (w, h) and how often they are drawn.
SIZES = [((500, 375), 0.55), ((375, 500), 0.15), ((500, 333), 0.12), ((500, 500), 0.08), ((333, 500), 0.05),
         ((500, 400), 0.05)]
N_CLASSES = 10


# ------------------------------------------------------------------------------------------------------------
# The generated tree (the parent process: numpy and Pillow only)
# ------------------------------------------------------------------------------------------------------------

def _write_image(job: tuple[Path, int, int]) -> int:
    """One photo-like JPEG, from its index alone (so any number of processes write the same tree)."""
    import numpy as np
    from PIL import Image, ImageDraw

    path, label, index = job
    rng = np.random.default_rng(index)
    w, h = SIZES[rng.choice(len(SIZES), p=[p for _, p in SIZES])][0]
    grid = rng.integers(0, 256, size=(rng.integers(3, 9), rng.integers(3, 9), 3), dtype=np.uint8)
    img = Image.fromarray(grid).resize((w, h), Image.BICUBIC)
    tint = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256], dtype=np.int16)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 12))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        [draw.ellipse, draw.rectangle, draw.line][int(rng.integers(0, 3))]((x0, y0, x1, y1), fill=colour)
    # Integer arithmetic: float noise and a blur would make generating 10,000 images take minutes longer.
    pixels = (np.asarray(img, dtype=np.int16) * 4 + tint) // 5 + rng.integers(-10, 11, size=(h, w, 3), dtype=np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path.stat().st_size


def generate_tree(root: Path, n_images: int, processes: int) -> dict:
    """``root/val/<class>/<image>.JPEG``: ``n_images`` in :data:`N_CLASSES` classes of equal size."""
    from multiprocessing import Pool

    per_class = n_images // N_CLASSES
    jobs = [(root / "val" / f"n{label:08d}" / f"img_{label * per_class + i:08d}.JPEG", label, label * per_class + i)
            for label in range(N_CLASSES) for i in range(per_class)]
    start = time.perf_counter()
    with Pool(processes) as pool:
        sizes = pool.map(_write_image, jobs, chunksize=64)
    return {"images": len(jobs), "classes": N_CLASSES, "mean_file_kb": round(sum(sizes) / len(sizes) / 1024, 1),
            "total_mb": round(sum(sizes) / 2**20, 1), "generate_s": round(time.perf_counter() - start, 1)}


# ------------------------------------------------------------------------------------------------------------
# Measurements (each in a fresh child process)
# ------------------------------------------------------------------------------------------------------------

def _params(root: Path) -> dict:
    from pipeline_steps.config import load_params

    params = load_params([PAPER])
    params["dataset"]["imagefolder"]["root"] = str(root)
    return params


def _children_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def _peak_mb(children_before: float | None = None) -> dict:
    """Peak resident set of this process, MB, and with ``children_before`` the largest DataLoader worker's: the
    largest finished child's, if it exceeds what it was before the work (importing torch already runs a child
    of ~430 MB, so that number alone says nothing)."""
    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if children_before is not None:
        after = _children_mb()
        out["peak_rss_worker_mb"] = round(after, 1) if after > children_before else None
    return out


def _head(manifest: Path, n: int, out: Path) -> Path:
    """The manifest's first ``n`` positions (a manifest of its own)."""
    import pandas as pd

    df = pd.read_parquet(manifest)
    df[df["position"] < n].to_parquet(out)
    return out


def measure_list(root: Path, work: Path, n_sample: int) -> dict:
    import torch

    from pipeline_steps.data.datasets import open_dataset
    from pipeline_steps.steps import sample
    from pipeline_steps.training.augment import training_view
    from pipeline_steps.training.recipe import Recipe

    params = _params(root)
    start = time.perf_counter()
    dataset = open_dataset(params["dataset"], "test")
    list_s = time.perf_counter() - start
    s = params["sample"]
    start = time.perf_counter()
    sample.run(work / "manifest.parquet", dataset, n_images=n_sample, strategy=s["strategy"], seed=s["seed"],
               split=s["split"], progress=False)
    sample_s = time.perf_counter() - start
    torch.set_num_threads(1)  # one core, as one DataLoader worker
    n = 200
    start = time.perf_counter()
    for i in range(n):
        dataset[i * len(dataset) // n]
    analysis_rate = n / (time.perf_counter() - start)
    train = training_view(open_dataset(params["dataset"], "test", preprocessing="evaluation"),
                          Recipe.from_params(params["distill"]["train"]))
    start = time.perf_counter()
    for i in range(n):
        train[i * len(dataset) // n]
    train_rate = n / (time.perf_counter() - start)
    return {"listed_images": len(dataset), "list_s": round(list_s, 3), "sampled_images": n_sample,
            "sample_s": round(sample_s, 2), "sample_img_s": round(n_sample / sample_s, 1),
            "analysis_transform_img_s_per_core": round(analysis_rate, 1),
            "train_transform_img_s_per_core": round(train_rate, 1), **_peak_mb()}


def measure_extract(root: Path, work: Path, n: int, workers: int, out: Path, arch: str) -> dict:
    import torch

    from pipeline_steps.models.build import create_model
    from pipeline_steps.steps import extract

    torch.set_num_threads(2)
    params = _params(root)
    a = params["analysis"]
    manifest = _head(work / "manifest.parquet", n, work / f"manifest_{n}.parquet")
    spec = TEACHER if arch == TEACHER["arch"] else {"arch": arch, "kwargs": dict(params["student"]["model"]["kwargs"]),
                                                    "weights": {"source": "random", "seed": 0}}
    # The step builds its model itself; building one here first says how much of its time that is (a random
    # CaiT-S24's init takes seconds) and warms up what the first build pays once per process.
    start = time.perf_counter()
    create_model(spec)
    build_s = time.perf_counter() - start
    children = _children_mb()
    start = time.perf_counter()
    extract.run(spec, out, dataset=params["dataset"], manifest_path=manifest, layers=a["layers"],
                batch_size=a["batch_size"], split=params["sample"]["split"], model_key="teacher",
                num_workers=workers)
    seconds = time.perf_counter() - start
    return {"arch": arch, "images": n, "workers": workers, "threads": torch.get_num_threads(),
            "extract_s": round(seconds, 1), "extract_img_s": round(n / seconds, 2), "model_build_s": round(build_s, 1),
            "extract_img_s_without_build": round(n / (seconds - build_s), 2),
            "npz_mb": round(out.stat().st_size / 2**20), **_peak_mb(children)}


def measure_reduce(root: Path, npz: Path, work: Path) -> dict:
    import torch

    from pipeline_steps.analysis.activations import ActivationsFile
    from pipeline_steps.steps import reduce

    torch.set_num_threads(2)
    a = _params(root)["analysis"]
    n = ActivationsFile(npz).shape(0)[0]
    start = time.perf_counter()
    reduce.run(npz, work / "reductions.parquet", work / "summary.parquet", bins=a["bins"],
               range_policy=a["range_policy"], shape_tolerance=a["shape_tolerance"],
               chunk_images=a["chunk_images"], model_label="cait_s24", progress=False)
    seconds = time.perf_counter() - start
    return {"images": n, "reduce_s": round(seconds, 1), "reduce_img_s": round(n / seconds, 1), **_peak_mb()}


def measure_teacher(root: Path, work: Path) -> dict:
    """The paper's own analysis of its teacher: 32 images through extract, reduce and statistics."""
    import torch

    from pipeline_steps.steps import extract, reduce, statistics

    torch.set_num_threads(2)
    params = _params(root)
    a, n = params["analysis"], params["sample"]["n_images"]
    manifest = _head(work / "manifest.parquet", n, work / "manifest_sample.parquet")
    out = {"images": n}
    start = time.perf_counter()
    extract.run(TEACHER, work / "teacher.npz", dataset=params["dataset"], manifest_path=manifest, layers=a["layers"],
                batch_size=a["batch_size"], split=params["sample"]["split"], model_key="teacher")
    out["extract_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    reduce.run(work / "teacher.npz", work / "teacher_red.parquet", work / "teacher_red_summary.parquet",
               bins=a["bins"], range_policy=a["range_policy"], shape_tolerance=a["shape_tolerance"],
               chunk_images=a["chunk_images"], model_label="cait_s24", progress=False)
    out["reduce_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    statistics.run(work / "teacher.npz", work / "teacher_stats.parquet", work / "teacher_stats_summary.parquet",
                   analysis=a, progress=False)
    out["statistics_s"] = round(time.perf_counter() - start, 1)
    return {**out, **_peak_mb()}


def measure_evolution(root: Path, work: Path, n_checkpoints: int) -> dict:
    """``n_checkpoints`` epoch checkpoints and the best one, through the evolution step (1 thread)."""
    import torch

    from pipeline_steps.artifacts import sha256_file
    from pipeline_steps.models.build import create_model
    from pipeline_steps.models.weights import save_weights
    from pipeline_steps.steps import evolution

    torch.set_num_threads(1)
    params = _params(root)
    kwargs = dict(params["student"]["model"]["kwargs"])
    run_dir = work / "runs" / "softkd-s0"
    entries = []
    for epoch in range(n_checkpoints):
        model = create_model({"arch": STUDENT_ARCH, "kwargs": kwargs, "weights": {"source": "random", "seed": epoch}})
        rel = f"checkpoints/epoch_{epoch:04d}.safetensors"
        save_weights(model, run_dir / rel, {"arch": STUDENT_ARCH, "kwargs": kwargs, "epoch": epoch})
        entries.append({"epoch": epoch, "path": rel, "sha256": sha256_file(run_dir / rel)})
    shutil.copy(run_dir / entries[-1]["path"], run_dir / "best.safetensors")
    best = {**entries[-1], "path": "best.safetensors", "test_acc1": 0.0}
    (run_dir / "checkpoints.json").write_text(json.dumps({"run_id": "softkd-s0", "epochs": n_checkpoints - 1,
                                                          "checkpoints": entries, "best": best}))
    start = time.perf_counter()
    evolution.run(run_dir, work / "evo.parquet", work / "evo_summary.parquet", work / "evo_stats.parquet",
                  dataset=params["dataset"], analysis=params["analysis"],
                  manifest_path=work / "manifest_sample.parquet", reference=work / "teacher.npz",
                  split=params["sample"]["split"], progress=False)
    seconds = time.perf_counter() - start
    return {"checkpoints": n_checkpoints + 1, "images": params["sample"]["n_images"], "threads": 1,
            "evolution_s": round(seconds, 1), "s_per_checkpoint": round(seconds / (n_checkpoints + 1), 2),
            **_peak_mb()}


def _child(args: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(args)], env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"child {args[0]} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {args[0]}: {result}", flush=True)
    return result


def _run_child(spec: list[str]) -> dict:
    stage, root, work = spec[0], Path(spec[1]), Path(spec[2])
    if stage == "list":
        return measure_list(root, work, int(spec[3]))
    if stage == "extract":
        return measure_extract(root, work, int(spec[3]), int(spec[4]), Path(spec[5]), spec[6])
    if stage == "reduce":
        return measure_reduce(root, Path(spec[3]), work)
    if stage == "teacher":
        return measure_teacher(root, work)
    if stage == "evolution":
        return measure_evolution(root, work, int(spec[3]))
    raise ValueError(stage)


def _machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor())
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _load() -> str:
    return open("/proc/loadavg").read().strip()


class _LoadSampler:
    """The 1-minute load average every ``every`` seconds while the measurements run (the machine is shared)."""

    def __init__(self, every: float = 10.0) -> None:
        import threading

        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            self.samples.append(float(_load().split()[0]))

    def __enter__(self) -> "_LoadSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        s = self.samples or [float("nan")]
        return {"samples": len(self.samples), "min": min(s), "mean": round(sum(s) / len(s), 2), "max": max(s)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000, help="images to generate and list (default 10,000)")
    parser.add_argument("--extract-images", type=int, default=2048,
                        help="images sampled, extracted and reduced (default 2,048: what fits in ~25 min here)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2],
                        help="analysis.num_workers values compared on a short extraction (default 0 1 2)")
    parser.add_argument("--workers-images", type=int, default=96, help="images of each workers run (default 96)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the workers runs (default 2)")
    parser.add_argument("--checkpoints", type=int, default=3, help="epoch checkpoints of the evolution run")
    parser.add_argument("--root", type=Path, default=None, help="reuse (or keep) the generated tree here")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(_run_child(json.loads(args.child))))
        return

    with tempfile.TemporaryDirectory(prefix="bench_imagefolder_") as tmp:
        root = args.root or Path(tmp) / "imagenet"
        work = Path(tmp) / "work"
        work.mkdir()
        results: dict = {"machine": _machine(), "load_before_generation": _load()}
        if not (root / "val").is_dir():
            print(f"generating {args.images} JPEGs under {root} ...", flush=True)
            results["tree"] = generate_tree(root, args.images, processes=os.cpu_count() or 1)
            print(f"  {results['tree']}", flush=True)
        results["load_before"] = _load()
        start = time.perf_counter()
        with _LoadSampler() as sampler:
            results["list"] = _child(["list", str(root), str(work), str(args.extract_images)])
            results["workers"] = []
            for arch in (TEACHER["arch"], STUDENT_ARCH):
                for _ in range(args.rounds):  # interleaved: the machine's load drifts between runs
                    for w in args.workers:
                        npz = work / f"workers{w}.npz"
                        results["workers"].append(_child(["extract", str(root), str(work), str(args.workers_images),
                                                          str(w), str(npz), arch]))
                        npz.unlink()
            npz = work / "teacher_all.npz"
            results["extract"] = _child(["extract", str(root), str(work), str(args.extract_images), "0", str(npz),
                                         TEACHER["arch"]])
            results["reduce"] = _child(["reduce", str(root), str(work), str(npz)])
            npz.unlink()
            results["teacher"] = _child(["teacher", str(root), str(work)])
            results["evolution"] = _child(["evolution", str(root), str(work), str(args.checkpoints)])
        results["measure_s"] = round(time.perf_counter() - start, 1)
        results["load_after"] = _load()
        results["load_1min_during"] = sampler.summary()
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
