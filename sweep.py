"""Run a sweep: the results table or the curriculum comparison, expanded into its runs and launched one after another
(the default), several at once on this machine, or as a Slurm job array; then gather the table.

    python sweep.py table --data synthetic                          # the CPU demo (scripts/reproduce_table.sh)
    python sweep.py table --parallel 4                              # the reference table, one run per GPU of 4
    python sweep.py compare --seeds 0,1,2 --launcher slurm --partition gpu --time 240   # a job array
    python sweep.py compare --quick --seeds 0 --strategies none,random_subset,soft      # a smoke test

Each run is a subprocess of the usual command (`python train_student.py ...`, printed before it starts), so a run is
the same whether the sweep or a person launched it; its output goes to <out>/logs/<run>.log (and, one run at a time,
to the terminal too). Running the same command again in the same --out continues the sweep: finished runs (their
results.json) are skipped, interrupted ones resumed from their last epoch (--resume), the rest started, and the
table is gathered once every run is done; a finished sweep prints its table and changes nothing. A different sweep in
an --out is refused unless --overwrite. The sweep's own lines (queued, started, resumed, done, failed, the summary) go
to stderr. See docs/sweeps.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from common import cli, files
from common import run_folder as bookkeeping
from common.errors import UserError, run_cli
from sweeps import slurm as slurm_jobs
from sweeps.lab import VARIANTS, plan_lab
from sweeps.launch import Progress, Step, prepare_driver, run_steps
from sweeps.plans import LAB_ROWS, NOISY_LABEL_WEIGHT, Plan, plan_comparison, plan_table, with_teachers


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The sweep's flags; everything after `--` goes to every run's command."""
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = cli.OneLineParser(description=__doc__, formatter_class=cli.HelpFormatter, allow_abbrev=False)
    parser.add_argument("sweep", choices=("table", "compare", "lab"),
                        help="the results table, the curriculum comparison, or the lab's protocol "
                        "(docs/curriculum.md)")  # fmt: skip
    parser.add_argument("--data", help="table: default timm/mini-imagenet; compare: synthetic (the benchmark)")
    parser.add_argument("--out", help="sweep folder (default runs/demo, runs/table, runs/compare or runs/lab)")
    parser.add_argument("--epochs", type=int, help="training epochs (default: the sweep's own)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    parser.add_argument("--seeds", help="seeds, comma-separated (default: table 0, compare 0,1,2,3,4, lab 0)")
    parser.add_argument("--targets", default="0.2,0.4,0.6", help="compare: adaptive's targets (default: 0.2,0.4,0.6)")
    parser.add_argument("--lab", choices=("benchmark", "calibrated"), default="benchmark",
                        help="compare: the synthetic benchmark (the demo's), or the calibrated lab: 5x the validation "
                        "and 4x the test images, a weaker teacher, KD with labels (docs/curriculum.md)")  # fmt: skip
    parser.add_argument("--strategies", help="compare: the strategies and rows (default: all of the benchmark's; "
                        f"the calibrated lab: {','.join(LAB_ROWS)}); lab: its rows (default: every row)")  # fmt: skip
    parser.add_argument("--label-noise", type=float, default=0.0,
                        help=f"compare: the noisy variant, this share of training labels replaced, with --label-weight "
                        f"{NOISY_LABEL_WEIGHT} (default 0: clean)")  # fmt: skip
    parser.add_argument("--teachers", help="lab: the teachers' pretraining seeds (default 0,1,2)")
    parser.add_argument("--draws", help="lab: the student data's draws (default 0,1)")
    parser.add_argument("--variants", help=f"lab: the label variants (default {','.join(VARIANTS)})")
    parser.add_argument("--pilot", action="store_true", help="lab: gather validation accuracies only (a pilot)")
    parser.add_argument("--cache-dir", help="teacher-logit cache and pretrained synthetic teacher (shared by runs)")
    parser.add_argument("--quick", action="store_true", help="a smoke test: tiny synthetic data, 1-2 epochs")
    parser.add_argument("--overwrite", action="store_true", help="replace the runs and table in --out")
    group = parser.add_argument_group("launching")
    group.add_argument("--launcher", choices=("local", "slurm"), default="local", help="this machine, or Slurm")
    group.add_argument("--parallel", type=int, help="runs at once (default: local 1, slurm no limit)")
    group.add_argument("--gpus-per-job", type=int, help="GPUs per run (default: 0 with --device cpu, else 1); 0: a CPU "
                       "job, its run on --device cpu; >1 launches it with torchrun")  # fmt: skip
    group.add_argument("--partition", help="slurm: partition")
    group.add_argument("--account", help="slurm: account to charge")
    group.add_argument("--time", type=int, default=24 * 60, help="slurm: time limit per job, minutes (default 1440)")
    group.add_argument("--cpus-per-job", type=int, default=8, help="slurm: CPU cores per job (default 8)")
    args = parser.parse_args(argv)
    args.extra = extra
    if args.parallel is None:
        args.parallel = 1 if args.launcher == "local" else 0
    if args.launcher == "slurm" and shutil.which("srun") is None:  # submitit's own test for a Slurm machine
        raise UserError("--launcher slurm: no srun here; start the sweep on the cluster's login node, or use local.")
    if args.gpus_per_job is None:
        args.gpus_per_job = 0 if args.device == "cpu" else 1
    if args.parallel < (1 if args.launcher == "local" else 0) or args.gpus_per_job < 0:
        raise UserError("--parallel must be at least 1 (slurm: 0, no limit), --gpus-per-job at least 0 (a CPU job).")
    if args.time < 1 or args.cpus_per_job < 1:
        raise UserError("--time (minutes) and --cpus-per-job must be at least 1.")
    if args.gpus_per_job == 0 and args.device not in ("auto", "cpu"):
        raise UserError(f"--gpus-per-job 0 asks for no GPU but --device {args.device} for one; drop one of the two.")
    if args.gpus_per_job == 0:
        args.device = "cpu"  # a CPU job's runs: on their job's cores, even on a node with GPUs
    return args


# ----------------------------------------------------------------------------------------------------------------------
# --out: refused if it holds other results, locked while a sweep runs in it


def check_out(plan: Plan, overwrite: bool) -> None:
    """Refuse an --out that holds a different sweep, or results of no sweep, before anything runs. The same sweep is
    continued (finished() tells whether anything is left to do). An --out that is a file, or lies under one, or
    cannot be written, is one line too."""
    files.check_writable_folder(plan.out, "--out")
    if overwrite:
        return
    saved_path = plan.out / "sweep.json"
    saved = read_json(saved_path) if saved_path.is_file() else None
    if saved is not None and saved != plan.spec():
        raise UserError(
            f"{plan.out} holds a different sweep ({saved_path} lists other runs or flags); pass --overwrite to "
            "replace its runs, or --out for a new folder."
        )
    paths = [plan.out / name for name in plan.runs] + [plan.out / name for name in plan.products]
    taken = [path for path in paths if path.is_file() or bookkeeping.holds_run(path)]
    if saved is None and taken:
        raise UserError(
            f"{plan.out} already holds results ({', '.join(path.name for path in taken)}); pass --overwrite to "
            "replace them, or --out for a new folder."
        )


def finished(plan: Plan, overwrite: bool) -> bool:
    """The same sweep ran to its end before: every run has its results and the table was gathered."""
    if overwrite or not (plan.out / "sweep.json").is_file():
        return False
    runs_done = all((plan.out / name / "results.json").is_file() for name in plan.runs)
    return runs_done and all((plan.out / name).is_file() for name in plan.products)


def show_finished(plan: Plan) -> None:
    """A finished sweep run again: its table printed, nothing trained, gathered or written."""
    table = plan.out / plan.products[0]
    print(f"sweep: every run in {plan.out} finished before; its table ({table}):", file=sys.stderr)
    sys.stdout.write(table.read_text())


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        return "unreadable"  # differs from every spec: refused as a different sweep


# ----------------------------------------------------------------------------------------------------------------------
# The sweep


def plan_steps(plan: Plan, args, progress: Progress) -> dict[int, Step]:
    """The runs still to do, numbered as in the whole sweep: finished ones are skipped, interrupted ones resumed."""
    first = len(plan.teachers) + 1
    nproc = args.gpus_per_job if args.device != "cpu" else 1
    steps = {}
    for number, (name, argv) in enumerate(plan.runs.items(), start=first):
        folder = plan.out / name
        step = Step(name, argv, str(plan.out / "logs" / f"{name}.log"), str(folder), fresh=args.overwrite, nproc=nproc)
        if not args.overwrite and (folder / "results.json").is_file():
            progress.say(name, "done", f"finished before; {folder}/results.json")
            continue
        progress.say(name, "queued", f"log {step.log}")
        steps[number] = step
    return steps


def pretrain(plan: Plan, args, progress: Progress) -> dict[str, str]:
    """Each pretrained synthetic teacher's best.pt by its placeholder: trained once (cached under --cache-dir) before
    the runs fan out."""
    checkpoints, steps = {}, {}
    for number, (placeholder, argv) in enumerate(plan.teachers.items(), start=1):
        name = "teacher" if len(plan.teachers) == 1 else f"teacher-{number - 1}"
        step = Step(name, argv, str(plan.out / "logs" / f"{name}.log"), keep_stdout=False)
        if args.launcher == "slurm" and (checkpoint := slurm_jobs.earlier_checkpoint(plan.out / ".submitit", step)):
            progress.say(name, "done", f"by an earlier sweep's slurm job; {checkpoint}")
            checkpoints[placeholder] = checkpoint
        else:
            steps[number] = (placeholder, step)
    to_run = {number: step for number, (_, step) in steps.items()}
    results = run_steps(to_run, progress, args, plan.out) if to_run else {}
    for placeholder, step in steps.values():
        code, stdout = results[step.name]
        if code != 0:
            raise UserError(
                f"the teacher could not be pretrained (exit {code}); see {step.log}, then run the sweep again."
            )
        checkpoints[placeholder] = stdout.strip().splitlines()[-1]
    return checkpoints


def gather(plan: Plan, args, progress: Progress) -> int:
    """The table of all runs (evaluate.py or compare_curricula.py); its stdout is printed (and saved as the table)."""
    name = "table" if plan.table else "comparison"
    print(f"== the {name}: {' '.join(plan.gather)} ==", flush=True)
    step = Step(name, plan.gather, str(plan.out / "logs" / f"{name}.log"), echo=args.launcher == "local")
    code, stdout = run_steps({0: step}, progress, args, plan.out)[name] if args.launcher == "slurm" else step()
    if args.launcher == "slurm":
        sys.stdout.write(stdout)
    if code == 0 and plan.table:
        files.atomic_write(plan.out / plan.table, lambda handle: handle.write(stdout.encode()))
    return code


def main(argv=None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    plan = {"table": plan_table, "compare": plan_comparison, "lab": plan_lab}[args.sweep](args)
    if plan.teachers:  # synthetic data
        # one thread per process: on a small shared CPU two threads per run fight each other and run several times
        # slower; the numbers of a seed are the same for any given thread count
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    check_out(plan, args.overwrite)
    if finished(plan, args.overwrite):  # the same command again after its end: print the table, change nothing
        show_finished(plan)
        return
    lock = bookkeeping.hold_folder_lock(plan.out)  # one sweep per --out; each run locks its own folder too
    check_out(plan, args.overwrite)  # again under the lock: a sweep that finished meanwhile is not redone
    if finished(plan, args.overwrite):
        lock.release()
        show_finished(plan)
        return
    if args.overwrite:  # an old table would make a cut-off sweep look finished
        for name in plan.products:
            (plan.out / name).unlink(missing_ok=True)
    prepare_driver()  # workers can import launch.py; SIGTERM and Ctrl-C stop the sweep and its local runs
    files.save_json(plan.out / "sweep.json", plan.spec())
    progress = Progress(total=len(plan.runs) + len(plan.teachers))
    try:
        steps = plan_steps(plan, args, progress)
        checkpoints = pretrain(plan, args, progress)
        for step in steps.values():
            step.argv = with_teachers(step.argv, checkpoints)
        plan.gather = with_teachers(plan.gather, checkpoints)
        results = {}
        for stage in (False, True):  # the runs that read other runs' results (a twin's) once those are done
            some = {number: step for number, step in steps.items() if (step.name in plan.after) == stage}
            results.update(run_steps(some, progress, args, plan.out) if some else {})
    except KeyboardInterrupt:
        print(f"sweep: interrupted; {progress.summary()[7:]}; run the same command to continue it", file=sys.stderr)
        sys.exit(130)
    failed = [name for name, (code, _) in results.items() if code != 0]
    if failed:
        print(progress.summary(), file=sys.stderr)
        raise UserError(
            f"{len(failed)} run(s) failed, so the table was not gathered; fix them (see their logs) and run the "
            "same command again."
        )
    code = gather(plan, args, progress)
    print(progress.summary(), file=sys.stderr)
    lock.release()
    if code != 0:
        raise UserError(
            f"gathering the table failed (exit {code}); see {plan.out / 'logs'}, then run the same command again."
        )


if __name__ == "__main__":
    run_cli(main)  # the jobs pickle launch.Step by reference, so nothing of this __main__ module crosses to a worker
