"""Estimated cost of a preset per pipeline stage: the work, its FLOPs, and GPU-hours on one H100-class GPU.

Derived, not typed: the grid, epochs, sample, checkpoints and models come from the config (``load_params`` of the
given files, later ones merged over earlier ones), FLOPs per image from the project's counter
(:func:`pipeline_steps.models.cost.inference_cost`, on the meta device), and the CPU-bound stages' times and the
per-core image decoding rates from a ``benchmarks/bench_imagefolder.py --json`` file measured on this machine.
Every other number is an assumption printed with the table (``--help`` lists the knobs).

    .venv/bin/python benchmarks/cost_model.py configs/paper.yaml
    .venv/bin/python benchmarks/cost_model.py configs/paper.yaml configs/paper_followup.yaml --mfu 0.2
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MEASURED = Path(__file__).resolve().parent / "imagefolder_2cpu.json"

#: ImageNet-1k (ILSVRC 2012): training images and validation images.
IMAGENET_TRAIN, IMAGENET_VAL = 1_281_167, 50_000


@dataclass
class Stage:
    name: str
    work: str
    flops: float  # total FLOPs (2 x MACs) of the stage's model passes
    gpu_h: float | None  # compute-bound GPU-hours (None: the stage runs on CPU as the workflow is written)
    loader_gpu_h: float | None = None  # GPU-hours if decoding + augmentation on the job's CPUs is the limit
    cpu_h: float | None = None  # CPU stage: hours on this machine's measured throughput


def _checkpoints(epochs: int, every: int) -> int:
    """Checkpoints the evolution step analyses: epoch 0, every ``every`` epochs and the last, and the best."""
    saved = {e for e in range(1, epochs + 1) if e == epochs or (every and e % every == 0)}
    return 1 + len(saved) + 1


def _student_flops(params: dict, architecture: str, size: int) -> int:
    from pipeline_steps.config import student_spec
    from pipeline_steps.models.build import meta_model
    from pipeline_steps.models.cost import inference_cost
    from pipeline_steps.models.remedies import student_spec_for

    width = int(meta_model(params["teacher"]["model"]).embed_dim)
    return inference_cost(student_spec_for(student_spec(params, 0), architecture, width), size)[1]


def cost_table(params: dict, measured: dict, *, peak_tflops: float, mfu: float, train_factor: float,
               n_train: int, n_val: int) -> list[Stage]:
    from pipeline_steps.config import distill_runs, uses_teacher_cache
    from pipeline_steps.distillation.methods import METHODS
    from pipeline_steps.models.cost import inference_cost

    gpu_flops = peak_tflops * 1e12 * mfu  # achieved FLOP/s

    def gpu_h(flops: float) -> float:
        return flops / gpu_flops / 3600

    size = int(params["dataset"]["eval_preprocess"]["crop"])
    teacher = params["teacher"]
    t_flops = inference_cost(teacher["model"], size)[1]
    n_sample = int(params["sample"]["n_images"])
    m_list, m_teacher, m_evo = measured["list"], measured["teacher"], measured["evolution"]
    train_rate, eval_rate = m_list["train_transform_img_s_per_core"], m_list["analysis_transform_img_s_per_core"]
    stages = [Stage("sampling", f"list {n_val:,} val files, read + hash {n_sample}", 0.0, None,
                    cpu_h=(m_list["list_s"] * n_val / m_list["listed_images"] + n_sample / m_list["sample_img_s"])
                    / 3600)]
    trained = teacher["model"]["weights"]["source"] == "train"
    if trained:
        tt = teacher["train"]
        flops = tt["epochs"] * (n_train * train_factor * t_flops + n_val * t_flops)
        cpus = teacher["resources"]["cpus"] / max(1, teacher["resources"]["gpus"])
        stages.append(Stage("teacher training", f"{tt['epochs']} epochs x {n_train:,} images, fwd+bwd", flops,
                            gpu_h(flops), tt["epochs"] * (n_train / train_rate + n_val / eval_rate) / cpus / 3600))
    else:
        stages.append(Stage("teacher training", f"none: {teacher['model']['weights']['source']} weights", 0.0, 0.0))
    scale = n_sample / m_teacher["images"]
    stages.append(Stage("extraction (teacher)", f"{n_sample} images, every block", n_sample * t_flops, None,
                        cpu_h=m_teacher["extract_s"] * scale / 3600))
    stages.append(Stage("reduction (teacher)", f"{n_sample} images", 0.0, None,
                        cpu_h=n_sample / measured["reduce"]["reduce_img_s"] / 3600))
    stages.append(Stage("statistics (teacher)", f"{n_sample} images", 0.0, None,
                        cpu_h=m_teacher["statistics_s"] * scale / 3600))

    runs = distill_runs(params)
    cached = uses_teacher_cache(params)
    d_res = params["distill"]["resources"]
    cpus_per_gpu = d_res["cpus"] / max(1, d_res["gpus"])
    if cached:
        flops = n_train * t_flops
        stages.append(Stage("teacher cache", f"{n_train:,} images, teacher forward", flops, gpu_h(flops),
                            n_train / eval_rate / cpus_per_gpu / 3600))
    else:
        stages.append(Stage("teacher cache", "none: augmentation on, the teacher runs on every batch", 0.0, 0.0))
    every = int(params["distill"]["train"]["checkpoint_every"])
    s_flops = {arch: _student_flops(params, arch, size) for arch in sorted({r.architecture for r in runs})}
    groups: dict[tuple, list] = {}
    for run in runs:
        # The distill step runs the teacher for a soft-target term (alpha > 0) or a feature term (DistillMethod's
        # needs_teacher_logits / needs_teacher_features); CE runs train without it.
        teacher_runs = float(run.loss_options().get("alpha", 0.0)) > 0 or METHODS[run.method].uses_features
        groups.setdefault((run.name, run.architecture, run.epochs, teacher_runs), []).append(run)
    n_checkpoints = 0
    for (name, arch, epochs, teacher_runs), members in groups.items():
        per_image = train_factor * s_flops[arch] + (t_flops if teacher_runs and not cached else 0)
        flops = len(members) * epochs * (n_train * per_image + n_val * s_flops[arch])
        loader_h = len(members) * epochs * (n_train / train_rate + n_val / eval_rate) / cpus_per_gpu / 3600
        stages.append(Stage(f"distill {name}", f"{len(members)} seed(s) x {epochs} epochs x {n_train:,} images"
                            + ("" if arch == "base" else f", {arch} student")
                            + ("" if teacher_runs else ", no teacher"), flops, gpu_h(flops), loader_h))
        n_checkpoints += len(members) * _checkpoints(epochs, every)
    flops = n_checkpoints * n_sample * s_flops["base"]
    stages.append(Stage("evolution (every checkpoint)", f"{n_checkpoints} checkpoints x {n_sample} images", flops,
                        None, cpu_h=n_checkpoints * m_evo["s_per_checkpoint"] * n_sample / m_evo["images"] / 3600))
    if trained:
        k = _checkpoints(int(teacher["train"]["epochs"]), int(teacher["train"]["checkpoint_every"]))
        per = (m_teacher["extract_s"] + m_teacher["reduce_s"] + m_teacher["statistics_s"]) * scale
        stages.append(Stage("teacher evolution", f"{k} checkpoints x {n_sample} images", k * n_sample * t_flops,
                            None, cpu_h=k * per / 3600))
    stages.append(Stage("figures, tables, headline", "reads the tables above; not measured", 0.0, None))
    return stages


def _fmt(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    return f"{x:,.{digits}f}" if x >= 10 ** -digits else f"{x:.1g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", type=Path, help="config files, later ones merged over earlier ones")
    parser.add_argument("--measured", type=Path, default=MEASURED,
                        help=f"bench_imagefolder.py results (default {MEASURED.relative_to(REPO)})")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="the GPU's dense bf16/fp16 peak, TFLOP/s (default 989: H100 SXM)")
    parser.add_argument("--mfu", type=float, default=0.25,
                        help="achieved fraction of that peak over a whole run (default 0.25)")
    parser.add_argument("--train-factor", type=float, default=3.0,
                        help="training FLOPs per image / forward FLOPs (default 3: backward = 2 x forward)")
    parser.add_argument("--train-images", type=int, default=IMAGENET_TRAIN)
    parser.add_argument("--val-images", type=int, default=IMAGENET_VAL)
    args = parser.parse_args()

    from pipeline_steps.config import load_params

    params = load_params(args.configs)
    measured = json.loads(args.measured.read_text())
    stages = cost_table(params, measured, peak_tflops=args.peak_tflops, mfu=args.mfu,
                        train_factor=args.train_factor, n_train=args.train_images, n_val=args.val_images)
    names = " + ".join(str(p) for p in args.configs)
    print(f"Cost model of {names}: {args.peak_tflops:g} TFLOP/s peak x {args.mfu:g} achieved = "
          f"{args.peak_tflops * args.mfu:g} TFLOP/s; training = {args.train_factor:g} x forward; "
          f"{args.train_images:,} training and {args.val_images:,} validation images; CPU stages at the rates "
          f"measured in {args.measured.name} ({measured['machine']['cpus']} cores, {measured['machine']['date']}).")
    print()
    print("| stage | work | PFLOP | GPU-h, compute-bound | GPU-h, if decoding is the limit | CPU-h (runs on CPU) |")
    print("|---|---|--:|--:|--:|--:|")
    for s in stages:
        print(f"| {s.name} | {s.work} | {_fmt(s.flops / 1e15)} | {_fmt(s.gpu_h)} | {_fmt(s.loader_gpu_h)} | "
              f"{_fmt(s.cpu_h, 2)} |")
    compute = sum(s.gpu_h or 0 for s in stages)
    bound = sum(max(s.gpu_h or 0, s.loader_gpu_h or 0) for s in stages)
    cpu = sum(s.cpu_h or 0 for s in stages)
    print(f"| **total** | | {_fmt(sum(s.flops for s in stages) / 1e15)} | **{_fmt(compute)}** | "
          f"**{_fmt(bound)}** (max of the two per stage) | {_fmt(cpu, 2)} |")
    print()
    others = ", ".join(f"{m:g}: {_fmt(compute * args.mfu / m)}" for m in (0.15, 0.25, 0.4) if m != args.mfu)
    print(f"Compute-bound total at other achieved fractions of peak: {others} GPU-h.")


if __name__ == "__main__":
    main()
