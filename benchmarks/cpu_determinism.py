"""Which settings change the bits of a CPU training run: repeats, thread count, the CPU's vector ISA.

Trains params.yaml's teacher (ViT depth 12, width 128, patch 8 on 32x32 inputs) for ``--steps`` AdamW steps
on a fixed, seeded batch stream, in a fresh process per setting, and prints the SHA-256 of the final weights
and the last loss. Settings:

- ``repeat``: the same process settings twice (is a run reproducible on one machine?);
- ``threads``: ``OMP_NUM_THREADS`` / ``torch.set_num_threads`` 1 vs 2 (the default teacher job uses 2,
  students 1);
- ``isa``: ``ATEN_CPU_CAPABILITY=avx2`` vs the machine's best (AVX-512 on the development machine): what a
  machine without AVX-512 (most AMD CPUs before Zen 4, many older Intel ones) runs for PyTorch's own
  vectorised kernels. ``ONEDNN_MAX_CPU_ISA=AVX2`` and ``MKL_ENABLE_INSTRUCTIONS=AVX2`` do the same for the
  oneDNN and MKL kernels (convolution, matrix products).

Run from the repository root (a few seconds per setting on an idle 2-core machine):

    .venv/bin/python benchmarks/cpu_determinism.py [--steps 20]

If two settings print different hashes, full training runs under them diverge: a few ulps in one step's
gradients grow over thousands of steps into different weights and accuracies a point or more apart.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: name -> extra environment of the child process.
SETTINGS: dict[str, dict[str, str]] = {
    "best ISA, 2 threads": {"OMP_NUM_THREADS": "2"},
    "best ISA, 2 threads (repeat)": {"OMP_NUM_THREADS": "2"},
    "best ISA, 1 thread": {"OMP_NUM_THREADS": "1"},
    "AVX2 only, 2 threads": {"OMP_NUM_THREADS": "2", "ATEN_CPU_CAPABILITY": "avx2",
                             "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}


def child(steps: int) -> None:
    """Train for ``steps`` steps and print one JSON line: weights hash, last loss, the ISA torch used."""
    import torch
    import torch.nn.functional as F
    import yaml

    from pipeline_steps.models.build import create_model
    from pipeline_steps.training.recipe import Recipe, build_optimizer

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    spec = {**params["teacher"]["model"], "weights": {"source": "random", "seed": 0}}
    model = create_model(spec).train()
    optimizer = build_optimizer(model, Recipe.from_params(params["teacher"]["train"]))
    g = torch.Generator().manual_seed(0)
    size = params["teacher"]["model"]["kwargs"]["img_size"]
    loss = torch.zeros(())
    for _ in range(steps):
        images = torch.randn(128, 3, size, size, generator=g)
        labels = torch.randint(0, 10, (128,), generator=g)
        loss = F.cross_entropy(model(images), labels, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().numpy().tobytes())
    print(json.dumps({"sha256": h.hexdigest(), "loss": float(loss), "isa": torch.backends.cpu.get_cpu_capability(),
                      "threads": torch.get_num_threads(), "torch": torch.__version__}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per setting (default 20)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.steps)
        return
    print(f"{'setting':32} {'ISA used':9} threads  last loss             weights sha256")
    for name, extra in SETTINGS.items():
        env = {**os.environ, "PYTHONPATH": str(REPO), **extra}
        out = subprocess.run([sys.executable, __file__, "--child", "--steps", str(args.steps)], env=env,
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"{name:32} {r['isa']:9} {r['threads']:7}  {r['loss']!r:20}  {r['sha256'][:16]}")
    print(f"torch {r['torch']}")


if __name__ == "__main__":
    main()
