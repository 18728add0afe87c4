"""The lab's protocol (docs/curriculum.md#the-lab-protocol): its data draws and noise kinds, noisy validation labels,
the sweep that expands it into runs, and the statistics its tables come from, checked against hand-worked values."""

import json
import math
import os

import numpy as np
import pytest

import sweep
from analysis import lab
from common.errors import UserError
from data import splits as data
from sweeps import lab as lab_plan
from training.config import TrainConfig

DATA = "synthetic:classes=4,train=40,val=40,test=8,size=16,seed=0"


# ----------------------------------------------------------------------------------------------------------------------
# Data: draws, noise kinds, noisy validation


def test_a_draw_is_another_sample_of_the_same_classes_and_draw_0_is_the_old_set():
    zero, again, one = (data.load_data(DATA + suffix) for suffix in ("", ",draw=0", ",draw=1"))
    assert zero.identity == again.identity != one.identity  # draw 0 keeps the caches of earlier versions
    assert not np.array_equal(zero.train.labels, one.train.labels)  # other images
    source = one.train.source
    np.testing.assert_array_equal(source.colours, zero.train.source.colours)  # the classes look the same


def test_confusable_noise_mislabels_an_ambiguous_image_as_the_class_it_resembles():
    class Source:
        labels = np.array([0, 1, 2, 3])
        hardness = np.array([0.0, 0.0, 0.0, 1.0])  # only image 3 is ambiguous
        distractors = np.array([1, 2, 3, 2])  # image 3 blends in class 2

    noisy = data.noisy_labels(Source.labels, 4, 0.25, 7, Source, "confusable")  # round(0.25 x 4) = 1 label replaced
    assert noisy.tolist() == [0, 1, 2, 2]
    splits = data.load_data(DATA, noise=data.LabelNoise(train=0.25, kind="confusable", seed=3))
    source = splits.train.source.source  # the generator under the relabelled source
    flipped = np.flatnonzero(splits.flipped)
    assert len(flipped) == 10 and (splits.train.labels[flipped] == source.distractors[flipped]).all()
    assert source.hardness[flipped].mean() > source.hardness.mean()  # ambiguous images are mislabelled more often


def test_validation_labels_are_noisy_by_the_same_process_unless_told_otherwise():
    noise = TrainConfig(data=DATA, label_noise=0.25, seed=2).label_noise_spec()
    assert (noise.train, noise.val, noise.kind) == (0.25, 0.25, "symmetric")  # as a user with noisy labels has
    assert TrainConfig(label_noise=0.25, val_label_noise=0.0).label_noise_spec().val == 0.0  # the clean control
    clean, noisy = data.load_data(DATA), data.load_data(DATA, noise=noise)
    changed = noisy.val.labels != clean.val.labels
    assert changed.sum() == 10  # round(0.25 x 40), another draw than the training labels'
    assert not np.array_equal(changed, noisy.flipped)
    np.testing.assert_array_equal(noisy.test.labels, clean.test.labels)  # the test split: the truth, never noisy
    with pytest.raises(UserError, match="only the synthetic data knows"):
        data.add_label_noise({"train": object(), "val": object()}, 4, data.LabelNoise(0.2, 0.2, "confusable"))


def test_a_run_of_before_noisy_validation_resumes_with_clean_validation(tmp_path):
    """A config.json written before --val-label-noise existed: its run validated on clean labels, and resumes so."""
    from common.run_folder import resume_config

    folder = tmp_path / "run"
    folder.mkdir()
    config = {"script": "train_student.py", "data": DATA, "label_noise": 0.3, "epochs": 2, "student": "resnet10t"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "results.json").write_text("{}")  # a run folder (its last.pt is not needed to read the config)
    resumed, _ = resume_config(TrainConfig, ["--resume", str(folder)], "train_student.py")
    assert resumed.val_label_noise == 0.0 and resumed.label_noise_spec().val == 0.0


# ----------------------------------------------------------------------------------------------------------------------
# The sweep


def test_the_lab_expands_cell_by_cell_with_its_teachers_and_twins():
    plan = lab_plan.plan_lab(sweep.parse_args(["lab", "--device", "cpu", "--out", "o"]))
    rows = sum(len(rows) for rows in lab_plan.VARIANT_ROWS.values())
    assert len(plan.runs) == 3 * 2 * rows and len(plan.teachers) == 3
    assert [argv[argv.index("--seed") + 1] for argv in plan.teachers.values()] == ["0", "1", "2"]
    names = list(plan.runs)
    assert sorted(f"{v}-{r}" for tier in lab_plan.TIERS for v, r in tier) == sorted(
        f"{v}-{r}" for v, rows in lab_plan.VARIANT_ROWS.items() for r in rows
    )  # every row in one tier
    first = len(lab_plan.TIERS[0]) * 6
    assert {name.rsplit("-t", 1)[1] for name in names[:first]} == {f"{t}-d{d}-s0" for t in range(3) for d in range(2)}
    assert names[0] == "symmetric-kd-lw0-t0-d0-s0"  # the deciding rows of every cell first
    flag = lambda name, option: plan.runs[name][plan.runs[name].index(option) + 1]  # noqa: E731  (the last given)
    assert flag("symmetric-kd-lw0.5-t1-d1-s0", "--label-weight") == "0.5"
    assert flag("symmetric-kd-lw0.5-t1-d1-s0", "--data").endswith(",draw=1")
    assert flag("confusable-gate-top3-t2-d0-s0", "--label-noise-kind") == "confusable"
    assert flag("symmetric-gate-top2-cleanval-t0-d0-s0", "--val-label-noise") == "0"
    assert flag("clean-kd9-lw0.6-t0-d0-s0", "--epochs") == "9"
    assert flag("clean-bandit-twin-t2-d1-s0", "--teacher-checkpoint") == "<pretrained teacher 2>"
    assert flag("clean-bandit-twin-t2-d1-s0", "--reward-twin") == os.path.join("o", "clean-kd-lw0.6-t2-d1-s0")
    assert "--label-noise" not in plan.runs["clean-kd-lw0-t0-d0-s0"]
    assert plan.after == {name for name in names if "bandit-twin" in name}
    assert plan.spec()["teachers"] and plan.spec()["teacher"] is None
    with pytest.raises(UserError, match="the lab's rows are"):
        lab_plan.plan_lab(sweep.parse_args(["lab", "--strategies", "soft"]))


