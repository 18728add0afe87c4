"""The settings of an RL run: every flag of train_student_rl.py (`RLConfig`, train_student.py's plus the agent's, its
arms, its reward and its proxy runs), the checks of their values, and reading the twin run a twin reward names
(docs/rl-agent.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agents import AGENTS
from common.cli import field
from common.errors import UserError
from common.metrics import read_metrics
from common.run_folder import read_config
from curriculum_dataloader import LABEL_GATES, STRATEGIES
from training.config import TrainConfig, check_config

ARM_GATES = tuple(gate for gate in LABEL_GATES if gate != "oracle")  # a user has no oracle: it knows the noise


@dataclass
class RLConfig(TrainConfig):
    # not flags of this script: the agent picks every epoch's target and steers only strategies that have one
    NOT_APPLICABLE = {"target": "the agent picks every epoch's target"} | dict.fromkeys(
        ("pacing", "start_fraction", "pace_epochs"), "only easy_to_hard / hard_to_easy pace, the agent steers neither"
    )
    # the reference row: teacher-only KD on the 60% of the data nearest the agent's target
    label_weight: float = field(0.0, "weight of the label CE (the reference's RL row: 0, teacher only)")
    curriculum: str = field(
        "adaptive", "strategy the agent's target steers (with gate --arms: any strategy)", choices=tuple(STRATEGIES)
    )
    fraction: float = field(0.6, "fraction of the training set per epoch (the reference's RL run: 0.6)")
    agent: str = field(
        "ppo", "; ".join(agent.summary for agent in AGENTS.values()), choices=tuple(AGENTS), group="agent"
    )
    bins: int | None = field(
        None, "number of evenly spaced targets over [0, 1] with --action discrete (default: "
        + ", ".join(f"{agent.default_bins} for {name}" for name, agent in AGENTS.items())
        + "; a bandit must try each bin a few times within one run)",
    )  # fmt: skip
    arms: str = field(
        "targets", "targets: the agent picks one of --bins targets; or label gates, comma-separated (e.g. "
        "all,none,top2): it picks each epoch's label gate (--label-gate's choices; docs/rl-agent.md)",
    )  # fmt: skip
    reward: str = field(
        "curriculum", "curriculum: curriculum_reward (accuracy and loss changes); twin: the change of the run's lead "
        "over --reward-twin, a run of the same seed, on --reward-probe (docs/formulas.md)",
        choices=("curriculum", "twin"),
    )  # fmt: skip
    reward_twin: str | None = field(None, "--reward twin: the twin's run folder (finished, same seed, data and epochs)")
    reward_probe: str = field(
        "val_loss", "--reward twin: the validation loss compared with the twin's: val_loss (cross-entropy on the "
        "labels) or val_kd_loss (the teacher's term alone, label-free)", choices=("val_loss", "val_kd_loss"),
    )  # fmt: skip
    bandit_prior_sd: float = field(5.0, "--agent bandit: prior sd of a bin's mean reward (the reward's units)")
    bandit_discount: float = field(1.0, "--agent bandit: each past reward's weight shrinks by this per epoch (1: none)")
    # the PPO agent (defaults tuned on tests/test_agent_learns.py's surrogate: see docs/rl-agent.md)
    action: str = field(
        "discrete", "discrete: one of --bins targets; box: a continuous target", choices=("discrete", "box"),
        group="agent (PPO)",
    )  # fmt: skip
    control_temperature: bool = field(False, "the agent also moves the KD temperature by +-0.5 within [2, 8]")
    agent_steps: int = field(5, "epochs per PPO rollout: the agent updates every this many epochs")
    agent_epochs: int = field(10, "PPO optimisation passes over each rollout")
    agent_lr: float = field(3e-4, "PPO learning rate")
    gamma: float = field(0.3, "discount per epoch: a short horizon (a target shows in the next epoch or two)")
    gae_lambda: float = field(0.9, "GAE lambda of PPO's advantages")
    ent_coef: float = field(0.03, "PPO entropy bonus (keeps the agent trying targets until one pays)")
    log_std_init: float = field(0.0, "--action box: initial log std of the Gaussian policy over the action in [-1, 1]")
    normalize_reward: bool = field(True, "divide rewards by a running std kept in the agent (PPO wants unit scale)")
    pretrain_episodes: int | None = field(
        None, "proxy training runs the agent learns over before the full run (default: "
        + ", ".join(f"{agent.default_proxy_runs} for {name}" for name, agent in AGENTS.items()) + ")",
        group="proxy runs (the PPO agent's experience before the full run)",
    )  # fmt: skip
    pretrain_epochs: int = field(10, "epochs of each proxy run (the observation counts progress as a fraction)")
    pretrain_subset: float = field(0.1, "fraction of the training images a proxy run trains on")
    pretrain_val_subset: float = field(
        1.0, "fraction of the validation images a proxy run validates on (only forward passes; its accuracy is the "
        "reward, so a small share cannot rank targets: docs/rl-agent.md)",
    )  # fmt: skip
    full_run: str = field(
        "replay", "replay: the pretrained policy's most likely target every epoch; learn: keep sampling and learning",
        choices=("replay", "learn"),
    )  # fmt: skip
    episodes: int = field(1, "full training runs the agent steers (the last one's student is the result)")
    policy: str | None = field(None, "replay this agent.zip deterministically on a fresh run (no proxies, no learning)")

    def __post_init__(self):
        """The agent's own defaults of --bins and --pretrain-episodes, decided once here (config.json holds them)."""
        agent = AGENTS[self.agent]
        if self.bins is None:
            self.bins = agent.default_bins
        if self.pretrain_episodes is None:
            self.pretrain_episodes = agent.default_proxy_runs

    @property
    def gate_arms(self) -> list[str] | None:
        """The label gates the agent picks from (--arms), or None when it picks targets."""
        return None if self.arms == "targets" else [gate.strip() for gate in self.arms.split(",")]

    @property
    def label_gates(self) -> tuple[str, ...]:
        return tuple(self.gate_arms) if self.gate_arms else (self.label_gate,)


