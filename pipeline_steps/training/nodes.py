"""A training step over several SLURM nodes: one ``srun`` task a node, each starting one ``torchrun``.

The workflow's training rules run ``python -m pipeline_steps.training.nodes --nodes N --processes-per-node K
--cpus C -- <step arguments>`` inside the job's allocation (``sbatch --nodes=N --ntasks=N``). That process
checks it is in an allocation and replaces itself with ``srun --nodes=N --ntasks-per-node=1``, which starts
this module again on every node (``--node``); there it replaces itself with ``torchrun`` for that node's K
processes. The N torchruns meet at a c10d rendezvous hosted by the allocation's first node (its hostname,
a port derived from the job id, ``is_host`` set explicitly, so the choice does not depend on how hostnames
resolve), and form one process group of N x K ranks. The step itself sees only torchrun's environment
(:func:`pipeline_steps.training.parallel.start_processes`), so a global batch means the same on one node as
on N.

Signals: ``sbatch --signal=TERM@120`` reaches every node's torchrun (the srun step's tasks); torchrun passes
SIGTERM to its workers, which save the run's state at the end of the current step
(:mod:`pipeline_steps.training.loop`) and stop; the job fails and the workflow's retry resumes.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Mapping, Sequence

__all__ = ["main", "MODULE", "RENDEZVOUS_PORT0", "RENDEZVOUS_PORTS", "rendezvous_port", "srun_command", "torchrun_command"]

#: Rendezvous ports: RENDEZVOUS_PORT0 + (job id mod RENDEZVOUS_PORTS), so two multi-node jobs that share a
#: first node (rare: training jobs usually hold whole nodes) collide only when their ids agree mod 1000.
RENDEZVOUS_PORT0 = 29400
RENDEZVOUS_PORTS = 1000
#: This module, as ``python -m`` names it on the nodes (``__name__`` is ``__main__`` when it runs).
MODULE = "pipeline_steps.training.nodes"


def rendezvous_port(job_id: int) -> int:
    """The c10d rendezvous port of a SLURM job."""
    return RENDEZVOUS_PORT0 + job_id % RENDEZVOUS_PORTS


def srun_command(nodes: int, processes_per_node: int, cpus: int, step: Sequence[str]) -> list[str]:
    """The job's one ``srun``: a task on each of ``nodes`` nodes with ``cpus`` CPUs, each running
    ``python -m pipeline_steps.training.nodes --node`` for the step. ``--kill-on-bad-exit`` ends the other
    nodes' tasks when one fails, so a dead node does not leave the rest waiting in a collective."""
    return ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1", f"--cpus-per-task={cpus}",
            "--kill-on-bad-exit=1", sys.executable, "-m", MODULE, "--node",
            "--processes-per-node", str(processes_per_node), "--", *step]


def torchrun_command(processes_per_node: int, step: Sequence[str], env: Mapping[str, str],
                     first_node: str) -> list[str]:
    """This node's ``torchrun`` for the step, from the srun task's environment (``SLURM_JOB_ID``,
    ``SLURM_NNODES``, ``SLURM_NODEID``) and the hostname of the step's node 0."""
    job, nodes, node = int(env["SLURM_JOB_ID"]), int(env["SLURM_NNODES"]), int(env["SLURM_NODEID"])
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes),
            "--nproc_per_node", str(processes_per_node), "--rdzv_backend", "c10d",
            "--rdzv_endpoint", f"{first_node}:{rendezvous_port(job)}", "--rdzv_id", f"slurm-{job}",
            "--rdzv_conf", f"is_host={'true' if node == 0 else 'false'}",
            "--max_restarts", "0", "-m", "pipeline_steps", *step]


def _first_node(nodelist: str) -> str:
    """The first hostname of a SLURM node list (``vnode[1-2]`` -> ``vnode1``; SLURM_NODEID 0 runs there), as
    ``scontrol`` expands it."""
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return out.stdout.split()[0]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1, help="nodes of the allocation to run on")
    parser.add_argument("--processes-per-node", type=int, required=True, help="torchrun --nproc_per_node")
    parser.add_argument("--cpus", type=int, default=1, help="CPUs of each node's task (srun --cpus-per-task)")
    parser.add_argument("--node", action="store_true", help="(internal) run this node's torchrun")
    parser.add_argument("step", nargs=argparse.REMAINDER, help="-- and the pipeline_steps arguments")
    args = parser.parse_args(argv)
    step = args.step[1:] if args.step[:1] == ["--"] else args.step
    if args.node:
        nodelist = os.environ.get("SLURM_STEP_NODELIST") or os.environ["SLURM_JOB_NODELIST"]
        command = torchrun_command(args.processes_per_node, step, os.environ, _first_node(nodelist))
    else:
        if "SLURM_JOB_ID" not in os.environ:
            print(f"error: resources.nodes = {args.nodes} runs one torchrun a node through srun, inside a SLURM "
                  "allocation; run the workflow with --profile workflow/profiles/slurm, or set the training "
                  "resources' nodes to 1", file=sys.stderr)
            return 2
        command = srun_command(args.nodes, args.processes_per_node, args.cpus, step)
    sys.stdout.flush()
    os.execvp(command[0], command)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
