"""How well each label gate drops the labels --label-noise replaced, from the teacher's cached logits alone (no
training): precision (the share of what a gate drops that was replaced), recall (the share of the replaced labels it
drops), the share of the untouched labels it keeps, and the share of the label term's weight left on replaced labels,
mean and range over the noise of several seeds (a run's noise is drawn from its --seed).

    python scripts/label_gates.py --teacher-checkpoint TEACHER --data DATA --label-noise 0.3 --seeds 0,1,2,3,4

DATA defaults to the calibrated lab's students' data (sweep_plans.LAB_STUDENT_DATA); TEACHER is a best.pt (the lab's
cached teacher: the path `sweep.py compare --lab calibrated` prints in its teacher log). The teacher's logits come
from (and go to) the scoring cache in --cache-dir, as a run's would.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import (
    cli,  # noqa: E402
    seeds,  # noqa: E402
)
from curriculum_dataloader import LABEL_GATES, gate_precision_recall, label_gate  # noqa: E402
from data.splits import noisy_labels  # noqa: E402
from sweeps import plans as sweep_plans  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.experiment import Experiment  # noqa: E402

COLUMNS = ("precision", "recall", "clean_kept", "noisy_weight")


def gate_table(teacher_logits, clean: np.ndarray, noise: float, run_seeds: list[int]) -> dict[str, dict]:
    """`{gate: {column: [value per seed]}}` for every gate but `none` (it drops everything)."""
    table = {gate: {column: [] for column in COLUMNS} for gate in LABEL_GATES if gate != "none"}
    classes = teacher_logits.shape[1]
    for seed in run_seeds:
        labels = noisy_labels(clean, classes, noise, seeds.derive(seed, "label-noise"))  # as data.load_data draws them
        flipped = labels != clean
        for gate, columns in table.items():
            figures = gate_precision_recall(label_gate(gate, labels, teacher_logits, flipped), flipped)
            for column in COLUMNS:
                columns[column].append(figures[column])
    return table


def cell(values: list[float]) -> str:
    values = np.asarray(values)
    if np.isnan(values).all():
        return "—"
    return f"{values.mean():.3f} [{values.min():.3f}, {values.max():.3f}]"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher-checkpoint", required=True, help="the teacher (a best.pt)")
    parser.add_argument("--data", default=sweep_plans.LAB_STUDENT_DATA, help="the students' data (default: the lab's)")
    parser.add_argument("--label-noise", type=float, default=0.3, help="share of training labels replaced")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="the runs' seeds, whose noise is measured")
    parser.add_argument("--cache-dir", default="~/.cache/kd-curriculum", help="the teacher-logit cache")
    parser.add_argument("--device", default="cpu", help="device of the teacher's pass on a cache miss")
    args = parser.parse_args(argv)
    flags = ["--data", args.data, "--teacher-checkpoint", args.teacher_checkpoint, "--cache-dir", args.cache_dir,
             "--device", args.device, "--student", "resnet10t", "--workers", "0", "--label-weight", "0.6"]  # fmt: skip
    experiment = Experiment(cli.parse_config(TrainConfig, flags))
    teacher_logits = experiment.source.scoring_logits()
    clean = np.asarray(experiment.data.train.labels)
    run_seeds = [int(seed) for seed in args.seeds.split(",")]
    table = gate_table(teacher_logits, clean, args.label_noise, run_seeds)
    accuracy = 100 * float((teacher_logits.argmax(1).numpy() == clean).mean())
    print(f"teacher top-1 on the {len(clean)} training images (clean labels): {accuracy:.1f}%; noise "
          f"{args.label_noise:g}, seeds {args.seeds}; mean [min, max] over the seeds\n")  # fmt: skip
    print("| Gate | Precision | Recall | Untouched labels kept | Label weight on replaced labels |")
    print("|---|---|---|---|---|")
    for gate, columns in table.items():
        print(f"| `{gate}` | " + " | ".join(cell(columns[column]) for column in COLUMNS) + " |")


if __name__ == "__main__":
    main()
