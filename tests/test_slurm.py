"""Sweeps on Slurm: CPU jobs, Slurm's refusals in one line naming the flag, and a driver killed once its array is
submitted, whose re-run follows the jobs it left instead of submitting them again.

The first tests need no cluster. The others bring up a real single-node Slurm (Debian's slurmctld, slurmd and munge,
started by the test in its own folder, on free ports, and stopped at the end) and submit to its sbatch. They are
opt-in, run by scripts/test_on_slurm.sh (which installs the packages): they need root (slurmd runs the jobs as their
user; the node's two GPUs are device nodes made with mknod) and take minutes. docs/sweeps.md has what they showed."""

import collections
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time

import pytest
import submitit

import sweep
from common.errors import UserError
from conftest import ROOT
from sweeps import launch
from sweeps import plans as sweep_plans
from sweeps import slurm as slurm_jobs

# ----------------------------------------------------------------------------------------------------------------------
# Without a cluster


@pytest.fixture
def login_node(tmp_path, monkeypatch):
    """A fake srun on PATH: submitit's test for a Slurm machine."""
    (tmp_path / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")


def test_cpu_jobs_ask_for_no_gpu_and_run_on_the_cpu(tmp_path, login_node):
    def parse(*flags):
        return sweep.parse_args(["table", "--launcher", "slurm", *flags])

    assert parse("--device", "cpu").gpus_per_job == 0  # the default follows the device
    assert parse().gpus_per_job == 1 and parse().device == "auto"
    cpu = parse("--gpus-per-job", "0", "--cpus-per-job", "2")
    assert cpu.device == "cpu"  # the runs' --device, even on a node with GPUs
    parameters = slurm_jobs.slurm_executor(cpu, tmp_path).parameters
    assert "gpus_per_node" not in parameters and parameters["cpus_per_task"] == 2
    assert slurm_jobs.slurm_executor(parse(), tmp_path).parameters["gpus_per_node"] == 1
    for flags, words in [(["--gpus-per-job", "0", "--device", "cuda"], "asks for no GPU but --device cuda"),
                         (["--gpus-per-job", "-1"], "--gpus-per-job at least 0"),
                         (["--time", "0"], "--time (minutes) and --cpus-per-job must be at least 1")]:  # fmt: skip
        with pytest.raises(UserError, match=re.escape(words)):
            parse(*flags)


def test_slurm_refusals_name_the_flag_to_fix(login_node):
    """sbatch's words (as Slurm 22.05 prints them) and squeue's pending reasons, each to the flag that asked for it."""
    args = sweep.parse_args(["table", "--launcher", "slurm", "--partition", "gpu", "--time", "90"])
    gres = slurm_jobs.refused_reason("sbatch: error: Invalid generic resource (gres) specification\n")
    assert gres == "Invalid generic resource (gres) specification"
    assert slurm_jobs.refusal(gres, args) == ("--gpus-per-job 1: ", "give 0 for a CPU partition, or a --partition with "
                                              "GPUs")  # fmt: skip
    partition = slurm_jobs.refused_reason("sbatch: error: invalid partition specified: nope\nsbatch: error: Batch job "
                                          "submission failed: Invalid partition name specified")  # fmt: skip
    assert partition == "Invalid partition name specified"
    assert slurm_jobs.refusal(partition, args)[0] == "--partition gpu: "
    assert slurm_jobs.refusal("Invalid account or account/partition combination specified", args)[0] == (
        "--account (none given): "
    )
    assert slurm_jobs.refusal("PartitionTimeLimit", args)[0] == "--time 90: "
    assert slurm_jobs.refusal("PartitionConfig", args)[0] == "--cpus-per-job 8, --gpus-per-job 1: "
    assert slurm_jobs.refusal("More processors requested than permitted", args)[0].startswith("--cpus-per-job 8")
    limits = ("infinite", "30:00", "1:00:00", "1-12:30:00")  # sinfo's TIMELIMIT column
    assert [slurm_jobs.minutes(limit) for limit in limits] == [None, 30, 60, 24 * 60 + 12 * 60 + 30]
    assert slurm_jobs.refusal("Unable to contact slurm controller", args) == (
        "",
        "fix the flag it concerns (--partition, --account, --time, --cpus-per-job, --gpus-per-job)",
    )


def test_a_killed_sweeps_teacher_job_is_reused_only_if_it_succeeded(tmp_path):
    """slurm_jobs.earlier_checkpoint over submitit's pickles: a job that raised (submitit saves ("error", traceback))
    or exited non-zero is passed over, a successful one gives the checkpoint it printed last, while its run's
    results.json is there."""
    step = launch.Step("teacher", ["pretrain_teacher.py", "--seed", "0"], str(tmp_path / "teacher.log"))
    checkpoint = tmp_path / "teacher-run" / "best.pt"
    outcomes = {"1": ("error", "Traceback ...\nTimeoutError"), "2": ("success", (1, f"{checkpoint}\n"))}
    for job_id, outcome in outcomes.items():
        job = submitit.SlurmJob(tmp_path, job_id)
        submitit.core.utils.cloudpickle_dump(submitit.core.utils.DelayedSubmission(step), job.paths.submitted_pickle)
        submitit.core.utils.cloudpickle_dump(outcome, job.paths.result_pickle)
    assert slurm_jobs.earlier_checkpoint(tmp_path, step) is None
    job = submitit.SlurmJob(tmp_path, "3")
    submitit.core.utils.cloudpickle_dump(submitit.core.utils.DelayedSubmission(step), job.paths.submitted_pickle)
    submitit.core.utils.cloudpickle_dump(("success", (0, f"epoch 1\n{checkpoint}\n")), job.paths.result_pickle)
    assert slurm_jobs.earlier_checkpoint(tmp_path, step) is None  # its run's results.json is gone
    checkpoint.parent.mkdir()
    (checkpoint.parent / "results.json").write_text("{}")
    assert slurm_jobs.earlier_checkpoint(tmp_path, step) == str(checkpoint)
    other = launch.Step("teacher", ["pretrain_teacher.py", "--seed", "1"], str(tmp_path / "teacher.log"))
    assert slurm_jobs.earlier_checkpoint(tmp_path, other) is None  # another command


# ----------------------------------------------------------------------------------------------------------------------
# A real single-node cluster

NODE = "sweepnode"
SLURM_CONF = """\
ClusterName=sweeptest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={folder}/munge.socket
CredType=cred/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
GresTypes=gpu
NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 Gres=gpu:2 State=UNKNOWN
PartitionName=cpu Nodes={node} Default=YES MaxTime=60 State=UP
PartitionName=gpu Nodes={node} MaxTime=60 State=UP
"""
DAEMONS = ("munged", "slurmctld", "slurmd")
TIMEOUT = 900  # generous: a sweep of 8 jobs on 2 shared cores


def slurm_missing() -> str | None:
    """Why a single-node Slurm is not started here, or None."""
    if os.environ.get("KD_TEST_SLURM") != "1":
        return ("opt-in (root daemons, about 4 minutes): scripts/test_on_slurm.sh installs Slurm and runs these tests "
                "with KD_TEST_SLURM=1")  # fmt: skip
    if os.geteuid() != 0:
        return "starting slurmd (it runs jobs as their user) and making GPU device nodes (mknod) need root"
    missing = [name for name in (*DAEMONS, "sbatch", "squeue", "scontrol", "srun") if shutil.which(name) is None]
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} absent): scripts/test_on_slurm.sh installs it"
    return None


