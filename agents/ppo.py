"""The PPO agent (stable-baselines3) behind the agents' protocol: it learns over short proxy runs first, then replays
its most likely target in the full run (or keeps learning), one environment step per training epoch.

stable-baselines3's `learn()` collects rollouts itself; here the script's loop does (one step is a whole epoch, and a
killed run must resume mid-rollout), so `decide` samples from the policy as `collect_rollouts` would and `update`
ends a full rollout as it does (returns and advantages by GAE), then runs PPO's optimisation (`train`). Rewards are
divided by a running std kept by the agent (PPO wants unit scale), inside `update`.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.utils import obs_as_tensor

from agents.base import Agent, Decision, Step
from common.errors import UserError
from common.files import atomic_write

BUFFER_FIELDS = ("observations", "actions", "rewards", "returns", "episode_starts", "values", "log_probs", "advantages")


@dataclass(frozen=True)
class PPOSettings:
    """The PPO agent's hyperparameters (the RL script's --agent-* flags; defaults: docs/rl-agent.md)."""

    steps: int = 5  # epochs per rollout: the agent updates every this many epochs
    epochs: int = 10  # optimisation passes over each rollout
    lr: float = 3e-4
    gamma: float = 0.3
    gae_lambda: float = 0.9
    ent_coef: float = 0.03
    log_std_init: float = 0.0  # a Box action's initial log std
    normalize_reward: bool = True
    seed: int = 0

    @classmethod
    def of(cls, config) -> PPOSettings:
        return cls(config.agent_steps, config.agent_epochs, config.agent_lr, config.gamma, config.gae_lambda,
                   config.ent_coef, config.log_std_init, config.normalize_reward, config.seed)  # fmt: skip


class PPOAgent(Agent):
    """stable-baselines3's PPO (`self.ppo`), a 64x64 MLP policy on the CPU, behind the protocol."""

    name = "ppo"
    summary = "ppo: learns over proxy runs first (--pretrain-*)"
    default_bins, default_proxy_runs, seed_purpose = 11, 30, "agent-full"

    def __init__(self, settings: PPOSettings, env, ppo: PPO | None = None):
        """A fresh agent for `env`'s spaces, or the trained `ppo` to replay."""
        if ppo is None:
            policy_kwargs = {"net_arch": [64, 64]}
            if isinstance(env.action_space, spaces.Box):
                policy_kwargs["log_std_init"] = settings.log_std_init
            # on the CPU: a 64x64 MLP, for which the GPU would only add transfers
            ppo = PPO("MlpPolicy", env, n_steps=settings.steps, batch_size=settings.steps, n_epochs=settings.epochs,
                      learning_rate=settings.lr, gamma=settings.gamma, gae_lambda=settings.gae_lambda,
                      ent_coef=settings.ent_coef, policy_kwargs=policy_kwargs, seed=settings.seed,
                      device="cpu", verbose=0)  # fmt: skip
            ppo.set_logger(Logger(folder=None, output_formats=[]))  # configure() makes an SB3-<time> folder in /tmp
        self.ppo = ppo
        self.reward_scale = RunningMeanStd(shape=()) if settings.normalize_reward else None
        self.replaying = False

    @classmethod
    def check_config(cls, config) -> None:
        fix = "pass the agent.zip of a train_student_rl.py run"
        if config.policy and not Path(config.policy).is_file():
            raise UserError(f"--policy {config.policy} does not exist; {fix}.")
        if config.policy and not zipfile.is_zipfile(config.policy):
            raise UserError(f"--policy {config.policy} is not a zip file; {fix}.")
        if config.full_run == "replay" and config.pretrain_episodes == 0 and not config.policy:
            raise UserError(
                "--full-run replay needs a trained agent: give --pretrain-episodes >= 1 or --policy, "
                "or use --full-run learn (an untrained agent's most likely target is one constant)."
            )

    @classmethod
    def create(cls, config, env) -> PPOAgent:
        """The --policy agent to replay (no proxy runs, no learning), or a fresh one."""
        if config.policy:
            return cls.load(config.policy, env, PPOSettings.of(config))
        agent = cls(PPOSettings.of(config), env)
        agent.pretrains = config.pretrain_episodes > 0
        agent.learns_in_full_run = config.full_run == "learn"
        return agent

    @classmethod
    def load(cls, path: str, env, settings: PPOSettings) -> PPOAgent:
        """The agent.zip of an earlier run, to replay on `env`, whose spaces it must share. Read without unpickling
        anything: stable-baselines3's PPO.load would unpickle the zip's `data` entries (spaces, schedules, the policy
        class; code, from a file that came from anywhere). Here the policy is rebuilt from this run's own settings,
        its weights read from the zip's policy.pth with torch.load(weights_only=True), and the spaces compared with
        the plain JSON fields that describe them in `data`."""
        fix = "pass the agent.zip of a train_student_rl.py run"
        try:
            with zipfile.ZipFile(path) as archive:
                description = json.loads(archive.read("data"))
                weights = torch.load(io.BytesIO(archive.read("policy.pth")), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise UserError(
                f"--policy {path}: its policy.pth holds pickled objects, and unpickling a file can run code, so it "
                f"was not read; {fix}."
            ) from None
        except Exception as err:  # another zip, a truncated file: one message for all
            raise UserError(f"cannot load --policy {path} ({type(err).__name__}: {err}); {fix}.") from None
        for name in ("action_space", "observation_space"):
            if not same_space(description.get(name), getattr(env, name)):
                raise UserError(
                    f"{path} was trained with another {name.replace('_', ' ')} ({space_words(description.get(name))});"
                    " pass the same --action, --bins and --control-temperature as the run that trained it."
                )
        agent = cls(settings, env)
        try:
            agent.policy.load_state_dict(weights)
        except (RuntimeError, TypeError, AttributeError) as err:  # other layers or shapes than this run's policy
            raise UserError(
                f"--policy {path} holds the weights of another policy ({str(err).splitlines()[0]}); pass the agent.zip "
                "of a run with the same --action, --bins and --control-temperature."
            ) from None
        agent.replaying, agent.learns_in_full_run = True, False
        return agent

    # stable-baselines3's parts that a loop of one's own reads (docs/rl-agent.md, "Driving the agent")

    @property
    def policy(self):
        return self.ppo.policy

    @property
    def rollout_buffer(self):
        return self.ppo.rollout_buffer

    @property
    def action_space(self) -> spaces.Space:
        return self.ppo.action_space

    def decide(self, observation, learn, seed) -> Decision:
        """Sampled while learning (with its value and log-probability), the mode when replaying. Seeded per step, so
        a resumed run samples what the uninterrupted one would."""
        torch.manual_seed(seed)
        if not learn:
            return Decision(self.ppo.predict(observation, deterministic=True)[0])
        self.policy.set_training_mode(False)
        with torch.no_grad():
            action, value, log_prob = self.policy(obs_as_tensor(observation[None], self.ppo.device))
        action = action.cpu().numpy()
        box = isinstance(self.action_space, spaces.Box)
        env_action = np.clip(action, self.action_space.low, self.action_space.high) if box else action
        if isinstance(self.action_space, spaces.Discrete):
            action = action.reshape(-1, 1)
        return Decision(env_action[0], action, value, log_prob)

    def learn(self, step: Step, seed: int) -> None:
        """The transition into the rollout buffer; `update` once the buffer is full."""
        decision = step.decision
        self.rollout_buffer.add(step.observation[None], decision.action, np.array([step.reward]),
                                np.array([step.episode_start]), decision.value, decision.log_prob)  # fmt: skip
        self.ppo.num_timesteps += 1
        if self.rollout_buffer.full:
            self.update(step.next_observation, step.done, seed)

    def update(self, next_observation: np.ndarray, done: bool, seed: int) -> None:
        """PPO's update on a full rollout: returns and advantages with GAE, then `epochs` passes (stable-baselines3's
        collect_rollouts ending and train, one epoch-long step at a time)."""
        buffer = self.rollout_buffer
        if self.reward_scale is not None:
            self.reward_scale.update(buffer.rewards.reshape(-1))
            buffer.rewards = buffer.rewards / np.sqrt(self.reward_scale.var + 1e-8)
        with torch.no_grad():
            last_value = self.policy.predict_values(obs_as_tensor(next_observation[None], self.ppo.device))
        buffer.compute_returns_and_advantage(last_values=last_value, dones=np.array([done]))
        np.random.seed(seed % 2**32)  # the buffer's minibatch order
        torch.manual_seed(seed)
        self.ppo.train()
        buffer.reset()

    def state_dict(self) -> dict:
        """Everything that makes the agent continue exactly: its weights, optimiser, timestep count, partial rollout
        and reward scale."""
        buffer, scale = self.rollout_buffer, self.reward_scale
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.policy.optimizer.state_dict(),
            "num_timesteps": self.ppo.num_timesteps,
            "buffer": {name: getattr(buffer, name).copy() for name in BUFFER_FIELDS},
            "buffer_pos": buffer.pos,
            "buffer_full": buffer.full,
            "reward_scale": None if scale is None else running_std_state(scale),
        }

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.policy.optimizer.load_state_dict(state["optimizer"])
        self.ppo.num_timesteps = state["num_timesteps"]
        buffer = self.rollout_buffer
        for name, value in state["buffer"].items():
            setattr(buffer, name, np.array(value))  # a checkpoint holds it as a tensor
        buffer.pos, buffer.full = state["buffer_pos"], state["buffer_full"]
        self.reward_scale = reward_scale_of(state["reward_scale"])

    def save(self, folder: Path) -> None:
        """agent.zip, for --policy (not when replaying one)."""
        if not self.replaying:
            atomic_write(folder / "agent.zip", self.ppo.save)


