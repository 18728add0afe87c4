#!/usr/bin/env bash
# Compare every curriculum strategy fairly (sweep.py compare): each at fraction 0.6, teacher-only KD with the teacher
# on each augmented view (as the reference), the same seeds; then compare_curricula.py prints mean +- std per strategy
# and the paired difference to random_subset with a 95% Student-t interval, and draws comparison.png. The strategies
# of one seed train on the same views, so the first run stores the teacher's logits on them and the others replay
# them (--teacher-logits replay, exact to fp16; `-- --teacher-logits online` runs the teacher in every run).
#
#   scripts/compare_curricula.sh --data synthetic                # the synthetic benchmark, 3 seeds (~45 min, 2 cores)
#   scripts/compare_curricula.sh --data synthetic --quick --seeds 0   # a smoke test: tiny data, 1 epoch
#   scripts/compare_curricula.sh --lab calibrated --label-noise 0.3 --seeds 0,1,2,3,4,5,6,7 --parallel 2 --device cpu
#   scripts/compare_curricula.sh --seeds 0,1,2,3,4 --parallel 8  # 8 runs at once, one per GPU
#
# Options: --data D (synthetic: the benchmark, or synthetic:OPTIONS for the students)  --out DIR (default
#          runs/compare)  --epochs N  --seeds S,S,... (default 0-4)  --targets T,T,... (adaptive's fixed targets,
#          default 0.2,0.4,0.6)  --strategies S,S,... (default all; random_subset, the baseline, must be one)
#          --lab benchmark|calibrated (the calibrated lab: larger validation and test splits, a weaker teacher, KD
#          with labels, the label gate, oracle and gate-bandit rows; docs/curriculum.md)  --label-noise F
#          --device DEV  --cache-dir DIR  --quick  --overwrite (replace the runs and table in --out)
#          --launcher local|slurm  --parallel N (runs at once; default 1 locally)  --gpus-per-job N; Slurm:
#          --partition P  --account A  --time MINUTES  --cpus-per-job N   (see docs/sweeps.md)
# Run folders are $out/<strategy>-s<seed> (output in $out/logs/); the table lands in $out/comparison.md, .json and
# .png. Running the same command again in the same --out continues it (a finished one prints its comparison); an --out
# that holds another sweep or finished runs of no sweep is refused before anything runs, unless --overwrite.
# Extra flags after -- go to every train_student.py call.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" sweep.py compare "$@"
