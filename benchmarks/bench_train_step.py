"""Time of one training step per distillation method, relative to SoftKD, on the default preset's models.

One step is what :func:`pipeline_steps.training.loop.train` does per batch: the teacher's logits and paired
features (from the cache, as the default preset runs, or live under ``no_grad``), the student's forward
with its paired block outputs, the method's loss, backward, and the AdamW step. Models: params.yaml's
teacher (ViT depth 12, width 128, patch 8 on 32x32) and student (depth 6, width 64), batch 128, random
weights (speed does not depend on them). Run from the repository root:

    .venv/bin/python benchmarks/bench_train_step.py [--threads 1] [--steps 30] [--repeats 5]

Timings on a shared machine are noisy: each figure is the median over ``--repeats`` rounds of the mean
step time over ``--steps`` steps, methods interleaved within each round; the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import yaml

from pipeline_steps.config import validate_params
from pipeline_steps.distillation.methods import build_method
from pipeline_steps.distillation.layer_pairs import parse_layer_pairs, phase_pairs
from pipeline_steps.models.build import create_model
from pipeline_steps.models.layers import block_channels, num_blocks
from pipeline_steps.models.remedies import student_spec_for
from pipeline_steps.training.recipe import Recipe, build_optimizer
from pipeline_steps.training.teacher_targets import TeacherTargets, compute_teacher_cache
from pipeline_steps.training.loop import Trainee

#: (label, method, layers, student architecture) timed; SoftKD first, the baseline. The phase runs' pairs are
#: those phase:<name> resolves to on these models (6 / 12 blocks): expansion of the default teacher's
#: increasing profile = every block by relative depth; compression of a U with its minimum at block 4.
CASES = [
    ("SoftKD", "softkd", None, "base"),
    ("SpectralKD F1", "spectralkd", "F1", "base"),
    ("SpectralKD L1", "spectralkd", "L1", "base"),
    ("SpectralKD F1 L1", "spectralkd", "F1 L1", "base"),
    ("ProjectorKD F1", "projectorkd", "F1", "base"),
    ("ProjectorKD L1", "projectorkd", "L1", "base"),
    ("ProjectorKD F1 L1", "projectorkd", "F1 L1", "base"),
    ("SpectralKD phase:expansion (6 pairs)", "spectralkd", phase_pairs(0, 11, 6, 12), "base"),
    ("SpectralKD phase:compression (2 pairs)", "spectralkd", phase_pairs(0, 4, 6, 12), "base"),
    ("Lift (SpectralKD L1)", "lift", "L1", "lift"),
    ("WideLast (MSE L1)", "widelast", "L1", "widelast"),
    ("SoftKD, Lift student", "softkd", None, "lift"),
    ("SoftKD, WideLast student", "softkd", None, "widelast"),
]


def build_case(params: dict, method: str, layers: str | list | None, architecture: str, teacher: torch.nn.Module,
               images: torch.Tensor, cached: bool) -> tuple[Trainee, torch.optim.Optimizer, TeacherTargets]:
    recipe = Recipe.from_params(params["distill"]["train"])
    spec = student_spec_for({**params["student"]["model"], "weights": {"source": "random", "seed": 0}},
                            architecture, teacher.embed_dim)
    student = create_model(spec)
    pairs = (list(layers) if isinstance(layers, list)
             else parse_layer_pairs(layers, num_blocks(student), num_blocks(teacher)) if layers else [])
    s_channels, t_channels = block_channels(student), block_channels(teacher)
    objective = build_method(method, pairs=pairs, student_channels=[s_channels[s] for s, _ in pairs],
                             teacher_channels=[t_channels[t] for _, t in pairs])
    t_layers = [t for _, t in pairs]
    if cached:
        data = torch.utils.data.TensorDataset(images, torch.zeros(len(images), dtype=torch.long))
        targets = TeacherTargets(t_layers, cache=compute_teacher_cache(teacher, data, t_layers, progress=False))
    else:
        targets = TeacherTargets(t_layers, model=teacher)
    trainee = Trainee(student, objective).train()
    return trainee, build_optimizer(trainee, recipe), targets


def step(trainee: Trainee, optimizer: torch.optim.Optimizer, targets: TeacherTargets, images: torch.Tensor,
         labels: torch.Tensor, indices: torch.Tensor) -> None:
    t_logits, t_feats = targets(images, indices)
    loss = trainee(images, labels, t_logits, t_feats or None)["loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the default preset: 1 per job)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = validate_params(yaml.safe_load(open(args.params)))
    teacher_spec = {**params["teacher"]["model"], "weights": {"source": "random", "seed": 0}}
    teacher = create_model(teacher_spec).eval()
    batch = params["distill"]["train"]["batch_size"]
    size = params["student"]["model"]["kwargs"].get("img_size", 224)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=g)
    labels = torch.randint(0, 10, (batch,), generator=g)
    indices = torch.arange(batch)

    print(f"# one training step, batch {batch}, torch {torch.__version__}, {args.threads} thread(s), "
          f"{platform.processor() or platform.machine()}, load average {os.getloadavg()[0]:.2f}")
    for cached in (True, False):
        cases = {label: build_case(params, m, layers, arch, teacher, images, cached)
                 for label, m, layers, arch in CASES}
        for case in cases.values():  # warm-up
            for _ in range(3):
                step(*case, images, labels, indices)
        rounds: dict[str, list[float]] = {label: [] for label in cases}
        for _ in range(args.repeats):
            for label, case in cases.items():
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    step(*case, images, labels, indices)
                rounds[label].append((time.perf_counter() - t0) / args.steps)
        base = statistics.median(rounds["SoftKD"])
        print(f"\nteacher outputs: {'cached (default preset)' if cached else 'live teacher forward'}\n")
        print("| method | step (ms) | vs SoftKD |")
        print("|---|--:|--:|")
        for label, times in rounds.items():
            med = statistics.median(times)
            print(f"| {label} | {1000 * med:.1f} | {med / base:.3f}x |")


if __name__ == "__main__":
    main()
