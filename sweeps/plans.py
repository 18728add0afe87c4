"""What a sweep runs: the synthetic benchmark's settings, and the results table and the curriculum comparison expanded
into their commands (a Plan), as `sweep.py` launches them.

Every command is the usual `python SCRIPT ...` of a run (train_student.py, train_student_rl.py, pretrain_teacher.py,
evaluate.py, compare_curricula.py); a Plan also says what it computes (its `spec`, saved as the sweep's sweep.json), so
that a sweep run again in the same folder is recognised as the same one.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from common.errors import UserError
from common.run_folder import WHERE_FLAGS
from curriculum_dataloader import STRATEGIES

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
    """A sweep expanded: the teachers to pretrain first, the runs, the gathering command, and the files it writes into
    --out (`products`: with the runs' folders, what makes a folder hold results)."""

    out: Path
    teachers: dict[str, list[str]]  # placeholder in the commands -> the command that pretrains it (empty: real data)
    runs: dict[str, list[str]]  # run name -> command; its folder is out/name
    gather: list[str]
    products: list[str]  # the first is the table's markdown
    table: str | None  # the file the gathering command's stdout is saved to (the table's markdown)
    after: set[str] = dataclasses.field(default_factory=set)  # runs that read others' results: launched last

    def spec(self) -> dict:
        teachers = {placeholder: spec_of(argv, self.out) for placeholder, argv in self.teachers.items()}
        spec = {
            # one teacher: as sweeps of earlier versions wrote it, so that they continue
            "teacher": teachers.pop(TEACHER_CHECKPOINT, None),
            "runs": {name: spec_of(argv, self.out) for name, argv in self.runs.items()},
            "gather": spec_of(self.gather, self.out),
        }
        return {**spec, "teachers": teachers} if teachers else spec


def seeds_of(text: str) -> list[str]:
    seeds = [seed.strip() for seed in text.split(",") if seed.strip()]
    if not seeds or not all(seed.isdigit() for seed in seeds):
        raise UserError(f"--seeds {text}: give seeds as comma-separated integers, e.g. --seeds 0,1,2.")
    return seeds


def teacher_step(args, pretrain_data: str, teacher_flags: list[str], cache: list[str], seed: int = 0) -> list[str]:
    return ["pretrain_teacher.py", "--data", pretrain_data, *TEACHER_FLAGS, *teacher_flags,
            "--device", args.device, "--seed", str(seed), *cache]  # fmt: skip


def plan_table(args) -> Plan:
    """The results table's rows, once per seed (scripts/reproduce_table.sh)."""
    data = args.data or "timm/mini-imagenet"
    out = Path(args.out or ("runs/demo" if data.startswith("synthetic") else "runs/table"))
    seeds, cache = seeds_of(args.seeds or "0"), (["--cache-dir", args.cache_dir] if args.cache_dir else [])
    overwrite = ["--overwrite"] if args.overwrite else []
    teachers = {}
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
        teachers = {TEACHER_CHECKPOINT: teacher_step(args, pretrain, teacher_flags, cache)}
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
    return Plan(out, teachers, runs, gather, ["table.md", "table.json"], table="table.md")


def replace_flag(argv: list[str], flag: str, value: str) -> list[str]:
    """`argv` with the value after `flag` replaced."""
    position = argv.index(flag) + 1
    return [*argv[:position], value, *argv[position + 1 :]]


def comparison_rows(args, common: list[str], epochs: int) -> dict[str, tuple[str, list[str]]]:
    """Each row of the comparison: its script and flags (the seed and folder come later). A strategy of the registry
    is a row of train_student.py (one per --targets target if it is compared at several); the other rows are
    other_rows'."""
    rows = [name.strip() for name in (args.strategies or default_rows(args)).split(",") if name.strip()]
    others = other_rows(args, common, epochs)
    known = [*STRATEGIES, *others]
    unknown = sorted(set(rows) - set(known))
    if unknown or "random_subset" not in rows:
        raise UserError(f"--strategies: pick from {', '.join(known)}, with random_subset (the baseline).")
    if "oracle" in rows and not args.label_noise:
        raise UserError("--strategies oracle drops the labels --label-noise replaced: give --label-noise, e.g. 0.3.")
    if "rl-bandit-twin" in rows and "none" not in rows:
        raise UserError("--strategies rl-bandit-twin reads its twin, the none run of its seed: add none.")
    commands = {}  # row -> (script, its flags)
    for row in rows:
        if row not in STRATEGIES:
            commands[row] = others[row]
        elif STRATEGIES[row].compared_at_targets:
            for target in (t.strip() for t in args.targets.split(",") if t.strip()):
                commands[f"{row}-t{target}"] = "train_student.py", [*common, "--curriculum", row, "--target", target]
        else:
            commands[row] = "train_student.py", [*common, "--curriculum", row]
    return commands


def other_rows(args, common: list[str], epochs: int) -> dict[str, tuple[str, list[str]]]:
    """The rows that are no fixed strategy: plain KD at the 60% rows' budget, teacher-only KD, the label gate and the
    oracle, and the agents (train_student_rl.py)."""
    gates = ["--agent", "bandit", "--arms", LAB_ARMS, "--curriculum", "none"]
    none = ["--curriculum", "none"]
    return {
        "equal-compute": ("train_student.py", [*replace_flag(common, "--epochs", str(round(0.6 * epochs))), *none]),
        "teacher-only": ("train_student.py", [*replace_flag(common, "--label-weight", "0"), *none]),
        "label-gate": ("train_student.py", [*common, *none, "--label-gate", LAB_GATE]),
        "oracle": ("train_student.py", [*common, *none, "--label-gate", "oracle"]),
        "rl-bandit": ("train_student_rl.py", [*common, "--agent", "bandit"]),
        "rl-bandit-gates": ("train_student_rl.py", [*common, *gates]),
        "rl-bandit-twin": ("train_student_rl.py", [*common, *gates, "--reward", "twin"]),  # --reward-twin: per seed
        "rl-ppo": ("train_student_rl.py", [*common, *(QUICK_RL if args.quick else BENCH_RL)]),
    }


def default_rows(args) -> str:
    """The benchmark's every row, or the lab's deciding rows (the oracle only with noisy labels)."""
    if args.lab == "benchmark":
        return ",".join([*STRATEGIES, *OTHER_ROWS])
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
        for row, (script, flags) in commands.items():
            name = f"{row}-s{seed}"
            if row == "rl-bandit-twin":  # launched once its twin has finished (main)
                flags, after = [*flags, "--reward-twin", str(out / f"none-s{seed}")], after | {name}
            runs[name] = [script, *flags, "--seed", seed, "--out", str(out / name),
                          *(["--overwrite"] if args.overwrite else []), *args.extra]  # fmt: skip
    # the lab's questions: against plain KD on all the data first (the figure's), then teacher-only KD, the control
    baselines = [*(name for name in ("none", "teacher-only") if lab and name in commands), "random_subset"]
    gather = ["compare_curricula.py", *(str(out / name) for name in runs), "--baseline", ",".join(baselines),
              "--out", str(out)]  # fmt: skip
    teachers = {TEACHER_CHECKPOINT: teacher_step(args, pretrain, teacher_flags, cache)}
    return Plan(out, teachers, runs, gather, ["comparison.md", "comparison.json"], table=None, after=after)


def with_teachers(argv: list[str], checkpoints: dict[str, str]) -> list[str]:
    """`argv` with each teacher's placeholder replaced by its pretrained checkpoint."""
    return [checkpoints.get(part, part) for part in argv]
