"""sweep.py and launch.py: the table and the comparison expanded into runs, the sweep continued where it stopped, runs
launched in parallel through submitit's local executor, a failed run reported with its log, and an --out that holds
another sweep refused. The end-to-end sweeps are tiny comparisons (4 classes, 96 images, 1 epoch, one thread per
run)."""

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import submitit

import sweep
from common import run_folder as bookkeeping
from common.errors import UserError, run_cli
from conftest import ROOT, run_to_exit
from sweeps import launch
from sweeps import plans as sweep_plans
from sweeps import slurm as slurm_jobs

STRATEGIES = "none,random_subset,soft"


def test_table_expands_into_its_rows_per_seed():
    plan = sweep_plans.plan_table(sweep.parse_args(["table", "--data", "synthetic", "--seeds", "0,1", "--out", "o"]))
    assert list(plan.runs) == [f"{row}-s{seed}" for row in sweep_plans.TABLE_ROWS for seed in (0, 1)]
    rl = plan.runs["rl-s1"]
    assert rl[0] == "train_student_rl.py" and rl[rl.index("--out") + 1] == os.path.join("o", "rl-s1")
    assert rl[rl.index("--teacher-checkpoint") + 1] == sweep_plans.TEACHER_CHECKPOINT  # filled in once it is trained
    equal = plan.runs["kd-teacher-only-equal-compute-s0"]  # its own --epochs comes last: round(0.6 x 15) = 9
    assert equal[equal.index("--epochs") + 1] == "15" and equal[-2:] == ["--epochs", "9"]
    assert plan.gather[:13] == ["evaluate.py", *(os.path.join("o", name) for name in plan.runs)]
    teacher = plan.teachers[sweep_plans.TEACHER_CHECKPOINT]
    assert teacher[:3] == ["pretrain_teacher.py", "--data", sweep_plans.BENCH_PRETRAIN_DATA]
    real = sweep_plans.plan_table(sweep.parse_args(["table"]))  # the reference table: no teacher to pretrain
    assert real.teachers == {} and str(real.out) == "runs/table" and "resnet152.tv_in1k" in real.runs["kd"]


def test_the_calibrated_lab_expands_into_its_deciding_rows():
    args = sweep.parse_args(["compare", "--lab", "calibrated", "--label-noise", "0.3", "--seeds", "0,1", "--out", "o"])
    plan = sweep_plans.plan_comparison(args)
    assert list(plan.runs) == [f"{row}-s{seed}" for seed in (0, 1) for row in sweep_plans.LAB_ROWS]
    flag = lambda name, option: plan.runs[name][plan.runs[name].index(option) + 1]  # noqa: E731  (the last given)
    assert all(flag(name, "--data") == sweep_plans.LAB_STUDENT_DATA for name in plan.runs)
    assert all(flag(name, "--target-scale") == "quantile" for name in plan.runs)  # one scale for every row
    assert flag("none-s0", "--label-weight") == "0.6" and flag("teacher-only-s0", "--label-weight") == "0"
    assert flag("label-gate-s1", "--label-gate") == sweep_plans.LAB_GATE
    assert flag("oracle-s0", "--label-gate") == "oracle"
    twin = plan.runs["rl-bandit-twin-s1"]
    assert twin[0] == "train_student_rl.py" and flag("rl-bandit-twin-s1", "--arms") == sweep_plans.LAB_ARMS
    assert flag("rl-bandit-twin-s1", "--reward-twin") == os.path.join("o", "none-s1")  # its seed's plain-KD twin
    assert "--reward" not in plan.runs["rl-bandit-gates-s0"]  # the seed's reward
    assert plan.after == {"rl-bandit-twin-s0", "rl-bandit-twin-s1"}  # launched once the twins have finished
    assert plan.gather[-4:] == ["--baseline", "none,teacher-only,random_subset", "--out", "o"]
    teacher = plan.teachers[sweep_plans.TEACHER_CHECKPOINT]
    assert teacher[teacher.index("--epochs") + 1] == sweep_plans.LAB_TEACHER[-1]
    clean = sweep_plans.plan_comparison(sweep.parse_args(["compare", "--lab", "calibrated", "--seeds", "0"]))
    assert "oracle-s0" not in clean.runs and "--label-noise" not in clean.runs["none-s0"]
    with pytest.raises(UserError, match="oracle drops the labels"):
        sweep_plans.plan_comparison(sweep.parse_args(["compare", "--strategies", "random_subset,oracle"]))
    with pytest.raises(UserError, match="add none"):
        sweep_plans.plan_comparison(sweep.parse_args(["compare", "--strategies", "random_subset,rl-bandit-twin"]))
    benchmark = sweep_plans.plan_comparison(sweep.parse_args(["compare", "--seeds", "0"]))  # the default rows
    adaptive = [f"adaptive-t{target}" for target in ("0.2", "0.4", "0.6")]
    rows = [
        "none",
        "random_subset",
        *adaptive,
        "easy_to_hard",
        "hard_to_easy",
        "hard_mining",
        "mixed",
        "soft",
        "reducible",
        "prioritised",
        "equal-compute",
        "rl-bandit",
        "rl-ppo",
    ]  # every strategy of the registry
    assert list(benchmark.runs) == [f"{row}-s0" for row in rows]
    assert benchmark.runs["adaptive-t0.4-s0"][benchmark.runs["adaptive-t0.4-s0"].index("--target-scale") + 1] == (
        "quantile"
    )  # fmt: skip


