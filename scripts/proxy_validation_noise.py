"""Can a proxy run's validation images rank the agent's targets? Trains proxy runs (train_student_rl.py's
--pretrain-epochs on --pretrain-subset of the training images) at fixed targets over several seeds, and compares the
spread of their final validation accuracy between targets with its spread within a target, on every validation image
and on the --pretrain-subset share of them that proxies validated on before --pretrain-val-subset.

    python scripts/proxy_validation_noise.py --teacher-checkpoint TEACHER --seeds 8

The settings are the synthetic benchmark's RL row (the settings at the top of sweep_plans.py: its student data, a
resnet10t student, teacher-only KD on 60% per epoch, batch 32, 15 epochs); TEACHER is its cached teacher's best.pt.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train_student_rl  # noqa: E402
from agents.config import RLConfig  # noqa: E402
from common import cli  # noqa: E402
from data.splits import data_subset  # noqa: E402
from sweeps import plans as sweep_plans  # noqa: E402
from training.experiment import Experiment, TrainingRun  # noqa: E402
from training.loop import predict_logits  # noqa: E402

BENCH_STUDENT_DATA = sweep_plans.BENCH_STUDENT_DATA  # the benchmark, defined in sweep_plans.py
BENCH_FLAGS = ["--student", "resnet10t", "--batch-size", sweep_plans.BENCH_BATCH,
               "--workers", sweep_plans.BENCH_WORKERS, "--epochs", str(sweep_plans.BENCH_EPOCHS)]  # fmt: skip


def proxy_correctness(proxy: Experiment, target: float, seed: int) -> np.ndarray:
    """Which validation images a proxy student trained at a fixed target classifies correctly (0/1 per image)."""
    run = TrainingRun(proxy, seed=seed)
    run.refresh_scores()
    for _ in range(proxy.config.epochs):
        run.train_epoch(target)
    logits = predict_logits(run.student, proxy.val_loader, proxy.placement, "validate")
    return (logits.argmax(1).cpu() == torch.as_tensor(proxy.data.val.source.labels)).numpy()


def spread(correct: dict[float, np.ndarray], images: np.ndarray) -> dict:
    """Accuracy (percent) per target on `images`, the sd of the target means, the within-target sd of one run, and
    the binomial standard error sqrt(p (1 - p) / n) of one run's accuracy."""
    accuracy = {target: 100 * runs[:, images].mean(axis=1) for target, runs in correct.items()}
    means = np.array([acc.mean() for acc in accuracy.values()])
    p = means.mean() / 100
    return {
        "means": means,
        "between": means.std(ddof=1),
        "within": np.sqrt(np.mean([acc.var(ddof=1) for acc in accuracy.values()])),
        "binomial": 100 * np.sqrt(p * (1 - p) / len(images)),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher-checkpoint", required=True, help="the benchmark's teacher (a best.pt)")
    parser.add_argument("--data", default=BENCH_STUDENT_DATA, help="the students' data (default: the benchmark's)")
    parser.add_argument("--targets", default="0,0.25,0.5,0.75,1", help="comma-separated fixed targets")
    parser.add_argument("--seeds", type=int, default=8, help="proxy runs per target (run seeds 0 .. N-1)")
    parser.add_argument("--pretrain-epochs", default="10", help="epochs of each proxy run")
    parser.add_argument("--pretrain-subset", default="0.1", help="fraction of the training images a proxy uses")
    parser.add_argument("--cache-dir", help="teacher-logit cache (default: train_student_rl.py's)")
    args = parser.parse_args(argv)
    flags = ["--data", args.data, "--teacher-checkpoint", args.teacher_checkpoint, *BENCH_FLAGS, "--pretrain-epochs",
             args.pretrain_epochs, "--pretrain-subset", args.pretrain_subset, "--pretrain-val-subset", "1"]  # fmt: skip
    if args.cache_dir:
        flags += ["--cache-dir", args.cache_dir]
    config = cli.parse_config(RLConfig, flags)
    full = Experiment(config)
    proxy = train_student_rl.proxy_experiment(config, full)
    targets = [float(t) for t in args.targets.split(",")]
    correct = {t: np.array([proxy_correctness(proxy, t, seed) for seed in range(args.seeds)]) for t in targets}
    old_slice = data_subset(full.data, config.pretrain_subset, config.seed).val.source.indices
    print(f"{len(targets)} targets x {args.seeds} seeds, {config.pretrain_epochs} epochs on "
          f"{len(proxy.data.train)} training images; final validation accuracy (%):")  # fmt: skip
    columns = ["validation images", *(f"target {t:g}" for t in targets), "sd of target means", "sd within a target",
               "binomial SE"]  # fmt: skip
    print("| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|")
    for images in (old_slice, np.arange(len(proxy.data.val))):
        row = spread(correct, images)
        cells = [f"{m:.1f}" for m in row["means"]] + [f"{row[k]:.2f}" for k in ("between", "within", "binomial")]
        print(f"| {len(images)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
