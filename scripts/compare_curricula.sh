#!/usr/bin/env bash
# Compare every curriculum strategy fairly: each at fraction 0.6, teacher-only KD with the teacher on each augmented
# view (as the reference), the same seeds; then compare_curricula.py prints mean +- std per strategy and the paired
# difference to random_subset with a 95% Student-t interval, and draws comparison.png. The strategies of one seed
# train on the same views, so the first run stores the teacher's logits on them and the others replay them
# (--teacher-logits replay, exact to fp16; `-- --teacher-logits online` runs the teacher in every run).
#
#   scripts/compare_curricula.sh --data synthetic                # the synthetic benchmark, 3 seeds (~45 min, 2 cores)
#   scripts/compare_curricula.sh --data synthetic --quick --seeds 0   # a smoke test: tiny data, 1 epoch
#
# Options: --data D (synthetic: the benchmark, or synthetic:OPTIONS for the students)  --out DIR (default
#          runs/compare)  --epochs N  --seeds S,S,... (default 0,1,2)  --targets T,T,... (adaptive's fixed targets,
#          default 0.2,0.4,0.6)  --device DEV  --cache-dir DIR  --quick  --overwrite (replace the runs and table in --out)
# Run folders are $out/<strategy>-s<seed>; the table lands in $out/comparison.md, .json and .png. An --out that already
# holds one of these finished runs or a comparison is refused before anything runs, unless --overwrite.
# Extra flags after -- go to every train_student.py call.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
source scripts/common.sh

data=synthetic out=runs/compare epochs="" device=auto seeds=0,1,2 targets=0.2,0.4,0.6 quick=0 overwrite=() cache=()
extra=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --data) data=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --seeds) seeds=$2; shift 2 ;;
    --targets) targets=$2; shift 2 ;;
    --cache-dir) cache=(--cache-dir "$2"); shift 2 ;;
    --quick) quick=1; shift ;;
    --overwrite) overwrite=(--overwrite); shift ;;
    --) shift; extra=("$@"); break ;;
    *) echo "error: unknown option $1; see the header of $0." >&2; exit 2 ;;
  esac
done
[[ $data == synthetic* ]] || { echo "error: only --data synthetic[:OPTIONS] is wired up here; see $0." >&2; exit 2; }
IFS=, read -ra seeds <<< "$seeds"
IFS=, read -ra targets <<< "$targets"
strategies=(none random_subset)
for target in "${targets[@]}"; do strategies+=("adaptive-t$target"); done
strategies+=(easy_to_hard hard_to_easy hard_mining mixed soft)
planned=()
for seed in "${seeds[@]}"; do for name in "${strategies[@]}"; do planned+=("$out/$name-s$seed"); done; done
[[ ${#overwrite[@]} -gt 0 ]] || refuse_existing_results "$out" "${planned[@]}" "$out/comparison.md" "$out/comparison.json"
step=0 steps=${#planned[@]}

source scripts/synthetic_benchmark.sh
pretrain_data=$BENCH_PRETRAIN_DATA teacher_flags=("${BENCH_TEACHER[@]}")
[[ $data == synthetic ]] && data=$BENCH_STUDENT_DATA
if [[ $quick == 1 ]]; then
  data=$QUICK_STUDENT_DATA pretrain_data=$QUICK_PRETRAIN_DATA teacher_flags=("${QUICK_TEACHER[@]}")
  : "${epochs:=1}"
fi
: "${epochs:=$BENCH_EPOCHS}"
checkpoint=$(pretrained_teacher "$pretrain_data" "${teacher_flags[@]}" --device "$device" --seed 0 "${cache[@]}")
# --target-scale absolute: docs/curriculum.md's comparison was measured with targets on the difficulty scale (the reference's);
# pass -- --target-scale quantile to compare the rank bands that train_student.py now defaults to
common=(--data "$data" --epochs "$epochs" --device "$device" --workers "$BENCH_WORKERS" --batch-size "$BENCH_BATCH" --student resnet10t
        --teacher-checkpoint "$checkpoint" --label-weight 0 --fraction 0.6 --target-scale absolute --teacher-logits replay
        "${cache[@]}")

folders=()
run() {  # run NAME SEED FLAGS...: one strategy with one seed
  local name=$1 seed=$2; shift 2
  local command=(train_student.py "${common[@]}" --seed "$seed" --out "$out/$name-s$seed" "${overwrite[@]}" "$@"
                 "${extra[@]}")
  header "$name-s$seed" "${command[*]}"
  $PYTHON "${command[@]}"
  folders+=("$out/$name-s$seed")
}
SECONDS=0
for seed in "${seeds[@]}"; do  # seed by seed: a cut-off comparison still holds every strategy's first seeds
  run none "$seed" --curriculum none
  run random_subset "$seed" --curriculum random_subset
  for target in "${targets[@]}"; do
    run "adaptive-t$target" "$seed" --curriculum adaptive --target "$target"
  done
  for strategy in easy_to_hard hard_to_easy hard_mining mixed soft; do
    run "$strategy" "$seed" --curriculum "$strategy"
  done
done
echo "trained ${#folders[@]} runs in $SECONDS s" >&2
$PYTHON compare_curricula.py "${folders[@]}" --baseline random_subset --out "$out"
