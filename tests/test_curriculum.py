"""Tests of curriculum_dataloader.py: selection rules, pacing, strategies, the epoch sampler, the logit cache and the
per-run curriculum state."""

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import curriculum_dataloader as cd
import models
from common.errors import UserError
from training import logit_stores as teacher
from training.curriculum import Curriculum

unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
score_arrays = arrays(np.float64, st.integers(0, 60), elements=unit) | arrays(
    np.float64,
    st.integers(0, 60),
    elements=st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]),  # many ties
)


# ----------------------------------------------------------------------------------------------------------------------
# select_around


def test_select_around_hand_worked():
    # |score - 0.5| = [0.4, 0.4, 0.0, 0.05, 0.1, 0.5]; round(0.5 * 6) = 3 nearest: indices 2, 3, 4.
    scores = np.array([0.9, 0.1, 0.5, 0.45, 0.6, 0.0])
    np.testing.assert_array_equal(cd.select_around(scores, 0.5, 0.5), [2, 3, 4])
    # round(0.7 * 6) = round(4.2) = 4: the next nearest are 0 and 1 (both 0.4 away); the tie goes to the lower index.
    np.testing.assert_array_equal(cd.select_around(scores, 0.5, 0.7), [0, 2, 3, 4])
    # target 0: the two smallest scores.
    np.testing.assert_array_equal(cd.select_around(scores, 0.0, 2 / 6), [1, 5])


def test_select_around_ties_are_deterministic():
    # All four are 0.25 from the target: the stable sort keeps the two lowest indices.
    np.testing.assert_array_equal(cd.select_around(np.array([0.25, 0.75, 0.25, 0.75]), 0.5, 0.5), [0, 1])


@settings(max_examples=300, deadline=None)
@given(score_arrays, unit, unit)
def test_select_around_properties(scores, target, fraction):
    chosen = cd.select_around(scores, target, fraction)
    assert len(chosen) == round(fraction * len(scores))
    assert np.all(np.diff(chosen) > 0)  # sorted and unique
    assert chosen.size == 0 or (chosen.min() >= 0 and chosen.max() < len(scores))
    distance = np.abs(scores - target)
    rest = np.setdiff1d(np.arange(len(scores)), chosen)
    if chosen.size and rest.size:
        assert distance[chosen].max() <= distance[rest].min()
    np.testing.assert_array_equal(cd.select_around(scores.copy(), target, fraction), chosen)
    np.testing.assert_array_equal(cd.select_around(scores.tolist(), target, fraction), chosen)  # lists work too


# ----------------------------------------------------------------------------------------------------------------------
# pacing


@pytest.mark.parametrize("kind", cd.PACINGS)
@pytest.mark.parametrize("start", [0.1, 0.25, 0.6])
def test_pacing_endpoints(kind, start):
    assert cd.pacing(0, 10, start, kind) == pytest.approx(start)
    assert cd.pacing(10, 10, start, kind) == pytest.approx(1.0)
    assert cd.pacing(25, 10, start, kind) == pytest.approx(1.0)  # stays at the full set after full_data_epoch


def test_pacing_middle_points_by_hand():
    # c0 = 0.2, T = 10, t = 5: linear 0.2 + 0.8 * 0.5 = 0.6; root sqrt(0.5 * (1 - 0.04) + 0.04) = sqrt(0.52) ~= 0.7211;
    # geometric 0.2^(1 - 0.5) = sqrt(0.2) ~= 0.4472.
    assert cd.pacing(5, 10, 0.2, "linear") == pytest.approx(0.6)
    assert cd.pacing(5, 10, 0.2, "root") == pytest.approx(math.sqrt(0.52))
    assert cd.pacing(5, 10, 0.2, "root") == pytest.approx(0.721110, abs=1e-6)
    assert cd.pacing(5, 10, 0.2, "geometric") == pytest.approx(math.sqrt(0.2))
    # root at t = 3 of T = 8 with c0 = 0.3: sqrt(3 * 0.91 / 8 + 0.09) = sqrt(0.43125)
    assert cd.pacing(3, 8, 0.3, "root") == pytest.approx(math.sqrt(3 * (1 - 0.09) / 8 + 0.09))


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(cd.PACINGS), st.integers(1, 40), st.floats(0.01, 1.0))
def test_pacing_is_monotone_and_in_range(kind, full_data_epoch, start):
    values = [cd.pacing(epoch, full_data_epoch, start, kind) for epoch in range(full_data_epoch + 5)]
    assert all(later >= earlier - 1e-12 for earlier, later in itertools.pairwise(values))
    assert all(start - 1e-12 <= value <= 1 + 1e-12 for value in values)


