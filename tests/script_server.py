"""Runs the repo's scripts for the tests in processes forked from this one, which imported the slow modules (torch,
timm, torchvision, stable-baselines3: about 4 s of CPU per process) once, as Python's forkserver does.

A forked process runs `python SCRIPT ARGS` as the interpreter would: the script as `__main__` in the repo root, its
SystemExit turned into the exit code, a traceback for anything else, and the exit hooks run before it exits (the
libraries' and the script's own, e.g. the folder locks' release and the loaders' safety net).

Protocol, one line each way: the client writes a JSON request `{"argv": [...], "environ": {...}, "stdout": PATH,
"stderr": PATH}` (environ: the script's os.environ); this server answers `started PID` at once and `exited CODE` when
that process ends (CODE is -N for a signal N).
"""

import atexit
import json
import os
import runpy
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

import stable_baselines3  # noqa: E402, F401  the slow imports, once
import timm  # noqa: E402, F401
import torch  # noqa: E402, F401

import evaluate  # noqa: E402, F401
import train_student  # noqa: E402, F401
import train_student_rl  # noqa: E402, F401


def run(argv: list[str]) -> int:
    """What `python ARGV` does with the script: its exit code."""
    sys.argv = list(argv)
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as stop:  # what the interpreter does with SystemExit at the top
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            os.setsid()  # its own process group: a timeout kills it with its DataLoader workers
            os.environ.clear()
            os.environ.update(request["environ"])
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            for fd, name in ((1, request["stdout"]), (2, request["stderr"])):
                os.dup2(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            code = run(request["argv"])
            atexit._run_exitfuncs()  # the exit hooks, as at an interpreter's exit
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        print(f"started {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exited {os.waitstatus_to_exitcode(status)}", flush=True)


if __name__ == "__main__":
    serve()
