"""A command's whole process tree, run to its end or ended whole: torchrun starts its workers in sessions of their own,
and a worker can outlive torchrun, so neither a process group nor a pipe finds them all. Every process of a run
carries a token in its environment, found again by a /proc walk (Linux), and the output goes to a file (no pipe that
an orphaned worker could hold open)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

RUN_TOKEN = "KD_GPU_CHECK_RUN"  # in every process a run starts: how its whole tree is found


def processes_of(token: str) -> list[int]:
    """Every process whose environment holds RUN_TOKEN=token: torchrun and its workers, also those that started
    their own session or outlived their parent (a /proc walk; Linux)."""
    marker, found = f"{RUN_TOKEN}={token}".encode(), []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                environment = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:  # ended meanwhile, or another user's
                continue
            if marker in environment.split(b"\0"):
                found.append(int(entry))
    return found


def end_whole(process: subprocess.Popen, token: str) -> int:
    """SIGKILL torchrun's process group and every process of the run, wherever its session; the count killed."""
    pids = set(processes_of(token)) | {process.pid}
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    process.wait()
    return len(pids)


def run_to_end(argv: list[str], env: dict, timeout: float, log: Path, cwd: Path) -> tuple[int | None, float, str]:
    """(exit code, or None past `timeout`; seconds; last lines of output) of a run whose output goes to `log` (a file:
    no pipe that an orphaned worker could hold open). Past its timeout, or if a worker outlives it, the run is ended
    whole: torchrun and every worker it started."""
    start, token = time.monotonic(), f"{os.getpid()}-{time.monotonic_ns()}"
    with open(log, "w") as output:
        process = subprocess.Popen(argv, cwd=cwd, env={**os.environ, **env, RUN_TOKEN: token}, stdout=output,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
    killed = end_whole(process, token) if code is None else 0
    leftovers = processes_of(token)  # workers still alive after torchrun ended
    if leftovers:
        end_whole(process, token)
    lines = log.read_text(errors="replace").strip().splitlines()[-3:]
    if killed:
        lines.append(f"(ended torchrun and its workers: {killed} processes)")
    if leftovers:
        lines.append(f"({len(leftovers)} processes outlived torchrun and were ended)")
    return code, time.monotonic() - start, "\n".join(lines)
