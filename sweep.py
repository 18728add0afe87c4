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
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

import bookkeeping
import cli
import files
import slurm_jobs
from errors import UserError, run_cli
from launch import WHERE_FLAGS, Progress, Step, prepare_driver, run_steps

# ----------------------------------------------------------------------------------------------------------------------
# The synthetic benchmark where distillation matters (`--data synthetic`)
#
# The analogue of "a ResNet-152 pretrained on ImageNet, sliced to mini-imagenet's classes": the teacher learns a wide
# pretraining set (twice the classes, 12x the images per class), once, and is cached under the cache dir by
# everything that defines it (pretrain_teacher.py); the students see a subset of its classes with few images each,
# and the teacher's wider head is sliced to them by WordNet id (models.class_indices, as for ImageNet). Both sets
# share the generator's seed (the classes' looks) and its per-sample variation (jitter, radians).
BENCH_STUDENT_DATA = "synthetic:classes=10,train=200,val=100,test=500,size=32,seed=0,jitter=0.4"
BENCH_PRETRAIN_DATA = "synthetic:classes=20,train=5000,val=300,test=300,size=32,seed=0,jitter=0.4"
BENCH_TEACHER = ["--student", "resnet10t", "--epochs", "4"]
BENCH_EPOCHS = 15
# 7 steps per epoch, not 2: with 20 images per class a batch of 128 would take 30 optimiser steps in all, too few for
# the soft targets to be learnt (the teacher keeps its own batch of 128 on its 5000 images)
BENCH_BATCH = "32"
# The RL row's proxy runs (train_student_rl.py --pretrain-*): 10 proxy runs of 10 epochs on a tenth of the data (100
# agent steps) keep the demo within its time; the default 30 (300 steps, what tests/test_agent_learns.py shows is
# enough to learn) costs about 3 minutes more on a CPU.
BENCH_RL = ["--pretrain-episodes", "10"]
# The calibrated lab (`sweep.py compare --lab calibrated`, docs/curriculum.md): the benchmark's training images with
# 5x the validation and 4x the test images (evaluation is cheap at 32 px), and a teacher chosen by a pilot so that
# labels carry information it lacks
LAB_STUDENT_DATA = "synthetic:classes=10,train=200,val=500,test=2000,size=32,seed=0,jitter=0.4"
LAB_TEACHER = ["--student", "resnet10t", "--epochs", "1"]  # the pilot's pick (docs/curriculum.md): 1 epoch, not 4
LAB_LABEL_WEIGHT = "0.6"  # clean and noisy: in the lab the labels add to the teacher
LAB_GATE = "top2"  # the label-gate row's gate: the pilot's best trade-off of precision and recall
LAB_ARMS = "all,none,top2"  # the gate bandits' arms: every label, none (the teacher alone), the gate
# --quick: the same design, tiny (4 of 8 classes)
QUICK_STUDENT_DATA = "synthetic:classes=4,train=96,val=32,test=32"
QUICK_PRETRAIN_DATA = "synthetic:classes=8,train=256,val=32,test=32"
QUICK_TEACHER = ["--student", "resnet10t", "--epochs", "1"]
QUICK_RL = ["--pretrain-episodes", "1", "--pretrain-epochs", "2", "--pretrain-subset", "0.5"]
# No DataLoader workers: a synthetic image is generated once and kept by the process (synthetic.SyntheticImages); a
# worker, forked afresh each epoch, would generate it again every epoch.
BENCH_WORKERS = "0"
TEACHER_FLAGS = ["--label-weight", "1", "--batch-size", "128", "--workers", BENCH_WORKERS]

TABLE_ROWS = ["labels", "kd", "kd-teacher-only", "rl", "random-subset", "kd-teacher-only-equal-compute"]
STRATEGIES = [
    "none",
    "random_subset",
    "adaptive",
    "easy_to_hard",
    "hard_to_easy",
    "hard_mining",
    "mixed",
    "soft",
    "reducible",
    "prioritised",
]
# rows of the comparison that are not a fixed strategy of train_student.py: plain KD on all the data for 60% of the
# epochs (the 60% strategies' budget), and the two agents (train_student_rl.py), whose targets are rank quantiles
OTHER_ROWS = ["equal-compute", "rl-bandit", "rl-ppo"]
# rows of the calibrated lab (`--lab calibrated`): teacher-only KD, the label gate and the oracle on all the data, and
# the bandit over label gates with the seed's reward and with the twin reward (its twin: the `none` run of its seed)
LAB_OTHER_ROWS = ["teacher-only", "label-gate", "oracle", "rl-bandit-gates", "rl-bandit-twin"]
LAB_ROWS = ["none", "teacher-only", "label-gate", "oracle", "random_subset", "reducible", "rl-bandit-gates",
            "rl-bandit-twin"]  # fmt: skip
