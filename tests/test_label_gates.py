"""Label gates (docs/curriculum.md): which samples keep the label term of KD, by hand; the KD loss with a gate; the
oracle drops exactly the labels --label-noise replaced; a gated run applies the gate its teacher's logits give."""

import math

import numpy as np
import pytest
import torch

import curriculum_dataloader as cd
import models
from analysis.runs import describe
from common import cli, seeds
from common import metrics as bookkeeping
from common.errors import UserError
from conftest import TINY, run_script, train_args
from data import splits as data
from training import experiment as engine
from training.config import TrainConfig, check_config

LN2, LN3 = math.log(2), math.log(3)
# Four samples over three classes. 0: the teacher's top class is the label; 1: the label is its last class; 2: the
# label ties the top logit (a tie counts for the label: rank 0); 3: a uniform teacher (rank 0 for any label).
TEACHER = torch.tensor([[2.0, 1.0, 0.0], [2.0, 1.0, 0.0], [0.0, 3.0, 3.0], [1.0, 1.0, 1.0]])
LABELS = np.array([0, 2, 2, 1])
FLIPPED = np.array([False, True, False, True])
Z = math.e**2 + math.e + 1  # softmax([2, 1, 0]) = [e^2, e, 1] / Z


def test_teacher_gates_by_hand():
    assert cd.label_gate("top1", LABELS, TEACHER).tolist() == [1, 0, 1, 1]
    assert cd.label_gate("top2", LABELS, TEACHER).tolist() == [1, 0, 1, 1]  # sample 1's label is 3rd of 3
    assert cd.label_gate("top3", LABELS, TEACHER).tolist() == [1, 1, 1, 1]
    # p_t(y): e^2 / Z = 0.665241, 1 / Z = 0.090031, e^3 / (1 + 2 e^3) = 0.487856, 1/3
    expected = [math.e**2 / Z, 1 / Z, math.e**3 / (1 + 2 * math.e**3), 1 / 3]
    assert cd.label_gate("prob", LABELS, TEACHER) == pytest.approx(expected, abs=1e-12)
    assert expected[:3] == pytest.approx([0.665241, 0.090031, 0.487856], abs=1e-6)


def test_fixed_gates_and_the_oracle_by_hand():
    assert cd.label_gate("all", LABELS).tolist() == [1, 1, 1, 1]
    assert cd.label_gate("none", LABELS).tolist() == [0, 0, 0, 0]
    assert cd.label_gate("oracle", LABELS, flipped=FLIPPED).tolist() == [1, 0, 1, 0]
    with pytest.raises(ValueError, match="--label-noise"):
        cd.label_gate("oracle", LABELS)
    with pytest.raises(ValueError, match="unknown label gate"):
        cd.label_gate("top", LABELS, TEACHER)


def test_gate_precision_recall_by_hand():
    # top1 drops sample 1 alone, which was replaced: precision 1/1; recall 1 of the 2 replaced; the 2 untouched kept;
    # of the 3 labels kept, 1 (sample 3) was replaced
    figures = cd.gate_precision_recall(cd.label_gate("top1", LABELS, TEACHER), FLIPPED)
    assert figures == pytest.approx({"precision": 1.0, "recall": 0.5, "clean_kept": 1.0, "noisy_weight": 1 / 3})
    # prob drops 1 - p of each: drops (0.334759, 0.909969, 0.512144, 0.666667), 1.576636 of them on replaced labels
    p = cd.label_gate("prob", LABELS, TEACHER)
    soft = cd.gate_precision_recall(p, FLIPPED)
    assert soft["precision"] == pytest.approx((1 - p[1] + 1 - p[3]) / (4 - p.sum()))
    assert soft["recall"] == pytest.approx((2 - p[1] - p[3]) / 2)
    assert soft["clean_kept"] == pytest.approx((p[0] + p[2]) / 2)
    assert soft["noisy_weight"] == pytest.approx((p[1] + p[3]) / p.sum())
    assert cd.gate_precision_recall(np.ones(4), FLIPPED)["noisy_weight"] == pytest.approx(0.5)  # no gate: the rate


def test_kd_loss_gates_the_label_term_alone():
    # sample 1: the two-class case of test_models (label 0, teacher [4 ln 3, 0], T = 4): CE ln 2, T^2 KL = 2.092992;
    # sample 2: student and teacher [0, 0], label 1: CE ln 2, KL 0. Gate [0, 1]: the first keeps only its KL term.
    student, teacher, labels = torch.zeros(2, 2), torch.tensor([[4 * LN3, 0.0], [0.0, 0.0]]), torch.tensor([0, 1])
    kl = 16 * (0.75 * LN3 - LN2)
    gated = models.kd_loss(student, teacher, labels, 0.6, 4.0, label_gate=torch.tensor([0.0, 1.0]))
    assert gated.item() == pytest.approx((0.4 * kl + 0.6 * LN2) / 2, rel=1e-6)  # (0.837197 + 0.415888) / 2
    assert gated.item() == pytest.approx(0.626543, abs=1e-6)
    weighted = models.kd_loss(student, teacher, labels, 0.6, 4.0, sample_weights=torch.tensor([3.0, 1.0]),
                              label_gate=torch.tensor([0.0, 1.0]))  # fmt: skip
    assert weighted.item() == pytest.approx((3 * 0.4 * kl + 0.6 * LN2) / 2, rel=1e-6)
    plain = models.kd_loss(student, teacher, labels, 0.6, 4.0)
    assert models.kd_loss(student, teacher, labels, 0.6, 4.0, label_gate=torch.ones(2)).item() == plain.item()


