"""What every script leans on and no ML: one-line errors, every seed, atomic files and checkpoints, the run folder and
its lock, the metrics log, flags from dataclasses, SIGTERM, the hub check."""
