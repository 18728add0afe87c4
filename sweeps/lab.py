"""The lab's protocol as a sweep (`sweep.py lab`, docs/curriculum.md#the-lab-protocol): every row of every variant in
every cell, a cell being one teacher (pretrained with its own seed) on one draw of the student data.

Rows are fixed before the runs: plain KD over a grid of label weights (the tuned baseline: the weight is picked per
cell on validation), the label gates top1/top2/top3 (the gate, tuned the same way), the oracle (a control), the 60%
rows, the twin bandit over gates; with clean labels also KD for 9 epochs (the 60% rows' compute). Validation labels are
noisy wherever the training labels are (the same process), except in the rows marked `-cleanval`, the control that
shows what privileged clean validation labels would change. A run's folder is
`<variant>-<row>-t<teacher>-d<draw>-s<seed>`; scripts/lab_results.py gathers them into one CSV row each and the tables.
"""

from __future__ import annotations

from pathlib import Path

from common.errors import UserError
from sweeps.plans import (
    BENCH_BATCH,
    BENCH_EPOCHS,
    BENCH_PRETRAIN_DATA,
    BENCH_WORKERS,
    LAB_ARMS,
    LAB_LABEL_WEIGHT,
    LAB_STUDENT_DATA,
    LAB_TEACHER,
    Plan,
    replace_flag,
    seeds_of,
    teacher_step,
)

LAB_LABEL_WEIGHTS = ("0", "0.2", "0.4", "0.5", "0.6", "0.8")  # KD's grid: the baseline tuned as hard as the gate
LAB_GATES = ("top1", "top2", "top3")  # the gate's grid (K of the teacher's top-K)
LAB_NOISE = "0.3"
VARIANTS = ("clean", "symmetric", "confusable")  # the labels: clean, or 30% replaced by NOISE_KINDS' process
# the rows of each variant (the names scripts/lab_results.py reads)
KD_ROWS = tuple(f"kd-lw{weight}" for weight in LAB_LABEL_WEIGHTS)
GATE_ROWS = tuple(f"gate-{gate}" for gate in LAB_GATES)
VARIANT_ROWS = {
    "clean": (*KD_ROWS, "kd9-lw0.6", "gate-top2", "random_subset", "reducible", "bandit-twin"),
    "symmetric": (*KD_ROWS, *GATE_ROWS, "oracle", "random_subset", "reducible", "bandit-twin", "kd-lw0.6-cleanval",
                  "gate-top2-cleanval"),
    "confusable": (*KD_ROWS, *GATE_ROWS, "oracle", "random_subset", "bandit-twin"),
}  # fmt: skip
# the order the runs go in: tier by tier, each over every cell, so that a sweep cut short (or a budget that ends) holds
# the deciding rows of every cell first, then the rest of the grids, then the controls and agents (the twin bandits go
# last in any case: each waits for its twin)
TIERS = [
    [*((v, row) for v in ("symmetric", "confusable") for row in ("kd-lw0", "kd-lw0.6", "gate-top2")),
     ("clean", "kd-lw0.6"), ("clean", "kd9-lw0.6"), ("clean", "random_subset")],
    [*((v, row) for v in ("symmetric", "confusable") for row in ("kd-lw0.4", "kd-lw0.5", "gate-top3", "oracle")),
     ("clean", "reducible"), ("clean", "kd-lw0.4"), ("clean", "kd-lw0.8")],
    [*((v, row) for v in ("symmetric", "confusable") for row in ("kd-lw0.2", "kd-lw0.8", "gate-top1")),
     *(("clean", row) for row in ("kd-lw0", "kd-lw0.2", "kd-lw0.5", "gate-top2"))],
    [("symmetric", "random_subset"), ("confusable", "random_subset"), ("symmetric", "reducible"),
     ("symmetric", "kd-lw0.6-cleanval"), ("symmetric", "gate-top2-cleanval"),
     *((v, "bandit-twin") for v in VARIANTS)],
]  # fmt: skip
TWIN_ROW = "kd-lw0.6"  # the twin bandit's twin: plain KD at the gate's label weight, a row every variant runs anyway


def teacher_placeholder(seed: int) -> str:
    return f"<pretrained teacher {seed}>"