def test_pacing_unknown_kind():
    with pytest.raises(ValueError, match="pacing"):
        cd.pacing(1, 10, 0.2, "cosine")


# ----------------------------------------------------------------------------------------------------------------------
# the strategies


N = 1000


@pytest.fixture(scope="module")
def scores():
    return np.random.default_rng(0).random(N)


def select(strategy, scores, target=0.5, fraction=0.3, data_fraction=0.4, seed=0, size=None):
    """The strategy's first epoch; a paced one's share of the data is `data_fraction` then (its start)."""
    spec = cd.CurriculumSpec(strategy, fraction=fraction, pacing="linear", start_fraction=data_fraction,
                             full_data_epoch=10)  # fmt: skip
    pool = cd.Pool(len(scores) if size is None else size, scores, {})
    return cd.strategy_of(spec).select(1, target, pool, np.random.default_rng(seed)).indices


def test_strategy_none_selects_everything(scores):
    np.testing.assert_array_equal(select("none", scores), np.arange(N))
    np.testing.assert_array_equal(select("none", None, size=7), range(7))


@pytest.mark.parametrize("strategy", ["adaptive", "random_subset", "hard_mining", "mixed", "soft"])
@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.6, 1.0])
def test_subset_strategies_select_fraction_of_distinct_indices(strategy, fraction, scores):
    chosen = select(strategy, scores, fraction=fraction)
    assert len(chosen) == round(fraction * N)
    assert len(np.unique(chosen)) == len(chosen)
    assert chosen.size == 0 or (chosen.min() >= 0 and chosen.max() < N)
    np.testing.assert_array_equal(select(strategy, scores, fraction=fraction), chosen)  # same rng seed, same result


def test_strategies_cover_the_list():
    assert set(cd.STRATEGIES) == {
        "none", "adaptive", "easy_to_hard", "hard_to_easy", "hard_mining", "mixed", "random_subset", "soft",
        "reducible", "prioritised",
    }  # fmt: skip
    for name, strategy in cd.STRATEGIES.items():
        assert strategy.name == name and strategy.summary
        assert strategy.reads_scores or not strategy.reads_losses  # their label losses come with the scores
        assert strategy.reads_scores or not (strategy.takes_target or strategy.ranks)  # a target addresses scores
    assert list(cd.STRATEGIES)[:2] == ["none", "random_subset"]  # the sweep's order: the control right after KD


def test_adaptive_is_select_around(scores):
    np.testing.assert_array_equal(
        select("adaptive", scores, target=0.8, fraction=0.6), cd.select_around(scores, 0.8, 0.6)
    )


def test_easy_to_hard_and_hard_to_easy(scores):
    count = round(0.4 * N)
    order = np.argsort(scores)
    easy = select("easy_to_hard", scores, data_fraction=0.4)
    hard = select("hard_to_easy", scores, data_fraction=0.4)
    assert set(easy.tolist()) == set(order[:count].tolist())
    assert set(hard.tolist()) == set(order[-count:].tolist())
    assert scores[easy].max() <= scores[np.setdiff1d(np.arange(N), easy)].min()
    # Hand-worked: scores [0.3, 0.9, 0.1, 0.5], data_fraction 0.5 -> easiest {2, 0}, hardest {1, 3}.
    small = np.array([0.3, 0.9, 0.1, 0.5])
    np.testing.assert_array_equal(select("easy_to_hard", small, data_fraction=0.5), [0, 2])
    np.testing.assert_array_equal(select("hard_to_easy", small, data_fraction=0.5), [1, 3])


def test_random_subset_depends_on_rng_not_scores(scores):
    first = select("random_subset", scores, seed=1)
    assert not np.array_equal(first, select("random_subset", scores, seed=2))
    np.testing.assert_array_equal(first, select("random_subset", None, seed=1, size=N))


@pytest.mark.parametrize("strategy", ["hard_mining", "mixed", "soft"])
def test_weighted_strategies_follow_the_target(strategy):
    scores = np.random.default_rng(1).random(5000)
    low = scores[select(strategy, scores, target=0.0, fraction=0.3)].mean()
    high = scores[select(strategy, scores, target=1.0, fraction=0.3)].mean()
    assert high > low + 0.1


