"""The agent can learn: with the default RLConfig, driven only through make_agent / choose / update (docs/rl-agent.md,
"Driving the agent from your own loop") in the script's own loop (train_student_rl.drive), it finds the best target of
a surrogate curriculum within 300 steps.

The surrogate has CurriculumEnv's observation and action spaces and pays the real reward (curriculum_reward) of a
simulated training run whose accuracy gain per epoch falls by 5 points per unit of distance between the epoch's target
and BEST, plus noise of 1.5 points (3 reward units). `python tests/test_agent_learns.py` prints the figure per seed.
"""

import itertools
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train_student_rl as rl  # noqa: E402
from common import seeds  # noqa: E402
from rl_curriculum_env import OBSERVATION_SIZE, curriculum_reward, squash  # noqa: E402

BEST = 0.2  # the surrogate's best target
EPOCHS, STEPS = 10, 300  # 30 episodes of 10 epochs
SEEDS = range(5)  # the reported figures (`python tests/test_agent_learns.py`); the test runs the first 3 (< 60 s)


class SurrogateCurriculum(gym.Env):
    """A simulated training run: accuracy rises by 15 * 0.75^epoch - 5 |target - BEST| points per epoch (+ noise),
    the loss falls by 15% an epoch (+ noise); the reward is curriculum_reward of those values."""

    def __init__(self, action_space: spaces.Space, bins: int):
        self.action_space, self.targets = action_space, np.linspace(0.0, 1.0, bins)
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(OBSERVATION_SIZE,), dtype=np.float32)

    def target(self, action) -> float:
        return float(self.targets[int(np.asarray(action).reshape(-1)[0])])

    def observe(self, prev_acc: float, prev_loss: float) -> np.ndarray:
        loss, prev = squash(self.loss), squash(prev_loss)
        scores = 0.5 + 0.02 * self.np_random.standard_normal(3)  # score percentiles barely move, as on real data
        vector = [self.epoch / EPOCHS, self.acc / 100, loss, (self.acc - prev_acc) / 100, loss - prev,
                  self.last_target, 0.5, 0.02, *np.sort(scores), 1 / 3]  # fmt: skip
        return np.clip(np.asarray(vector, dtype=np.float32), -1.0, 1.0)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.epoch, self.acc, self.loss, self.last_target = 0, 30.0, 2.0, 0.5
        return self.observe(self.acc, self.loss), {}

    def step(self, action):
        target = self.target(action)
        prev_acc, prev_loss = self.acc if self.epoch else 0.0, self.loss if self.epoch else float("inf")
        self.epoch += 1
        self.acc += 15 * 0.75**self.epoch - 5 * abs(target - BEST) + self.np_random.normal(0.0, 1.5)
        self.loss = self.loss * 0.85 + self.np_random.normal(0.0, 0.02)
        reward = curriculum_reward(self.acc, prev_acc, self.loss, prev_loss, self.epoch, EPOCHS)
        self.last_target = target
        observation = self.observe(prev_acc or self.acc, prev_loss if self.epoch > 1 else self.loss)
        return observation, reward, self.epoch >= EPOCHS, False, {}


def probability_near_best(agent, env: SurrogateCurriculum, observations: list) -> float:
    """The policy's mean probability, over the given observations, of a target within +-0.1 of BEST."""
    with torch.no_grad():
        probs = agent.policy.get_distribution(torch.as_tensor(np.stack(observations))).distribution.probs
    near = torch.as_tensor(np.abs(env.targets - BEST) <= 0.1 + 1e-9)
    return float(probs[:, near].sum(dim=1).mean())


def train_on_surrogate(seed: int) -> tuple[float, float]:
    """(probability near BEST before, after) STEPS agent steps of train_student_rl.drive, the script's loop."""
    config = rl.RLConfig(seed=seed)
    probe = SurrogateCurriculum(spaces.Discrete(config.bins), config.bins)
    env = SurrogateCurriculum(spaces.Discrete(config.bins), config.bins)
    agent = rl.make_agent(config, env)
    episode = [probe.reset(seed=10_000 + seed)[0]] + [probe.step(i % 3)[0] for i in range(EPOCHS - 1)]
    before = probability_near_best(agent, env, episode)
    steps = itertools.count()
    seed_of = lambda: seeds.derive(seed, "epoch", epoch=next(steps))  # noqa: E731
    rl.drive(agent, env, STEPS // EPOCHS, True, seed_of, (env.reset(seed=seed)[0], True, False))
    return before, probability_near_best(agent, env, episode)


@pytest.mark.slow
def test_default_agent_finds_the_best_target_in_300_steps():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 64x64 MLP: threads only contend
    try:
        figures = [train_on_surrogate(seed) for seed in SEEDS[:3]]
    finally:
        torch.set_num_threads(threads)
    print("P(|target - best| <= 0.1) before -> after, per seed:", [f"{a:.3f} -> {b:.3f}" for a, b in figures])
    for before, after in figures:
        assert before < 0.4  # 3 of 11 targets: about 0.27 untrained
        assert after >= 0.6


if __name__ == "__main__":
    torch.set_num_threads(1)
    for seed in SEEDS:
        start = time.perf_counter()
        before, after = train_on_surrogate(seed)
        seconds = time.perf_counter() - start
        print(f"seed {seed}: P(|target - {BEST}| <= 0.1) {before:.3f} -> {after:.3f}  ({seconds:.1f}s)")