def row_flags(row: str, common: list[str], epochs: int) -> tuple[str, list[str]]:
    """The script and flags of one row (before its seed, folder and twin)."""
    gated = [*replace_flag(common, "--label-weight", LAB_LABEL_WEIGHT), "--curriculum", "none"]
    if row.endswith("-cleanval"):
        script, flags = row_flags(row.removesuffix("-cleanval"), common, epochs)
        return script, [*flags, "--val-label-noise", "0"]
    if row.startswith("kd-lw"):
        return "train_student.py", [*replace_flag(common, "--label-weight", row.removeprefix("kd-lw")), "--curriculum",
                                    "none"]  # fmt: skip
    if row == "kd9-lw0.6":  # plain KD with the 60% rows' compute: round(0.6 E) epochs of all the data
        return "train_student.py", replace_flag(gated, "--epochs", str(round(0.6 * epochs)))
    if row.startswith("gate-") or row == "oracle":
        return "train_student.py", [*gated, "--label-gate", row.removeprefix("gate-")]
    if row in ("random_subset", "reducible"):
        return "train_student.py", [*replace_flag(common, "--label-weight", LAB_LABEL_WEIGHT), "--curriculum", row]
    if row == "bandit-twin":
        return "train_student_rl.py", [*gated, "--agent", "bandit", "--arms", LAB_ARMS, "--reward", "twin"]
    raise ValueError(row)


def plan_lab(args) -> Plan:
    """Every (teacher, draw) cell x seed x variant x row, tier by tier (TIERS)."""
    teachers, draws = seeds_of(args.teachers or "0,1,2"), seeds_of(args.draws or "0,1")
    variants = [name.strip() for name in (args.variants or ",".join(VARIANTS)).split(",") if name.strip()]
    if not variants or set(variants) - set(VARIANTS):
        raise UserError(f"--variants {args.variants}: pick from {', '.join(VARIANTS)}.")
    known = sorted({row for rows in VARIANT_ROWS.values() for row in rows})
    picked = None if not args.strategies else [row.strip() for row in args.strategies.split(",") if row.strip()]
    if picked is not None and set(picked) - set(known):
        raise UserError(f"--strategies {args.strategies}: the lab's rows are {', '.join(known)}.")
    out, seeds = Path(args.out or "runs/lab"), seeds_of(args.seeds or "0")
    cache = ["--cache-dir", args.cache_dir] if args.cache_dir else []
    epochs = args.epochs or BENCH_EPOCHS
    plan_teachers = {
        teacher_placeholder(int(seed)): teacher_step(args, BENCH_PRETRAIN_DATA, LAB_TEACHER, cache, int(seed))
        for seed in teachers
    }
    cells = [(teacher, draw, seed) for teacher in teachers for draw in draws for seed in seeds]
    runs, after = {}, set()
    for tier in TIERS:
        for teacher, draw, seed in cells:
            common = ["--data", f"{LAB_STUDENT_DATA},draw={draw}", "--epochs", str(epochs), "--device", args.device,
                      "--workers", BENCH_WORKERS, "--batch-size", BENCH_BATCH, "--student", "resnet10t",
                      "--teacher-checkpoint", teacher_placeholder(int(teacher)), "--label-weight", LAB_LABEL_WEIGHT,
                      "--fraction", "0.6", "--target-scale", "quantile", "--teacher-logits", "replay",
                      *cache]  # fmt: skip
            for variant, row in tier:
                if variant not in variants or (picked is not None and row not in picked):
                    continue
                noise = [] if variant == "clean" else ["--label-noise", LAB_NOISE, "--label-noise-kind", variant]
                script, flags = row_flags(row, [*common, *noise], epochs)
                cell = f"t{teacher}-d{draw}-s{seed}"
                name = f"{variant}-{row}-{cell}"
                if row == "bandit-twin":  # launched once its twin has finished
                    flags = [*flags, "--reward-twin", str(out / f"{variant}-{TWIN_ROW}-{cell}")]
                    after.add(name)
                runs[name] = [script, *flags, "--seed", seed, "--out", str(out / name),
                              *(["--overwrite"] if args.overwrite else []), *args.extra]  # fmt: skip
    if picked is not None and "bandit-twin" in picked and TWIN_ROW not in picked:
        raise UserError(f"--strategies bandit-twin reads its twin, the {TWIN_ROW} run of its cell: add {TWIN_ROW}.")
    gather = ["scripts/lab_results.py", *(str(out / name) for name in runs), "--out", str(out)]
    if args.pilot:  # validation only; what the protocol's 6 cells could detect
        gather += ["--pilot"]
    products = ["lab.md", "pilot-runs.csv" if args.pilot else "lab-runs.csv"]
    return Plan(out, plan_teachers, runs, gather, products, table="lab.md", after=after)
