"""Runs that survive: SIGKILL then --resume gives the uninterrupted run's results; atomic checkpoints; determinism;
refusals of incompatible resumes; a non-finite loss stops the run and keeps the checkpoints."""

import json
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO

import models
import train_student
from common import files, run_folder
from common.errors import run_cli
from common.metrics import read_metrics
from conftest import ROOT, run_script, train_args

pytestmark = pytest.mark.slow  # every test here trains (see pyproject.toml)

DATA = "synthetic:classes=4,train=96,val=32,test=32,size=32,seed=0"
WALL_CLOCK = {"seconds", "agent_seconds"}


def comparable(folder) -> list[dict]:
    """metrics.csv without its wall-clock columns."""
    rows = read_metrics(folder / "metrics.csv")
    return [{key: value for key, value in row.items() if key not in WALL_CLOCK} for row in rows]


def logged_rows(metrics) -> int:
    return len(read_metrics(metrics)) if metrics.exists() else 0


def kill_part_way(argv: list, folder, rows_first: int, total: int, log: str = "metrics.csv") -> int:
    """Start a run, SIGKILL it at a random moment within the epoch after `rows_first` epochs are logged in `log` (a
    path in the run folder); returns the rows it left.

    The moment is a random fraction of the run's own epoch time (measured between its first logged rows), not a fixed
    number of seconds: on a fast machine a fixed wait outlasts the remaining epochs, on a loaded one it never leaves
    the epoch just logged."""
    assert rows_first >= 2 and total >= rows_first + 2, "a kill inside the next epoch needs two more epochs to come"
    process = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = folder / log
    seen = {}  # rows logged -> when first seen
    hung = time.monotonic() + 900  # a guard against a hung run, not a measure of speed
    while (rows := logged_rows(metrics)) < rows_first:
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < hung, f"no {rows_first} epochs logged in 15 minutes"
        seen.setdefault(rows, time.monotonic())
        time.sleep(0.01)
    seen.setdefault(rows, time.monotonic())
    timed = [count for count in sorted(seen) if count >= 1]  # not the start-up before the first row
    epoch_seconds = (seen[timed[-1]] - seen[timed[0]]) / (timed[-1] - timed[0]) if len(timed) > 1 else 0.0
    time.sleep(random.uniform(0.0, epoch_seconds))  # inside the next epoch, or while it writes its files
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    left = len(read_metrics(metrics)) if metrics.exists() else 0
    assert left < total, "the run finished before the kill; give it more epochs"
    return left


@pytest.mark.parametrize("curriculum", ["none", "adaptive", "prioritised"])
def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path, tiny_teacher, cache_dir, curriculum):
    flags = ["--teacher-checkpoint", tiny_teacher, "--label-weight", "0.5", "--student", "resnet10t",
             "--curriculum", curriculum, "--rescore-every", "2", "--cache-dir", cache_dir]  # fmt: skip
    epochs = 5
    whole, twin, killed = tmp_path / "whole", tmp_path / "twin", tmp_path / "killed"
    run_script(*train_args(whole, *flags, data=DATA, epochs=epochs))
    kill_part_way(train_args(killed, *flags, data=DATA, epochs=epochs), killed, rows_first=2, total=epochs)
    run_script("train_student.py", "--resume", killed, "--workers", "1")  # workers may change on resume
    assert comparable(killed) == comparable(whole)
    assert json.loads((killed / "results.json").read_text()) == json.loads((whole / "results.json").read_text())
    for name in ("coverage.npy", "best.pt"):
        assert (killed / name).is_file()
    if curriculum != "none":  # the score history, appended an entry an epoch and rewritten on resume, is the same
        killed_history, whole_history = (np.load(run / "difficulty_history.npz") for run in (killed, whole))
        assert killed_history.files == whole_history.files
        for key in whole_history.files:
            np.testing.assert_array_equal(killed_history[key], whole_history[key])
    if curriculum == "none":  # two uninterrupted runs with the same seed are identical too (CPU)
        run_script(*train_args(twin, *flags, data=DATA, epochs=epochs))
        assert comparable(twin) == comparable(whole)


RL_EPOCHS = 5


