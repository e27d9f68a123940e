"""The pipeline's steps, one module each, run as ``python -m pipeline_steps <step>``.

Each step module has ``add_arguments(parser)`` and ``main(args, params)``, which reads and checks params and
calls the module's ``run(...)``; ``run`` takes plain values and calls the library. Steps never import steps.
"""