def test_hard_mining_target_zero_is_uniform_and_target_one_prefers_hard():
    scores = np.random.default_rng(2).random(5000)
    uniform = scores[select("hard_mining", scores, target=0.0, fraction=0.3)].mean()
    hard = scores[select("hard_mining", scores, target=1.0, fraction=0.3)].mean()
    assert uniform == pytest.approx(0.5, abs=0.03)
    assert hard > 0.6
    hard_mining = cd.HardMining(cd.CurriculumSpec("hard_mining"))
    np.testing.assert_allclose(hard_mining.bucket_weights(0.0), np.ones(cd.BUCKETS))
    assert hard_mining.bucket_weights(1.0)[-1] / hard_mining.bucket_weights(1.0)[0] == pytest.approx(16)


def test_soft_weights_never_zero():
    weights = cd.soft_weights(np.array([0.0, 0.5, 1.0]), 1.0)
    assert (weights > 0).all()
    assert weights[0] >= cd.SOFT_FLOOR
    assert weights[2] > weights[1] > weights[0]
    # With the floor, a far sample is still drawn sometimes: with target 1, some scores below 0.3 appear.
    scores = np.random.default_rng(3).random(5000)
    assert (scores[select("soft", scores, target=1.0, fraction=0.3)] < 0.3).any()


def test_unknown_strategy(scores):
    with pytest.raises(UserError, match="unknown curriculum strategy 'bogus'; choose one of none, random_subset"):
        select("bogus", scores)


# ----------------------------------------------------------------------------------------------------------------------
# EpochSampler


SELECTION = np.array([3, 8, 9, 15, 21, 22, 40, 41, 57, 60, 61, 77, 80, 90, 99])  # 15 indices: odd on purpose


def items(sampler) -> list:
    return [item for batch in sampler for item in batch]


def test_epoch_sampler_yields_selection_with_epoch():
    sampler = cd.EpochSampler(100, seed=0, batch_size=4)
    sampler.set_epoch(3, SELECTION)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 4  # ceil(15 / 4)
    assert sorted(len(batch) for batch in batches) == [3, 4, 4, 4]
    assert all(epoch == 3 for _, epoch in items(sampler))
    assert sorted(index for index, _ in items(sampler)) == SELECTION.tolist()
    assert all(isinstance(index, int) for index, _ in items(sampler))


def test_epoch_sampler_never_ends_on_a_batch_of_one():
    """BatchNorm cannot train on one sample: 17 samples in batches of 16 become 9 + 8, not 16 + 1."""
    sampler = cd.EpochSampler(17, seed=0, batch_size=16)
    assert [len(batch) for batch in sampler] == [9, 8]


def test_epoch_sampler_default_is_all_samples():
    sampler = cd.EpochSampler(10, seed=0, batch_size=3)
    assert sorted(items(sampler)) == [(i, 0) for i in range(10)]


def test_epoch_sampler_order_depends_on_epoch_and_seed():
    def order(seed, epoch):
        sampler = cd.EpochSampler(100, seed=seed, batch_size=4)
        sampler.set_epoch(epoch, SELECTION)
        return [index for index, _ in items(sampler)]

    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(0, 2)
    assert order(0, 1) != order(1, 1)
    assert order(0, 1) != SELECTION.tolist()  # shuffled


def test_epoch_sampler_shards_are_disjoint_and_cover_the_selection():
    """Every selected sample goes to exactly one rank, odd selections included (the ranks' parts of a step differ by
    at most one)."""
    for selection in (SELECTION, SELECTION[:14]):
        shards, sizes = [], []
        for rank in range(2):
            sampler = cd.EpochSampler(100, seed=5, batch_size=4, rank=rank, world_size=2)
            sampler.set_epoch(2, selection)
            shards.append([index for index, _ in items(sampler)])
            sizes.append([len(batch) for batch in sampler])
            assert len(list(sampler)) == len(sampler)
        assert not set(shards[0]) & set(shards[1])
        assert sorted(shards[0] + shards[1]) == sorted(selection.tolist())
        assert all(abs(a - b) <= 1 for a, b in zip(*sizes, strict=True))


