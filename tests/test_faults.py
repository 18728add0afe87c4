"""Faults a user meets outside the flags: two launches into one folder, a lock left by a killed run, a full disk while
a checkpoint is written (torch's zip writer hides the errno), and a scheduler's SIGTERM, each ending in one line with
the earlier results intact and, where the run was stopped, `--resume` continuing exactly."""

import errno
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import train_student
from common import files, metrics, run_folder
from common.errors import UserError, run_cli
from conftest import ROOT, run_script, train_args

DATA = "synthetic:classes=4,train=96,val=32,test=32,size=32,seed=0"
EPOCHS = 4
WALL_CLOCK = {"seconds", "agent_seconds"}


def comparable(folder) -> list[dict]:
    rows = metrics.read_metrics(folder / "metrics.csv")
    return [{key: value for key, value in row.items() if key not in WALL_CLOCK} for row in rows]


@pytest.fixture(scope="module")
def flags(tiny_teacher, cache_dir) -> list:
    return ["--teacher-checkpoint", str(tiny_teacher), "--label-weight", "0.5", "--student", "resnet10t",
            "--curriculum", "adaptive", "--rescore-every", "2", "--cache-dir", str(cache_dir)]  # fmt: skip


@pytest.fixture(scope="module")
def solo(tmp_path_factory, flags):
    """The uninterrupted run every faulted run must equal."""
    out = tmp_path_factory.mktemp("solo") / "run"
    run_script(*train_args(out, *flags, data=DATA, epochs=EPOCHS))
    return out


# ----------------------------------------------------------------------------------------------------------------------
# One run per folder


def test_a_folder_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    folder = tmp_path / "run"
    with run_folder.hold_folder_lock(folder, "--out") as lock:
        assert run_folder.hold_folder_lock(folder) is lock  # the same process: the same lock
        holder = (folder / run_folder.LOCK_FILE).read_text()
        assert holder.startswith(f"pid {os.getpid()} on ")
        code = f"from common import run_folder; run_folder.hold_folder_lock({str(folder)!r}, '--resume')"
        result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode != 0
        assert f"UserError: --resume {folder} is in use by {holder.strip()}; wait for" in result.stderr
    assert list(folder.iterdir()) == []  # released: the lock file is gone


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    """The holder forks a child (as a DataLoader worker is forked) that outlives it, then dies by SIGKILL: its lock
    file stays, naming it, but the lock is free at once, although the child still holds a copy of the descriptor."""
    folder = tmp_path / "run"
    code = (
        "import os, signal, sys, time\nfrom common import run_folder\n"
        f"run_folder.hold_folder_lock({str(folder)!r})\n"
        "ready, told = os.pipe()\n"
        "if os.fork() == 0:\n"  # fork's after-in-child hooks have run once fork() returns here
        "    os.write(told, b'x')\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "os.read(ready, 1)\n"  # the child is running: no timing decides whether it still holds the lock
        "print('forked', flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)  # fmt: skip
    try:
        assert holder.stdout.readline() == "forked\n"
        holder.wait()
        assert holder.returncode == -signal.SIGKILL
        assert (folder / run_folder.LOCK_FILE).read_text().startswith(f"pid {holder.pid} on ")  # a stale file
        with run_folder.hold_folder_lock(folder):
            assert (folder / run_folder.LOCK_FILE).read_text().startswith(f"pid {os.getpid()} on ")
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # the sleeping child


def wait_for(condition, process, what: str) -> None:
    deadline = time.monotonic() + 240
    while not condition():
        assert process.poll() is None, f"the run ended before {what}; give it more epochs"
        assert time.monotonic() < deadline, f"no {what} after 240 s"
        time.sleep(0.02)


@pytest.mark.slow
def test_a_second_launch_into_a_running_folder_is_refused_and_the_first_equals_a_solo_run(tmp_path, flags, solo):
    """The first run is frozen (SIGSTOP) once it holds the folder, so the second launches meet it whatever the timing:
    a new run, --overwrite and --resume each stop with one line naming it; the first then finishes as if alone."""
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, *train_args(out, *flags, data=DATA, epochs=EPOCHS)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    lock = out / run_folder.LOCK_FILE
    holder = f"pid {first.pid} on "
    wait_for(lambda: lock.exists() and lock.read_text().startswith(holder) and (out / "config.json").exists(),
             first, "its lock and config.json")  # fmt: skip
    first.send_signal(signal.SIGSTOP)
    try:
        for extra in ([], ["--overwrite"]):
            result = run_script(*train_args(out, *flags, *extra, data=DATA, epochs=EPOCHS), check=False)
            assert result.returncode == 2, result.stderr
            assert result.stderr.startswith(f"error: --out {out} is in use by {holder}"), result.stderr
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        result = run_script("train_student.py", "--resume", out, check=False)
        assert result.returncode == 2 and result.stderr.startswith(f"error: --resume {out} is in use by {holder}")
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=300) == 0, first.stderr.read()[-3000:]
    assert comparable(out) == comparable(solo)
    assert not lock.exists()


