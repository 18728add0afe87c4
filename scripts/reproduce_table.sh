#!/usr/bin/env bash
# Reproduce the results table: train each row's student, then test them all with evaluate.py (sweep.py table).
#
#   scripts/reproduce_table.sh --data synthetic            # the CPU demo: the synthetic benchmark, in runs/demo
#   scripts/reproduce_table.sh                             # the reference table: timm/mini-imagenet on a GPU
#   scripts/reproduce_table.sh --data synthetic --quick    # a smoke test (what the test suite runs)
#   scripts/reproduce_table.sh --data synthetic --seeds 0,1,2   # each row 3 times: mean +- std in the table
#   scripts/reproduce_table.sh --parallel 4                # 4 rows at once, each on its own GPU
#   scripts/reproduce_table.sh --launcher slurm --partition gpu --time 600   # a Slurm job array (docs/sweeps.md)
#
# Options: --data D  --out DIR (default runs/demo for synthetic data, runs/table for the real table)  --epochs N
#          --device DEV  --seeds S,S,... (default 0)  --quick  --overwrite (replace the runs and table in --out)
#          --cache-dir DIR (teacher-logit cache and, for synthetic data, the cached pretrained teacher)
#          --launcher local|slurm  --parallel N (runs at once; default 1 locally)  --gpus-per-job N; Slurm:
#          --partition P  --account A  --time MINUTES  --cpus-per-job N   (python sweep.py --help lists them all)
# Running the same command again in the same --out continues it: finished rows are skipped, interrupted ones resumed,
# the rest started, then the table is gathered; a finished sweep prints its table. An --out that holds another sweep
# or finished rows of no sweep is refused before anything runs, unless --overwrite.
# `--data synthetic` is the benchmark defined at the top of sweep_plans.py (a teacher pretrained on a wider synthetic
# set, sliced to the students' classes); `--data synthetic:OPTIONS` trains the students on those options instead.
# With one seed a row's run folder is $out/<row>; with several, $out/<row>-s<seed>; each run's output is in
# $out/logs/<row>.log. The report (figures beside the table) lands in $out/report/report.md.
# Extra flags after -- go to every train_student.py call (e.g. -- --amp --workers 8).
# The KD rows of one seed train on the same augmented views (the augmentation is seeded by seed, epoch and sample), so
# the first of them stores the teacher's logits on each view and the others replay them (--teacher-logits replay,
# exact to fp16; see the README). `-- --teacher-logits online` runs the teacher in every row instead.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" sweep.py table "$@"