def test_epoch_sampler_splits_each_global_batch_across_ranks_with_loss_scales():
    """--batch-size is global: 15 samples at 8 become global batches of 8 and 7, the ranks' parts of each step are
    together one process's batch of that step, both ranks train 2 batches (no join), and the parts' loss scales
    (part x 2 / batch) make the mean of the ranks' gradients the batch's: 8/8 and 8/8, then 8/7 and 6/7."""
    one = cd.EpochSampler(100, seed=5, batch_size=8)
    one.set_epoch(2, SELECTION)
    ranks = [cd.EpochSampler(100, seed=5, batch_size=8, rank=rank, world_size=2) for rank in range(2)]
    for sampler in ranks:
        sampler.set_epoch(2, SELECTION)
    parts = [list(sampler) for sampler in ranks]
    assert [sorted(a + b) for a, b in zip(*parts, strict=True)] == [sorted(batch) for batch in one]
    assert [len(batch) for batch in one] == [8, 7] and not ranks[0].uneven()
    assert [sampler.loss_scales() for sampler in ranks] == [[1.0, 8 / 7], [1.0, 6 / 7]]
    assert one.loss_scales() == [1.0, 1.0]


# ----------------------------------------------------------------------------------------------------------------------
# Teacher-logit cache


def test_cached_logits_computes_once(tmp_path):
    calls = []
    fresh = torch.randn(6, 4, generator=torch.Generator().manual_seed(0)) * 3

    def compute(values=fresh):
        calls.append(1)
        return values.clone()

    parts = {"teacher": "resnet18", "weights": "w.pth", "data": "synthetic", "transform": "eval-32"}
    first, was_cached = teacher.cached_logits(tmp_path, parts, compute, shape=(6, 4))
    assert (len(calls), was_cached) == (1, False)
    torch.testing.assert_close(first, fresh.half().float(), rtol=0, atol=0)  # rounded through fp16 as documented
    assert first.dtype == torch.float32

    reordered = dict(reversed(list(parts.items())))  # key order free
    second, was_cached = teacher.cached_logits(tmp_path, reordered, compute, (6, 4))
    assert (len(calls), was_cached) == (1, True)
    torch.testing.assert_close(second, first, rtol=0, atol=0)

    other, was_cached = teacher.cached_logits(
        tmp_path, {**parts, "teacher": "resnet50"}, lambda: compute(fresh + 1), (6, 4)
    )
    assert (len(calls), was_cached) == (2, False)
    assert not torch.equal(other, first)


@pytest.mark.parametrize(
    "bad",
    [
        b"truncated",  # not a torch file
        torch.ones(3, 2).half(),  # a valid tensor of another shape
        torch.ones(2, 2),  # float32: not what the cache writes
        torch.tensor([[1.0, float("nan")], [0.0, 1.0]]).half(),  # same shape, not finite
        {"logits": torch.ones(2, 2).half()},  # not a tensor
    ],
    ids=["garbage", "shape", "dtype", "nan", "not-a-tensor"],
)
def test_cached_logits_recomputes_and_replaces_an_invalid_file(tmp_path, bad):
    parts = {"teacher": "t"}
    teacher.cached_logits(tmp_path, parts, lambda: torch.ones(2, 2), shape=(2, 2))
    (cache_file,) = tmp_path.glob("teacher-logits-*.pt")
    if isinstance(bad, bytes):
        cache_file.write_bytes(bad)
    else:
        torch.save(bad, cache_file)
    logits, was_cached = teacher.cached_logits(tmp_path, parts, lambda: torch.full((2, 2), 2.0), shape=(2, 2))
    assert not was_cached
    torch.testing.assert_close(logits, torch.full((2, 2), 2.0))
    again, was_cached = teacher.cached_logits(tmp_path, parts, lambda: pytest.fail("recomputed twice"), shape=(2, 2))
    assert was_cached and torch.equal(again, logits)  # the bad file was replaced by the good one
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([cache_file.name, cache_file.stem + ".json"])


# ----------------------------------------------------------------------------------------------------------------------
# Curriculum state


def make_curriculum(strategy, num_samples=50, target_scale="absolute"):
    spec = cd.CurriculumSpec(strategy, fraction=0.4, pacing="linear", start_fraction=0.2, full_data_epoch=4,
                             target_scale=target_scale)  # fmt: skip
    return Curriculum(spec, num_samples, seed=0)


