"""Command-line entry point: ``python -m pipeline_steps <step> [options]``.

Every step takes the config the same way: ``--params FILE`` (repeatable; later files override
earlier ones) and ``--config-json JSON`` (repeatable; applied last). Snakemake rules pass exactly
the config sections a step reads as ``--config-json``; by hand, ``--params params.yaml`` is usual.
Bad input ends with ``error: <one line>`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from pipeline_steps.errors import EXIT_RETRY, Interrupted, UserError

#: CLI name -> module of :mod:`pipeline_steps.steps` (each has ``add_arguments(parser)`` and ``main(args, params)``).
STEPS = {
    "generate-data": "generate_data",
    "sample": "sample",
    "train-teacher": "train_teacher",
    "teacher-cache": "teacher_cache",
    "distill": "distill",
    "extract": "extract",
    "reduce": "reduce",
    "statistics": "statistics",
    "figures": "figures",
    "table1": "table1",
    "evolution": "evolution",
    "headline": "headline",
}


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="python -m pipeline_steps", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    modules = {}
    for name, module_name in STEPS.items():
        module = importlib.import_module(f"pipeline_steps.steps.{module_name}")
        modules[name] = module
        p = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        p.add_argument("--params", action="append", default=[], metavar="FILE",
                       help="params YAML file (repeatable; later files override earlier ones)")
        p.add_argument("--config-json", action="append", default=[], metavar="JSON",
                       help="config fragment as JSON, merged last (repeatable)")
        module.add_arguments(p)
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    from pipeline_steps.config import load_params

    parser, modules = build_parser()
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params, args.config_json)
        modules[args.step].main(args, params)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return EXIT_RETRY
    return 0


if __name__ == "__main__":
    sys.exit(main())