def test_spec_ignores_where_a_run_computes_and_where_the_sweep_lies():
    out = sweep.Path("/s/out")
    argv = ["train_student.py", "--device", "cuda", "--epochs", "3", "--workers", "8", "--overwrite",
            "--out", "/s/out/kd", "--cache-dir", "/c", "--teacher-checkpoint", "/s/outside.pt"]  # fmt: skip
    assert sweep_plans.spec_of(argv, out) == ["train_student.py", "--epochs", "3", "--out", "<out>/kd",
                                        "--teacher-checkpoint", "/s/outside.pt"]  # fmt: skip
    assert launch.resume_argv(argv, "/s/out/kd") == ["train_student.py", "--resume", "/s/out/kd", "--device", "cuda",
                                                      "--workers", "8", "--cache-dir", "/c"]  # fmt: skip


def test_a_step_continues_from_its_folder_and_requeues_itself(tmp_path):
    step = launch.Step("kd", ["train_student.py", "--epochs", "2", "--out", str(tmp_path)], "log", str(tmp_path))
    assert step.command() == step.argv  # fresh: the command as given
    requeued = step.checkpoint()  # what a pre-empted Slurm job submits again
    assert isinstance(requeued, submitit.helpers.DelayedSubmission) and requeued.function.fresh is False
    assert requeued.function.command() == step.argv  # no epoch finished: started again
    (tmp_path / "last.pt").write_bytes(b"an epoch")
    assert requeued.function.command() == ["train_student.py", "--resume", str(tmp_path)]
    (tmp_path / "results.json").write_text("{}")
    assert requeued.function.command() is None  # finished: nothing to do


def test_a_worker_loads_its_step_by_reference_to_launch(tmp_path):
    """What a submitit job's worker does: unpickle the step in a fresh interpreter, elsewhere, with the repository on
    PYTHONPATH only (as prepare_driver sets it). By reference: the pickle names launch.Step, not its code."""
    step = launch.Step("kd", ["train_student.py", "--epochs", "2"], "log")
    path = tmp_path / "job.pkl"
    submitit.core.utils.cloudpickle_dump(submitit.helpers.DelayedSubmission(step), path)
    assert b"launch" in path.read_bytes() and b"copy_stream" not in path.read_bytes()
    code = "import pickle, sys; print(pickle.load(open(sys.argv[1], 'rb')).function.command())"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code, str(path)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.stdout.strip() == "['train_student.py', '--epochs', '2']", result.stderr


def test_a_second_sweep_into_one_out_is_refused(tmp_path):
    """--out in use (here by this test process, as by a running sweep): the sweep stops before any work."""
    out = tmp_path / "sweep"
    with bookkeeping.hold_folder_lock(out):
        argv = [sys.executable, "sweep.py", "table", "--data", "synthetic", "--quick", "--out", str(out)]
        result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and f"--out {out} is in use by pid {os.getpid()} on " in result.stderr, result.stderr
    assert list(out.iterdir()) == []  # nothing written, and the lock file went with its holder


