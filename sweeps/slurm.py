"""A sweep's Slurm jobs (launch.run_slurm follows them): the sbatch options, Slurm's refusals in one line that names the
flag to fix, the jobs that an earlier driver of the same --out left pending or running, and the queue as squeue shows
it. submitit's own log lines (its sacct warnings on a cluster without accounting storage) go to a file.

Only squeue is asked for the jobs' states, never sacct: squeue lists pending and running jobs on every cluster,
sacct needs accounting storage. A job that left the queue has ended; its result is submitit's pickle beside it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import subprocess
from pathlib import Path

import submitit

from common.errors import UserError

# what Slurm refuses, recognised by words of sbatch's error or of a pending job's reason (squeue's REASON): the flags
# that asked for it, and what to give instead
REFUSALS = (
    (("invalid partition", "partition specified"), ("--partition",), "a partition that `sinfo -s` lists"),
    (("account",), ("--account",), "one of your accounts (`sacctmgr show associations user=$USER`)"),
    (("generic resource", "gres"), ("--gpus-per-job",), "0 for a CPU partition, or a --partition with GPUs"),
    (("time limit", "timelimit", "wallduration"), ("--time",), "at most the partition's TIMELIMIT (`sinfo -s`)"),
    (("processors", "node configuration", "partitionconfig", "badconstraints", "nodelimit"),
     ("--cpus-per-job", "--gpus-per-job"), "at most the CPUS and GRES of a node (`sinfo -N -o '%P %c %G'`)"),
)  # fmt: skip
# reasons a job stays pending for good (the partition's limits, the account's rights): no wait makes it start, where a
# cluster admits such jobs at submission (its EnforcePartLimits is NO, Slurm's default)
HOPELESS = {"PartitionTimeLimit", "PartitionConfig", "PartitionNodeLimit", "BadConstraints", "InvalidAccount",
            "AccountNotAllowed", "InvalidQOS", "QOSMaxWallDurationPerJobLimit"}  # fmt: skip
ALL_FLAGS = "--partition, --account, --time, --cpus-per-job, --gpus-per-job"


def slurm_executor(args, folder: Path) -> submitit.SlurmExecutor:
    """A job array: one job per run, each with --cpus-per-job cores and --gpus-per-job GPUs (at 0 none asked for: a
    CPU job), requeued (3 times at most) on time-out or pre-emption, when Step.checkpoint resubmits the run with
    --resume."""
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=3)
    options = {"partition": args.partition, "account": args.account, "gpus_per_node": args.gpus_per_job}
    executor.update_parameters(
        time=args.time, ntasks_per_node=1, cpus_per_task=args.cpus_per_job, job_name="sweep",
        array_parallelism=args.parallel or 256, **{k: v for k, v in options.items() if v},
    )  # fmt: skip
    return executor


@contextlib.contextmanager
def submitit_log(path: Path):
    """submitit's log lines go to `path`, not the terminal, while the sweep follows its jobs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("submitit")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    kept = logger.handlers, logger.propagate
    logger.handlers, logger.propagate = [handler], False
    try:
        yield
    finally:
        logger.handlers, logger.propagate = kept
        handler.close()


def submit(executor: submitit.SlurmExecutor, steps: list, args) -> list[submitit.SlurmJob]:
    """The steps as one job array (one job for one step), in one sbatch call: all are submitted, or none."""
    # submitit prints sbatch's error lines too before raising them: they are in the one line below
    try:
        with contextlib.redirect_stderr(io.StringIO()), executor.batch():
            jobs = [executor.submit(step) for step in steps]
    except submitit.core.utils.FailedJobError as err:
        reason = refused_reason(str(err))
        flags, fix = refusal(reason, args)
        raise UserError(f"{flags}sbatch refused the jobs ({reason}); {fix}, then run the same command again.") from None
    return jobs


def refused_reason(stderr: str) -> str:
    """sbatch's own words, less its prefixes: `Invalid partition name specified`."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()] or ["no reason given"]
    return lines[-1].removeprefix("sbatch: error: ").removeprefix("Batch job submission failed: ").rstrip(".")


def refusal(reason: str, args) -> tuple[str, str]:
    """(`--flag VALUE: ` of the flags that asked for what Slurm refuses, what to give instead) for Slurm's words."""
    for words, flags, fix in REFUSALS:
        if any(word in reason.lower() for word in words):
            values = [f"{flag} {given(getattr(args, flag[2:].replace('-', '_')))}" for flag in flags]
            return f"{', '.join(values)}: ", f"give {fix}"
    return "", f"fix the flag it concerns ({ALL_FLAGS})"


def given(value) -> str:
    return "(none given)" if value is None else str(value)