def gated_experiment(tmp_path, teacher, *flags):
    argv = train_args("unused", "--teacher-checkpoint", teacher, "--cache-dir", tmp_path, "--label-weight", "0.5",
                      "--student", "resnet10t", *flags)[1:]  # fmt: skip
    config = cli.parse_config(TrainConfig, argv)
    check_config(config)
    return engine.Experiment(config)


@pytest.mark.slow
def test_the_oracle_drops_exactly_the_replaced_labels(tmp_path, tiny_teacher):
    """The oracle's factors are 0 exactly where the noisy labels differ from the clean ones, so the loss of a batch
    does not depend on what a replaced label was replaced by."""
    experiment = gated_experiment(tmp_path, tiny_teacher, "--label-noise", "0.25", "--label-gate", "oracle")
    run = engine.TrainingRun(experiment)
    plan = run.curriculum.plan_epoch(1, 0.5, run.score_pass, experiment.device)
    clean = data.load_data(TINY).train.labels
    noisy = data.load_data(TINY, noise=data.LabelNoise(train=0.25, seed=seeds.derive(0, "label-noise"))).train.labels
    replaced = np.asarray(noisy) != np.asarray(clean)
    assert replaced.sum() == 24 and np.array_equal(experiment.data.train.labels, noisy)  # 25% of 96
    assert plan.gate == "oracle" and plan.label_gate.tolist() == (~replaced).astype(float).tolist()
    student, teacher = torch.randn(96, 4, generator=torch.Generator().manual_seed(0)), torch.randn(96, 4)
    relabelled = torch.as_tensor(noisy).clone()
    relabelled[replaced] = (relabelled[replaced] + 1) % 4  # other wrong labels for the replaced samples
    losses = [models.kd_loss(student, teacher, torch.as_tensor(labels), 0.5, 4.0, label_gate=plan.label_gate).item()
              for labels in (noisy, relabelled)]  # fmt: skip
    assert losses[0] == losses[1]
    assert models.kd_loss(student, teacher, relabelled, 0.5, 4.0).item() != losses[0]  # ungated, they differ


@pytest.mark.slow
def test_a_gated_run_applies_the_gate_of_its_teachers_logits(tmp_path, tiny_teacher, cache_dir):
    out = tmp_path / "gated"
    flags = ["--teacher-checkpoint", tiny_teacher, "--cache-dir", cache_dir, "--label-weight", "0.5", "--student",
             "resnet10t", "--label-noise", "0.25", "--label-gate", "top1"]  # fmt: skip
    run_script(*train_args(out, *flags))
    experiment = gated_experiment(cache_dir, tiny_teacher, "--label-noise", "0.25")
    labels, flipped = experiment.data.train.labels, experiment.data.flipped
    gate = cd.label_gate("top1", labels, experiment.source.scoring_logits())
    (row,) = bookkeeping.read_metrics(out / "metrics.csv")
    assert row["label_gate"] == "top1" and 0 < gate.mean() < 1
    assert float(row["labels_kept"]) == pytest.approx(gate.mean())
    assert float(row["noisy_label_weight"]) == pytest.approx((gate * flipped).sum() / gate.sum())
    assert float(row["val_kd_loss"]) > 0  # the label-free probe every run with a teacher logs


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--label-gate", "top2", "--label-weight", "0"], "--label-gate top2 gates the label term"),
        (["--label-gate", "prob", "--label-weight", "1"], "--label-gate prob gates the label term"),
        (["--label-gate", "oracle"], "--label-gate oracle drops the labels --label-noise replaced"),
    ],
)
def test_gate_flags_that_cannot_work_are_refused(flags, message):
    config = cli.parse_config(TrainConfig, flags)
    with pytest.raises(UserError, match=message):
        check_config(config)


def test_evaluate_names_a_gated_row():
    config = {"student": "resnet10t", "label_weight": 0.6}
    assert describe({**config, "label_gate": "top2"}) == (
        "Student (resnet10t, KD, 60% labels, 40% teacher, label gate top2)"
    )
    assert describe(config) == "Student (resnet10t, KD, 60% labels, 40% teacher)"  # a run of before the gate