class Cluster:
    """munged, slurmctld and slurmd, each a child of this process, configured and logging in `folder`."""

    def __init__(self, folder):
        self.folder, self.daemons = folder, []
        self.env = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf"), "OMP_NUM_THREADS": "1"}

    def start(self) -> None:
        folder = self.folder
        for name in ("state", "spool"):
            (folder / name).mkdir()
        (folder / "munge.key").write_bytes(os.urandom(1024))
        (folder / "munge.key").chmod(0o600)
        for k in range(2):  # the node's two GPUs, as far as Slurm can tell: character devices
            os.mknod(folder / f"gpu{k}", 0o600 | stat.S_IFCHR, os.makedev(195, k))
        (folder / "gres.conf").write_text(f"NodeName={NODE} Name=gpu File={folder}/gpu[0-1]\n")
        cpus = re.search(r"CPUs=(\d+)", subprocess.run(["slurmd", "-C"], capture_output=True, text=True).stdout)
        (folder / "slurm.conf").write_text(SLURM_CONF.format(
            host=socket.gethostname().split(".")[0], ports=free_ports(2), folder=folder, node=NODE,
            cpus=cpus.group(1) if cpus else os.cpu_count()))  # fmt: skip
        # --force: munged wants every folder above its socket open to all, and pytest's are not (only root uses it)
        self.launch("munged", "-F", "--force", f"--key-file={folder}/munge.key", f"--socket={folder}/munge.socket",
                    f"--pid-file={folder}/munged.pid", f"--seed-file={folder}/munged.seed")  # fmt: skip
        self.wait(lambda: (folder / "munge.socket").exists(), "munged's socket")
        self.launch("slurmctld", "-D", "-f", str(folder / "slurm.conf"))
        self.launch("slurmd", "-D", "-N", NODE, "-f", str(folder / "slurm.conf"))
        self.wait(lambda: self.run("sinfo", "--noheader", "--format=%T", check=False) == "idle\n", "the node idle")

    def launch(self, *command) -> None:
        log = open(self.folder / f"{command[0]}.log", "wb")  # the daemon keeps its own copy
        self.daemons.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env))
        log.close()

    def wait(self, condition, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            ended = [daemon.args[0] for daemon in self.daemons if daemon.poll() is not None]
            if ended or time.monotonic() > deadline:
                logs = "".join((self.folder / f"{name}.log").read_text()[-1500:] for name in DAEMONS
                               if (self.folder / f"{name}.log").exists())  # fmt: skip
                raise AssertionError(f"no {what}: {ended or 'timed out'}\n{logs}")
            time.sleep(0.2)

    def run(self, *command, check=True) -> str:
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=120)
        assert not check or result.returncode == 0, f"{command}: {result.stderr}"
        return result.stdout

    def queue(self) -> dict[str, tuple[str, str]]:
        """Job id -> (state, reason), as the sweep reads them."""
        rows = self.run("squeue", "--noheader", "--array", "--format=%i|%T|%r").split()
        return {job: (state, reason) for job, state, reason in (row.split("|") for row in rows)}

    def stop(self) -> None:
        """Cancel every job, wait for the queue to empty (so no job step outlives slurmd), stop the daemons."""
        try:
            if self.daemons and self.daemons[-1].args[0] == "slurmd" and self.daemons[-1].poll() is None:
                self.run("scancel", "--user=root", check=False)
                self.wait(lambda: self.run("squeue", "--noheader", check=False) == "", "empty queue", timeout=120)
        finally:
            for daemon in reversed(self.daemons):
                daemon.terminate()
                try:
                    daemon.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = slurm_missing()
    if reason:
        pytest.skip(reason)
    cluster = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def table_command(out, cache, *flags) -> list[str]:
    """The quick synthetic table (7 steps: the teacher and 6 rows), on the CPU."""
    return [sys.executable, "sweep.py", "table", "--data", "synthetic", "--quick", "--device", "cpu", "--out", str(out),
            "--cache-dir", str(cache), *flags]  # fmt: skip


