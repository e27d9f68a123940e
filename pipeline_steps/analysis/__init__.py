"""Layer-wise analysis: the activations file, the metrics of the paper (Eq. 1-6), profile shapes, and the
reduction of activations to tidy tables; for the teacher, every student checkpoint and the authors' tables."""
