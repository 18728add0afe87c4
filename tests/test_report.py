"""evaluate.py --report on demo-like runs: every figure a real PNG, every link resolves, seeds pooled into one row."""

import json
import re
import statistics
import struct

import numpy as np
import pytest

import bookkeeping
import evaluate
import report
import train_student
import train_student_rl
from conftest import run_script, train_args

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def reported(tmp_path_factory, tiny_teacher, cache_dir):
    """Labels-only, two seeds of an adaptive curriculum and an RL run (trained in-process: fast), then the report."""
    root = tmp_path_factory.mktemp("report")
    kd = ["--teacher-checkpoint", tiny_teacher, "--label-weight", 0, "--cache-dir", cache_dir, "--student", "resnet10t",
          "--rescore-every", 1]  # fmt: skip
    train_student.main(train_args(root / "labels", "--label-weight", 1, "--student", "resnet10t", epochs=2)[1:])
    for seed in (0, 1):
        flags = [*kd, "--curriculum", "adaptive", "--target", 0.4, "--fraction", 0.5, "--seed", seed]
        train_student.main(train_args(root / f"adaptive-s{seed}", *flags, epochs=3)[1:])
    rl = train_args(root / "rl", *kd, "--agent-steps", 2, "--pretrain-episodes", 0, "--full-run", "learn", epochs=3,
                    script="train_student_rl.py")  # fmt: skip
    train_student_rl.main(rl[1:])
    folders = [root / name for name in ("labels", "adaptive-s0", "adaptive-s1", "rl")]
    result = run_script("evaluate.py", *folders, "--teacher-checkpoint", tiny_teacher, "--workers", 0,
                        "--device", "cpu", "--json", root / "table.json", "--report", root / "report")  # fmt: skip
    return root, result.stdout, json.loads((root / "table.json").read_text())


def png_size(path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, which a valid PNG has right after its signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR", f"{path.name} has no IHDR chunk first"
    return struct.unpack(">II", data[16:24])


@pytest.mark.slow
def test_every_figure_is_a_readable_png(reported):
    root, _, _ = reported
    folder = root / "report"
    expected = ["accuracy.png", "coverage.png", "curriculum-2-adaptive.png", "difficulty-2-adaptive.png",
                "curriculum-3-rl.png", "difficulty-3-rl.png"]  # fmt: skip
    assert sorted(path.name for path in folder.glob("*.png")) == sorted(expected)  # labels-only: no curriculum plots
    for name in expected:
        width, height = png_size(folder / name)
        assert width >= 200 and height >= 200, (name, width, height)


@pytest.mark.slow
def test_every_link_of_the_report_resolves(reported):
    root, stdout, _ = reported
    text = (root / "report" / "report.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert len(re.findall(r"!\[", text)) == len(links) == 6
    for link in links:
        assert not link.startswith("/") and (root / "report" / link).is_file(), link
    table = "\n".join(line for line in stdout.splitlines() if line.startswith("|"))
    assert table in text  # the same table evaluate.py printed


@pytest.mark.slow
def test_seeds_of_one_configuration_are_one_row(reported):
    root, stdout, rows = reported
    lines = [line for line in stdout.splitlines() if line.startswith("| Student")]
    assert len(lines) == 3  # labels, adaptive (2 seeds), rl
    assert "±" in lines[1] and "(n=2)" in lines[1] and "`adaptive`" in lines[1]
    assert "±" not in lines[0] and "±" not in lines[2]
    adaptive = rows[2]
    assert adaptive["n"] == 2 and [run["seed"] for run in adaptive["runs"]] == [0, 1]
    for key in ("top1", "top5", "last_top1"):
        values = [run[key] for run in adaptive["runs"]]
        assert adaptive[key] == pytest.approx(statistics.fmean(values))
        assert adaptive[f"{key}_std"] == pytest.approx(statistics.stdev(values))  # sample std (n - 1)
    for run in adaptive["runs"]:  # the per-run figures are each run's own test results
        results = json.loads((root / f"adaptive-s{run['seed']}" / "results.json").read_text())
        assert run["top1"] == pytest.approx(results["test_acc"]) and run["last_top1"] == results["last_test_acc"]


@pytest.mark.slow
def test_coverage_counts_add_up_to_the_samples_trained_on(reported):
    root, _, _ = reported
    for name in ("labels", "adaptive-s0", "adaptive-s1", "rl"):
        coverage = np.load(root / name / "coverage.npy")
        selected = [int(row["selected"]) for row in bookkeeping.read_metrics(root / name / "metrics.csv")]
        assert coverage.sum() == sum(selected), name
    assert np.load(root / "adaptive-s0" / "coverage.npy").max() <= 3


def test_group_runs_ignores_only_seed_and_run_folder():
    base = {"script": "train_student.py", "lr": 1e-3, "seed": 0, "out": "a", "overwrite": True}
    changes = [{}, {"seed": 1, "out": "b", "overwrite": False}, {"lr": 2e-3}, {"script": "train_student_rl.py"}]
    runs = [{"config": {**base, **change}} for change in changes]
    assert [len(group) for group in evaluate.group_runs(runs)] == [2, 1, 1]


def test_accuracy_cells():
    assert evaluate.format_accuracy({"top1": 85.061, "top1_std": None, "n": 1}, "top1") == "85.06%"
    assert evaluate.format_accuracy({"top1": 85.061, "top1_std": 0.4249, "n": 3}, "top1") == "85.06 ± 0.42% (n=3)"
    assert evaluate.format_accuracy({"last_top1": None}, "last_top1") == "—"


def test_histogram_epochs_are_spread_in_numeric_order():
    keys = ["epoch_10", "epoch_0", "epoch_25", "epoch_5", "epoch_20", "epoch_15"]
    assert report.spread_keys(keys) == ["epoch_0", "epoch_10", "epoch_15", "epoch_25"]  # linspace(0, 5, 4) rounded
    assert report.spread_keys(["epoch_3", "epoch_0"]) == ["epoch_0", "epoch_3"]