NOISY_LABEL_WEIGHT = "0.6"  # --label-noise: labels only matter to KD that uses them (the reference's "60% labels")
# where the pretrained synthetic teacher's best.pt goes in a run's command once it exists (it is trained first)
TEACHER_CHECKPOINT = "<pretrained teacher>"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The sweep's flags; everything after `--` goes to every run's command."""
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = cli.OneLineParser(description=__doc__, formatter_class=cli.HelpFormatter, allow_abbrev=False)
    parser.add_argument("sweep", choices=("table", "compare"), help="the results table or the curriculum comparison")
    parser.add_argument("--data", help="table: default timm/mini-imagenet; compare: synthetic (the benchmark)")
    parser.add_argument("--out", help="sweep folder (default runs/demo, runs/table or runs/compare)")
    parser.add_argument("--epochs", type=int, help="training epochs (default: the sweep's own)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    parser.add_argument("--seeds", help="seeds, comma-separated (default: table 0, compare 0,1,2,3,4)")
    parser.add_argument("--targets", default="0.2,0.4,0.6", help="compare: adaptive's targets (default: 0.2,0.4,0.6)")
    parser.add_argument("--lab", choices=("benchmark", "calibrated"), default="benchmark",
                        help="compare: the synthetic benchmark (the demo's), or the calibrated lab: 5x the validation "
                        "and 4x the test images, a weaker teacher, KD with labels (docs/curriculum.md)")  # fmt: skip
    parser.add_argument("--strategies", help="compare: the strategies and rows (default: all of the benchmark's; "
                        f"the lab: {','.join(LAB_ROWS)})")  # fmt: skip
    parser.add_argument("--label-noise", type=float, default=0.0,
                        help=f"compare: the noisy variant, this share of training labels replaced, with --label-weight "
                        f"{NOISY_LABEL_WEIGHT} (default 0: clean)")  # fmt: skip
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
# The plan: the sweep expanded into its commands, and what it computes (its sweep.json)


def spec_of(argv: list[str], out: Path) -> list[str]:
    """What a command computes: less --overwrite and WHERE_FLAGS, with paths inside --out written relative to it
    (so a sweep folder that was moved or copied still continues)."""
    kept, index = [], 0
    while index < len(argv):
        part = argv[index]
        index += 2 if part in WHERE_FLAGS else 1
        if part in WHERE_FLAGS or part == "--overwrite":
            continue
        inside = part == str(out) or part.startswith(str(out) + os.sep)
        kept.append("<out>" + part[len(str(out)) :] if inside else part)
    return kept


@dataclasses.dataclass
class Plan:
    """A sweep expanded: the teacher to pretrain first (or None), the runs, the gathering command, and the files it
    writes into --out (`products`: with the runs' folders, what makes a folder hold results)."""

    out: Path
    teacher: list[str] | None
    runs: dict[str, list[str]]  # run name -> command; its folder is out/name
    gather: list[str]
    products: list[str]  # the first is the table's markdown
    table: str | None  # the file the gathering command's stdout is saved to (the table's markdown)
    after: set[str] = dataclasses.field(default_factory=set)  # runs that read others' results: launched last

    def spec(self) -> dict:
        return {
            "teacher": spec_of(self.teacher, self.out) if self.teacher else None,
            "runs": {name: spec_of(argv, self.out) for name, argv in self.runs.items()},
            "gather": spec_of(self.gather, self.out),
        }


def seeds_of(text: str) -> list[str]:
    seeds = [seed.strip() for seed in text.split(",") if seed.strip()]
    if not seeds or not all(seed.isdigit() for seed in seeds):
        raise UserError(f"--seeds {text}: give seeds as comma-separated integers, e.g. --seeds 0,1,2.")
    return seeds


def teacher_step(args, pretrain_data: str, teacher_flags: list[str], cache: list[str]) -> list[str]:
    return ["pretrain_teacher.py", "--data", pretrain_data, *TEACHER_FLAGS, *teacher_flags,
            "--device", args.device, "--seed", "0", *cache]  # fmt: skip


def plan_table(args) -> Plan:
    """The results table's rows, once per seed (scripts/reproduce_table.sh)."""
    data = args.data or "timm/mini-imagenet"
    out = Path(args.out or ("runs/demo" if data.startswith("synthetic") else "runs/table"))
    seeds, cache = seeds_of(args.seeds or "0"), (["--cache-dir", args.cache_dir] if args.cache_dir else [])
    overwrite = ["--overwrite"] if args.overwrite else []
    teacher_command = None
    if data.startswith("synthetic"):
        # The student is resnet10t: MobileNetV2's stride-32 stem leaves 1x1 feature maps at 32 px and learns too
        # slowly for a CPU demo of a few epochs; the real-data rows use the reference's mobilenetv2_100.
        student, workers, pretrain, teacher_flags, rl = (
            "resnet10t",
            BENCH_WORKERS,
            BENCH_PRETRAIN_DATA,
            BENCH_TEACHER,
            BENCH_RL,
        )
        data = BENCH_STUDENT_DATA if data == "synthetic" else data
        epochs = args.epochs or BENCH_EPOCHS
        if args.quick:  # 2 epochs, not 1: the equal-compute control's round(0.6 E) epochs must differ from E
            data, pretrain, teacher_flags, rl, epochs = (
                QUICK_STUDENT_DATA,
                QUICK_PRETRAIN_DATA,
                QUICK_TEACHER,
                QUICK_RL,
                args.epochs or 2,
            )
        common = ["--data", data, "--epochs", str(epochs), "--device", args.device, "--workers", workers,
                  "--batch-size", BENCH_BATCH, "--teacher-logits", "replay", *cache]  # fmt: skip
        teacher_command = teacher_step(args, pretrain, teacher_flags, cache)
        teacher = ["--teacher-checkpoint", TEACHER_CHECKPOINT]
    else:
        student, workers, rl, epochs = "mobilenetv2_100", "8", [], args.epochs or 100
        common = ["--data", data, "--epochs", str(epochs), "--device", args.device, "--workers", workers,
                  "--teacher-logits", "replay", *cache]  # fmt: skip
        teacher = ["--teacher", "resnet152.tv_in1k"]
    rows = {  # row: script and its own flags
        "labels": ["train_student.py", "--label-weight", "1"],
        "kd": ["train_student.py", "--label-weight", "0.6"],
        "kd-teacher-only": ["train_student.py", "--label-weight", "0"],
        "rl": ["train_student_rl.py", "--label-weight", "0", "--fraction", "0.6", *rl],
        # the control: as much data per epoch as the RL row, drawn uniformly
        "random-subset": ["train_student.py", "--label-weight", "0", "--curriculum", "random_subset",
                          "--fraction", "0.6"],
        # the equal-compute control: teacher-only KD on all the data for round(0.6 E) epochs, the 60% rows' budget
        "kd-teacher-only-equal-compute": ["train_student.py", "--label-weight", "0",
                                          "--epochs", str((6 * epochs + 5) // 10)],
    }  # fmt: skip
    runs = {}
    for row, (script, *flags) in rows.items():  # with one seed a row's folder is out/<row>; with several, <row>-s<seed>
        for seed in seeds:
            name = row if len(seeds) == 1 else f"{row}-s{seed}"
            runs[name] = [script, *common, "--student", student, *teacher, "--seed", seed, "--out", str(out / name),
                          *overwrite, *flags, *args.extra]  # fmt: skip
    # seeds of one row share a config but for --seed and --out: evaluate.py pools them into one row
    gather = ["evaluate.py", *(str(out / name) for name in runs), *teacher, "--device", args.device,
              "--workers", workers, "--json", str(out / "table.json"), "--report", str(out / "report")]  # fmt: skip
    return Plan(out, teacher_command, runs, gather, ["table.md", "table.json"], table="table.md")


def replace_flag(argv: list[str], flag: str, value: str) -> list[str]:
    """`argv` with the value after `flag` replaced."""
    position = argv.index(flag) + 1
    return [*argv[:position], value, *argv[position + 1 :]]


def comparison_rows(args, common: list[str], epochs: int) -> dict[str, tuple[str, list[str]]]:
    """Each row of the comparison: its script and flags (the seed and folder come later)."""
    strategies = [name.strip() for name in (args.strategies or default_rows(args)).split(",") if name.strip()]
    known = STRATEGIES + OTHER_ROWS + LAB_OTHER_ROWS
    unknown = sorted(set(strategies) - set(known))
    if unknown or "random_subset" not in strategies:
        raise UserError(f"--strategies: pick from {', '.join(known)}, with random_subset (the baseline).")
    if "oracle" in strategies and not args.label_noise:
        raise UserError("--strategies oracle drops the labels --label-noise replaced: give --label-noise, e.g. 0.3.")
    if "rl-bandit-twin" in strategies and "none" not in strategies:
        raise UserError("--strategies rl-bandit-twin reads its twin, the none run of its seed: add none.")
    gates = ["--agent", "bandit", "--arms", LAB_ARMS, "--curriculum", "none"]
    commands = {}  # row -> (script, its flags)
    for strategy in strategies:
        if strategy == "adaptive":
            for target in (t.strip() for t in args.targets.split(",") if t.strip()):
                commands[f"adaptive-t{target}"] = "train_student.py", [*common, "--curriculum", "adaptive", "--target",
                                                                        target]  # fmt: skip
        elif strategy == "equal-compute":
            commands[strategy] = "train_student.py", [*replace_flag(common, "--epochs", str(round(0.6 * epochs))),
                                                      "--curriculum", "none"]  # fmt: skip
        elif strategy == "teacher-only":
            commands[strategy] = "train_student.py", [*replace_flag(common, "--label-weight", "0"), "--curriculum",
                                                      "none"]  # fmt: skip
        elif strategy in ("label-gate", "oracle"):
            gate = LAB_GATE if strategy == "label-gate" else "oracle"
            commands[strategy] = "train_student.py", [*common, "--curriculum", "none", "--label-gate", gate]
        elif strategy == "rl-bandit":
            commands[strategy] = "train_student_rl.py", [*common, "--agent", "bandit"]
        elif strategy == "rl-bandit-gates":
            commands[strategy] = "train_student_rl.py", [*common, *gates]
        elif strategy == "rl-bandit-twin":  # --reward-twin is filled in per seed (plan_comparison)
            commands[strategy] = "train_student_rl.py", [*common, *gates, "--reward", "twin"]
        elif strategy == "rl-ppo":
            commands[strategy] = "train_student_rl.py", [*common, *(QUICK_RL if args.quick else BENCH_RL)]
        else:
            commands[strategy] = "train_student.py", [*common, "--curriculum", strategy]
    return commands


def default_rows(args) -> str:
    """The benchmark's every row, or the lab's deciding rows (the oracle only with noisy labels)."""
    if args.lab == "benchmark":
        return ",".join(STRATEGIES + OTHER_ROWS)
    return ",".join(row for row in LAB_ROWS if row != "oracle" or args.label_noise)


def plan_comparison(args) -> Plan:
    """Every curriculum strategy at fraction 0.6, the same seeds (scripts/compare_curricula.sh): on the benchmark
    with teacher-only KD (--label-noise: 60% labels), in the calibrated lab with 60% labels."""
    data = args.data or "synthetic"
    if not data.startswith("synthetic"):
        raise UserError("only --data synthetic[:OPTIONS] is wired up for the comparison; see docs/sweeps.md.")
    if not 0 <= args.label_noise < 1:
        raise UserError(f"--label-noise {args.label_noise}: give a share of the training labels in [0, 1), e.g. 0.3.")
    out, seeds = Path(args.out or "runs/compare"), seeds_of(args.seeds or "0,1,2,3,4")
    cache = ["--cache-dir", args.cache_dir] if args.cache_dir else []
    lab = args.lab == "calibrated"
    pretrain, teacher_flags = BENCH_PRETRAIN_DATA, LAB_TEACHER if lab else BENCH_TEACHER
    if data == "synthetic":
        data = LAB_STUDENT_DATA if lab else BENCH_STUDENT_DATA
    epochs = args.epochs or BENCH_EPOCHS
    if args.quick:
        data, pretrain, teacher_flags, epochs = QUICK_STUDENT_DATA, QUICK_PRETRAIN_DATA, QUICK_TEACHER, args.epochs or 1
    label_weight = LAB_LABEL_WEIGHT if lab else NOISY_LABEL_WEIGHT if args.label_noise else "0"
    # one target scale for every row: the agents' and adaptive's targets are rank quantiles
    common = ["--data", data, "--epochs", str(epochs), "--device", args.device, "--workers", BENCH_WORKERS,
              "--batch-size", BENCH_BATCH, "--student", "resnet10t", "--teacher-checkpoint", TEACHER_CHECKPOINT,
              "--label-weight", label_weight, "--fraction", "0.6", "--target-scale", "quantile",
              "--teacher-logits", "replay", *cache]  # fmt: skip
    if args.label_noise:
        common += ["--label-noise", str(args.label_noise)]
    commands = comparison_rows(args, common, epochs)
    runs, after = {}, set()
    for seed in seeds:  # seed by seed: a cut-off sequential comparison still holds every strategy's first seeds
        for strategy, (script, flags) in commands.items():
            name = f"{strategy}-s{seed}"
            if strategy == "rl-bandit-twin":  # launched once its twin has finished (main)
                flags, after = [*flags, "--reward-twin", str(out / f"none-s{seed}")], after | {name}
            runs[name] = [script, *flags, "--seed", seed, "--out", str(out / name),
                          *(["--overwrite"] if args.overwrite else []), *args.extra]  # fmt: skip
    # the lab's questions: against plain KD on all the data first (the figure's), then teacher-only KD, the control
    baselines = [*(name for name in ("none", "teacher-only") if lab and name in commands), "random_subset"]
    gather = ["compare_curricula.py", *(str(out / name) for name in runs), "--baseline", ",".join(baselines),
              "--out", str(out)]  # fmt: skip
    teacher = teacher_step(args, pretrain, teacher_flags, cache)
    return Plan(out, teacher, runs, gather, ["comparison.md", "comparison.json"], table=None, after=after)


# ----------------------------------------------------------------------------------------------------------------------
# --out: refused if it holds other results, locked while a sweep runs in it


def check_out(plan: Plan, overwrite: bool) -> None:
    """Refuse an --out that holds a different sweep, or results of no sweep, before anything runs. The same sweep is
    continued (finished() tells whether anything is left to do)."""
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
    first = 2 if plan.teacher else 1
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


def pretrain(plan: Plan, args, progress: Progress) -> str | None:
    """The pretrained synthetic teacher's best.pt: trained once (cached under --cache-dir) before the runs fan out."""
    if plan.teacher is None:
        return None
    step = Step("teacher", plan.teacher, str(plan.out / "logs" / "teacher.log"), keep_stdout=False)
    if args.launcher == "slurm" and (checkpoint := slurm_jobs.earlier_checkpoint(plan.out / ".submitit", step)):
        progress.say("teacher", "done", f"by an earlier sweep's slurm job; {checkpoint}")
        return checkpoint
    code, stdout = run_steps({1: step}, progress, args, plan.out)["teacher"]
    if code != 0:
        raise UserError(f"the teacher could not be pretrained (exit {code}); see {step.log}, then run the sweep again.")
    return stdout.strip().splitlines()[-1]


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


def with_teacher(argv: list[str], checkpoint: str | None) -> list[str]:
    return [checkpoint if part == TEACHER_CHECKPOINT else part for part in argv]


def main(argv=None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    plan = plan_table(args) if args.sweep == "table" else plan_comparison(args)
    if plan.teacher is not None:  # synthetic data
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
    progress = Progress(total=len(plan.runs) + (1 if plan.teacher else 0))
    try:
        steps = plan_steps(plan, args, progress)
        checkpoint = pretrain(plan, args, progress)
        for step in steps.values():
            step.argv = with_teacher(step.argv, checkpoint)
        plan.gather = with_teacher(plan.gather, checkpoint)
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