@pytest.mark.parametrize("under", [False, True])
def test_an_out_that_is_a_file_is_one_line(tmp_path, capsys, under):
    """--out naming an existing file (or a path under one): one line and exit 2, the file untouched."""
    existing = tmp_path / "table.md"
    existing.write_text("kept")
    out = existing / "sweep" if under else existing
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: sweep.main(["table", "--data", "synthetic", "--quick", "--out", str(out)]))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert stop.value.code == 2 and len(lines) == 1 and "--out" in lines[0] and "file" in lines[0], lines
    assert existing.read_text() == "kept"


def test_local_slots_pin_gpus_or_share_the_cores(monkeypatch):
    monkeypatch.setattr(launch, "gpu_count", lambda device: 4)
    assert launch.local_slots(2, "auto", 2) == [{"gpus": [0, 1]}, {"gpus": [2, 3]}]
    with pytest.raises(UserError, match="lower --parallel"):
        launch.local_slots(3, "auto", 2)
    monkeypatch.setattr(launch, "gpu_count", lambda device: 0)
    monkeypatch.setattr(launch.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4})
    assert launch.local_slots(2, "auto", 1) == [{"cpus": (0, 1)}, {"cpus": (2, 3)}]


def test_slurm_jobs_get_the_partition_time_and_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    with pytest.raises(UserError, match="no srun here"):
        sweep.parse_args(["compare", "--launcher", "slurm"])
    (tmp_path / "srun").write_text("#!/bin/sh\n")  # a login node, as far as submitit can tell
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    args = sweep.parse_args(["compare", "--launcher", "slurm", "--partition", "gpu", "--account", "lab",
                             "--time", "90", "--gpus-per-job", "4", "--parallel", "8"])  # fmt: skip
    parameters = slurm_jobs.slurm_executor(args, tmp_path).parameters
    assert {key: parameters[key] for key in ("partition", "account", "time", "gpus_per_node", "array_parallelism")} == {
        "partition": "gpu", "account": "lab", "time": 90, "gpus_per_node": 4, "array_parallelism": 8}  # fmt: skip


QUICK = ["--quick", "--seeds", "0", "--device", "cpu"]


