"""Curriculum runs end to end: the teacher-logit cache, the metrics a run records, difficulty on synthetic data."""

import json

import numpy as np
import pytest

from common import cli, files
from common import metrics as bookkeeping
from conftest import run_script, train_args
from training import experiment as engine
from training.config import TrainConfig
from training.curriculum import TrainPassScores


def make_experiment(cache_dir, teacher, **overrides):
    argv = train_args("unused", "--teacher-checkpoint", teacher, "--label-weight", "0", "--curriculum", "adaptive",
                      "--cache-dir", cache_dir)[1:]  # fmt: skip
    config = cli.parse_config(TrainConfig, argv)
    for name, value in overrides.items():
        setattr(config, name, value)
    return engine.Experiment(config)


def count_forwards(experiment) -> list:
    calls = []
    experiment.teacher.register_forward_hook(lambda *args: calls.append(1))
    return calls


@pytest.mark.slow
def test_teacher_logits_are_computed_once_then_read_from_the_cache(tmp_path, tiny_teacher):
    first = make_experiment(tmp_path, tiny_teacher)
    calls = count_forwards(first)
    logits = first.source.scoring_logits()
    assert len(calls) > 0 and logits.shape == (len(first.data.train), 4)
    assert first.source.scoring_logits() is logits  # memoised within the run

    second = make_experiment(tmp_path, tiny_teacher)
    calls = count_forwards(second)
    assert np.array_equal(second.source.scoring_logits().numpy(), logits.numpy())
    assert calls == []  # the second run never ran the teacher

    resized = make_experiment(tmp_path, tiny_teacher, image_size=40)
    calls = count_forwards(resized)
    resized.source.scoring_logits()
    assert len(calls) > 0  # another transform is another key


@pytest.mark.slow
def test_adaptive_curriculum_run_records_its_selection(tmp_path, tiny_teacher, cache_dir):
    out = tmp_path / "run"
    flags = ["--teacher-checkpoint", tiny_teacher, "--label-weight", "0", "--curriculum", "adaptive",
             "--target", "0.3", "--fraction", "0.5", "--rescore-every", "2", "--cache-dir", cache_dir]  # fmt: skip
    run_script(*train_args(out, *flags, epochs=3))
    rows = bookkeeping.read_metrics(out / "metrics.csv")
    assert len(rows) == 3
    for row in rows:  # quantile scale (the default): target 0.3 is the band of ranks 0.25 + 0.3 * 0.5 = 0.4 +- 0.25
        assert float(row["target"]) == 0.3
        assert float(row["difficulty_selected_min"]) <= float(row["target_difficulty"]) <= 1
        assert int(row["selected"]) == round(0.5 * 96)
        for column in ("selected", "all", "conf", "entropy", "kl"):
            column = f"difficulty_{column}"
            assert 0 <= float(row[column]) <= 1, column
    scores = np.load(out / "difficulty.npy")
    coverage = np.load(out / "coverage.npy")
    assert scores.shape == (96,) and coverage.shape == (96,)
    assert coverage.sum() == 3 * 48 and coverage.max() <= 3
    # the last selection is the band target 0.3 addresses under the last scores (rescored at epoch 3)
    assert float(rows[-1]["difficulty_all"]) == pytest.approx(float(scores.mean()), rel=1e-6)
    assert json.loads((out / "results.json").read_text())["test_acc"] >= 0


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["easy_to_hard", "soft", "random_subset"])
def test_other_strategies_run(tmp_path, tiny_teacher, cache_dir, strategy):
    out = tmp_path / strategy
    flags = ["--teacher-checkpoint", tiny_teacher, "--label-weight", "0.5", "--curriculum", strategy,
             "--cache-dir", cache_dir, "--student", "resnet10t"]  # fmt: skip
    run_script(*train_args(out, *flags, epochs=2))
    rows = bookkeeping.read_metrics(out / "metrics.csv")
    expected = {"easy_to_hard": round(0.3 * 96), "soft": round(0.7 * 96), "random_subset": round(0.7 * 96)}
    assert int(rows[0]["selected"]) == expected[strategy]
    assert np.load(out / "coverage.npy").sum() == sum(int(row["selected"]) for row in rows)


