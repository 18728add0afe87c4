#!/usr/bin/env bash
# Reproduce the results table: train each row's student, then test them all with evaluate.py.
#
#   scripts/reproduce_table.sh --data synthetic            # the CPU demo: the synthetic benchmark, in runs/demo
#   scripts/reproduce_table.sh                             # the reference table: timm/mini-imagenet on a GPU
#   scripts/reproduce_table.sh --data synthetic --quick    # a smoke test (what the test suite runs)
#   scripts/reproduce_table.sh --data synthetic --seeds 0,1,2   # each row 3 times: mean +- std in the table
#
# Options: --data D  --out DIR (default runs/demo for synthetic data, runs/table for the real table)  --epochs N
#          --device DEV  --seeds S,S,... (default 0)  --quick  --overwrite (replace the runs and table in --out)
#          --cache-dir DIR (teacher-logit cache and, for synthetic data, the cached pretrained teacher)
# An --out that already holds a finished row or a table is refused before anything runs, unless --overwrite.
# `--data synthetic` is the benchmark of scripts/synthetic_benchmark.sh (a teacher pretrained on a wider synthetic
# set, sliced to the students' classes); `--data synthetic:OPTIONS` trains the students on those options instead.
# With one seed a row's run folder is $out/<row>; with several, $out/<row>-s<seed>. The report (figures beside the
# table) lands in $out/report/report.md.
# Extra flags after -- go to every train_student.py call (e.g. -- --amp --workers 8).
# The KD rows of one seed train on the same augmented views (the augmentation is seeded by seed, epoch and sample), so
# the first of them stores the teacher's logits on each view and the others replay them (--teacher-logits replay,
# exact to fp16; see docs/performance.md). `-- --teacher-logits online` runs the teacher in every row instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
source scripts/common.sh

data=timm/mini-imagenet out="" epochs="" device=auto seeds=0 quick=0 overwrite=() cache=() extra=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --data) data=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --seeds) seeds=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --overwrite) overwrite=(--overwrite); shift ;;
    --cache-dir) cache=(--cache-dir "$2"); shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "error: unknown option $1; see the header of $0." >&2; exit 2 ;;
  esac
done
IFS=, read -ra seeds <<< "$seeds"
[[ ${#seeds[@]} -gt 0 ]] || { echo "error: --seeds needs at least one seed, e.g. --seeds 0,1,2." >&2; exit 2; }
[[ -n $out ]] || { [[ $data == synthetic* ]] && out=runs/demo || out=runs/table; }  # the demo never writes runs/table

rows=(labels kd kd-teacher-only rl random-subset kd-teacher-only-equal-compute)
folders=()
for name in "${rows[@]}"; do  # with one seed a row's folder is $out/<row>; with several, $out/<row>-s<seed>
  for seed in "${seeds[@]}"; do
    if [[ ${#seeds[@]} -gt 1 ]]; then folders+=("$out/$name-s$seed"); else folders+=("$out/$name"); fi
  done
done
[[ ${#overwrite[@]} -gt 0 ]] || refuse_existing_results "$out" "${folders[@]}" "$out/table.md" "$out/table.json"
step=0 steps=${#folders[@]}

if [[ $data == synthetic* ]]; then
  # The student is resnet10t: MobileNetV2's stride-32 stem leaves 1x1 feature maps at 32 px and learns too slowly
  # for a CPU demo of a few epochs; the real-data rows use the reference's mobilenetv2_100.
  source scripts/synthetic_benchmark.sh
  student=resnet10t workers=$BENCH_WORKERS pretrain_data=$BENCH_PRETRAIN_DATA teacher_flags=("${BENCH_TEACHER[@]}")
  rl_flags=("${BENCH_RL[@]}")
  [[ $data == synthetic ]] && data=$BENCH_STUDENT_DATA
  if [[ $quick == 1 ]]; then
    data=$QUICK_STUDENT_DATA pretrain_data=$QUICK_PRETRAIN_DATA teacher_flags=("${QUICK_TEACHER[@]}")
    rl_flags=("${QUICK_RL[@]}")
    : "${epochs:=2}"  # 2, not 1: the equal-compute control's round(0.6 E) epochs must differ from E
  fi
  : "${epochs:=$BENCH_EPOCHS}"
  common=(--data "$data" --epochs "$epochs" --device "$device" --workers "$workers" --batch-size "$BENCH_BATCH"
          --teacher-logits replay "${cache[@]}")
  teacher_args=("$pretrain_data" "${teacher_flags[@]}" --device "$device" --seed 0 "${cache[@]}")
  steps=$(( steps + 1 ))  # the teacher first
  header teacher "pretrain_teacher.py --data ${teacher_args[0]} ${TEACHER_FLAGS[*]} ${teacher_args[*]:1} (once, then cached)"
  checkpoint=$(pretrained_teacher "${teacher_args[@]}")
  teacher=(--teacher-checkpoint "$checkpoint")
else
  student=mobilenetv2_100 workers=8 rl_flags=()
  : "${epochs:=100}"
  common=(--data "$data" --epochs "$epochs" --device "$device" --workers "$workers" --teacher-logits replay
          "${cache[@]}")
  teacher=(--teacher resnet152.tv_in1k)
fi

run() {  # run SCRIPT NAME FLAGS...: one table row, once per seed
  local script=$1 name=$2 seed folder command; shift 2
  for seed in "${seeds[@]}"; do
    folder=$out/$name
    [[ ${#seeds[@]} -gt 1 ]] && folder=$out/$name-s$seed
    command=("$script" "${common[@]}" --student "$student" "${teacher[@]}" --seed "$seed" --out "$folder"
             "${overwrite[@]}" "$@" "${extra[@]}")
    header "${folder##*/}" "${command[*]}"
    $PYTHON "${command[@]}"
  done
}
run train_student.py labels --label-weight 1
run train_student.py kd --label-weight 0.6
run train_student.py kd-teacher-only --label-weight 0
run train_student_rl.py rl --label-weight 0 --fraction 0.6 "${rl_flags[@]}"
# the control: as much data per epoch as the RL row, drawn uniformly
run train_student.py random-subset --label-weight 0 --curriculum random_subset --fraction 0.6
# the equal-compute control: plain teacher-only KD on all the data for round(0.6 E) epochs, the 60% rows' budget
run train_student.py kd-teacher-only-equal-compute --label-weight 0 --epochs $(( (6 * epochs + 5) / 10 ))

# seeds of one row share a config but for --seed and --out: evaluate.py pools them into one row
echo "== the table: evaluate.py ${folders[*]} --report $out/report =="
$PYTHON evaluate.py "${folders[@]}" "${teacher[@]}" --device "$device" \
  --workers "$workers" --json "$out/table.json" --report "$out/report" | tee "$out/table.md"
