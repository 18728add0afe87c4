"""What the RL script's agent acts on and what it is paid, beyond the defaults: its arms (targets of a strategy, or
label gates) and its reward (the seed's `curriculum_reward`, or the twin reward against a run of the same seed), the
checks of those options, and reading the twin run's logged probe loss (docs/rl-agent.md).
"""

from __future__ import annotations

from pathlib import Path

from common.errors import UserError
from common.metrics import read_metrics
from common.run_folder import read_config
from curriculum_dataloader import LABEL_GATES, TARGETED


def check_arms_and_reward(config) -> None:
    """--arms (targets of a strategy that takes one, or label gates) and --reward twin's needs."""
    gates = config.gate_arms
    if gates is None and config.curriculum not in TARGETED:
        raise UserError(f"--curriculum {config.curriculum} takes no target; the agent steers {', '.join(TARGETED)}, "
                        "or give it label gates as --arms.")  # fmt: skip
    if gates is not None:
        if len(set(gates)) < 2 or len(set(gates)) != len(gates) or not set(gates) <= set(LABEL_GATES) - {"oracle"}:
            raise UserError(f"--arms {config.arms}: give targets, or two or more distinct label gates of "
                            f"{', '.join(gate for gate in LABEL_GATES if gate != 'oracle')}.")  # fmt: skip
        conflicts = [(config.label_gate != "all", "--label-gate (the agent picks each epoch's gate)"),
                     (not 0 < config.label_weight < 1, "--label-weight 0 or 1 (there is no label term to gate)"),
                     (config.action != "discrete" or config.control_temperature,
                      "--action box or --control-temperature (an arm is a gate)")]  # fmt: skip
        for conflict, flag in conflicts:
            if conflict:
                raise UserError(f"gate --arms do not take {flag}; drop it, or use --arms targets.")
    if config.reward == "twin" and not config.reward_twin:
        raise UserError("--reward twin needs --reward-twin RUN, a finished run of the same seed, data and epochs.")
    if config.reward == "twin" and (config.pretrain_episodes or config.episodes > 1 or config.policy):
        raise UserError("--reward twin compares one run with its twin: give --pretrain-episodes 0 and no --episodes "
                        "or --policy.")  # fmt: skip


# a twin differs from the run only in what the agent decides: every setting that shapes the training otherwise
TWIN_MATCH = ("data", "seed", "augment_seed", "epochs", "label_noise", "student", "label_weight", "temperature",
              "batch_size", "lr", "weight_decay", "image_size", "min_scale", "teacher", "teacher_checkpoint",
              "teacher_weights", "pretrained", "student_weights")  # fmt: skip


def read_twin(config) -> list[float] | None:
    """--reward twin: the twin run's --reward-probe of every epoch (its metrics.csv), after checking it is a twin."""
    if config.reward != "twin":
        return None
    folder = Path(config.reward_twin)
    if not (folder / "results.json").is_file():
        raise UserError(f"--reward-twin {folder} is not a finished run (no results.json); finish it first.")
    saved = read_config(folder, "--reward-twin")
    differ = [name for name in TWIN_MATCH if saved.get(name) != getattr(config, name)]
    if differ:
        raise UserError(f"--reward-twin {folder} is no twin of this run: its {', '.join(differ)} differ; pass a run of "
                        "the same seed and settings.")  # fmt: skip
    rows = read_metrics(folder / "metrics.csv")
    if len(rows) < config.epochs or not rows[0].get(config.reward_probe):
        raise UserError(f"--reward-twin {folder} logged no {config.reward_probe} for {config.epochs} epochs; pass a "
                        "run with a teacher that finished them.")  # fmt: skip
    return [float(row[config.reward_probe]) for row in rows[: config.epochs]]


def check_bandit_config(config) -> None:
    """The bandit learns during the run, over one of --bins targets: the PPO agent's other options are refused."""
    conflicts = [
        (config.pretrain_episodes > 0, "--pretrain-episodes (it runs no proxy runs: it learns during the run)"),
        (config.policy is not None, "--policy (it replays a PPO agent.zip)"),
        (config.action != "discrete", "--action box (the bandit picks one of --bins targets)"),
        (config.control_temperature, "--control-temperature (the bandit picks only the target)"),
    ]
    for conflict, flag in conflicts:
        if conflict:
            raise UserError(f"--agent bandit does not take {flag}; drop it, or use --agent ppo.")
