"""Training: one loop for the teacher and every student, its recipe, data order, augmentation, processes,
run directory (checkpoints, resume) and teacher targets."""
