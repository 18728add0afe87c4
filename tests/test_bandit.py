"""The Thompson-sampling bandit: its posterior by hand, exact resume, and learning on a noisy surrogate."""

import math

import numpy as np
import pytest

from bandit import ThompsonBandit


def test_posterior_by_hand():
    bandit = ThompsonBandit(2, prior_sd=2.0)
    bandit.update(0, 1.0)
    bandit.update(0, 3.0)
    # one within-bin degree of freedom: the noise stays prior_sd^2 = 4; precision 1/4 + 2/4, mean (4 / 4) / 0.75
    mean, sd = bandit.posterior()
    assert mean == pytest.approx([4 / 3, 0.0]) and sd == pytest.approx([1 / math.sqrt(0.75), 2.0])
    bandit.update(1, 0.0)
    bandit.update(1, 2.0)
    # within-bin squares 10 - 16/2 = 2 and 4 - 4/2 = 2 over 4 - 2 dof: noise 2; precision 1/4 + 2/2 = 1.25
    assert bandit.noise_variance() == pytest.approx(2.0)
    mean, sd = bandit.posterior()
    assert mean == pytest.approx([(4 / 2) / 1.25, (2 / 2) / 1.25]) and sd == pytest.approx([1 / math.sqrt(1.25)] * 2)


def test_discount_shrinks_the_sums_before_a_new_reward():
    bandit = ThompsonBandit(3, discount=0.5)
    bandit.update(1, 4.0)
    bandit.update(2, 2.0)
    assert bandit.counts.tolist() == [0.0, 0.5, 1.0] and bandit.sums.tolist() == [0.0, 2.0, 2.0]
    assert bandit.squares.tolist() == [0.0, 8.0, 4.0]


def test_draws_are_seeded_and_resume_exactly():
    bandit = ThompsonBandit(5)
    for arm, reward in [(0, 1.0), (3, 2.5), (3, -0.5), (4, 0.3)]:
        bandit.update(arm, reward)
    copy = ThompsonBandit(5)
    copy.load_state_dict(bandit.state_dict())
    assert [copy.draw(seed) for seed in range(50)] == [bandit.draw(seed) for seed in range(50)]
    assert len({bandit.draw(seed) for seed in range(50)}) > 1  # the seed matters: it is not argmax of the means
    assert copy.probabilities() == pytest.approx(bandit.probabilities())
    with pytest.raises(ValueError, match="3 bins"):
        ThompsonBandit(3).load_state_dict(bandit.state_dict())
    with pytest.raises(ValueError, match="finite"):
        bandit.update(0, float("nan"))


def surrogate_run(seed: int, arms: int = 5, best: int = 3, steps: int = 100) -> np.ndarray:
    """The best bin pays 1 on average, every other bin 0, and each reward carries noise of sd 1: as large as the gap."""
    bandit, noise = ThompsonBandit(arms), np.random.default_rng(1000 + seed)
    for step in range(steps):
        arm = bandit.draw(seed * 1000 + step)
        bandit.update(arm, float(arm == best) + noise.normal())
    return bandit.probabilities()


def test_learns_the_best_bin_of_a_noisy_surrogate():
    best_share = [surrogate_run(seed)[3] for seed in range(20)]
    assert min(best_share) >= 0.6, best_share  # every seed: >= 0.6 of its probability on the best bin
    assert surrogate_run(0, steps=0) == pytest.approx([0.2] * 5, abs=0.03)  # before any reward: uniform
