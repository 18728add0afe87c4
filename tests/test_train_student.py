"""train_student.py and evaluate.py end to end as subprocesses on tiny synthetic data, and every bad input."""

import json
import re

import pytest
import torch

import engine
import evaluate
import models
import train_student
from conftest import TINY, run_script, train_args, write_image_folder
from errors import run_cli

RUN_FILES = ["config.json", "metrics.csv", "last.pt", "best.pt", "results.json"]


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory, tiny_teacher):
    out = tmp_path_factory.mktemp("kd") / "run"
    result = run_script(*train_args(out, "--teacher-checkpoint", tiny_teacher, "--label-weight", 0.6, epochs=2))
    return out, result


def test_run_folder_has_every_file(kd_run):
    out, result = kd_run
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    assert list((out / "tb").glob("events.out.tfevents.*")), "no TensorBoard events"
    rows = engine.read_metrics(out / "metrics.csv")
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    assert {"epoch", "train_loss", "val_acc", "lr", "seconds"} <= set(rows[0])
    assert float(rows[1]["lr"]) < float(rows[0]["lr"])  # cosine schedule
    assert len(re.findall(r"^epoch \d+/2 ", result.stdout, flags=re.M)) == 2  # one summary line per epoch
    config = json.loads((out / "config.json").read_text())
    assert config["label_weight"] == 0.6 and config["data"] == TINY
    results = json.loads((out / "results.json").read_text())
    assert 0 <= results["test_acc"] <= 100 and results["best_epoch"] in (1, 2)


def test_best_checkpoint_rebuilds_model_without_flags(kd_run):
    out, _ = kd_run
    checkpoint = engine.load_checkpoint(out / "best.pt")
    model = models.model_from_checkpoint(checkpoint)  # name, classes and weights come from the file alone
    assert checkpoint["model"] == "mobilenetv2_100" and len(checkpoint["class_names"]) == 4
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


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
    monkeypatch.setattr(engine, "load_teacher", lambda *a: pytest.fail("teacher built for a labels-only run"))
    train_student.main(train_args(tmp_path / "run", "--label-weight", 1, "--student", "resnet10t")[1:])
    assert (tmp_path / "run" / "results.json").is_file()


def test_describe_labels_rows_like_the_reference():
    base = {"student": "mobilenetv2_100", "curriculum": "none"}
    assert evaluate.describe({**base, "label_weight": 1.0}) == "Student (mobilenetv2_100, labels only)"
    assert evaluate.describe({**base, "label_weight": 0.0}) == "Student (mobilenetv2_100, KD, teacher only)"
    rl = {**base, "label_weight": 0.0, "script": "train_student_rl.py"}
    assert evaluate.describe(rl) == "Student (mobilenetv2_100, KD + curriculum chosen by the RL agent, teacher only)"


# ----------------------------------------------------------------------------------------------------------------------
# Bad input: one line naming the fix, exit code 2, no traceback


def fails_cleanly(capsys, main, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--label-weight", "1.5"], "--label-weight must lie in [0, 1]"),
        (["--label-weight", "-0.1"], "--label-weight must lie in [0, 1]"),
        (["--temperature", "0"], "--temperature must be > 0"),
        (["--data", "nonsense"], "neither a folder"),
        (["--data", "/no/such/folder"], "check the path"),
        (["--teacher-checkpoint", "/no/such/best.pt", "--label-weight", "0"], "does not exist"),
    ],
)
def test_bad_flags(capsys, tmp_path, flags, expected):
    err = fails_cleanly(capsys, train_student.main, train_args(tmp_path / "r", *flags)[1:])
    assert expected in err
    assert not (tmp_path / "r").exists()


def test_malformed_and_incomplete_data_folders(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    err = fails_cleanly(capsys, train_student.main, train_args(tmp_path / "r", data=tmp_path / "empty")[1:])
    assert "train split is missing" in err
    partial = write_image_folder(tmp_path / "partial", splits=("train", "val"))
    err = fails_cleanly(capsys, train_student.main, train_args(tmp_path / "r", data=partial)[1:])
    assert "test split is missing" in err


def test_class_unknown_to_imagenet_teacher(capsys, tmp_path):
    folder = write_image_folder(tmp_path / "d", classes=["n01440764", "n99999999"])
    argv = train_args(tmp_path / "r", "--teacher", "resnet18", "--label-weight", "0.5", data=folder)[1:]
    err = fails_cleanly(capsys, train_student.main, argv)
    assert "n99999999" in err and "--teacher-checkpoint" in err


def test_teacher_without_the_data_classes(capsys, tmp_path, tiny_teacher):
    # 3 synthetic classes are ImageNet indices 0, 333, 666; the 4-class teacher knows 0, 250, 500, 750
    data = "synthetic:classes=3,train=32,val=8,test=8"
    argv = train_args(tmp_path / "r", "--teacher-checkpoint", tiny_teacher, "--label-weight", "0", data=data)[1:]
    err = fails_cleanly(capsys, train_student.main, argv)
    assert "4 classes" in err and "n02342885" in err and "--teacher-checkpoint" in err


def test_corrupt_image_in_a_worker_process(tmp_path):
    folder = write_image_folder(tmp_path / "d")
    (folder / "train" / "n01440764" / "img1.jpg").write_bytes(b"this is not a jpeg")
    argv = train_args(tmp_path / "r", "--label-weight", "1", "--student", "resnet10t", data=folder)
    argv[argv.index("--workers") + 1] = "1"  # the error crosses a DataLoader worker boundary
    result = run_script(*argv, check=False)
    assert result.returncode == 2
    assert "img1.jpg" in result.stderr and "delete or replace" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_network_for_hub_weights(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")}
    argv = train_args(tmp_path / "r", "--teacher", "resnet18", "--label-weight", "0.5")
    result = run_script(*argv, env=env, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--teacher-weights" in result.stderr and "huggingface-cli download timm/resnet18" in result.stderr


def test_local_teacher_weights_file(tmp_path):
    """--teacher-weights FILE: ImageNet weights saved by the test, sliced to the synthetic set's WordNet ids."""
    weights = tmp_path / "resnet18.pth"
    torch.save(models.create_model("resnet18", 1000).state_dict(), weights)
    out = tmp_path / "run"
    run_script(*train_args(out, "--teacher", "resnet18", "--teacher-weights", weights, "--label-weight", "0.5"))
    assert json.loads((out / "results.json").read_text())["test_acc"] >= 0


def test_existing_run_is_never_overwritten(capsys, tmp_path, kd_run):
    out, _ = kd_run
    before = {name: (out / name).stat().st_mtime_ns for name in RUN_FILES}
    err = fails_cleanly(capsys, train_student.main, train_args(out, "--label-weight", "1")[1:])
    assert "--overwrite" in err
    assert before == {name: (out / name).stat().st_mtime_ns for name in RUN_FILES}
