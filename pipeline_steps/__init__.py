"""Distillation Dynamics pipeline: analysis and distillation of Vision Transformers.

Public library modules: :mod:`pipeline_steps.analysis.metrics`, :mod:`pipeline_steps.data`,
:mod:`pipeline_steps.models`, :mod:`pipeline_steps.analysis.activations`. Every pipeline step is a module
with a ``run(...)`` function and a thin CLI, invoked as ``python -m pipeline_steps <step> ...``.
"""

__version__ = "0.1.0"
