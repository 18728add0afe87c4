"""Selection with the teacher as reference model, and the label noise it is meant for: hand-worked cases."""

import numpy as np
import pytest

import curriculum_dataloader as curriculum
from data.splits import noisy_labels


def test_reducible_keeps_what_the_teacher_shows_is_learnable():
    student = np.array([2.0, 0.5, 3.0, 1.0])
    teacher = np.array([0.25, 0.25, 2.75, 0.25])  # sample 2: the teacher disagrees with its label too (a noisy label)
    assert curriculum.reducible_loss(student, teacher) == pytest.approx([1.75, 0.25, 0.25, 0.75])
    assert curriculum.reducible(student, teacher, 0.5).tolist() == [0, 3]  # hard mining on the loss would take 2
    assert curriculum.reducible(student, teacher, 0.75).tolist() == [0, 1, 3]  # the tie 0.25 = 0.25 goes to index 1
    assert curriculum.reducible(student, teacher, 0.0).tolist() == []


def test_prioritised_sample_weights_are_inverse_probabilities():
    # shares max(p, 0) + 0.1 x mean = [3.1, 1.1, 0.1, 0.1] of 4.4; weights 1 / (4 p) = 4.4 / (4 x share)
    indices, weights = curriculum.prioritised_sample(np.array([3.0, 1.0, 0.0, -2.0]), 8, np.random.default_rng(0))
    expected = {0: 4.4 / 12.4, 1: 4.4 / 4.4, 2: 4.4 / 0.4, 3: 4.4 / 0.4}
    assert len(indices) == 8 and all(weights[k] == pytest.approx(expected[i]) for k, i in enumerate(indices))
    # sum_i p_i w_i loss_i = mean loss exactly; the draws of one seed estimate it
    losses = np.array([5.0, 1.0, 2.0, 0.5])
    many, many_weights = curriculum.prioritised_sample(
        np.array([3.0, 1.0, 0.0, -2.0]), 200_000, np.random.default_rng(1)
    )
    assert np.mean(many_weights * losses[many]) == pytest.approx(losses.mean(), rel=0.02)
    flat, flat_weights = curriculum.prioritised_sample(np.zeros(5), 4, np.random.default_rng(0))
    assert flat_weights == pytest.approx([1.0] * 4)  # no priorities: uniform draws, unit weights


def test_noisy_labels_flip_an_exact_share_to_other_classes():
    labels = np.arange(200) % 10
    noisy = noisy_labels(labels, 10, 0.3, seed=4)
    changed = noisy != labels
    assert changed.sum() == 60 and noisy.min() >= 0 and noisy.max() < 10
    assert np.array_equal(noisy, noisy_labels(labels, 10, 0.3, seed=4))  # reproducible per seed
    assert not np.array_equal(changed, noisy_labels(labels, 10, 0.3, seed=5) != labels)  # another seed, other samples
    assert np.array_equal(noisy_labels(labels, 10, 0.0, seed=4), labels)
    two = labels % 2
    assert np.array_equal(noisy_labels(two, 2, 1.0, seed=0), 1 - two)