def check_time_limit(args) -> None:
    """--time within the partition's time limit (sinfo's TIMELIMIT), checked before anything is submitted: a cluster
    that admits longer jobs (EnforcePartLimits=NO, Slurm's default) would keep them pending for good."""
    try:
        listed = subprocess.run(["sinfo", "--noheader", "--format=%P|%l"], capture_output=True, text=True, timeout=120)
    except (subprocess.SubprocessError, OSError):
        return  # no limit to read: sbatch still refuses what the partition does not admit
    rows = [row.split("|") for row in listed.stdout.split() if row.count("|") == 1]
    limits = {name.rstrip("*"): limit for name, limit in rows}
    partition = args.partition or next((name.rstrip("*") for name, _ in rows if name.endswith("*")), None)
    limit = minutes(limits.get(partition, "infinite"))  # a partition sinfo lacks: sbatch says so
    if limit is not None and args.time > limit:
        raise UserError(f"--time {args.time}: partition {partition} allows at most {limit} minutes a job (`sinfo -s`); "
                        f"give at most {limit}, then run the same command again.")  # fmt: skip


def minutes(limit: str) -> int | None:
    """Slurm's time limit (`infinite`, `30:00`, `1:00:00`, `2-00:00:00`) in whole minutes; None for no limit."""
    if not limit[:1].isdigit():
        return None
    days, _, clock = limit.rpartition("-")
    seconds = sum(int(part) * 60**k for k, part in enumerate(reversed(clock.split(":"))))
    return int(days or 0) * 24 * 60 + seconds // 60


def read_queue(required: bool = False) -> dict[str, tuple[str, str]] | None:
    """Job id (`123`, or `123_4` for an array's task) -> (state, reason) of this user's pending and running jobs; None
    when squeue fails (the controller busy or restarting), or, if `required`, one line naming the failure."""
    command = ["squeue", "--me", "--noheader", "--array", "--format=%i|%T|%r"]
    try:
        listed = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    except (subprocess.SubprocessError, OSError) as err:
        if not required:
            return None
        words = (getattr(err, "stderr", None) or str(err)).strip().splitlines()[-1:] or ["no reason given"]
        raise UserError(f"squeue failed ({words[0]}): the sweep cannot tell which jobs still run; run it again once "
                        "`squeue --me` works.") from None  # fmt: skip
    rows = (line.split("|") for line in listed.splitlines())
    return {row[0]: (row[1], row[2]) for row in rows if len(row) == 3}


def jobs_left(folder: Path, queue: dict[str, tuple[str, str]], names: list[str]) -> dict[str, submitit.SlurmJob]:
    """Step name -> the job, of those submitted into `folder` (<out>/.submitit) before, that is still pending or
    running and runs one of `names`: the job a killed driver left, which a new one follows instead of submitting."""
    left = {}
    for path in folder.glob("*_submitted.pkl"):  # submitit's pickle of each job's Step, named by job id
        job = submitit.SlurmJob(folder, path.name.removesuffix("_submitted.pkl"))
        if job.job_id in queue and (name := job.submission().function.name) in names:
            left[name] = job
    return left


def earlier_checkpoint(folder: Path, step) -> str | None:
    """The checkpoint that a job submitted into `folder` before printed last, having run `step`'s very command to exit
    0, if it is still there with its run's results.json: the teacher of a killed sweep, which a re-run need not queue
    for again."""
    for path in folder.glob("*_submitted.pkl"):
        job = submitit.SlurmJob(folder, path.name.removesuffix("_submitted.pkl"))
        if not job.paths.result_pickle.exists() or job.submission().function.argv != step.argv:
            continue
        outcome, result = submitit.core.utils.pickle_load(job.paths.result_pickle)  # ("error", traceback) if it raised
        lines = result[1].strip().splitlines() if outcome == "success" and result[0] == 0 else []
        if lines and (Path(lines[-1]).parent / "results.json").is_file():
            return lines[-1]
    return None


def check_pending(jobs: list[submitit.SlurmJob], queue: dict[str, tuple[str, str]], args) -> None:
    """A job that Slurm keeps pending for good (HOPELESS) cancels the sweep's jobs and stops it in one line."""
    for job in jobs:
        state, reason = queue.get(job.job_id, ("", ""))
        if state == "PENDING" and reason in HOPELESS:
            subprocess.run(["scancel", *(job.job_id for job in jobs)], capture_output=True, timeout=120)
            flags, fix = refusal(reason, args)
            raise UserError(f"{flags}Slurm keeps job {job.job_id} pending for good ({reason}), so the sweep cancelled "
                            f"its jobs; {fix}, then run the same command again.")  # fmt: skip
