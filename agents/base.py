"""What the RL script drives: the protocol every agent follows, the table that finds one by name, and the loop that
drives any of them through an environment whose step is one training epoch.

An agent is one class: a subclass of `Agent` with a `name` is registered in AGENTS (--agent's choices), says what it
needs of the run (proxy runs first, its default number of arms, the seed stream of its decisions) and implements
`decide` (the epoch's action), `learn` (what one epoch's outcome teaches it), `belief` (metrics columns), its state
for an exact resume, and what --policy replays (`save`). docs/extending.md adds one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from common.run_folder import is_main_process
from training.devices import broadcast_from_main


@dataclass
class Decision:
    """An agent's choice for one epoch: `env_action` is what the environment's step takes; the rest is what the agent
    learns from later (PPO: the sampled action, the value and the log-probability it had; a bandit: its arm)."""

    env_action: Any
    action: Any = None
    value: Any = None
    log_prob: Any = None


@dataclass
class Step:
    """One epoch's lesson: what the agent saw and chose, and what came of it."""

    observation: np.ndarray
    episode_start: bool  # the observation opens an episode (a fresh training run)
    decision: Decision
    reward: float
    next_observation: np.ndarray
    done: bool  # the step ended the episode


AGENTS: dict[str, type[Agent]] = {}  # --agent name -> class


class Agent:
    """An agent the RL script can drive. Class attributes say what it needs of the run; `create` builds it from the
    script's settings and the environment it will act in."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # its part of --agent's help
    default_bins: ClassVar[int] = 11  # --bins when not given: the targets it picks from
    default_proxy_runs: ClassVar[int] = 0  # --pretrain-episodes when not given: proxy runs it learns over first
    seed_purpose: ClassVar[str] = "agent-full"  # the stream (common/seeds.py) of its decisions in the full run

    pretrains: bool = False  # it learns over the proxy runs before the full run
    learns_in_full_run: bool = True  # it keeps learning in the full run (else: it replays its policy's mode)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            AGENTS[cls.name] = cls

    @classmethod
    def check_config(cls, config) -> None:
        """Refuse, in one line each, the RL flags this agent cannot take."""

    @classmethod
    def create(cls, config, env) -> Agent:
        """The agent of the script's settings for `env` (its action and observation spaces)."""
        raise NotImplementedError

    def decide(self, observation: np.ndarray, learn: bool, seed: int) -> Decision:
        """The epoch's action: explored while learning, the agent's best guess when not; `seed` is the step's own
        (a resumed run decides what the uninterrupted one would have)."""
        raise NotImplementedError

    def learn(self, step: Step, seed: int) -> None:
        """Take in one epoch's outcome (called only while learning)."""
        raise NotImplementedError

    def belief(self) -> dict:
        """metrics.csv columns of what it believes after a step (none by default)."""
        return {}

    def state_dict(self) -> dict:
        """All an exact resume needs, as tensors and plain types."""
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError

    def save(self, folder: Path) -> None:
        """Write what --policy replays into the run folder (nothing by default)."""


def drive(agent: Agent, env, episodes: int, learn: bool, seed_of, start: tuple, after_step=None) -> None:
    """The agent's loop, the one the script and its tests run: per step `decide`, one env step and, when learning,
    `learn` from it; until `episodes` more episodes have ended. `start`: (observation, episode_start, done) to go on
    from (done: reset first); `seed_of()`: the next step's seed; `after_step(observation, episode_start)` checkpoints
    a step. With several processes the agent acts on rank 0 and the other ranks train their shard with its action."""
    main = is_main_process()
    observation, episode_start, done = start
    ended = 0
    while ended < episodes:
        if done:
            observation, episode_start = env.reset()[0], True
        seed = seed_of()
        decision = agent.decide(observation, learn, seed) if main else None
        env_action = broadcast_from_main(decision.env_action if main else None)
        next_observation, reward, done, _, _ = env.step(env_action)
        if learn and main:
            agent.learn(Step(observation, episode_start, decision, reward, next_observation, done), seed)
        observation, episode_start = next_observation, done
        ended += int(done)
        if after_step is not None:
            after_step(observation, episode_start)