@pytest.mark.slow
@pytest.mark.parametrize(("strategy", "score_source"), [("reducible", "pass"), ("prioritised", "train-pass")])
def test_teacher_referenced_strategies_run_on_noisy_labels(tmp_path, tiny_teacher, cache_dir, strategy, score_source):
    out = tmp_path / strategy
    flags = ["--teacher-checkpoint", tiny_teacher, "--label-weight", "0.5", "--curriculum", strategy,
             "--fraction", "0.5", "--label-noise", "0.25", "--score-source", score_source, "--rescore-every", "2",
             "--cache-dir", cache_dir, "--student", "resnet10t"]  # fmt: skip
    run_script(*train_args(out, *flags, epochs=3))
    assert json.loads((out / "config.json").read_text())["label_noise"] == 0.25
    rows = bookkeeping.read_metrics(out / "metrics.csv")
    assert [int(row["selected"]) for row in rows] == [48, 48, 48]  # round(0.5 * 96) draws an epoch
    for row in rows:
        assert 0 <= float(row["noisy_selected"]) <= 1
        assert float(row["reducible_selected"]) >= float(row["reducible_all"]) or strategy == "prioritised"
        if strategy == "prioritised":
            assert 1 <= int(row["distinct_selected"]) <= 48
    coverage = np.load(out / "coverage.npy")
    assert coverage.sum() == 3 * 48  # every draw trained on, repeats included
    if strategy == "reducible":
        assert coverage.max() <= 3


@pytest.fixture(scope="module")
def trained_pair(tmp_path_factory):
    """A teacher and a student trained long enough (on 400 synthetic images) for difficulty to mean something."""
    root = tmp_path_factory.mktemp("pair")
    data = "synthetic:classes=4,train=400,val=64,test=64,size=32,seed=0"
    for name, epochs in (("teacher", 4), ("student", 1)):
        run_script(*train_args(root / name, "--student", "resnet10t", "--label-weight", "1", data=data, epochs=epochs))
    return data, root / "teacher" / "best.pt", root / "student" / "best.pt"


@pytest.mark.slow
def test_generated_hard_samples_score_harder(trained_pair, cache_dir):
    """The synthetic set's hard half (by the generator's hardness) scores higher than its easy half."""
    data, teacher, student = trained_pair
    experiment = make_experiment(cache_dir, teacher, data=data, student="resnet10t")
    run = engine.TrainingRun(experiment)
    run.student.load_state_dict(files.load_checkpoint(student)["state_dict"])
    run.rescore()
    scores, hardness = run.curriculum.scores, experiment.data.hardness
    hard, easy = scores[hardness > 0.5].mean(), scores[hardness <= 0.5].mean()
    assert hard > easy + 0.05, (hard, easy)
    assert np.corrcoef(scores, hardness)[0, 1] > 0.3


@pytest.mark.slow
def test_cached_teacher_logits_and_train_pass_scores(tmp_path, tiny_teacher, cache_dir):
    """--teacher-logits cached trains from the cache; --score-source train-pass refreshes the trained samples' scores
    every epoch (a new entry in the score history each epoch) and passes only over the rest every --rescore-every."""
    out = tmp_path / "fast"
    flags = ["--teacher-checkpoint", tiny_teacher, "--label-weight", "0", "--curriculum", "adaptive",
             "--teacher-logits", "cached", "--score-source", "train-pass", "--rescore-every", "2",
             "--cache-dir", cache_dir, "--student", "resnet10t"]  # fmt: skip
    run_script(*train_args(out, *flags, epochs=3))
    history = np.load(out / "difficulty_history.npz")
    assert sorted(history.files) == ["epoch_0", "epoch_1", "epoch_2", "epoch_3"]
    assert not np.array_equal(history["epoch_1"], history["epoch_0"])
    rows = bookkeeping.read_metrics(out / "metrics.csv")
    assert [int(row["selected"]) for row in rows] == [67, 67, 67]


def test_train_pass_scores_equal_the_difficulty_of_the_batch_logits():
    import torch

    import models

    recorder = TrainPassScores(6, torch.device("cpu"))
    teacher, student = torch.randn(3, 4), torch.randn(3, 4)
    recorder.record(torch.tensor([4, 0, 2]), teacher, student)
    indices, components, losses = recorder.collect()
    assert losses is None  # no labels given: the strategy reads no label losses
    assert indices.tolist() == [0, 2, 4]
    expected = models.difficulty_components(teacher, student)
    for name in ("conf", "entropy", "kl"):
        torch.testing.assert_close(components[name], expected[name][[1, 2, 0]])
