"""Host waits per training step, counted on every rank of a real multi-process run (docs/performance.md).

    python -m torch.distributed.run --standalone --nproc_per_node 2 -m analysis.sync_rehearsal OUT.json -- \
        --data synthetic:classes=4,train=96,val=32,test=32,size=32 --device cpu --epochs 2 ...

Runs train_student.py's epochs (`TrainingRun.train_epoch`: the curriculum's scoring, the steps, validation) from the
flags after `--`, each epoch inside `HostSyncCounter` (analysis/host_syncs.py: every caller, torch's own included),
and writes what each rank counted to OUT.json (rank 0, after gathering them): its training steps, its places and
its epochs' seconds (bench.py --only gpu times the multi-process runs with it).
On gloo the CPU counter runs; under NCCL torch's own sync warnings are counted.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import torch.distributed as dist

from analysis.host_syncs import HostSyncCounter
from common.cli import parse_config
from training.config import TrainConfig
from training.devices import end_distributed
from training.experiment import Experiment, TrainingRun


def count_epochs(config: TrainConfig) -> dict:
    """This rank's training steps, counted places and each epoch's seconds (validation included) over the run."""
    steps, places, seconds = 0, [], []
    with Experiment(config) as experiment:
        run = TrainingRun(experiment)
        for _ in range(config.epochs):
            with HostSyncCounter(experiment.device) as counter:
                row = run.train_epoch()
            steps += len(experiment.train_loader)
            places += counter.places
            seconds.append(row["seconds"])
    return {"steps": steps, "places": places, "seconds": seconds}


def by_caller(places: list[str]) -> dict[str, int]:
    """How many waits each caller made ("file:line function: what"), most first."""
    return dict(Counter(places).most_common())


def main(argv: list[str]) -> None:
    out, flags = Path(argv[0]), argv[argv.index("--") + 1 :]
    figures = count_epochs(parse_config(TrainConfig, flags))
    ranks = [figures]
    if dist.is_initialized():
        ranks = [None] * dist.get_world_size()
        dist.all_gather_object(ranks, figures)
    if not dist.is_initialized() or dist.get_rank() == 0:
        report = [{"rank": rank, "steps": r["steps"], "epoch_seconds": r["seconds"], "waits": len(r["places"]),
                   "waits_per_step": len(r["places"]) / max(1, r["steps"]), "by_caller": by_caller(r["places"])}
                  for rank, r in enumerate(ranks)]  # fmt: skip
        out.write_text(json.dumps(report, indent=2) + "\n")
    end_distributed()


if __name__ == "__main__":
    main(sys.argv[1:])