@pytest.fixture(scope="module")
def uninterrupted_rl_run(tmp_path_factory, tiny_teacher, cache_dir):
    """(flags, the run folder) of the uninterrupted RL run both kills are compared with: trained once."""
    flags = ["--teacher-checkpoint", tiny_teacher, "--cache-dir", cache_dir, "--student", "resnet10t",
             "--agent-steps", "3", "--control-temperature", "--pretrain-episodes", "2", "--pretrain-epochs", "3",
             "--pretrain-subset", "0.5", "--full-run", "learn"]  # fmt: skip
    whole = tmp_path_factory.mktemp("rl") / "whole"
    run_script(*train_args(whole, *flags, data=DATA, epochs=RL_EPOCHS, script="train_student_rl.py"))
    return flags, whole


@pytest.mark.parametrize("phase", ["proxy", "full"])
def test_killed_and_resumed_rl_run_equals_uninterrupted_run(tmp_path, uninterrupted_rl_run, phase):
    """The agent's weights, optimiser, timestep count, reward scale and partial rollout survive the kill, in the proxy
    runs or in the full run: the resumed run is the uninterrupted one, epoch for epoch, and so is the final agent."""
    flags, whole = uninterrupted_rl_run
    epochs, killed = RL_EPOCHS, tmp_path / "killed"
    args = {"data": DATA, "epochs": epochs, "script": "train_student_rl.py"}
    log, total = ("proxy/metrics.csv", 2 * 3) if phase == "proxy" else ("metrics.csv", epochs)
    kill_part_way(train_args(killed, *flags, **args), killed, rows_first=2, total=total, log=log)
    run_script("train_student_rl.py", "--resume", killed)
    proxy_rows, rows = comparable(killed / "proxy"), comparable(killed)  # every epoch logged exactly once:
    assert [(int(row["episode"]), int(row["epoch"])) for row in proxy_rows] == [
        (e, k) for e in (1, 2) for k in (1, 2, 3)
    ]
    assert [int(row["epoch"]) for row in rows] == list(range(1, epochs + 1))
    assert comparable(killed / "proxy") == comparable(whole / "proxy")
    assert comparable(killed) == comparable(whole)
    agents = [PPO.load(folder / "agent.zip", device="cpu") for folder in (whole, killed)]
    assert agents[0].num_timesteps == agents[1].num_timesteps == 2 * 3 + epochs
    scales = [files.load_checkpoint(folder / "last.pt")["agent"]["reward_scale"] for folder in (whole, killed)]
    assert scales[0] == scales[1] and scales[0]["var"] > 0  # the running reward std, kept by the agent
    for (name, a), b in zip(agents[0].policy.state_dict().items(), agents[1].policy.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_rl_run_killed_before_its_first_checkpoint_is_not_a_run(tmp_path, tiny_teacher, cache_dir):
    """A kill after epoch 1's metrics row and before the first last.pt (and in the middle of a write) leaves no
    completed epoch: --resume has nothing to resume, and the same command run again uses the folder without
    --overwrite, clears the dead attempt's files and logs every epoch once, as the uninterrupted run. Every file an RL
    run writes (it writes the most kinds) is on run_folder.RUN_FILES, the list --overwrite clears."""
    flags = ["--teacher-checkpoint", tiny_teacher, "--cache-dir", cache_dir, "--student", "resnet10t",
             "--agent-steps", "2", "--pretrain-episodes", "1", "--pretrain-epochs", "2",
             "--pretrain-subset", "0.5"]  # fmt: skip
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_script(*train_args(whole, *flags, data=DATA, epochs=2, script="train_student_rl.py"))
    assert sorted(path.name for path in whole.iterdir()) == sorted(run_folder.RUN_FILES)
    killed.mkdir()
    (killed / "config.json").write_bytes((whole / "config.json").read_bytes())
    header, first_row, *_ = (whole / "metrics.csv").read_text().splitlines(keepends=True)
    (killed / "metrics.csv").write_text(header + first_row)
    (killed / "proxy").mkdir()
    (killed / "proxy" / "metrics.csv").write_text(header + first_row)
    (killed / ".last.pt.k1ll3d.tmp").write_bytes(b"")  # what a kill inside atomic_write leaves
    refused = run_script("train_student_rl.py", "--resume", killed, check=False)
    assert refused.returncode == 2 and "nothing to resume" in refused.stderr
    run_script(*train_args(killed, *flags, data=DATA, epochs=2, script="train_student_rl.py"))
    assert [int(row["epoch"]) for row in comparable(killed)] == [1, 2]
    assert comparable(killed) == comparable(whole)
    assert comparable(killed / "proxy") == comparable(whole / "proxy")
    assert not list(killed.glob(".*.tmp"))
    assert {path.name for path in killed.iterdir()} <= set(run_folder.RUN_FILES)


def test_kill_during_checkpoint_write_leaves_a_loadable_file(tmp_path):
    """A writer saving a 16 MB checkpoint in a loop is killed at random moments; last.pt always loads."""
    path = tmp_path / "last.pt"
    writer = (
        "import sys, torch\nfrom common import files\n"
        "payload = {'model': 'x', 'state_dict': {'w': torch.randn(4_000_000)}, 'step': 0}\n"
        "while True:\n"
        "    payload['step'] += 1\n"
        f"    files.save_checkpoint(r'{path}', payload)\n"
    )
    for _ in range(3):
        process = subprocess.Popen([sys.executable, "-c", writer], cwd=ROOT)
        # wait for the second save, however long saves take here: from then on the writer is always mid-write
        while not path.exists() or files.load_checkpoint(path)["step"] < 2:
            assert process.poll() is None, "the writer stopped"
            time.sleep(0.01)
        time.sleep(random.uniform(0.0, 0.5))
        process.kill()
        process.wait()
        checkpoint = files.load_checkpoint(path)
        assert checkpoint["state_dict"]["w"].shape == (4_000_000,)
        assert checkpoint["step"] >= 2  # never an older file than one already in place
        path.unlink()


def fails_cleanly(capsys, main, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main(argv))
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("done") / "run"
    run_script(*train_args(out, "--label-weight", "1", "--student", "resnet10t", data=DATA, epochs=1))
    return out


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--data", "synthetic:classes=4,train=64,val=32,test=32"], "--data differ"),
        (["--student", "mobilenetv2_100"], "--student differ"),
        (["--label-weight", "0.5", "--lr", "0.01"], "--label-weight, --lr differ"),
    ],
)
def test_resume_refuses_incompatible_flags(capsys, finished_run, flags, expected):
    err = fails_cleanly(capsys, train_student.main, ["--resume", str(finished_run), *flags])
    assert expected in err and "another --out" in err


