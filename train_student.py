"""Train a student: labels only, knowledge distillation, or KD with a fixed curriculum strategy.

Defaults reproduce the reference's KD row: MobileNetV2 from scratch, distilled from an ImageNet ResNet-152 on
timm/mini-imagenet with 60% weight on the labels. Examples:

    python train_student.py --label-weight 1 --out runs/labels          # labels only
    python train_student.py --label-weight 0 --out runs/kd-teacher      # teacher only
    python train_student.py --curriculum adaptive --target 0.4          # KD + a fixed curriculum

Every flag, with its help line: training/config.py (`python train_student.py --help`); the strategies of --curriculum:
curriculum_dataloader.py.
"""

from __future__ import annotations

from pathlib import Path

from common.errors import run_cli
from common.run_folder import is_main_process, open_run_folder, results_line, start_run
from common.signals import exit_if_stop_requested
from training.config import TrainConfig, check_config, default_out
from training.devices import end_distributed
from training.experiment import Experiment, TrainingRun


def main(argv=None) -> None:
    config, checkpoint = start_run(TrainConfig, argv, "train_student.py", __doc__, default_out, check_config)
    with Experiment(config) as experiment:  # its loaders' workers stop where the block ends, however it ends
        run = TrainingRun(experiment, Path(config.out))  # builds the student: errors before the folder is touched
        open_run_folder(config, "train_student.py")
        if config.resume:
            run.load_state(checkpoint)
        for _ in range(run.epoch, config.epochs):
            run.end_epoch(run.train_epoch())
            exit_if_stop_requested(config.out, f"epoch {run.epoch}/{config.epochs}")  # SIGTERM: saved, exit 143
        results = run.finish()
    if is_main_process():
        print(results_line(results, config.out))
    end_distributed()


if __name__ == "__main__":
    run_cli(main)
