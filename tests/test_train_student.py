"""train_student.py and evaluate.py end to end as subprocesses on tiny synthetic data, and every bad input."""

import json
import re

import pytest
import torch

import evaluate
import models
import train_student
from analysis.runs import describe
from common import files
from common import metrics as bookkeeping
from common.errors import UserError
from conftest import TINY, run_script, train_args
from training import teacher

RUN_FILES = ["config.json", "metrics.csv", "last.pt", "best.pt", "results.json"]


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory, tiny_teacher):
    out = tmp_path_factory.mktemp("kd") / "run"
    result = run_script(*train_args(out, "--teacher-checkpoint", tiny_teacher, "--label-weight", 0.6, epochs=2))
    return out, result


@pytest.mark.slow
def test_run_folder_has_every_file(kd_run):
    out, result = kd_run
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    assert list((out / "tb").glob("events.out.tfevents.*")), "no TensorBoard events"
    rows = bookkeeping.read_metrics(out / "metrics.csv")
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    assert {"epoch", "train_loss", "val_acc", "lr", "seconds"} <= set(rows[0])
    assert float(rows[1]["lr"]) < float(rows[0]["lr"])  # cosine schedule
    assert len(re.findall(r"^epoch \d+/2 ", result.stdout, flags=re.M)) == 2  # one summary line per epoch
    config = json.loads((out / "config.json").read_text())
    assert config["label_weight"] == 0.6 and config["data"] == TINY
    results = json.loads((out / "results.json").read_text())
    assert 0 <= results["test_acc"] <= 100 and results["best_epoch"] in (1, 2)


@pytest.mark.slow
def test_best_checkpoint_rebuilds_model_without_flags(kd_run):
    out, _ = kd_run
    checkpoint = files.load_checkpoint(out / "best.pt")
    model = models.model_from_checkpoint(checkpoint)  # name, classes and weights come from the file alone
    assert checkpoint["model"] == "mobilenetv2_100" and len(checkpoint["class_names"]) == 4
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


@pytest.mark.slow
def test_evaluate_table_has_every_row(kd_run, tiny_teacher, tmp_path):
    out, _ = kd_run
    result = run_script("evaluate.py", out, out / "best.pt", "--workers", 0, "--device", "cpu",
                        "--json", tmp_path / "t.json")  # fmt: skip
    lines = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| Model |")
    assert lines[1].startswith("| Teacher (resnet18, trained on this data)")
    assert lines[2].startswith("| Student (mobilenetv2_100, KD, 60% labels, 40% teacher)")
    rows = json.loads((tmp_path / "t.json").read_text())
    assert len(rows) == 3 and all(0 <= row["top1"] <= 100 and row["params"] > 0 for row in rows)
    results = json.loads((out / "results.json").read_text())
    assert rows[1]["top1"] == pytest.approx(results["test_acc"], abs=1e-6)  # same checkpoint, same split


def test_labels_only_builds_no_teacher(tmp_path, monkeypatch):
    """With --label-weight 1 the teacher is never constructed (a poisoned builder would fail)."""
    monkeypatch.setattr(teacher, "load_teacher", lambda *a: pytest.fail("teacher built for a labels-only run"))
    train_student.main(train_args(tmp_path / "run", "--label-weight", 1, "--student", "resnet10t")[1:])
    assert (tmp_path / "run" / "results.json").is_file()


def test_describe_labels_rows_like_the_reference():
    base = {"student": "mobilenetv2_100", "curriculum": "none"}
    assert describe({**base, "label_weight": 1.0}) == "Student (mobilenetv2_100, labels only)"
    assert describe({**base, "label_weight": 0.0}) == "Student (mobilenetv2_100, KD, teacher only)"
    rl = {**base, "label_weight": 0.0, "script": "train_student_rl.py"}
    assert describe(rl) == "Student (mobilenetv2_100, KD + curriculum chosen by the RL agent, teacher only)"


@pytest.mark.slow
def test_evaluate_no_teacher_leaves_the_teacher_out(kd_run, monkeypatch, capsys):
    """--no-teacher is true when given (argparse once read --no-teacher as false and built the teacher anyway)."""
    out, _ = kd_run
    monkeypatch.setattr(evaluate, "load_teacher", lambda *a: pytest.fail("teacher built despite --no-teacher"))
    evaluate.main([str(out), "--no-teacher", "--device", "cpu", "--workers", "0"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 2 and rows[1].startswith("| Student (mobilenetv2_100, KD, 60% labels, 40% teacher)")


@pytest.mark.slow
def test_local_teacher_weights_file(tmp_path):
    """--teacher-weights FILE: ImageNet weights saved by the test, sliced to the synthetic set's WordNet ids."""
    weights = tmp_path / "resnet18.pth"
    torch.save(models.create_model("resnet18", 1000).state_dict(), weights)
    out = tmp_path / "run"
    run_script(*train_args(out, "--teacher", "resnet18", "--teacher-weights", weights, "--label-weight", "0.5"))
    assert json.loads((out / "results.json").read_text())["test_acc"] >= 0


def test_evaluate_skips_folders_that_hold_no_run(kd_run, tmp_path, capsys):
    """`evaluate.py runs/table/*/` also matches the report folder: one line on stderr for it, and the table."""
    out, _ = kd_run
    report = tmp_path / "report"
    report.mkdir()
    (report / "report.md").write_text("# Results report\n")
    evaluate.main([str(report), str(out), "--no-teacher", "--device", "cpu", "--workers", "0"])
    captured = capsys.readouterr()
    assert captured.err.strip() == f"skipping {report}: no best.pt there, so no finished run"
    rows = [line for line in captured.out.splitlines() if line.startswith("| Student")]
    assert len(rows) == 1 and f"`{out.name}`" in rows[0]
    with pytest.raises(UserError, match=r"no finished run among the arguments \(no best.pt in .*report\)"):
        evaluate.main([str(report), "--no-teacher"])
