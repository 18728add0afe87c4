"""Shared fixtures: running the scripts as a user would, tiny data written by the tests, one tiny teacher."""

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The tests write nothing into the user's home: the default --cache-dir (~/.cache/kd-curriculum) and Hugging Face's
# cache go to a home of this session (of each xdist worker), which every script the tests run inherits.
HOME = Path(tempfile.mkdtemp(prefix="kd-tests-home-"))
os.environ["HOME"] = str(HOME)
# One thread per process (this one and every script it runs, read by torch at import): pytest-xdist runs a worker per
# core, and a second thread per process would only make the two fight over the cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
ENVIRONMENT = dict(os.environ)  # the script server's
# Variables read once, at import or first use: after a test changed one, its scripts run in a fresh interpreter (the
# script server imported torch, timm and Hugging Face, and chose its temp dir, under ENVIRONMENT). Any other change
# reaches the forked script.
READ_AT_IMPORT = ("HF_", "HUGGINGFACE_", "TORCH_", "PYTORCH_", "OMP_", "MKL_", "CUDA_", "PYTHON", "TMPDIR")


def forkable() -> bool:
    """No variable a library reads at import differs from the script server's (libraries set some of their own,
    e.g. gymnasium's PYGAME_HIDE_SUPPORT_PROMPT, and pytest sets PYTEST_CURRENT_TEST during each test)."""
    names = os.environ.keys() | ENVIRONMENT.keys()
    changed = [name for name in names if os.environ.get(name) != ENVIRONMENT.get(name)]
    return not any(name.startswith(READ_AT_IMPORT) for name in changed)


TINY = "synthetic:classes=4,train=96,val=32,test=32,size=32,seed=0"
WNIDS = ["n01443537", "n01440764"]  # written in unsorted order; class_names must come back sorted
COLOURS = {"n01440764": (200, 30, 30), "n01443537": (30, 30, 200)}


def run_script(*args, env=None, timeout=300, check=True) -> subprocess.CompletedProcess:
    """Run `python SCRIPT ARGS` from the repo root, as the README does: in a process forked from the script server
    (tests/script_server.py: the slow imports paid once) with this process's environment, or, with `env` or a changed
    variable of READ_AT_IMPORT, in a fresh interpreter."""
    if env is None and forkable():
        result = script_server().run([str(arg) for arg in args], timeout)
    else:
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


class ScriptServer:
    """The client of tests/script_server.py: one server per test session (per xdist worker)."""

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="script-output-"))
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "script_server.py")],
            env=ENVIRONMENT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.count = 0

    def run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        self.count += 1
        stdout, stderr = self.folder / f"{self.count}.out", self.folder / f"{self.count}.err"
        request = {"argv": argv, "environ": dict(os.environ), "stdout": str(stdout), "stderr": str(stderr)}
        self.process.stdin.write((json.dumps(request) + "\n").encode())
        self.process.stdin.flush()
        pid = int(self.answer(None).removeprefix("started "))
        try:
            code = int(self.answer(timeout).removeprefix("exited "))
        except subprocess.TimeoutExpired:
            os.killpg(pid, signal.SIGKILL)
            self.answer(None)
            raise subprocess.TimeoutExpired(argv, timeout) from None
        result = subprocess.CompletedProcess(argv, code, stdout.read_text(), stderr.read_text())
        stdout.unlink()
        stderr.unlink()
        return result

    def answer(self, timeout: float | None) -> str:
        """The server's next line, read byte by byte from the unbuffered pipe (so select sees what is left)."""
        line = b""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not line.endswith(b"\n"):
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.process.stdout], [], [], wait)[0]:
                raise subprocess.TimeoutExpired("script server", timeout)
            byte = os.read(self.process.stdout.fileno(), 1)
            if not byte:
                raise RuntimeError(f"the script server ended (exit {self.process.wait()})")
            line += byte
        return line.decode().strip()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


_server: ScriptServer | None = None


def script_server() -> ScriptServer:
    global _server
    if _server is None:
        _server = ScriptServer()
    return _server


def pytest_sessionfinish(session, exitstatus) -> None:
    if _server is not None:
        _server.close()
    shutil.rmtree(HOME, ignore_errors=True)


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
