"""A training run: its settings (TrainConfig), the Experiment and TrainingRun, the epoch loop, the curriculum's state,
the teacher and its logits, and where it all runs (devices, DDP, loaders)."""
