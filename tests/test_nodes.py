"""The multi-node launcher (pipeline_steps.training.nodes): the commands it builds, its refusal outside SLURM.

Its run on a real 2-node allocation is tests/test_slurm_nodes.py's.
"""

from __future__ import annotations

import os
import subprocess
import sys

from pipeline_steps.training.nodes import rendezvous_port, srun_command, torchrun_command

from conftest import assert_one_line_error

STEP = ["distill", "--config-json", "{}", "--out-dir", "results/runs/a b"]


def test_srun_starts_one_task_a_node_running_this_module_again():
    assert srun_command(4, 8, 32, STEP) == [
        "srun", "--nodes=4", "--ntasks=4", "--ntasks-per-node=1", "--cpus-per-task=32", "--kill-on-bad-exit=1",
        sys.executable, "-m", "pipeline_steps.training.nodes", "--node", "--processes-per-node", "8", "--", *STEP]


def test_each_node_runs_torchrun_with_a_c10d_rendezvous_on_node_0():
    env = {"SLURM_JOB_ID": "123456", "SLURM_NNODES": "2", "SLURM_NODEID": "0"}
    head = torchrun_command(4, STEP, env, "gpu017")
    assert head == [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "4",
                    "--rdzv_backend", "c10d", "--rdzv_endpoint", "gpu017:29856", "--rdzv_id", "slurm-123456",
                    "--rdzv_conf", "is_host=true", "--max_restarts", "0", "-m", "pipeline_steps", *STEP]
    other = torchrun_command(4, STEP, {**env, "SLURM_NODEID": "1"}, "gpu017")
    assert [a for a in other if a.startswith("is_host")] == ["is_host=false"]
    assert other[:12] == head[:12]  # the same rendezvous for every node
    assert rendezvous_port(123456) == 29856 and rendezvous_port(1000) == 29400


def test_outside_a_slurm_allocation_it_refuses_in_one_line():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run([sys.executable, "-m", "pipeline_steps.training.nodes", "--nodes", "2",
                           "--processes-per-node", "1", "--", *STEP], env=env, capture_output=True, text=True,
                          timeout=60)
    assert_one_line_error(proc, "resources.nodes = 2", "--profile workflow/profiles/slurm")
    assert proc.stdout == ""
