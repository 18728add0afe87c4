"""evaluate.py --report on demo-like runs: every figure a real PNG, every link resolves, seeds pooled into one row."""

import json
import re
import statistics
import struct

import numpy as np
import pytest

import evaluate
import train_student
import train_student_rl
from analysis import report
from common import metrics as bookkeeping
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


@pytest.fixture
def figures(monkeypatch) -> list:
    """The figures the report would save, kept open for inspection instead."""
    kept = []
    monkeypatch.setattr(report, "save_figure", lambda fig, path: kept.append(fig))
    yield kept
    for fig in kept:
        report.plt.close(fig)


def rl_rows(rewards: list[float]) -> list[dict]:
    """metrics.csv rows (strings, as read from the file) of an RL run whose R_acc carries the given spikes."""
    rows = []
    for epoch, reward in enumerate(rewards, start=1):
        terms = {"reward_acc": reward - 1.0, "reward_loss": -1.0 if epoch % 3 == 0 else 0.0, "reward_early": 1.0,
                 "reward_abs": 0.0}  # fmt: skip
        values = {"epoch": epoch, "target_difficulty": 0.5, "difficulty_selected": 0.4, "reward": reward, **terms}
        rows.append({key: str(value) for key, value in values.items()})
    return rows


def test_robust_limits_leave_out_a_spike_and_keep_the_rest():
    values = np.array([0.0, 73.0, 5.0, 2.0, -3.0, 1.0, 2.0, 0.5, -1.0, 4.0])
    low, high = report.robust_limits(values)
    assert 5.0 < high < 20.0 and -10.0 < low <= -3.0  # the 73 is off the axis, every other value on it
    low, high = report.robust_limits(np.array([1.0, 2.0, 3.0]))
    assert low < 0.0 and high > 3.0  # no spike: everything, and 0, in view
    assert report.robust_limits(np.array([np.nan])) == (-1.0, 1.0)


def test_reward_panel_clips_the_spike_and_marks_it(figures, tmp_path):
    group = {"name": "rl", "label": "RL", "metrics": [rl_rows([0.0, 73.0, 3.0, 2.5, -2.0, 1.5, 2.0])]}
    report.plot_curriculum(group, tmp_path / "curriculum.png")
    reward_ax = figures[0].axes[1]
    low, high = reward_ax.get_ylim()
    assert 3.0 < high < 73.0 and low <= -2.0  # the other epochs' rewards and terms fill the panel
    marks = [text.get_text() for text in reward_ax.texts]
    assert sorted(marks) == ["72", "73"]  # the reward and its R_acc at epoch 2, each marked with its value
    assert "2 off-scale values" in reward_ax.get_title()


def test_difficulty_histograms_count_epochs_from_one(figures, tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "difficulty_history.npz", epoch_0=rng.random(50), epoch_2=rng.random(50))
    rows = [{"epoch": str(e), "target_difficulty": "0.5", "difficulty_selected_min": "0.3",
             "difficulty_selected_max": "0.7"} for e in (1, 2, 3)]  # fmt: skip
    report.plot_difficulty_histograms(tmp_path, rows, tmp_path / "difficulty.png")
    titles = [ax.get_title() for ax in figures[0].axes]
    assert titles == ["scores used by epoch 1", "scores used by epoch 3"]  # scored before epoch 1, after epoch 2


def test_coverage_shows_one_never_selected_sample_of_2000(figures, tmp_path):
    coverage = np.full(2000, 3)
    coverage[7] = 0
    np.save(tmp_path / "coverage.npy", coverage)
    group = {"name": "adaptive", "folders": [tmp_path], "metrics": [[{"epoch": "1"}, {"epoch": "2"}, {"epoch": "3"}]]}
    report.plot_coverage([group], tmp_path / "coverage.png")
    ax = figures[0].axes[0]
    never_bar = ax.patches[0]
    assert never_bar.get_height() == 1 and ax.get_yscale() == "log"
    bottom, top = ax.get_ylim()
    assert bottom < 1 and top > 1999  # the bar of one sample rises above the axis' bottom on the log scale
    labels = [text.get_text() for text in ax.texts]
    assert "1" in labels and "1999" in labels  # each bar carries its count
    assert any(label.startswith("never selected: 1 of 2000") for label in labels)
