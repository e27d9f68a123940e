"""Distillation objectives: the paper's layer-pair notation and the registry of methods."""
