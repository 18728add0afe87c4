"""Every script exits once its work is done, whatever DataLoader workers it started (docs/faults.md).

A finished train_student_rl.py run used to hang at exit: its proxy runs' Experiment sat in a reference cycle, a full
garbage collection during the full run freed its loaders in an order that lost their workers' stop sentinels, and the
workers, which ignored SIGTERM, outlived the run; multiprocessing's exit hook then waited for them forever. Small runs
hid it, because no full collection came before the exit. Here every script runs with a full collection before each
pass over a loader (a sitecustomize.py on PYTHONPATH), so the outcome does not depend on when the collector runs.

Each run goes under a timeout (conftest.run_to_exit), so a hang fails the test instead of hanging the suite."""

import getpass
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from common import signals
from conftest import TINY, run_to_exit, train_args

EXIT_BOUND = 60  # seconds from a script's last output to its exit: a hang is unbounded, an exit takes seconds

# A full collection before each pass over any DataLoader: what a long run's collector does at some point
COLLECT_BEFORE_EACH_PASS = """
import gc
from torch.utils.data import DataLoader

_iterate = DataLoader.__iter__


def collect_then_iterate(self):
    gc.collect()
    return _iterate(self)


DataLoader.__iter__ = collect_then_iterate
"""


@pytest.fixture(scope="module")
def collecting(tmp_path_factory):
    """Environment variables that give every Python process of a run the collection above."""
    folder = tmp_path_factory.mktemp("collect")
    (folder / "sitecustomize.py").write_text(COLLECT_BEFORE_EACH_PASS)
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}


def student(teacher, cache_dir) -> list:
    return ["--teacher-checkpoint", teacher, "--cache-dir", cache_dir, "--student", "resnet10t"]


def assert_exits(*args, env: dict) -> str:
    """Run a script to its end: exit 0, within EXIT_BOUND of its last output. Returns stdout and stderr."""
    result = run_to_exit(*args, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.after_last_output < EXIT_BOUND, f"{args[0]} exited {result.after_last_output:.0f} s after its output"
    return result.stdout + result.stderr


@pytest.mark.slow
def test_a_finished_rl_run_with_workers_and_proxy_runs_exits_and_leaves_nothing_in_tmp(
    tmp_path, tiny_teacher, cache_dir, collecting
):
    """The hang as users met it, at a reduced size: PPO, proxy runs, 2 workers per loader. And a run writes only into
    its folder and the cache dir: stable-baselines3's default logger made an empty SB3-<time> folder in the temp dir
    at every PPO run."""
    temp = Path(tempfile.mkdtemp(prefix="t"))  # a short path: torch's workers bind a Unix socket in it (108 bytes)
    proxies = ["--pretrain-episodes", "2", "--pretrain-epochs", "2", "--pretrain-subset", "0.5", "--agent-steps", "2"]
    flags = [*student(tiny_teacher, cache_dir), *proxies]
    argv = train_args(tmp_path / "rl", *flags, epochs=2, script="train_student_rl.py")
    argv[argv.index("--workers") + 1] = "2"
    output = assert_exits(*argv, env={**collecting, "TMPDIR": str(temp)})
    assert "test top-1" in output and (tmp_path / "rl" / "agent.zip").is_file()
    # torch's per-user compile cache (importing timm or torchvision imports torch._dynamo, which makes it) is shared by
    # every torch program of the user, not a run's leftover
    left = [path.name for path in temp.iterdir()]
    shutil.rmtree(temp)
    assert left in ([], [f"torchinductor_{getpass.getuser()}"])


@pytest.mark.slow
def test_a_finished_bandit_run_with_workers_exits(tmp_path, tiny_teacher, cache_dir, collecting):
    flags = [*student(tiny_teacher, cache_dir), "--agent", "bandit"]
    argv = train_args(tmp_path / "bandit", *flags, epochs=2, script="train_student_rl.py")
    argv[argv.index("--workers") + 1] = "2"
    assert "test top-1" in assert_exits(*argv, env=collecting)


@pytest.mark.slow
def test_train_student_then_evaluate_with_workers_exit(tmp_path, tiny_teacher, cache_dir, collecting):
    """A curriculum scored from the training steps also opens one-off loaders for the samples an epoch left out."""
    out = tmp_path / "kd"
    curriculum = ["--curriculum", "adaptive", "--score-source", "train-pass", "--rescore-every", "1"]
    flags = [*student(tiny_teacher, cache_dir), "--label-weight", "0", *curriculum]
    argv = train_args(out, *flags, epochs=2)
    argv[argv.index("--workers") + 1] = "2"
    assert "test top-1" in assert_exits(*argv, env=collecting)
    table = assert_exits("evaluate.py", out, "--workers", "2", "--device", "cpu", env=collecting)
    assert "| Student (resnet10t, KD + adaptive curriculum" in table


@pytest.mark.slow
def test_pretrain_teacher_with_workers_exits(tmp_path, collecting):
    argv = ["pretrain_teacher.py", "--data", TINY, "--student", "resnet10t", "--label-weight", "1", "--epochs", "1",
            "--batch-size", "32", "--workers", "2", "--device", "cpu", "--cache-dir", tmp_path]  # fmt: skip
    output = assert_exits(*argv, env=collecting)
    assert output.strip().splitlines()[-1].endswith("best.pt")


def wait_as_a_loader_worker(ready) -> None:
    signals.sigterm_from_parent_only(0)  # what every DataLoader worker runs first
    ready.set()
    time.sleep(120)


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_a_worker_obeys_the_sigterm_of_the_process_that_started_it(method):
    """The terminate() with which torch and multiprocessing's exit hook end a worker comes from the process that
    started it; under forkserver the worker's os.getppid() is the server instead, so that is not what it may check."""
    context = multiprocessing.get_context(method)
    ready = context.Event()
    worker = context.Process(target=wait_as_a_loader_worker, args=(ready,), daemon=True)
    worker.start()
    assert ready.wait(60)
    worker.terminate()
    worker.join(60)
    assert worker.exitcode == signals.STOPPED
