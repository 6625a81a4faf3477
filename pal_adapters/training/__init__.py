"""Training utilities: task sampling, loss weighting and distillation, metrics."""