def space_fields(description) -> tuple:
    """(kind, shape, n) of a space from the JSON fields stable-baselines3 writes beside the space's pickle in an
    agent.zip's `data` (":type:" is the class's repr, "_shape" a list, "n" a string); never the pickle itself."""
    if not isinstance(description, dict):
        return (None, None, None)
    kind = str(description.get(":type:", "")).rsplit(".", 1)[-1].strip("'>")
    return kind, list(description.get("_shape") or []), description.get("n")


def same_space(description, space: spaces.Space) -> bool:
    n = str(space.n) if isinstance(space, spaces.Discrete) else None
    return space_fields(description) == (type(space).__name__, list(space.shape), n)


def space_words(description) -> str:
    kind, shape, n = space_fields(description)
    return f"{kind}({n})" if n is not None else f"{kind} of shape {tuple(shape or ())}"


def running_std_state(scale: RunningMeanStd) -> dict:
    return {"mean": float(scale.mean), "var": float(scale.var), "count": float(scale.count)}


def reward_scale_of(saved) -> RunningMeanStd | None:
    """The running reward std of a checkpoint's plain numbers (one that pickled the object itself is converted by
    scripts/convert_checkpoint.py)."""
    if saved is None:
        return None
    scale = RunningMeanStd(shape=())
    scale.mean, scale.var, scale.count = np.float64(saved["mean"]), np.float64(saved["var"]), saved["count"]
    return scale
