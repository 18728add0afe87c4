"""Every seed of a run, derived in one place from (seed, purpose, episode, epoch, index).

A draw depends on these numbers alone, never on what was drawn before it: a resumed run redraws what the
uninterrupted one drew, any number of DataLoader workers or processes draw alike, and two purposes never share a
stream. The formulas differ by purpose because stored results depend on them (the teacher-view store holds the logits
of the views `augment` seeds); changing one changes every later run's numbers. A leaf module: numpy, torch and the
standard library only.

| purpose | what it seeds | derived from |
|---|---|---|
| `epoch` | torch / numpy / random before an epoch's training steps | seed, epoch |
| `episode` | the training run of an RL episode that reset() starts without a seed | seed, episode |
| `agent-proxy`, `agent-full` | the agent's action sampling and PPO update at one step | seed, episode, epoch |
| `bandit` | the Thompson-sampling bandit's draw at one step (`--agent bandit`) | seed, episode, epoch |
| `augment` | a training view's random crop, flip and jitter | augmentation seed, epoch, index |
| `order` | the order of an epoch's selected samples (EpochSampler) | seed, epoch |
| `selection` | the random draws of a curriculum strategy | seed, epoch |
| `subset` | a proxy run's share of the images (index 0: training, 1: validation) | seed, index |
| `label-noise` | which training labels --label-noise replaces, and by which class | seed |
"""

from __future__ import annotations

import random
import zlib

import numpy as np
import torch

MAX_SEED = 2**32 - 1  # numpy's legacy seeding takes 32 bits
SEED_STRIDE = 100_003  # a prime above any step count: (seed, epoch) pairs never share a derived seed
AGENT_PHASES = {"agent-proxy": 0, "agent-full": 1, "bandit": 2}  # proxy, full run and bandit: streams apart
PURPOSES = ("epoch", "episode", *AGENT_PHASES, "augment", "order", "selection", "subset", "label-noise")


def derive(seed: int, purpose: str, *, episode: int = 0, epoch: int = 0, index: int = 0) -> int | list[int]:
    """The seed of one draw: an int (torch.manual_seed, seed_everything) or, for the numpy generators (`order`,
    `selection`, `subset`), the entropy list that `np.random.default_rng` takes (see `generator`)."""
    if purpose == "epoch":
        return seed * SEED_STRIDE + epoch
    if purpose == "episode":
        return seed + episode - 1  # episodes count from 1
    if purpose in AGENT_PHASES:
        return int(np.random.SeedSequence([seed, AGENT_PHASES[purpose], episode, epoch]).generate_state(1)[0])
    if purpose == "augment":
        return zlib.crc32(f"{seed}/{epoch}/{index}".encode())
    if purpose == "order":
        return [seed, epoch, 7]
    if purpose == "selection":
        return [seed, epoch]
    if purpose == "subset":
        return [seed, index]
    if purpose == "label-noise":  # one draw per seed: every run at a seed, whatever its strategy, sees the same noise
        return zlib.crc32(f"label-noise/{seed}".encode())
    raise ValueError(f"unknown seed purpose {purpose!r}; one of {PURPOSES}")


def generator(seed: int, purpose: str, **where: int) -> np.random.Generator:
    """A numpy generator seeded by `derive`."""
    return np.random.default_rng(derive(seed, purpose, **where))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
