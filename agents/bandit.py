"""A bandit over the curriculum's target bins (or label gates): the cheap alternative to the PPO agent.

It learns during the real run, one pull per epoch with `curriculum_reward` as the pay-off, so it needs no proxy runs;
its whole state is three sums per bin, saved in `last.pt`. The algorithm is Gaussian Thompson sampling (Thompson 1933;
Agrawal & Goyal 2013, "Further optimal regret bounds for Thompson sampling"): each bin's mean reward has a normal
posterior, and every epoch pulls the bin whose posterior draw is largest.

    prior           mu_i ~ N(0, prior_sd^2)
    noise           sigma^2 = pooled within-bin variance of the rewards (prior_sd^2 until two bins repeat)
    posterior       precision_i = 1 / prior_sd^2 + n_i / sigma^2,  mean_i = (sum_i / sigma^2) / precision_i
    discount        every sum is multiplied by `discount` before a new reward enters (1: all epochs count alike)

Why not Exp3 (the adversarial bandit of Graves et al. 2017's automated curriculum): its importance-weighted estimates
need many more pulls than a run has epochs; on a surrogate with noise as large as the gap between bins it found the
best of 5 bins within 100 pulls far less often than Thompson sampling (tests/test_bandit.py holds the surrogate).
A training run's reward drifts (large accuracy gains early, small late); `discount` < 1 forgets old epochs, at the
price of noisier estimates.
"""

from __future__ import annotations

import math

import numpy as np

from agents.base import Agent, Decision
from common.errors import UserError

PROBABILITY_DRAWS = 4000  # Monte Carlo draws behind `probabilities()` (reporting only; pulls use one draw)


class ThompsonBandit:
    """Gaussian Thompson sampling over `arms` bins: `draw(seed)` picks one, `update(arm, reward)` learns from it."""

    def __init__(self, arms: int, prior_sd: float = 5.0, discount: float = 1.0):
        if arms < 2 or prior_sd <= 0 or not 0 < discount <= 1:
            raise ValueError(f"the bandit needs arms >= 2, prior_sd > 0, 0 < discount <= 1 (got {arms}, {prior_sd}, "
                             f"{discount})")  # fmt: skip
        self.arms, self.prior_sd, self.discount = arms, prior_sd, discount
        self.counts, self.sums, self.squares = np.zeros(arms), np.zeros(arms), np.zeros(arms)

    def noise_variance(self) -> float:
        """Pooled within-bin variance: the spread of one bin's rewards, not the gap between bins."""
        pulled = self.counts > 0
        dof = self.counts.sum() - pulled.sum()
        if dof < 2:
            return self.prior_sd**2
        within = self.squares[pulled] - self.sums[pulled] ** 2 / self.counts[pulled]
        return max(float(within.sum()) / dof, 1e-6 * self.prior_sd**2)

    def posterior(self) -> tuple[np.ndarray, np.ndarray]:
        """Each bin's posterior mean and standard deviation."""
        noise = self.noise_variance()
        precision = 1 / self.prior_sd**2 + self.counts / noise
        return self.sums / noise / precision, 1 / np.sqrt(precision)

    def draw(self, seed: int) -> int:
        """The bin of the largest posterior draw, from a generator of its own seed (a resumed run draws the same)."""
        mean, sd = self.posterior()
        return int(np.argmax(np.random.default_rng(seed).normal(mean, sd)))

    def probabilities(self) -> np.ndarray:
        """How often each bin would be pulled now (Monte Carlo over the posterior, fixed seed: deterministic)."""
        mean, sd = self.posterior()
        draws = np.random.default_rng(0).normal(mean, sd, size=(PROBABILITY_DRAWS, self.arms))
        return np.bincount(draws.argmax(axis=1), minlength=self.arms) / PROBABILITY_DRAWS

    def update(self, arm: int, reward: float) -> None:
        if not math.isfinite(reward):
            raise ValueError(f"the bandit's reward must be finite (got {reward})")
        for sums in (self.counts, self.sums, self.squares):
            sums *= self.discount
        self.counts[arm] += 1
        self.sums[arm] += reward
        self.squares[arm] += reward * reward

    def state_dict(self) -> dict:
        return {"counts": self.counts.tolist(), "sums": self.sums.tolist(), "squares": self.squares.tolist()}

    def load_state_dict(self, state: dict) -> None:
        if len(state["counts"]) != self.arms:
            raise ValueError(f"a saved bandit over {len(state['counts'])} bins cannot steer {self.arms} bins")
        self.counts, self.sums, self.squares = (np.asarray(state[k], dtype=np.float64) for k in ("counts", "sums",
                                                                                                "squares"))  # fmt: skip


class BanditAgent(Agent):
    """`--agent bandit`: Thompson sampling over the environment's arms (--bins targets, or gate --arms), one pull per
    epoch with the environment's reward as the pay-off, learning during the run itself."""

    name = "bandit"
    summary = "bandit: Thompson sampling over --bins targets, learning during the run (no proxy runs, one run's cost)"
    default_bins, default_proxy_runs, seed_purpose = 5, 0, "bandit"  # 5: the reference's count; it must try each

    def __init__(self, bandit: ThompsonBandit, arms: list, kind: str):
        """`arms`: what each arm is (a target in [0, 1], or a label gate), named `kind` ("target" or "gate")."""
        self.bandit, self.arms, self.kind = bandit, arms, kind

    @classmethod
    def check_config(cls, config) -> None:
        """It learns during the run, over one of --bins targets: the PPO agent's other options are refused."""
        conflicts = [
            (config.pretrain_episodes > 0, "--pretrain-episodes (it runs no proxy runs: it learns during the run)"),
            (config.policy is not None, "--policy (it replays a PPO agent.zip)"),
            (config.action != "discrete", "--action box (the bandit picks one of --bins targets)"),
            (config.control_temperature, "--control-temperature (the bandit picks only the target)"),
        ]
        for conflict, flag in conflicts:
            if conflict:
                raise UserError(f"--agent bandit does not take {flag}; drop it, or use --agent ppo.")

    @classmethod
    def create(cls, config, env) -> BanditAgent:
        arms, kind = (list(env.gates), "gate") if env.gates else ([float(t) for t in env.targets], "target")
        return cls(ThompsonBandit(len(arms), prior_sd=config.bandit_prior_sd, discount=config.bandit_discount), arms,
                   kind)  # fmt: skip

    def decide(self, observation, learn, seed):
        arm = self.bandit.draw(seed)  # the observation plays no part: the bandit's arm is its largest posterior draw
        return Decision(arm, arm)

    def learn(self, step, seed):
        self.bandit.update(int(step.decision.action), step.reward)

    def belief(self) -> dict:
        """How often it would now pull each arm (`bandit_p<target>` or `bandit_p<gate>`) and its most likely arm."""
        probabilities = self.bandit.probabilities()
        best = int(np.argmax(probabilities))
        names = [f"{arm:g}" if self.kind == "target" else arm for arm in self.arms]
        columns = {f"bandit_best_{self.kind}": self.arms[best], "bandit_best_probability": float(probabilities[best])}
        columns.update({f"bandit_p{name}": float(p) for name, p in zip(names, probabilities, strict=True)})
        return columns

    def state_dict(self) -> dict:
        return self.bandit.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.bandit.load_state_dict(state)
