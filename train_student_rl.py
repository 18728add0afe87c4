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
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.logger import configure
from stable_baselines3.common.utils import obs_as_tensor

from bookkeeping import MetricsLog, atomic_write, field, is_main_process, open_run_folder, start_run
from curriculum_dataloader import TARGETED
from engine import Experiment, broadcast_from_main, end_distributed, epoch_seed
from errors import UserError, run_cli
from rl_curriculum_env import CurriculumEnv
from train_student import Config, check_config


@dataclass
class RLConfig(Config):
    # the reference row: teacher-only KD on the 60% of the data nearest the agent's target
    label_weight: float = field(0.0, "weight of the label CE (the reference's RL row: 0, teacher only)")
    curriculum: str = field("adaptive", "strategy the agent's target steers", choices=TARGETED)
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


BUFFER_FIELDS = ("observations", "actions", "rewards", "returns", "episode_starts", "values", "log_probs", "advantages")


def make_agent(config: RLConfig, env: CurriculumEnv) -> PPO:
    agent = PPO(
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
    agent.set_logger(configure(None, [""]))
    return agent


def load_agent(path: str, env: CurriculumEnv) -> PPO:
    if not Path(path).is_file():
        raise UserError(f"--policy {path} does not exist; pass the agent.zip of a train_student_rl.py run.")
    try:
        agent = PPO.load(path, device="cpu")
    except Exception as err:  # another zip, a truncated file, another library version: one message for all
        raise UserError(
            f"cannot load --policy {path} ({err}); pass the agent.zip of a train_student_rl.py run."
        ) from None
    if agent.action_space != env.action_space or agent.observation_space != env.observation_space:
        raise UserError(
            f"{path} was trained with another action space ({agent.action_space}); "
            "pass the same --action, --bins and --control-temperature as the run that trained it."
        )
    return agent


def choose(agent: PPO, observation: np.ndarray, learn: bool, seed: int):
    """The policy's action for one epoch: sampled while learning (with its value and log-probability for PPO),
    the mode when replaying. Seeded per step, so a resumed run samples what the uninterrupted one would."""
    torch.manual_seed(seed)
    if not learn:
        return agent.predict(observation, deterministic=True)[0], None, None, None
    agent.policy.set_training_mode(False)
    with torch.no_grad():
        action, value, log_prob = agent.policy(obs_as_tensor(observation[None], agent.device))
    action = action.cpu().numpy()
    box = isinstance(agent.action_space, spaces.Box)
    env_action = np.clip(action, agent.action_space.low, agent.action_space.high) if box else action
    if isinstance(agent.action_space, spaces.Discrete):
        action = action.reshape(-1, 1)
    return env_action[0], action, value, log_prob


def update(agent: PPO, next_observation: np.ndarray, done: bool, seed: int) -> None:
    """PPO's update on a full rollout: returns and advantages with GAE, then `agent_epochs` passes (stable-baselines3's
    collect_rollouts ending and train, one epoch-long step at a time)."""
    with torch.no_grad():
        last_value = agent.policy.predict_values(obs_as_tensor(next_observation[None], agent.device))
    agent.rollout_buffer.compute_returns_and_advantage(last_values=last_value, dones=np.array([done]))
    np.random.seed(seed % 2**32)  # the buffer's minibatch order
    torch.manual_seed(seed)
    agent.train()
    agent.rollout_buffer.reset()


def agent_state(agent: PPO) -> dict:
    """Everything that makes the agent continue exactly: weights, optimiser, timestep count and the partial rollout."""
    buffer = agent.rollout_buffer
    return {
        "policy": agent.policy.state_dict(),
        "optimizer": agent.policy.optimizer.state_dict(),
        "num_timesteps": agent.num_timesteps,
        "n_updates": agent._n_updates,
        "buffer": {name: getattr(buffer, name).copy() for name in BUFFER_FIELDS},
        "buffer_pos": buffer.pos,
        "buffer_full": buffer.full,
    }


def load_agent_state(agent: PPO, state: dict) -> None:
    agent.policy.load_state_dict(state["policy"])
    agent.policy.optimizer.load_state_dict(state["optimizer"])
    agent.num_timesteps, agent._n_updates = state["num_timesteps"], state["n_updates"]
    buffer = agent.rollout_buffer
    for name, value in state["buffer"].items():
        setattr(buffer, name, value.copy())
    buffer.pos, buffer.full = state["buffer_pos"], state["buffer_full"]


def steer(agent: PPO, env: CurriculumEnv, config: RLConfig, resume: dict | None = None) -> None:
    """Train the student for `episodes` runs, one epoch per agent step; learn online unless replaying (--policy).
    After every epoch last.pt holds the student, the environment's counters and the agent, so a kill loses at most
    the epoch in progress."""
    learn, main = not config.policy, is_main_process()
    if resume is None:
        if env.log:  # a resumed run killed before its first last.pt may have logged rows: it starts over
            env.log.truncate(0)
        observation, episode_start = env.reset(seed=config.seed)[0], True
    else:
        env.load_state(resume["env"], resume)
        observation, episode_start = resume["observation"], resume["episode_start"]
        if learn:
            load_agent_state(agent, resume["agent"])
    while env.episodes_done < config.episodes:
        if env.run.epoch >= config.epochs:  # resumed right after an episode ended
            observation, episode_start = env.reset()[0], True
        step = epoch_seed(config.seed, env.experiment.config.epochs * env.episode + env.run.epoch)
        if main:  # the agent lives on rank 0; the other ranks train their shard with its action
            env_action, action, value, log_prob = choose(agent, observation, learn, step)
        env_action = broadcast_from_main(env_action if main else None)
        next_observation, reward, done, _, _ = env.step(env_action)
        if learn and main:
            agent.rollout_buffer.add(observation[None], action, np.array([reward]), np.array([episode_start]), value,
                                     log_prob)  # fmt: skip
            agent.num_timesteps += 1
            if agent.rollout_buffer.full:
                update(agent, next_observation, done, step)
        observation, episode_start = next_observation, done
        rl_state = {"env": env.state_dict(), "observation": observation, "episode_start": episode_start}
        if learn:
            rl_state["agent"] = agent_state(agent)
        env.run.end_epoch(env.history[-1], rl_state)


def check_rl_config(config: RLConfig) -> None:
    check_config(config)
    rules = [
        (config.episodes >= 1 and config.agent_steps >= 2, "--episodes must be >= 1 and --agent-steps >= 2"),
        (config.bins >= 2, "--bins must be >= 2"),
        (config.agent_epochs >= 1, "--agent-epochs must be >= 1"),
        (config.agent_lr > 0, "--agent-lr must be > 0"),
        (0 < config.gamma <= 1, "--gamma must lie in (0, 1] (a discount per epoch)"),
        (config.ent_coef >= 0, "--ent-coef must be >= 0"),
    ]
    for ok, message in rules:
        if not ok:
            raise UserError(message + ".")
    if config.policy and not Path(config.policy).is_file():
        raise UserError(f"--policy {config.policy} does not exist; pass the agent.zip of a train_student_rl.py run.")
    if config.policy and not zipfile.is_zipfile(config.policy):
        raise UserError(f"--policy {config.policy} is not a zip file; pass the agent.zip of a train_student_rl.py run.")


def default_out(config: RLConfig) -> str:
    return f"runs/rl-{config.student}-lw{config.label_weight:g}-s{config.seed}"


def main(argv=None) -> None:
    config, checkpoint = start_run(RLConfig, argv, "train_student_rl.py", __doc__, default_out, check_rl_config)
    experiment = Experiment(config)
    log = MetricsLog(Path(config.out))  # writes nothing before its first row
    env = CurriculumEnv(experiment, config.action, config.bins, config.control_temperature, log)
    agent = load_agent(config.policy, env) if config.policy else make_agent(config, env)
    folder = open_run_folder(config, "train_student_rl.py")  # only now: a --policy of another space is refused first
    steer(agent, env, config, checkpoint)
    if not config.policy and is_main_process():
        atomic_write(folder / "agent.zip", agent.save)
    results = env.completed_run.finish()
    if is_main_process():
        print(json.dumps(results))
    end_distributed()


if __name__ == "__main__":
    run_cli(main)