def test_curriculum_counts_what_was_trained():
    curriculum = make_curriculum("random_subset")
    first = curriculum.select(1, target=0.5)
    assert len(first) == 20
    np.testing.assert_array_equal(curriculum.select(1, target=0.5), first)  # seeded by (seed, epoch)
    seen = np.zeros(50, dtype=np.int64)
    seen[first] = 1
    curriculum.count_trained(seen, first, 1)
    assert curriculum.coverage[first].tolist() == [1] * 20 and curriculum.coverage.sum() == 20
    assert (curriculum.trained_epoch[first] == 1).all()
    second = curriculum.select(2, target=0.5)
    seen = np.zeros(50, dtype=np.int64)
    seen[second] = 1
    curriculum.count_trained(seen, second, 2)
    np.testing.assert_array_equal(curriculum.coverage, np.bincount(np.concatenate([first, second]), minlength=50))
    seen[second[0]] = 2  # a sample trained twice, or one not selected, is a sampler bug
    with pytest.raises(RuntimeError, match="sampler bug"):
        curriculum.count_trained(seen, second, 3)


def test_curriculum_scored_strategies():
    curriculum = make_curriculum("adaptive")
    assert curriculum.needs_scores and not make_curriculum("random_subset").needs_scores
    generator = torch.Generator().manual_seed(0)
    teacher, student = torch.randn(50, 5, generator=generator) * 2, torch.randn(50, 5, generator=generator) * 2
    curriculum.update_scores(teacher, student, epoch=1)
    np.testing.assert_allclose(curriculum.scores, models.sample_difficulty(teacher, student).numpy())
    assert set(curriculum.components) == {"conf", "entropy", "kl"}
    chosen = curriculum.select(2, target=0.3)
    np.testing.assert_array_equal(chosen, cd.select_around(curriculum.scores, 0.3, 0.4))
    stats = curriculum.epoch_stats(chosen, 0.3)
    assert stats["selected"] == 20
    assert stats["difficulty_selected"] == pytest.approx(float(curriculum.scores[chosen].mean()))

    # easy_to_hard follows the pacing: 0.2 of the data at epoch 1, all of it from epoch full_data_epoch + 1 on.
    paced = make_curriculum("easy_to_hard")
    paced.update_scores(teacher, student, epoch=1)
    assert len(paced.select(1, target=0.0)) == 10
    assert len(paced.select(5, target=0.0)) == 50


def test_curriculum_state_round_trip():
    curriculum = make_curriculum("random_subset")
    chosen = curriculum.select(1, target=0.5)
    seen = np.zeros(50, dtype=np.int64)
    seen[chosen] = 1
    curriculum.count_trained(seen, chosen, 1)
    restored = make_curriculum("random_subset")
    restored.load_state_dict(curriculum.state_dict())
    np.testing.assert_array_equal(restored.coverage, curriculum.coverage)
    assert restored.coverage.sum() == 20


def test_rank_quantiles_and_quantile_targets_by_hand():
    # ranks of [0.5, 0.1, 0.5, 0.3]: 0.1 -> 0, 0.3 -> 1, the tied 0.5s -> 2 (lower index) and 3; / (N - 1) = 3
    np.testing.assert_allclose(cd.rank_quantiles(np.array([0.5, 0.1, 0.5, 0.3])), [2 / 3, 0, 1, 1 / 3])
    # adaptive, fraction 0.6: the band's centre runs from 0.3 (target 0) to 0.7 (target 1); soft takes the target as is
    adaptive, soft = (cd.strategy_of(cd.CurriculumSpec(name, fraction=0.6)) for name in ("adaptive", "soft"))
    assert adaptive.rank_target(0.0) == pytest.approx(0.3)
    assert adaptive.rank_target(0.5) == pytest.approx(0.5)
    assert adaptive.rank_target(1.0) == pytest.approx(0.7)
    assert soft.rank_target(0.25) == 0.25