# the command: the CPU partition, one core per job, two jobs at once
ON_SLURM = ["--launcher", "slurm", "--partition", "cpu", "--time", "30", "--cpus-per-job", "1", "--parallel", "2"]


@pytest.fixture(scope="module")
def local_table(cluster, tmp_path_factory):
    """The table of a local sequential sweep, and the cache (its pretrained teacher) the Slurm sweeps share."""
    root = tmp_path_factory.mktemp("local")
    result = subprocess.run(table_command(root / "out", root / "cache"), cwd=ROOT, env=cluster.env,
                            capture_output=True, text=True, timeout=TIMEOUT)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return (root / "out" / "table.md").read_text(), root / "cache"


@pytest.mark.slow
def test_what_slurm_refuses_ends_in_one_line_naming_the_flag(cluster, tmp_path):
    """Refused before submitting (--time over the partition's limit), by sbatch, or after it (a job Slurm keeps
    pending for good, which the sweep cancels): one line naming the flag, no job left queued, none reported running."""
    cases = {  # flags changed from ON_SLURM -> the error line's start, and whether a job was submitted before it
        ("--partition", "nope"): ("--partition nope: sbatch refused the jobs (Invalid partition name specified); give "
                                  "a partition that `sinfo -s` lists", False),
        ("--time", "120"): ("--time 120: partition cpu allows at most 60 minutes a job (`sinfo -s`); give at most 60",
                            False),
        ("--gpus-per-job", "3"): ("--cpus-per-job 1, --gpus-per-job 3: sbatch refused the jobs (Requested node "
                                  "configuration is not available); give at most the CPUS and GRES of a node", False),
        ("--cpus-per-job", "8"): ("--cpus-per-job 8, --gpus-per-job 0: Slurm keeps job ", True),  # the node has 2
    }  # fmt: skip
    for (flag, value), (start, submitted) in cases.items():
        flags = sweep_plans.replace_flag(ON_SLURM, flag, value) if flag in ON_SLURM else [*ON_SLURM, flag, value]
        out = tmp_path / flag.strip("-")
        result = subprocess.run(table_command(out, tmp_path / "cache", *flags), cwd=ROOT, env=cluster.env,
                                capture_output=True, text=True, timeout=TIMEOUT)  # fmt: skip
        errors = [line for line in result.stderr.splitlines() if not line.startswith("sweep: ")]
        assert result.returncode == 2 and len(errors) == 1, result.stderr
        assert errors[0].startswith(f"error: {start}") and "run the same command again" in errors[0], errors[0]
        assert ("sweep: submitted teacher" in result.stderr) == submitted, result.stderr
        assert not re.search(r"sweep: (started|resumed|done) ", result.stderr), result.stderr
        assert cluster.queue() == {}  # nothing left queued