# ----------------------------------------------------------------------------------------------------------------------
# A full disk


class DiskFullAfter:
    """A binary file whose writes fail with ENOSPC once `room` bytes are written, as a full disk's do."""

    def __init__(self, handle, room: int):
        self.handle, self.room = handle, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def fill_disk(monkeypatch, room: int, name: str = "") -> None:
    """Every file atomic_write opens (or only those whose temporary's name contains `name`) fills after `room` bytes."""
    real = os.fdopen

    def fdopen(fd, *args, **kwargs):
        handle = real(fd, *args, **kwargs)
        return DiskFullAfter(handle, room) if name in os.readlink(f"/proc/self/fd/{fd}") else handle

    monkeypatch.setattr(files.os, "fdopen", fdopen)


def test_torch_hides_the_errno_of_a_full_disk():
    """The fault as torch raises it: a write that fails with ENOSPC mid-checkpoint comes out as an errno-less
    RuntimeError, so the message cannot be matched; atomic_write reads the errno from the write that failed."""
    import io

    with pytest.raises(RuntimeError, match="unexpected pos") as caught:
        torch.save({"w": torch.zeros(100_000)}, DiskFullAfter(io.BytesIO(), 5000))
    assert not isinstance(caught.value, OSError)


@pytest.mark.parametrize(
    "write",
    [
        lambda path: files.save_checkpoint(path, {"model": "x", "state_dict": {"w": torch.ones(300_000)}}),
        lambda path: files.atomic_write(path, lambda handle: np.save(handle, np.ones(300_000))),
        lambda path: files.save_json(path, {"rows": list(range(300_000))}),
    ],
    ids=["torch", "numpy", "json"],
)
def test_a_full_disk_is_one_line_naming_the_folder_and_the_space_and_keeps_the_old_file(tmp_path, monkeypatch, write):
    path = tmp_path / "last.pt"
    path.write_bytes(b"the previous checkpoint" * 100_000)  # 2.2 MB
    before = path.read_bytes()
    fill_disk(monkeypatch, room=5000)
    with pytest.raises(UserError) as caught:
        write(path)
    message = str(caught.value)
    assert message.startswith(f"no space left on the disk of {tmp_path} (last.pt needs about ")
    needed = float(message.split("needs about ")[1].split(" MB")[0])
    assert needed >= 2.1  # at least the size of the file it replaces
    assert " free); free some space and run again (--resume RUN_FOLDER" in message
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]  # no temporary left


def test_ctrl_c_inside_torchs_writer_stays_a_keyboard_interrupt(tmp_path, monkeypatch):
    """Before, a Ctrl-C that landed in a checkpoint's write came out as torch's RuntimeError and a traceback."""
    real = os.fdopen

    class InterruptedFile(DiskFullAfter):
        def write(self, data):
            if len(data) > self.room:
                raise KeyboardInterrupt
            return super().write(data)

    monkeypatch.setattr(files.os, "fdopen", lambda fd, *args, **kw: InterruptedFile(real(fd, *args, **kw), 5000))
    with pytest.raises(KeyboardInterrupt):
        files.save_checkpoint(tmp_path / "last.pt", {"w": torch.ones(100_000)})
    assert list(tmp_path.iterdir()) == []


def test_a_runtime_error_that_is_not_a_full_disk_stays_itself(tmp_path):
    def write(handle):
        handle.write(b"partial")
        raise RuntimeError("unexpected pos 7 vs 0")  # torch's words, but no write failed

    with pytest.raises(RuntimeError, match="unexpected pos"):
        files.atomic_write(tmp_path / "last.pt", write)