def test_quantile_targets_address_distinct_bands_of_narrow_scores():
    """Scores in a narrow band (as on real data): on the absolute scale every target >= the highest score selects
    the same samples; on the quantile scale target 0 is the easiest 40%, target 1 the hardest, 0.5 the middle."""
    scores = 0.47 + 0.05 * np.random.default_rng(0).random(50)
    order = np.argsort(scores, kind="stable")
    quantile, absolute = make_curriculum("adaptive", target_scale="quantile"), make_curriculum("adaptive")
    for curriculum in (quantile, absolute):
        curriculum.scores = scores
    np.testing.assert_array_equal(quantile.select(1, 0.0), np.sort(order[:20]))
    np.testing.assert_array_equal(quantile.select(1, 1.0), np.sort(order[30:]))
    np.testing.assert_array_equal(quantile.select(1, 0.5), np.sort(order[15:35]))
    selections = {tuple(quantile.select(1, t)) for t in np.linspace(0, 1, 11)}
    assert len(selections) == 11
    np.testing.assert_array_equal(absolute.select(1, 0.6), absolute.select(1, 1.0))
    stats = quantile.epoch_stats(quantile.select(1, 1.0), 1.0)
    assert stats["target"] == 1.0 and stats["target_difficulty"] == pytest.approx(np.quantile(scores, 0.8))


# ----------------------------------------------------------------------------------------------------------------------
# reducible and prioritised through the Curriculum, on hand-worked logits
#
# Two classes, labels [0, 0, 1, 1]. Logits (log 3, 0) give p = (3/4, 1/4): CE log(4/3) on class 0, log 4 on class 1;
# logits (0, 0) give CE log 2. The teacher is right on samples 0, 1, 3 and calls sample 2's label wrong (noise).
#   teacher CE: log(4/3), log(4/3), log 4,  log(4/3)
#   student CE: log(4/3), log 2,    log 2,  log 4
#   reducible:  0,        log(3/2), -log 2, log 3
LABELS = np.array([0, 0, 1, 1])
LOG3 = math.log(3)
TEACHER = torch.tensor([[LOG3, 0.0], [LOG3, 0.0], [LOG3, 0.0], [0.0, LOG3]])
STUDENT = torch.tensor([[LOG3, 0.0], [0.0, 0.0], [0.0, 0.0], [LOG3, 0.0]])
REDUCIBLE = np.array([0.0, math.log(1.5), -math.log(2), math.log(3)])


def referenced_curriculum(strategy, fraction=0.5, flipped=None, **options):
    spec = cd.CurriculumSpec(strategy, fraction=fraction, pacing="linear", start_fraction=0.2, full_data_epoch=4,
                             target_scale="absolute", **options)  # fmt: skip
    return Curriculum(spec, 4, seed=0, labels=LABELS, flipped=flipped)


def score_pass(stale):
    return TEACHER, STUDENT if stale is None else STUDENT[stale]


def test_reducible_keeps_the_highest_reducible_loss_and_skips_the_label_the_teacher_rejects():
    curriculum = referenced_curriculum("reducible", flipped=np.array([False, False, True, False]))
    plan = curriculum.plan_epoch(1, 0.5, score_pass, torch.device("cpu"))
    np.testing.assert_allclose(curriculum.losses["teacher"], np.log([4 / 3, 4 / 3, 4, 4 / 3]), rtol=1e-6)
    np.testing.assert_allclose(curriculum.losses["student"], np.log([4 / 3, 2, 2, 4]), rtol=1e-6)
    # the student's loss alone ranks sample 2 (log 2) above sample 0; the reducible loss puts it last
    np.testing.assert_array_equal(plan.indices, [1, 3])
    assert plan.weights is None and plan.target is None
    stats = curriculum.end_epoch(dataclasses.replace(plan, seen=torch.tensor([0, 1, 0, 1])))
    assert stats["reducible_selected"] == pytest.approx(math.log(4.5) / 2, rel=1e-6)
    assert stats["reducible_all"] == pytest.approx(REDUCIBLE.mean(), rel=1e-6)
    assert stats["noisy_selected"] == 0.0 and stats["selected"] == 2


def prioritised_probabilities() -> np.ndarray:
    """clip(reducible, 0) + 0.1 x its mean m = log(4.5) / 4: shares (0.1 m, log 1.5 + 0.1 m, 0.1 m, log 3 + 0.1 m),
    which sum to 4.4 m."""
    m = math.log(4.5) / 4
    return np.array([0.1 * m, math.log(1.5) + 0.1 * m, 0.1 * m, math.log(3) + 0.1 * m]) / (4.4 * m)