# ----------------------------------------------------------------------------------------------------------------------
# Statistics, by hand


def test_holm_multiplies_the_kth_smallest_by_m_minus_k_plus_1_and_stays_monotone():
    # sorted 0.01, 0.03, 0.04: x3 = 0.03, x2 = 0.06, x1 = 0.04 -> kept at 0.06
    assert lab.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert lab.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_p_value_and_two_one_sided_tests_against_the_closed_form_at_two_dof():
    """Differences 1, 2, 3: mean 2, sd 1, se 1/sqrt(3); Student's t at 2 dof has F(t) = 1/2 + t / (2 sqrt(2 + t^2))."""
    difference = lab.paired_difference({0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.0, 1: 0.0, 2: 0.0})
    cdf = lambda t: 0.5 + t / (2 * math.sqrt(2 + t * t))  # noqa: E731
    se = 1 / math.sqrt(3)
    assert lab.p_value(difference) == pytest.approx(2 * (1 - cdf(2 / se)), abs=1e-6)  # 0.0742
    assert lab.tost_p(difference) == pytest.approx(cdf(1.5 / se), abs=1e-6)  # the upper test: 0.939
    tie = lab.paired_difference({k: v for k, v in enumerate([0.1, -0.1, 0.0, 0.1, -0.1])}, dict.fromkeys(range(5), 0.0))
    assert lab.tost_p(tie) < 0.001 and lab.p_value(tie) == pytest.approx(1.0)


def lab_row(variant, row, teacher, val, test, **extra):
    return {"variant": variant, "row": row, "teacher": teacher, "draw": 0, "seed": 0, "val_best": val,
            "test_best": test, "test_last": test, "budget": 15.0, "twin_budget": 0.0, **extra}  # fmt: skip


def test_tuned_rows_pick_per_cell_on_validation_and_compare_over_cells():
    rows = []
    for teacher, (val_a, val_b) in enumerate([(60, 50), (50, 60), (60, 55)]):  # picks: lw0, lw0.6, lw0
        rows += [lab_row("symmetric", "kd-lw0", teacher, val_a, 70 + teacher),
                 lab_row("symmetric", "kd-lw0.6", teacher, val_b, 60 + teacher),
                 lab_row("symmetric", "gate-top2", teacher, 70, [72, 63, 75][teacher])]  # fmt: skip
    values = lab.cell_values(rows)
    kd = values[("symmetric", "kd-tuned")]
    assert [kd[(t, 0)]["picked"] for t in range(3)] == ["kd-lw0", "kd-lw0.6", "kd-lw0"]
    assert [kd[(t, 0)]["test_best"] for t in range(3)] == [70, 61, 72]  # the picked run's test, never the best test
    assert kd[(0, 0)]["tuning_budget"] == 30.0  # both candidates trained
    assert values[("symmetric", "gate-tuned")][(1, 0)]["picked"] == "gate-top2"
    (entry,) = lab.compare(values, [("symmetric", "gate-tuned", "kd-tuned", "q")])
    assert entry["n"] == 3 and entry["mean"] == pytest.approx((2 + 2 + 3) / 3)  # 72-70, 63-61, 75-72


def test_the_docs_tables_are_those_of_the_stored_rows():
    """docs/curriculum.md's lab tables are rendered from docs/results/lab-runs.csv (scripts/update_docs.py); a stale
    table fails tests/test_readme.py. Here: the stored rows hold every run the protocol names, once."""
    rows = lab.read_csv(lab.RESULTS)
    runs = [row["run"] for row in rows]
    assert len(runs) == len(set(runs)) and rows
    cells = {(row["teacher"], row["draw"]) for row in rows}
    expected = {f"{v}-{r}-t{t}-d{d}-s{s}" for v, names in lab_plan.VARIANT_ROWS.items() for r in names
                for t, d in cells for s in {row["seed"] for row in rows}}  # fmt: skip
    assert set(runs) == expected
    assert all(row["test_best"] >= 0 and row["config_hash"] for row in rows)
