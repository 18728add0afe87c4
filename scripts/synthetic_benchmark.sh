# The synthetic benchmark where distillation matters, sourced by reproduce_table.sh and compare_curricula.sh.
#
# The analogue of "a ResNet-152 pretrained on ImageNet, sliced to mini-imagenet's classes": the teacher learns a
# wide pretraining set (twice the classes, 12x the images per class), once, and is cached under the cache dir by
# everything that defines it (pretrain_teacher.py); the students see a subset of its classes with few images each,
# and the teacher's wider head is sliced to them by WordNet id (models.class_indices, as for ImageNet).
# Both sets share the generator's seed (the classes' looks) and its per-sample variation (jitter, radians).
BENCH_STUDENT_DATA=synthetic:classes=10,train=200,val=100,test=500,size=32,seed=0,jitter=0.4
BENCH_PRETRAIN_DATA=synthetic:classes=20,train=5000,val=300,test=300,size=32,seed=0,jitter=0.4
BENCH_TEACHER=(--student resnet10t --epochs 4)
BENCH_EPOCHS=15
# 7 steps per epoch, not 2: with 20 images per class a batch of 128 would take 30 optimiser steps in all, too few
# for the soft targets to be learnt (the teacher keeps its own batch of 128 on its 5000 images)
BENCH_BATCH=32
# The RL row's proxy runs (train_student_rl.py --pretrain-*): 10 proxy runs of 10 epochs on a tenth of the data
# (100 agent steps) keep the demo within its time; the default 30 (300 steps, what tests/test_agent_learns.py shows
# is enough to learn) costs about 3 minutes more here, and is what the agent comparison in docs/rl-agent.md measures.
BENCH_RL=(--pretrain-episodes 10)
# the --quick smoke test: the same design, tiny (4 of 8 classes)
QUICK_STUDENT_DATA=synthetic:classes=4,train=96,val=32,test=32
QUICK_PRETRAIN_DATA=synthetic:classes=8,train=256,val=32,test=32
QUICK_TEACHER=(--student resnet10t --epochs 1)
QUICK_RL=(--pretrain-episodes 1 --pretrain-epochs 2 --pretrain-subset 0.5)

# No DataLoader workers: a synthetic image is generated once and kept by the process (data.SyntheticImages); a
# worker, forked afresh each epoch, would generate it again every epoch.
BENCH_WORKERS=0
# One thread per process: on a small shared CPU, two threads per process fight the data worker (and other jobs)
# and run several times slower. The numbers of a seed are the same for any given thread count.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# pretrained_teacher DATA FLAGS...: print the cached teacher's best.pt, training it first if its key is new
TEACHER_FLAGS=(--label-weight 1 --batch-size 128 --workers "$BENCH_WORKERS")
pretrained_teacher() {
  local data=$1; shift
  $PYTHON pretrain_teacher.py --data "$data" "${TEACHER_FLAGS[@]}" "$@"
}
