"""KD + a curriculum whose target difficulty a PPO agent picks every epoch (the reference's fifth row).

    python train_student_rl.py --out runs/rl                      # the reference row on timm/mini-imagenet
    python train_student_rl.py --data synthetic --teacher-checkpoint runs/table/teacher/best.pt --epochs 8
    python train_student_rl.py --policy runs/rl/agent.zip --out runs/rl-replay    # replay a trained agent

The agent (stable-baselines3 PPO) acts in rl_curriculum_env.CurriculumEnv, where one step is one training epoch, so
it sees only `epochs` steps per training run: it updates every --agent-steps epochs (the reference: 5) and learns
online during the run it steers (--episodes 1, as the reference did).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback

from engine import Experiment, MetricsLog, atomic_write, config_dict, field, parse_config, prepare_run_folder, save_json
from errors import UserError, run_cli
from rl_curriculum_env import CurriculumEnv
from train_student import Config, check_config

TARGET_STRATEGIES = ("adaptive", "soft", "mixed", "hard_mining")


@dataclass
class RLConfig(Config):
    # the reference row: teacher-only KD on the 60% of the data nearest the agent's target
    label_weight: float = field(0.0, "weight of the label CE (the reference's RL row: 0, teacher only)")
    curriculum: str = field("adaptive", "strategy the agent's target steers", choices=TARGET_STRATEGIES)
    fraction: float = field(0.6, "fraction of the training set per epoch (the reference's RL run: 0.6)")
    # the agent
    action: str = field("box", "box: a continuous target; discrete: one of --bins targets", choices=("box", "discrete"))
    bins: int = field(5, "number of evenly spaced targets over [0, 1] with --action discrete (the reference: 5)")
    control_temperature: bool = field(False, "the agent also moves the KD temperature by +-0.5 within [2, 8]")
    episodes: int = field(1, "training runs the agent learns over (1: learn online during one run)")
    agent_steps: int = field(5, "epochs per PPO rollout: the agent updates every this many epochs")
    agent_epochs: int = field(10, "PPO optimisation passes over each rollout")
    agent_lr: float = field(3e-4, "PPO learning rate")
    gamma: float = field(0.9, "discount per epoch (a short horizon: about 10 epochs)")
    ent_coef: float = field(0.01, "PPO entropy bonus (keeps the agent exploring targets)")
    policy: str | None = field(None, "replay this agent.zip deterministically on a fresh run, without learning")


class StopAfterEpisodes(BaseCallback):
    """Ends learning when the environment has finished its episodes (PPO would otherwise fill its last rollout)."""

    def __init__(self, env: CurriculumEnv, episodes: int):
        super().__init__()
        self.env, self.episodes = env, episodes

    def _on_step(self) -> bool:
        return self.env.episodes_done < self.episodes


def make_agent(config: RLConfig, env: CurriculumEnv) -> PPO:
    return PPO(
        "MlpPolicy",
        env,
        n_steps=config.agent_steps,
        batch_size=config.agent_steps,
        n_epochs=config.agent_epochs,
        learning_rate=config.agent_lr,
        gamma=config.gamma,
        gae_lambda=0.9,
        ent_coef=config.ent_coef,
        policy_kwargs={"net_arch": [64, 64]},
        seed=config.seed,
        device="cpu",  # a 64x64 MLP: the GPU would only add transfers
        verbose=0,
    )


def load_agent(path: str, env: CurriculumEnv) -> PPO:
    if not Path(path).is_file():
        raise UserError(f"--policy {path} does not exist; pass the agent.zip of a train_student_rl.py run.")
    agent = PPO.load(path, device="cpu")
    if agent.action_space != env.action_space or agent.observation_space != env.observation_space:
        raise UserError(
            f"{path} was trained with another action space ({agent.action_space}); "
            "pass the same --action, --bins and --control-temperature as the run that trained it."
        )
    return agent


def replay(agent: PPO, env: CurriculumEnv, seed: int) -> None:
    """Steer one fresh training run with the agent's deterministic actions."""
    observation, _ = env.reset(seed=seed)
    done = False
    while not done:
        action, _ = agent.predict(observation, deterministic=True)
        observation, _, done, _, _ = env.step(action)


def check_rl_config(config: RLConfig) -> None:
    if config.episodes < 1 or config.agent_steps < 2 or config.bins < 2:
        raise UserError("--episodes must be >= 1, --agent-steps >= 2 and --bins >= 2.")


def main(argv=None) -> None:
    config = parse_config(RLConfig, argv, description=__doc__)
    config.out = config.out or f"runs/rl-{config.student}-lw{config.label_weight:g}-s{config.seed}"
    check_config(config)
    check_rl_config(config)
    prepare_run_folder(config.out, config.overwrite, dry_run=True)

    experiment = Experiment(config)
    folder = prepare_run_folder(config.out, config.overwrite)
    save_json(folder / "config.json", {"script": "train_student_rl.py", **config_dict(config)})
    env = CurriculumEnv(experiment, config.action, config.bins, config.control_temperature, MetricsLog(folder))
    if config.policy:
        replay(load_agent(config.policy, env), env, config.seed)
    else:
        agent = make_agent(config, env)
        agent.learn(total_timesteps=config.episodes * config.epochs, callback=StopAfterEpisodes(env, config.episodes))
        atomic_write(folder / "agent.zip", agent.save)
    results = env.completed_run.finish()
    print(json.dumps(results))


if __name__ == "__main__":
    run_cli(main)
