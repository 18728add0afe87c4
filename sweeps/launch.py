"""How a sweep's runs are launched (sweep.py decides which runs there are): each as a subprocess of its usual command
with its output in its log, one after another in this process, several at once through submitit's LocalExecutor
(each pinned to its own GPUs or share of the CPU cores), or as a Slurm job array that requeues a pre-empted run; with
one stderr line per change of a run's state and a summary.

submitit pickles a `Step` by reference, so a job's worker imports this module (prepare_driver puts it on PYTHONPATH).
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import submitit

from common import run_folder as bookkeeping
from common.errors import UserError
from sweeps import slurm as slurm_jobs

ROOT = Path(__file__).resolve().parents[1]  # the repository, where the scripts are

QUEUE_POLL_S = 10  # how often a Slurm sweep reads the queue (squeue)
RESULT_GRACE_S = 30  # how long a job that left the queue may take to show its result


# ----------------------------------------------------------------------------------------------------------------------
# The steps of a sweep: one command each


@dataclasses.dataclass
class Step(submitit.helpers.Checkpointable):
    """One command of a sweep (the teacher, a run, the table), run as a subprocess with its output in `log`.

    A run (`folder` set) that is not `fresh` continues from its folder: skipped if it finished, resumed with --resume
    if it completed an epoch, else started. That is also what a Slurm job pre-empted or out of time does: submitit
    calls checkpoint(), which requeues the same step, and the requeued job resumes from the run's last.pt."""

    name: str
    argv: list[str]  # script and flags: ["train_student.py", "--data", ...]
    log: str
    folder: str | None = None
    fresh: bool = True
    nproc: int = 1  # processes per run: >1 launches it with torchrun, one per GPU
    cpus: tuple[int, ...] = ()  # local CPU runs: the cores it is pinned to (and its OMP_NUM_THREADS)
    echo: bool = False  # also copy its output to this terminal (one run at a time)
    keep_stdout: bool = True  # echo its stdout too (the teacher's stdout is only its checkpoint path)

    def command(self) -> list[str] | None:
        """The script and flags this step runs now; None for a run that already finished."""
        if self.folder is None or self.fresh:
            return self.argv
        if (Path(self.folder) / "results.json").is_file():
            return None
        if bookkeeping.holds_run(self.folder):
            return resume_argv(self.argv, self.folder)
        return self.argv

    def __call__(self) -> tuple[int, str]:
        """(exit code, stdout) of the step's command."""
        argv = self.command()
        if argv is None:
            return 0, ""
        launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.nproc}"]
        script = str(ROOT / argv[0])  # the user's relative paths stay relative to where the sweep was started
        command = [sys.executable, *(launch if self.nproc > 1 else []), script, *argv[1:]]
        env = dict(os.environ)
        # the run's threads: its share of the cores here, or its job's cores on Slurm (where a job may see all of them)
        threads = str(len(self.cpus)) if self.cpus else os.environ.get("SLURM_CPUS_PER_TASK")
        if threads:
            env.setdefault("OMP_NUM_THREADS", threads)
        Path(self.log).parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            log.write(f"$ {shlex.join(command)}\n".encode())
            log.flush()
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                       preexec_fn=lambda: prepare_child(self.cpus))  # fmt: skip
            try:
                lock = threading.Lock()
                err = sys.stderr.buffer if self.echo else None
                stderr = threading.Thread(target=copy_stream, args=(process.stderr, [log, err], lock))
                stderr.start()
                out = sys.stdout.buffer if self.echo and self.keep_stdout else None
                stdout = copy_stream(process.stdout, [log, out], lock)
                stderr.join()
                process.wait()
            finally:  # a step stopped (Ctrl-C, a cancelled job) stops its run: the next sweep resumes it
                if process.poll() is None:
                    process.terminate()
                    process.wait()
        return process.returncode, stdout.decode(errors="replace")

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Requeue on pre-emption or time-out: the same step, continued from its folder (--resume)."""
        return submitit.helpers.DelayedSubmission(dataclasses.replace(self, fresh=False))


def prepare_child(cpus: tuple[int, ...]) -> None:
    """In the run's process before it starts: pin it to its cores, and have it end with the process that launched it
    (a local job's worker that submitit kills with SIGKILL cannot pass a signal on)."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def copy_stream(source, sinks, lock: threading.Lock) -> bytes:
    """Copy a child's pipe, line by line, to every sink (a file, the terminal); return what passed."""
    kept = []
    for line in iter(source.readline, b""):
        kept.append(line)
        with lock:
            for sink in sinks:
                if sink is not None:
                    sink.write(line)
                    sink.flush()
    return b"".join(kept)


def resume_argv(argv: list[str], folder: str) -> list[str]:
    """`SCRIPT --resume FOLDER` plus the flags a resume may change: the run's other flags are in its config.json."""
    where = [part for flag in bookkeeping.WHERE_FLAGS if flag in argv for part in (flag, argv[argv.index(flag) + 1])]
    return [argv[0], "--resume", folder, *where]


# ----------------------------------------------------------------------------------------------------------------------
# Progress and launchers


class Progress:
    """One stderr line per state change of a step, the `== [k/n] name: command ==` header on stdout as each starts,
    and the summary."""

    def __init__(self, total: int):
        self.total, self.states, self.logs = total, {}, {}

    def say(self, name: str, state: str, detail: str) -> None:
        self.states[name] = state
        print(f"sweep: {state} {name} ({detail})", file=sys.stderr, flush=True)

    def header(self, number: int, step: Step, note: str = "", argv: list[str] | None = None) -> None:
        argv = argv or step.command() or step.argv
        torchrun = f"torchrun --standalone --nproc_per_node {step.nproc} " if step.nproc > 1 else ""
        print(f"== [{number}/{self.total}] {step.name}: {torchrun or 'python '}{' '.join(argv)}{note} ==", flush=True)

    def started(self, number: int, step: Step, where: str = "", argv: list[str] | None = None) -> None:
        """`argv`: the command the step runs, if it was fixed earlier (a Slurm job's, when it was submitted)."""
        argv = argv or step.command()
        if number > 0:  # the gathering step has a header of its own
            self.header(number, step, " (once, then cached)" if step.folder is None else "", argv)
        resumed = step.folder is not None and argv != step.argv
        self.logs[step.name] = step.log
        self.say(step.name, "resumed" if resumed else "started", f"{where}log {step.log}")

    def ended(self, step: Step, code: int | None) -> None:
        if code == 0:
            self.say(step.name, "done", f"{step.folder}/results.json" if step.folder else f"log {step.log}")
        else:
            self.say(step.name, "failed", f"exit {code}; log {step.log}")

    def summary(self) -> str:
        counts = {state: [name for name, s in self.states.items() if s == state] for state in ("done", "failed")}
        running = [name for name, s in self.states.items() if s in ("started", "resumed")]
        waiting = [name for name, s in self.states.items() if s in ("queued", "submitted", "reattached")]
        failed = "".join(f"; failed {name} (log {self.logs.get(name)})" for name in counts["failed"])
        queued = f", {len(waiting)} queued" if waiting else ""
        done = f"sweep: {len(counts['done'])} done, {len(running)} running{queued}"
        return f"{done}, {len(counts['failed'])} failed{failed}"


def run_here(steps: dict[int, Step], progress: Progress) -> dict[str, tuple[int, str]]:
    """One step after another in this process, its output copied to the terminal."""
    results = {}
    for number, step in steps.items():
        progress.started(number, step)
        results[step.name] = dataclasses.replace(step, echo=True)()
        progress.ended(step, results[step.name][0])
    return results


def gpu_count(device: str) -> int:
    if device == "cpu":
        return 0
    import torch  # here: only a local sweep on several GPUs needs it

    return torch.cuda.device_count()


def local_slots(parallel: int, device: str, gpus_per_job: int) -> list[dict]:
    """What each of `parallel` concurrent runs is pinned to: its own GPUs, or else its share of the CPU cores."""
    gpus = gpu_count(device)
    if gpus:
        if parallel * gpus_per_job > gpus:
            raise UserError(
                f"--parallel {parallel} x --gpus-per-job {gpus_per_job} needs more than the {gpus} GPUs here; "
                "lower --parallel."
            )
        return [{"gpus": list(range(k * gpus_per_job, (k + 1) * gpus_per_job))} for k in range(parallel)]
    cores = sorted(os.sched_getaffinity(0))
    if parallel >= len(cores):
        return [{"cpus": (cores[k % len(cores)],)} for k in range(parallel)]
    share = len(cores) // parallel
    return [{"cpus": tuple(cores[k * share : (k + 1) * share])} for k in range(parallel)]


def run_local(steps: dict[int, Step], progress: Progress, args, folder: Path) -> dict[str, tuple[int, str]]:
    """`--parallel N` steps at once through submitit's LocalExecutor, each pinned to a slot (local_slots)."""
    executor = submitit.LocalExecutor(folder=folder)
    free, queue, running, results = (
        local_slots(args.parallel, args.device, args.gpus_per_job),
        list(steps.items()),
        {},
        {},
    )
    try:
        while queue or running:
            while queue and free:
                number, step = queue.pop(0)
                slot = free.pop(0)
                gpus = slot.get("gpus", [])
                # without GPUs the executor's default CUDA_VISIBLE_DEVICES="" is right: the run is on its CPU cores
                executor.update_parameters(timeout_min=60 * 24 * 365, gpus_per_node=len(gpus), visible_gpus=gpus)
                step = dataclasses.replace(step, cpus=slot.get("cpus", ()), nproc=len(gpus) or 1)
                running[executor.submit(step)] = (step, slot)
                where = f"GPU {','.join(map(str, gpus))}; " if gpus else f"cores {','.join(map(str, slot['cpus']))}; "
                progress.started(number, step, where)
            time.sleep(0.5)
            for job in [job for job in running if job.done()]:
                step, slot = running.pop(job)
                free.append(slot)
                results[step.name] = outcome(job)
                progress.ended(step, results[step.name][0])
    except BaseException:
        for job in running:
            job.cancel(check=False)  # the runs stop with the sweep; the next sweep resumes them
        raise
    return results


def outcome(job) -> tuple[int, str]:
    """(exit code, stdout) of a finished job; a job that died outside its command counts as exit code -1."""
    try:
        return job.result()
    except Exception as err:  # the job's own traceback is in submitit's log beside it
        print(f"sweep: job {job.job_id} raised {type(err).__name__} (see {job.paths.stderr})", file=sys.stderr)
        return -1, ""


def run_slurm(steps: dict[int, Step], progress: Progress, args, folder: Path) -> dict[str, tuple[int, str]]:
    """The steps as one Slurm job array, less those that a job of an earlier driver in --out still runs or waits for:
    that job is followed instead. Waits for all, one line per change of a job's state."""
    results = {}
    with slurm_jobs.submitit_log(folder / "submitit.log"):
        # the queue first, the runs' folders after: a job that leaves the queue in between has written its results
        queue = slurm_jobs.read_queue(required=True)
        left = slurm_jobs.jobs_left(folder, queue, [step.name for step in steps.values()])
        if left and args.overwrite:
            raise UserError(
                f"slurm jobs {', '.join(job.job_id for job in left.values())} of an earlier sweep in {folder.parent} "
                "still run; wait for them (`squeue --me`) or scancel them, then run the same command again."
            )
        jobs = {}  # job -> (number, step, the command it runs if known)
        for number, step in steps.items():
            if step.name in left:
                jobs[left[step.name]] = number, step, None
                progress.say(step.name, "reattached", f"slurm job {left[step.name].job_id}, left by an earlier sweep; "
                             f"log {step.log}")  # fmt: skip
            elif step.command() is None:  # its job ended after the sweep planned the runs, before the queue was read
                results[step.name] = 0, ""
                progress.say(step.name, "done", f"finished before; {step.folder}/results.json")
        new = [(number, step) for number, step in steps.items() if step.name not in left and step.name not in results]
        if new:
            slurm_jobs.check_time_limit(args)
            submitted = slurm_jobs.submit(slurm_jobs.slurm_executor(args, folder), [step for _, step in new], args)
            for job, (number, step) in zip(submitted, new, strict=True):
                jobs[job] = number, step, step.command()
                progress.say(step.name, "submitted", f"slurm job {job.job_id}; log {step.log}")
        return {**results, **follow_jobs(jobs, progress, args)}


def follow_jobs(jobs: dict, progress: Progress, args) -> dict[str, tuple[int, str]]:
    """Wait for the jobs (job -> (number, step, its command if known)): a job is done when its result is there, or
    when it left the queue without one (cancelled, out of memory, its node failed). The results are looked for every
    second, the queue read less often."""
    results, waiting, running, gone, polled, polls = {}, dict(jobs), set(), {}, float("-inf"), 0
    while waiting:
        # at 0, 1, 3, 7 and 15 s, then every QUEUE_POLL_S: a job that Slurm will never start is told at once
        due = time.monotonic() - polled >= min(2 ** (polls - 1), QUEUE_POLL_S)
        if due and (queue := slurm_jobs.read_queue()) is not None:
            polled, polls = time.monotonic(), polls + 1
            slurm_jobs.check_pending(list(waiting), queue, args)
            for job, (number, step, argv) in waiting.items():
                state = queue.get(job.job_id, ("", ""))[0]
                if state == "RUNNING" and job not in running:
                    running.add(job)
                    progress.started(number, step, f"slurm job {job.job_id}; ", argv)
                gone[job] = None if state else gone.get(job) or polled
        # a result written just before its job left the queue may take a while to show on a shared filesystem
        now = time.monotonic()
        ended = [
            job for job in waiting if job.paths.result_pickle.exists() or now - (gone.get(job) or now) > RESULT_GRACE_S
        ]
        for job in ended:
            _, step, _ = waiting.pop(job)
            results[step.name] = outcome(job) if job.paths.result_pickle.exists() else lost(job)
            progress.ended(step, results[step.name][0])
        time.sleep(1)
    return results


def lost(job) -> tuple[int, str]:
    """A job that left the queue without a result (asking submitit for it would wait for sacct, which may be absent)."""
    print(f"sweep: slurm job {job.job_id} ended without a result (cancelled, out of time or memory, or its node "
          f"failed; see {job.paths.stderr})", file=sys.stderr)  # fmt: skip
    return -1, ""


def run_steps(steps: dict[int, Step], progress: Progress, args, out: Path) -> dict[str, tuple[int, str]]:
    """(exit code, stdout) of each step by name, launched as --launcher and --parallel say."""
    if args.launcher == "slurm":
        return run_slurm(steps, progress, args, out / ".submitit")
    if args.parallel > 1 and len(steps) > 1:
        return run_local(steps, progress, args, out / ".submitit")
    return run_here(steps, progress)


def interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # a killed sweep stops its local runs too (run_local), as Ctrl-C does


def prepare_driver() -> None:
    """Ready this process to launch the runs: a job's worker can import this module, and SIGTERM or Ctrl-C stop the
    sweep with its local runs."""
    # a worker of the local or Slurm executor imports this module to run its Step; the runs ignore it
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    signal.signal(signal.SIGTERM, interrupt)
    # Ctrl-C, even for a sweep started in the background (which inherits SIGINT ignored, and would pass that on to the
    # local jobs, whose cancel is a SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
