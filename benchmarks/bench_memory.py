"""Peak memory of extraction + reduction at 32 and 2,048 images (it should not grow with N).

Each size runs in a fresh process (so peak RSS is its own): a DeiT-Tiny-shaped ViT (random init,
12 blocks, 192 channels, 14x14 tokens: activations [12, N, 192, 14, 14]) extracts every block on N
generated 224x224 images into the activations NPZ (streamed to disk batch by batch), then the
reduction reads it back chunk by chunk in two passes and computes entropy, spectrum and magnitude.

    .venv/bin/python benchmarks/bench_memory.py            # 32 and 2048 images
    .venv/bin/python benchmarks/bench_memory.py --sizes 32 512
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


class _GeneratedImages:
    """N images generated on demand from their index (nothing is held in memory)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        import torch

        g = torch.Generator().manual_seed(i)
        return torch.randn(3, 224, 224, generator=g), 0


def measure(n_images: int, batch_size: int, chunk_images: int) -> dict:
    import torch

    from pipeline_steps.analysis.activations import ActivationsFile, write_activations
    from pipeline_steps.models.build import create_model
    from pipeline_steps.models.layers import resolve_layers
    from pipeline_steps.analysis.reductions import reduce_activations

    torch.set_num_threads(2)
    model = create_model({"arch": "deit_tiny_patch16_224", "kwargs": {},
                          "weights": {"source": "random", "seed": 0, "tag": None, "path": None}})
    layers = resolve_layers(model, "all")
    loader = torch.utils.data.DataLoader(_GeneratedImages(n_images), batch_size=batch_size)
    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent) as tmp:
        npz = Path(tmp) / "acts.npz"
        start = time.perf_counter()
        write_activations(npz, model, loader, layers, {"model": {"arch": "deit_tiny_patch16_224"}})
        extract_s = time.perf_counter() - start
        rss_after_extract = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        size_mb = npz.stat().st_size / 2**20
        shape = ActivationsFile(npz).shape(0)
        start = time.perf_counter()
        values, _ = reduce_activations(npz, chunk_images=chunk_images, progress=False)
        reduce_s = time.perf_counter() - start
    return {"n_images": n_images, "layer_shape": list(shape), "npz_mb": round(size_mb, 1),
            "extract_s": round(extract_s, 1), "reduce_s": round(reduce_s, 1),
            "peak_rss_after_extract_mb": round(rss_after_extract, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rows": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 2048])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--chunk-images", type=int, default=32)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child, args.batch_size, args.chunk_images)))
        return
    results = []
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--batch-size", str(args.batch_size),
                              "--chunk-images", str(args.chunk_images)], capture_output=True, text=True,
                             check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| images | activations NPZ | extract | reduce | peak RSS after extract | peak RSS (extract + reduce) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['n_images']} | {r['npz_mb']:.0f} MB | {r['extract_s']:.1f} s | {r['reduce_s']:.1f} s | "
              f"{r['peak_rss_after_extract_mb']:.0f} MB | {r['peak_rss_mb']:.0f} MB |")
    ratio = results[-1]["peak_rss_mb"] / results[0]["peak_rss_mb"]
    print(f"\npeak RSS ratio {results[-1]['n_images']} vs {results[0]['n_images']} images: {ratio:.3f} (aim <= 1.2)")


if __name__ == "__main__":
    main()
