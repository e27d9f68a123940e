"""What a number was computed with: library versions, device, CPU model and vector ISA, threads, processes.

A CPU training run of this pipeline is bit-for-bit reproducible on the same software and hardware settings,
but not across them: the thread count, the CPU's vector instruction set (AVX-512 vs AVX2) and the CPU model
itself (an Intel Xeon and an AMD EPYC, both AVX-512, same threads) change the floating-point summation order
of PyTorch's kernels, and a few ulps in one step grow over thousands of steps into different weights and
accuracies (measured: benchmarks/cpu_determinism.py, BENCHMARKS.md). So every
training run records the environment of each of its attempts (``environment.json`` in the run directory) and
the headline file quotes them: a reader whose numbers differ can see whether their setting does.
"""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

import torch

__all__ = ["describe", "summarise"]

#: Distributions whose versions decide the numbers.
_PACKAGES = ("torch", "timm", "numpy")


def _cpu_model() -> str:
    """The CPU's marketing name (Linux), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: torch.device | str = "cpu", processes: int = 1) -> dict[str, Any]:
    """The settings this process computes with.

    Args:
        device: The device training runs on.
        processes: How many processes train together (DDP world size).

    Returns:
        ``versions`` (torch, timm, numpy), ``device`` ("cpu" or the CUDA device name), ``cpu`` (model name),
        ``cpu_isa`` (the vector ISA PyTorch dispatches its CPU kernels to, e.g. ``AVX512``), ``threads``
        (intra-op threads per process) and ``processes``. Plain JSON values.
    """
    device = torch.device(device)
    return {
        # torch's own version names its build (e.g. 2.14.1+cu130), the distribution's does not; str(): the
        # TorchVersion subclass would not load back from a resume state under weights_only.
        "versions": {name: str(torch.__version__) if name == "torch" else metadata.version(name)
                     for name in _PACKAGES},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu": _cpu_model(),
        "cpu_isa": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "processes": int(processes),
    }


def summarise(record: dict[str, Any]) -> str:
    """One line for people: ``torch 2.14.1, timm 1.0.31, numpy 2.4.6; cpu AMD EPYC (AVX512), 2 threads x 1 process``.

    On CPU the line names the CPU model, which changes the bits as the ISA does (the module's docstring).
    """
    versions = ", ".join(f"{k} {v}" for k, v in record["versions"].items())
    where = record["device"] if record["device"] != "cpu" else f"cpu {record['cpu']} ({record['cpu_isa']})"
    processes = record["processes"]
    return (f"{versions}; {where}, {record['threads']} thread{'s' * (record['threads'] != 1)} x {processes} "
            f"process{'es' * (processes != 1)}")