def test_prioritised_draws_with_replacement_and_weights_each_draw_by_one_over_n_p():
    curriculum = referenced_curriculum("prioritised", fraction=1.0)
    plan = curriculum.plan_epoch(1, 0.5, score_pass, torch.device("cpu"))
    p = prioritised_probabilities()
    assert cd.PRIORITY_FLOOR == 0.1 and p[0] == pytest.approx(1 / 44)  # 0.1 m / 4.4 m
    expected = np.random.default_rng([0, 1]).choice(4, size=4, replace=True, p=p)  # seeds: "selection", epoch 1
    np.testing.assert_array_equal(plan.indices, np.sort(expected))
    assert len(np.unique(plan.indices)) < 4  # with these shares 4 draws repeat a sample
    for i in plan.indices:
        assert plan.weights[i].item() == pytest.approx(1 / (4 * p[i]), rel=1e-6)
    assert plan.weights[0].item() == pytest.approx(11.0) or 0 not in plan.indices
    # unbiased: the expected weighted loss of one draw, sum_i p_i w_i l_i, is the mean loss over all samples
    losses = np.array([0.3, 1.2, 2.0, 0.7])
    assert np.sum(p * (1 / (4 * p)) * losses) == pytest.approx(losses.mean())
    seen = torch.as_tensor(np.bincount(plan.indices, minlength=4))  # what the training steps count
    stats = curriculum.end_epoch(dataclasses.replace(plan, seen=seen))
    assert stats["selected"] == 4 and stats["distinct_selected"] == len(np.unique(plan.indices))
    np.testing.assert_array_equal(curriculum.coverage, seen.numpy())  # a sample drawn twice is counted twice


def test_prioritised_weighted_mean_loss_is_unbiased_over_epochs():
    """Over 4000 seeded epochs, the mean of the importance-weighted draw losses matches the mean loss over all
    samples (a fixed seed: the same numbers every run)."""
    curriculum = referenced_curriculum("prioritised", fraction=1.0)
    curriculum.update_scores(TEACHER, STUDENT, epoch=0)
    losses = np.array([0.3, 1.2, 2.0, 0.7])
    estimates = []
    for epoch in range(1, 4001):
        indices, weights = curriculum.draw(epoch, 0.5)
        estimates.append(np.mean(weights[indices] * losses[indices]))
    assert np.mean(estimates) == pytest.approx(losses.mean(), rel=0.03)


def test_epoch_sampler_yields_a_sample_drawn_twice_twice():
    sampler = cd.EpochSampler(4, seed=0, batch_size=3)
    sampler.set_epoch(1, np.array([1, 3, 3, 3]))
    drawn = sorted(index for batch in sampler for index, _ in batch)
    assert drawn == [1, 3, 3, 3] and len(sampler) == 2


def test_train_pass_records_label_losses_and_rescoring_refreshes_the_stale_rows():
    curriculum = referenced_curriculum("reducible", score_source="train-pass")
    plan = curriculum.plan_epoch(1, 0.5, score_pass, torch.device("cpu"))  # a full pass first: no scores yet
    np.testing.assert_array_equal(plan.indices, [1, 3])
    learnt = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 0.0], [0.0, 10.0]])  # the student has learnt 1 and 3
    plan.recorder.record(torch.tensor([3, 1]), TEACHER[[3, 1]], learnt[[3, 1]])
    plan.seen[[1, 3]] = 1
    curriculum.end_epoch(plan)
    expected = models.label_losses(TEACHER, learnt, torch.as_tensor(LABELS))
    np.testing.assert_allclose(curriculum.losses["student"][[1, 3]], expected["student"][[1, 3]].numpy())
    np.testing.assert_allclose(curriculum.losses["student"][[0, 2]], np.log([4 / 3, 2]), rtol=1e-6)  # untouched
    # reducible now: 0, log(1 + e^-10) - log(4/3) = -0.288 for 1 and 3 (a tie: the lower index), -log 2: picks 0, 1.
    # No rescoring is due (rescore_every 5), so the train-pass losses alone decide
    np.testing.assert_array_equal(curriculum.select(2, 0.5), [0, 1])
    restored = referenced_curriculum("reducible", score_source="train-pass")
    restored.load_state_dict(curriculum.state_dict())
    np.testing.assert_array_equal(restored.select(2, 0.5), [0, 1])
    for name in ("student", "teacher"):
        np.testing.assert_array_equal(restored.losses[name], curriculum.losses[name])


def test_referenced_strategies_need_the_labels():
    with pytest.raises(ValueError, match="needs the training labels"):
        make_curriculum("reducible")