@pytest.mark.slow
def test_a_full_disk_at_a_checkpoint_stops_the_run_in_one_line_and_resume_continues(
    tmp_path, monkeypatch, capsys, flags, solo
):
    """The disk fills while epoch 3's last.pt is written: one line, exit code 2, epoch 2's last.pt intact; once space
    is freed, --resume ends as the uninterrupted run."""
    out = tmp_path / "run"
    writes = []
    real_save = files.save_checkpoint

    def save_checkpoint(path, payload):
        writes.append(path.name)
        if path.name == "last.pt" and payload["epoch"] == 3:
            fill_disk(monkeypatch, room=10_000, name=".last.pt.")
        return real_save(path, payload)

    monkeypatch.setattr(files, "save_checkpoint", save_checkpoint)
    monkeypatch.setattr("training.experiment.save_checkpoint", save_checkpoint)
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: train_student.main(train_args(out, *flags, data=DATA, epochs=EPOCHS)[1:]))
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: no space left on the disk of {out} (last.pt needs about ")
    assert files.load_checkpoint(out / "last.pt")["epoch"] == 2
    assert not list(out.glob(".*.tmp"))
    monkeypatch.undo()
    run_folder.release_folder_locks()  # this test process was the run: it ends here
    run_script("train_student.py", "--resume", out)
    assert comparable(out) == comparable(solo)


# ----------------------------------------------------------------------------------------------------------------------
# A scheduler's SIGTERM


@pytest.mark.slow
def test_sigterm_saves_the_epoch_and_resume_equals_an_uninterrupted_run(tmp_path, flags, solo):
    """SIGTERM to the whole process group (as a scheduler sends it, DataLoader workers included) once epoch 1 is
    printed: the run finishes the epoch in progress, saves it and exits 143 with the command that resumes it."""
    out = tmp_path / "run"
    argv = train_args(out, *flags, data=DATA, epochs=EPOCHS)
    argv[argv.index("--workers") + 1] = "2"
    run = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)  # fmt: skip
    first = run.stdout.readline()
    assert first.startswith(f"epoch 1/{EPOCHS}"), first + run.stderr.read()
    os.killpg(run.pid, signal.SIGTERM)  # it arrives in epoch 1's writes or epoch 2: the run stops after epoch 1 or 2
    _, err = run.communicate(timeout=300)
    assert run.returncode == 143, err
    lines = err.strip().splitlines()
    assert lines[0].startswith("SIGTERM: finishing this epoch"), err
    epoch = files.load_checkpoint(out / "last.pt")["epoch"]
    assert epoch in (1, 2)
    assert lines[1:] == [
        f"stopped by SIGTERM after epoch {epoch}/{EPOCHS}, which is saved; continue with: "
        f"python train_student.py --resume {out}"
    ]
    assert len(comparable(out)) == epoch and not (out / "results.json").exists()
    run_script("train_student.py", "--resume", out)
    assert comparable(out) == comparable(solo)
    assert not (out / run_folder.LOCK_FILE).exists()


@pytest.mark.slow
def test_sigterm_in_an_rl_runs_proxy_phase_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_teacher, cache_dir):
    """The RL script stops after the proxy epoch in progress; --resume finishes the proxy runs, the agent and the full
    run as if never stopped."""
    flags = ["--teacher-checkpoint", tiny_teacher, "--cache-dir", cache_dir, "--student", "resnet10t", "--agent-steps",
             "2", "--pretrain-episodes", "1", "--pretrain-epochs", "3", "--pretrain-subset", "0.5"]  # fmt: skip
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    run_script(*train_args(whole, *flags, data=DATA, epochs=2, script="train_student_rl.py"))
    argv = train_args(stopped, *flags, data=DATA, epochs=2, script="train_student_rl.py")
    run = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert run.stdout.readline().startswith("epoch 1/3")  # the first proxy epoch
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=300)
    assert run.returncode == 143, err
    assert "stopped by SIGTERM after proxy run 1, epoch " in err and f"train_student_rl.py --resume {stopped}" in err
    assert not (stopped / "results.json").exists()
    run_script("train_student_rl.py", "--resume", stopped)
    assert comparable(stopped) == comparable(whole)
    assert comparable(stopped / "proxy") == comparable(whole / "proxy")


def test_a_killed_dataloader_worker_is_one_line(capsys):
    """torch's words when the out-of-memory killer ends a worker (tried for real: SIGKILL to a worker mid-epoch)."""

    def main():
        raise RuntimeError("DataLoader worker (pid 13406) is killed by signal: Killed. ")

    with pytest.raises(SystemExit) as stop:
        run_cli(main)
    assert stop.value.code == 2
    assert capsys.readouterr().err == (
        "error: DataLoader worker (pid 13406) is killed by signal: Killed (signal 9, Killed, is most often the "
        "out-of-memory killer: see dmesg); lower --workers or --batch-size, then continue with --resume RUN_FOLDER.\n"
    )
    with pytest.raises(RuntimeError, match="another"):
        run_cli(lambda: (_ for _ in ()).throw(RuntimeError("another fault")))