def run_sweep(out, *flags, cache):
    """scripts/compare_curricula.sh --quick as a user runs it, on one seed."""
    return subprocess.run(
        ["scripts/compare_curricula.sh", *QUICK, "--out", str(out), "--cache-dir", str(cache), *flags],
        cwd=ROOT, env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def files_of(folder):
    return {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """A finished sequential sweep of three strategies, and the stores (teacher, logits) the other tests share."""
    root = tmp_path_factory.mktemp("sweep")
    result = run_sweep(root / "seq", "--strategies", STRATEGIES, cache=root / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    return root, result


@pytest.mark.slow
def test_two_at_once_give_the_sequential_table(sequential):
    root, first = sequential
    assert [line.split(":")[0] for line in first.stdout.splitlines() if line.startswith("== [")] == [
        "== [1/4] teacher", "== [2/4] none-s0", "== [3/4] random_subset-s0", "== [4/4] soft-s0"]  # fmt: skip
    result = run_to_exit("sweep.py", "compare", *QUICK, "--out", root / "par", "--cache-dir", root / "cache",
                         "--strategies", STRATEGIES, "--parallel", "2", "--", "--workers", "2",  # runs with workers
                         env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.after_last_output < 60  # the driver exits once the table is out (a hang fails at the timeout)
    assert "sweep: started random_subset-s0 (cores " in result.stderr  # a run pinned to its share of the cores
    assert len(list((root / "par" / ".submitit").glob("*_result.pkl"))) == 3  # the runs went through submitit
    assert (root / "par" / "comparison.json").read_text() == (root / "seq" / "comparison.json").read_text()
    assert "sweep: 4 done, 0 running, 0 failed" in result.stderr


@pytest.mark.slow
def test_a_cut_off_sweep_continues_with_only_what_was_left(sequential):
    """The state a kill leaves: one run finished, one interrupted after its last epoch, one never started, no table."""
    root, _ = sequential
    out = root / "cut"
    shutil.copytree(root / "seq", out)  # a sweep folder continues where it lies: its spec is relative to it
    for name in ("comparison.md", "comparison.json", "comparison.png", "random_subset-s0/results.json"):
        (out / name).unlink()
    shutil.rmtree(out / "soft-s0")
    finished = (out / "none-s0" / "results.json").stat().st_mtime_ns
    result = run_sweep(out, "--strategies", STRATEGIES, cache=root / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"sweep: done none-s0 (finished before; {out}/none-s0/results.json)" in result.stderr
    assert f"sweep: resumed random_subset-s0 (log {out}/logs/random_subset-s0.log)" in result.stderr
    assert f"sweep: started soft-s0 (log {out}/logs/soft-s0.log)" in result.stderr
    headers = [line for line in result.stdout.splitlines() if line.startswith("== [")]
    assert [line.split(":")[0] for line in headers] == ["== [1/4] teacher", "== [3/4] random_subset-s0",
                                                         "== [4/4] soft-s0"]  # fmt: skip
    assert f"python train_student.py --resume {out}/random_subset-s0 --device cpu --workers 0" in headers[1]
    assert (out / "none-s0" / "results.json").stat().st_mtime_ns == finished  # not trained again
    assert (out / "comparison.json").read_text() == (root / "seq" / "comparison.json").read_text()


@pytest.mark.slow
def test_a_failed_run_is_reported_with_its_log_and_the_others_finish(sequential):
    root, _ = sequential
    out = root / "failed"  # adaptive at --target 2 is refused by train_student.py: that run fails at once
    result = run_sweep(out, "--strategies", "random_subset,adaptive", "--targets", "0.4,2", "--parallel", "2",
                       cache=root / "cache")  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    log = out / "logs" / "adaptive-t2-s0.log"
    assert f"sweep: failed adaptive-t2-s0 (exit 2; log {log})" in result.stderr
    assert "--target must lie in [0, 1]" in log.read_text()
    assert f"1 failed; failed adaptive-t2-s0 (log {log})" in result.stderr
    assert (out / "random_subset-s0" / "results.json").is_file() and (
        out / "adaptive-t0.4-s0" / "results.json"
    ).is_file()
    assert result.stderr.strip().splitlines()[-1].startswith("error: 1 run(s) failed, so the table was not gathered")
    assert not (out / "comparison.md").exists()


@pytest.mark.slow
def test_a_different_sweep_is_refused_and_a_finished_one_prints_its_table_and_changes_nothing(sequential):
    root, _ = sequential
    before = files_of(root / "seq")
    other = run_sweep(root / "seq", "--strategies", "none,random_subset", cache=root / "cache")
    assert other.returncode == 2 and "holds a different sweep" in other.stderr and "--overwrite" in other.stderr
    again = run_sweep(root / "seq", "--strategies", STRATEGIES, cache=root / "cache")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout == (root / "seq" / "comparison.md").read_text()
    assert f"sweep: every run in {root / 'seq'} finished before" in again.stderr
    assert files_of(root / "seq") == before  # nothing retrained, regathered or rewritten


def test_every_sweep_command_in_the_docs_parses(tmp_path, monkeypatch):
    """The commands of docs/sweeps.md (Slurm ones included: a fake srun stands for the login node) expand into runs."""
    (tmp_path / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    text = (ROOT / "docs" / "sweeps.md").read_text().replace("\\\n", " ")
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    commands = [line.split("#")[0].strip() for block in blocks for line in block.splitlines() if line.strip()]
    sweeps = {"scripts/reproduce_table.sh": "table", "scripts/compare_curricula.sh": "compare"}
    assert len(commands) >= 4
    for command in commands:
        program, *argv = shlex.split(command)
        if program == "python":
            program, *argv = argv
        assert program in (*sweeps, "sweep.py"), command
        argv = [sweeps[program], *argv] if program in sweeps else argv
        try:
            args = sweep.parse_args(argv)
        except SystemExit as exit_info:  # --help
            assert exit_info.code == 0, command
            continue
        plan = sweep_plans.plan_table(args) if args.sweep == "table" else sweep_plans.plan_comparison(args)
        assert plan.runs, command
