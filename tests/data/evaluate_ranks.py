"""Evaluate a small random ViT with ``pipeline_steps.training.loop.evaluate`` and write what this rank saw.

Run by tests/test_ddp.py twice: as one process and under ``torchrun --nproc_per_node 2`` (gloo). The
evaluation set has 101 images in batches of 10: 11 batches, the last holding one image, so the two ranks
get unequal shares (6 and 5 batches) and a padding sampler would have counted duplicates.

Writes ``<out_dir>/rank<r>.json``: ``{"world", "metrics", "served"}``, where ``served`` lists the dataset
indices this rank read, in reading order.

Usage:  ``python tests/data/evaluate_ranks.py OUT_DIR``  (or under ``torchrun ... tests/data/evaluate_ranks.py``)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Dataset

from pipeline_steps.models.build import create_model
from pipeline_steps.training.loop import evaluate
from pipeline_steps.training.parallel import start_processes

N_IMAGES, BATCH_SIZE, NUM_CLASSES = 101, 10, 10
MODEL = {"arch": "vit_tiny_patch16_224", "weights": {"source": "random", "seed": 0},
         "kwargs": {"img_size": 16, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
                    "num_classes": NUM_CLASSES}}


class Recorded(Dataset):
    """Seeded random images and labels, the same in every process; remembers which indices were read."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1)
        self.images = torch.randn(N_IMAGES, 3, 16, 16, generator=g)
        self.labels = torch.randint(0, NUM_CLASSES, (N_IMAGES,), generator=g)
        self.served: list[int] = []

    def __len__(self) -> int:
        return N_IMAGES

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        self.served.append(index)
        return self.images[index], int(self.labels[index])


def main(out_dir: Path) -> None:
    procs = start_processes("cpu")
    model = create_model(MODEL)
    dataset = Recorded()
    metrics = evaluate(model, dataset, BATCH_SIZE, procs=procs)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"world": procs.world, "metrics": metrics, "served": dataset.served}
    (out_dir / f"rank{procs.rank}.json").write_text(json.dumps(record))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
