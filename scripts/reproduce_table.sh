#!/usr/bin/env bash
# Reproduce the results table: train each row's student, then test them all with evaluate.py.
#
#   scripts/reproduce_table.sh --data synthetic            # the CPU demo, a few minutes
#   scripts/reproduce_table.sh                             # the reference table: timm/mini-imagenet on a GPU
#   scripts/reproduce_table.sh --data synthetic --quick    # a smoke test (what the test suite runs)
#
# Options: --data D  --out DIR (default runs/table)  --epochs N  --device DEV  --quick
# Extra flags after -- go to every train_student.py call (e.g. -- --amp --workers 8).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}

data=timm/mini-imagenet out=runs/table epochs="" device=auto quick=0 extra=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --data) data=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --) shift; extra=("$@"); break ;;
    *) echo "error: unknown option $1; see the header of $0." >&2; exit 2 ;;
  esac
done

if [[ $data == synthetic* ]]; then
  # No ImageNet teacher knows procedural gratings: train one (a labels-only ResNet-18), as for any new data.
  # The student is resnet10t: MobileNetV2's stride-32 stem leaves 1x1 feature maps at 32 px and learns too slowly
  # for a CPU demo of a few epochs; the real-data rows use the reference's mobilenetv2_100.
  student=resnet10t workers=1
  [[ $quick == 1 ]] && data=synthetic:classes=4,train=192,val=64,test=64 && : "${epochs:=1}"
  : "${epochs:=8}"
  common=(--data "$data" --epochs "$epochs" --device "$device" --workers "$workers" --batch-size 128)
  $PYTHON train_student.py "${common[@]}" --student resnet18 --label-weight 1 --out "$out/teacher" --overwrite "${extra[@]}"
  teacher=(--teacher-checkpoint "$out/teacher/best.pt")
else
  student=mobilenetv2_100 workers=8
  : "${epochs:=100}"
  common=(--data "$data" --epochs "$epochs" --device "$device" --workers "$workers")
  teacher=(--teacher resnet152.tv_in1k)
fi

run() {  # run SCRIPT NAME FLAGS...: one table row
  local script=$1 name=$2; shift 2
  $PYTHON "$script" "${common[@]}" --student "$student" "${teacher[@]}" --out "$out/$name" --overwrite \
    "$@" "${extra[@]}"
}
run train_student.py labels --label-weight 1
run train_student.py kd --label-weight 0.6
run train_student.py kd-teacher-only --label-weight 0
run train_student_rl.py rl --label-weight 0 --fraction 0.6
# the control: as much data per epoch as the RL row, drawn uniformly
run train_student.py random-subset --label-weight 0 --curriculum random_subset --fraction 0.6

rows=(labels kd kd-teacher-only rl random-subset)
$PYTHON evaluate.py "${rows[@]/#/$out/}" "${teacher[@]}" --device "$device" \
  --workers "$workers" --json "$out/table.json" | tee "$out/table.md"
