"""seeds.derive: every purpose's seed, worked out by hand (stored view stores and resumed runs depend on them)."""

import numpy as np
import pytest

from common import seeds


def test_epoch_and_episode_seeds():
    assert seeds.derive(3, "epoch", epoch=2) == 3 * 100_003 + 2 == 300_011
    assert seeds.derive(0, "epoch", epoch=7) == 7
    assert seeds.derive(5, "episode", episode=1) == 5  # episodes count from 1: the first one runs on the seed itself
    assert seeds.derive(5, "episode", episode=3) == 7


def test_augment_seed_is_the_crc_of_seed_epoch_index():
    assert seeds.derive(0, "augment", epoch=1, index=2) == 1_613_764_281  # zlib.crc32(b"0/1/2")
    assert seeds.derive(7, "augment", epoch=3, index=11) == 2_904_588_153  # zlib.crc32(b"7/3/11")


def test_label_noise_seed_is_the_crc_of_the_seed_alone():
    assert seeds.derive(3, "label-noise") == 3_821_740_147  # zlib.crc32(b"label-noise/3")
    assert seeds.derive(3, "label-noise", epoch=5, episode=2) == seeds.derive(3, "label-noise")  # one draw per seed


def test_generators_draw_from_the_entropy_of_their_purpose():
    expected = {"order": [4, 2, 7], "selection": [4, 2], "subset": [4, 1]}
    for purpose, entropy in expected.items():
        drawn = seeds.generator(4, purpose, epoch=2, index=1).random(3)
        np.testing.assert_array_equal(drawn, np.random.default_rng(entropy).random(3))


def test_agent_phases_never_share_a_seed():
    proxy = {seeds.derive(0, "agent-proxy", episode=e, epoch=t) for e in range(1, 4) for t in range(10)}
    full = {seeds.derive(0, "agent-full", episode=e, epoch=t) for e in range(1, 4) for t in range(10)}
    assert len(proxy) == len(full) == 30 and not proxy & full
    assert seeds.derive(0, "agent-full", episode=1, epoch=0) == int(
        np.random.SeedSequence([0, 1, 1, 0]).generate_state(1)[0]
    )


def test_an_unknown_purpose_is_refused():
    with pytest.raises(ValueError, match="unknown seed purpose"):
        seeds.derive(0, "dropout")