def test_resume_refuses_other_scripts_runs_and_non_runs(capsys, finished_run, tmp_path):
    import train_student_rl

    err = fails_cleanly(capsys, train_student_rl.main, ["--resume", str(finished_run)])
    assert "train_student.py" in err
    err = fails_cleanly(capsys, train_student.main, ["--resume", str(tmp_path)])
    assert "no config.json" in err


def test_resume_refuses_changed_data(capsys, finished_run, tmp_path):
    """The saved config names the data; if what it names has changed (another folder content), refuse."""
    checkpoint = files.load_checkpoint(finished_run / "last.pt")
    checkpoint["data"] = '{"synthetic": "something else"}'
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.json", "metrics.csv"):
        (copy / name).write_bytes((finished_run / name).read_bytes())
    files.save_checkpoint(copy / "last.pt", checkpoint)
    err = fails_cleanly(capsys, train_student.main, ["--resume", str(copy)])
    assert "data" in err and "changed" in err


def test_non_finite_loss_stops_the_run_and_keeps_checkpoints(capsys, tmp_path, monkeypatch):
    """The loss turns NaN in epoch 2, batch 2: the run exits 2 naming both, with epoch 1's checkpoints intact."""
    real_loss, calls = models.kd_loss, []

    def loss_that_turns_nan(*args, **kwargs):
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) == 3 + 2 else loss  # 3 batches of 32 per epoch

    monkeypatch.setattr(models, "kd_loss", loss_that_turns_nan)
    out = tmp_path / "run"
    argv = train_args(out, "--label-weight", "1", "--student", "resnet10t", data=DATA, epochs=3)[1:]
    err = fails_cleanly(capsys, train_student.main, argv)
    assert "nan at epoch 2, batch 2" in err and "--lr" in err
    assert files.load_checkpoint(out / "last.pt")["epoch"] == 1
    assert files.load_checkpoint(out / "best.pt")["epoch"] == 1
    assert len(read_metrics(out / "metrics.csv")) == 1
    assert not (out / "results.json").exists()
