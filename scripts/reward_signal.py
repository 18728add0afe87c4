"""How well can an agent's reward tell its arms apart? Fitted on runs that each pulled one arm every epoch (the
comparison's fixed rows): each run's reward per epoch is recomputed from its metrics.csv, for the seed's
`curriculum_reward` and for the twin reward (`twin_reward` against the same-seed twin run, on the validation
cross-entropy, on the label-free validation KD loss and on the validation accuracy), then split into an arm effect and
the residual as a bandit sees them (each arm one mean; docs/rl-agent.md):

    python scripts/reward_signal.py runs/lab-noisy/*-s*/ --arms none=all,teacher-only=none,label-gate=top2 --twin none

prints per reward: each arm's mean reward per epoch; the residual sd (pooled within arms, over epochs and seeds: what
a bandit that gives each arm one mean sees) and what is left of it once each epoch's mean over all runs is taken off
(the run's phase); the signal-to-noise, the sd of the arm means over the residual sd; the gap between the best and the
second arm and the pulls of each a two-sided test at 5% needs to see it with 80% power (2 (1.96 + 0.84)^2 (sd /
gap)^2); the sd of the per-epoch means (the phase); and the arms' order by reward against their order by final test
accuracy.
"""

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import metrics as bookkeeping  # noqa: E402
from rl_curriculum_env import curriculum_reward, twin_reward  # noqa: E402

REWARDS = ("curriculum", "twin val_loss", "twin val_kd_loss", "twin val_acc")


def probe_loss(row: dict, probe: str) -> float:
    """A metrics row's probe as a loss; accuracy as -acc / 100, so that its twin reward is in points."""
    return -0.01 * float(row[probe]) if probe == "val_acc" else float(row[probe])


def run_rewards(rows: list[dict], twin_rows: list[dict]) -> dict[str, list[float]]:
    """A run's reward of every epoch under each reward of REWARDS (the twin's: the same-seed twin run's rows)."""
    epochs = len(rows)
    rewards = {name: [] for name in REWARDS}
    prev_acc, prev_loss = 0.0, float("inf")
    for t, row in enumerate(rows):
        acc, loss = float(row["val_acc"]), float(row["train_loss"])
        rewards["curriculum"].append(curriculum_reward(acc, prev_acc, loss, prev_loss, t + 1, epochs))
        prev_acc, prev_loss = acc, loss
        for probe in ("val_loss", "val_kd_loss", "val_acc"):
            now = probe_loss(row, probe), probe_loss(twin_rows[t], probe)
            before = (probe_loss(rows[t - 1], probe), probe_loss(twin_rows[t - 1], probe)) if t else (None, None)
            rewards[f"twin {probe}"].append(twin_reward(*now, *before))
    return rewards


def pooled_sd(parts: list[np.ndarray]) -> float:
    """The sd pooled over arms that vary (an arm that is its own twin earns exactly 0 every epoch)."""
    varying = [values - values.mean() for values in parts if values.std() > 0]
    return float(np.sqrt(sum((v**2).sum() for v in varying) / sum(v.size - 1 for v in varying)))


def signal(per_arm: dict[str, np.ndarray]) -> dict:
    """`per_arm[arm]`: rewards [seeds, epochs]. Arm means, the residual sd pooled within arms (and without the
    per-epoch means), the signal-to-noise (sd of the arm means / residual sd), the best-minus-second gap and the pulls
    per arm to detect it, and the sd of the epoch means."""
    means = {arm: float(values.mean()) for arm, values in per_arm.items()}
    epoch_means = np.concatenate(list(per_arm.values())).mean(axis=0)
    residual = pooled_sd(list(per_arm.values()))
    without_phase = pooled_sd([values - epoch_means for values in per_arm.values()])
    ordered = sorted(means.values(), reverse=True)
    gap = ordered[0] - ordered[1]
    snr = float(np.std(list(means.values()), ddof=1)) / residual
    pulls = 2 * (1.96 + 0.84) ** 2 * (residual / gap) ** 2 if gap > 0 else float("inf")
    return {"means": means, "residual": residual, "without_phase": without_phase, "snr": snr, "gap": gap,
            "pulls": pulls, "phase": float(epoch_means.std(ddof=1))}  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders named <row>-s<seed>")
    parser.add_argument("--arms", required=True, help="row=arm pairs, comma-separated: which row pulled which arm")
    parser.add_argument("--twin", default="none", help="the row whose run of a seed is that seed's twin")
    args = parser.parse_args(argv)
    arms = dict(pair.split("=") for pair in args.arms.split(","))
    runs, accuracies = {}, {}  # (row, seed) -> metrics rows, test top-1 of the best-validation checkpoint
    for folder in map(Path, args.runs):
        match = re.match(r"(.+)-s(\d+)$", folder.name)
        if match and (match[1] in arms or match[1] == args.twin):
            runs[(match[1], int(match[2]))] = bookkeeping.read_metrics(folder / "metrics.csv")
            accuracies[(match[1], int(match[2]))] = json.loads((folder / "results.json").read_text())["test_acc"]
    seeds = sorted({seed for (row, seed) in runs if all((r, seed) in runs for r in [*arms, args.twin])})
    per_reward = {name: {} for name in REWARDS}
    for row, arm in arms.items():
        rewards = [run_rewards(runs[(row, seed)], runs[(args.twin, seed)]) for seed in seeds]
        for name in REWARDS:
            per_reward[name][arm] = np.array([r[name] for r in rewards])
    accuracy = {arm: statistics.fmean(accuracies[(row, seed)] for seed in seeds) for row, arm in arms.items()}
    by_accuracy = " > ".join(sorted(accuracy, key=accuracy.get, reverse=True))
    print(f"seeds {seeds}; arms {arms}; twin {args.twin}; order by test top-1 (best-val): {by_accuracy}\n")
    print("| Reward | Mean per epoch, by arm | Residual sd | Less the phase | Signal-to-noise (sd of arm means / "
          "residual sd) | Gap, best - second | Pulls per arm to see it | Sd of the epoch means (phase) | Order by "
          "reward |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name in REWARDS:
        f = signal(per_reward[name])
        means = ", ".join(f"{arm} {value:+.2f}" for arm, value in f["means"].items())
        order = " > ".join(sorted(f["means"], key=f["means"].get, reverse=True))
        print(f"| {name} | {means} | {f['residual']:.2f} | {f['without_phase']:.2f} | {f['snr']:.3f} | "
              f"{f['gap']:.2f} | {f['pulls']:.0f} | {f['phase']:.2f} | {order} |")  # fmt: skip


if __name__ == "__main__":
    main()
