"""Shared fixtures: running the scripts as a user would, tiny data written by the tests, one tiny teacher."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY = "synthetic:classes=4,train=96,val=32,test=32,size=32,seed=0"
WNIDS = ["n01443537", "n01440764"]  # written in unsorted order; class_names must come back sorted
COLOURS = {"n01440764": (200, 30, 30), "n01443537": (30, 30, 200)}


def run_script(*args, env=None, timeout=300, check=True) -> subprocess.CompletedProcess:
    """Run `python SCRIPT ARGS` from the repo root, as the README does."""
    result = subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def run_to_exit(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run `python SCRIPT ARGS` from the repo root; the result also holds `after_last_output`, the seconds from its
    last line of output to its exit. Past `timeout` the process group is killed and the test fails naming the hang,
    so a script that never exits fails the test instead of hanging the suite."""
    process = subprocess.Popen(
        [sys.executable, *map(str, args)], cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    streams, last = {"stdout": [], "stderr": []}, [time.monotonic()]

    def read(name: str) -> None:
        for line in getattr(process, name):
            streams[name].append(line)
            last[0] = time.monotonic()

    readers = [threading.Thread(target=read, args=(name,), daemon=True) for name in streams]
    for reader in readers:
        reader.start()
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        tail = "".join(streams["stdout"][-3:] + streams["stderr"][-3:])
        pytest.fail(f"{args[0]} did not exit within {timeout} s; its last output:\n{tail}")
    exited = time.monotonic()
    for reader in readers:
        reader.join()
    result = subprocess.CompletedProcess(args, code, "".join(streams["stdout"]), "".join(streams["stderr"]))
    result.after_last_output = exited - last[0]
    return result


def train_args(out, *extra, data=TINY, epochs=1, script="train_student.py") -> list:
    """Command line of a fast CPU run on tiny synthetic data (train_student.py or train_student_rl.py)."""
    args = [script, "--data", data, "--epochs", epochs, "--batch-size", 32, "--workers", 0,
            "--device", "cpu", "--out", out, *extra]  # fmt: skip
    return [str(arg) for arg in args]


def write_image_folder(root: Path, splits=("train", "val", "test"), classes=WNIDS, per_class: int = 3) -> Path:
    for split in splits:
        for wnid in classes:
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for k in range(per_class):
                Image.new("RGB", (20 + k, 16), COLOURS.get(wnid, (90, 90, 90))).save(folder / f"img{k}.jpg")
    return root


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    """best.pt of a labels-only resnet18 on TINY: the teacher of every KD test (no ImageNet weights here)."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    run_script(*train_args(out, "--student", "resnet18", "--label-weight", 1, epochs=2))
    return out / "best.pt"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logit-cache")