def wait_for_line(path, pattern: str, process) -> re.Match:
    """The first line of the file `path` (a driver's stderr) that matches `pattern`, once the driver has written it."""
    deadline = time.monotonic() + TIMEOUT
    while not (found := re.search(pattern, path.read_text(), flags=re.M)):
        assert process.poll() is None, f"the driver ended (exit {process.returncode}) before {pattern}"
        assert time.monotonic() < deadline, f"no {pattern} after {TIMEOUT} s"
        time.sleep(0.2)
    return found


def start_driver(command, env, log):
    with open(log, "w") as stderr:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)


@pytest.mark.slow
def test_a_driver_killed_after_submitting_is_rerun_without_submitting_twice(cluster, local_table, tmp_path):
    """The quick table on the CPU partition, its driver killed (SIGKILL) once the array is submitted: the re-run takes
    over the 6 jobs the first driver left pending, submits no run again, and gathers the local sequential table.

    The CPU partition is down meanwhile (its jobs wait; the teacher's is moved to the other partition), so whatever the
    timing the array is still pending when the driver is killed and when the re-run reads the queue."""
    table, cache = local_table
    out, command = tmp_path / "sweep", table_command(tmp_path / "sweep", cache, *ON_SLURM)
    cluster.run("scontrol", "update", "PartitionName=cpu", "State=DOWN")
    try:
        first = start_driver(command, cluster.env, tmp_path / "first.err")
        try:
            teacher = wait_for_line(tmp_path / "first.err", r"^sweep: submitted teacher \(slurm job (\d+);", first)
            cluster.run("scontrol", "update", f"JobId={teacher.group(1)}", "Partition=gpu")
            wait_for_line(tmp_path / "first.err", r"^sweep: submitted kd-teacher-only-equal-compute ", first)
        finally:
            first.kill()
            first.wait()
        left = cluster.queue()
        assert sorted(left.values()) == [("PENDING", "PartitionDown")] * 6, left
        second = start_driver(command, cluster.env, tmp_path / "second.err")
        for row in sweep_plans.TABLE_ROWS:
            wait_for_line(tmp_path / "second.err", rf"^sweep: reattached {row} \(slurm job \d+_\d+, left by", second)
        cluster.run("scontrol", "update", "PartitionName=cpu", "State=UP")
        assert second.wait(timeout=TIMEOUT) == 0, (tmp_path / "second.err").read_text()[-3000:]
    finally:
        cluster.run("scontrol", "update", "PartitionName=cpu", "State=UP")
    stderr = (tmp_path / "second.err").read_text()
    assert (out / "table.md").read_text() == table
    # every line the sweep's own (no sacct warnings of submitit), and no step submitted again but the table
    assert all(line.startswith("sweep: ") for line in stderr.splitlines()), stderr
    assert "sweep: done teacher (by an earlier sweep's slurm job; " in stderr
    assert re.findall(r"^sweep: submitted (\S+)", stderr, flags=re.M) == ["table"]
    jobs = collections.Counter()  # every job ever submitted into --out: submitit's pickle of its step, by job id
    for path in (out / ".submitit").glob("*_submitted.pkl"):
        job = submitit.SlurmJob(out / ".submitit", path.name.removesuffix("_submitted.pkl"))
        jobs[job.submission().function.name] += 1
    assert jobs == dict.fromkeys(["teacher", *sweep_plans.TABLE_ROWS, "table"], 1)
    reattached = {re.search(rf"^sweep: reattached {row} \(slurm job ([^,]+),", stderr, re.M).group(1)
                  for row in sweep_plans.TABLE_ROWS}  # fmt: skip
    assert reattached == set(left)  # the very jobs the first driver left