def check_rl_config(config: RLConfig) -> None:
    """Flag values an RL run cannot use, each with its fix: train_student.py's, the agent's, its arms and reward."""
    check_config(config)
    rules = [
        (config.episodes >= 1 and config.agent_steps >= 2, "--episodes must be >= 1 and --agent-steps >= 2"),
        (config.bins >= 2, "--bins must be >= 2"),
        (config.agent_epochs >= 1, "--agent-epochs must be >= 1"),
        (config.agent_lr > 0, "--agent-lr must be > 0"),
        (0 < config.gamma <= 1, "--gamma must lie in (0, 1] (a discount per epoch)"),
        (config.ent_coef >= 0, "--ent-coef must be >= 0"),
        (config.pretrain_episodes >= 0 and config.pretrain_epochs >= 1,
         "--pretrain-episodes must be >= 0 and --pretrain-epochs >= 1"),
        (0 < config.pretrain_subset <= 1 and 0 < config.pretrain_val_subset <= 1,
         "--pretrain-subset and --pretrain-val-subset must lie in (0, 1]"),
        (config.bandit_prior_sd > 0 and 0 < config.bandit_discount <= 1,
         "--bandit-prior-sd must be > 0 and --bandit-discount lie in (0, 1]"),
    ]  # fmt: skip
    for ok, message in rules:
        if not ok:
            raise UserError(message + ".")
    check_arms_and_reward(config)
    AGENTS[config.agent].check_config(config)


def check_arms_and_reward(config: RLConfig) -> None:
    """--arms (targets of a strategy that takes one, or label gates) and --reward twin's needs."""
    gates = config.gate_arms
    if gates is None and not config.strategy.takes_target:
        steered = ", ".join(name for name, kind in STRATEGIES.items() if kind.takes_target)
        raise UserError(f"--curriculum {config.curriculum} takes no target; the agent steers {steered}, or give it "
                        "label gates as --arms.")  # fmt: skip
    if gates is not None:
        if len(set(gates)) < 2 or len(set(gates)) != len(gates) or not set(gates) <= set(ARM_GATES):
            raise UserError(f"--arms {config.arms}: give targets, or two or more distinct label gates of "
                            f"{', '.join(ARM_GATES)}.")  # fmt: skip
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
TWIN_MATCH = ("data", "seed", "augment_seed", "epochs", "label_noise", "label_noise_kind", "val_label_noise", "student",
              "label_weight", "temperature", "batch_size", "lr", "weight_decay", "image_size", "min_scale", "teacher",
              "teacher_checkpoint", "teacher_weights", "pretrained", "student_weights")  # fmt: skip


def read_twin(config: RLConfig) -> list[float] | None:
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
