"""Several processes with torchrun (gloo on CPUs): DDP runs complete, shard each epoch's selection exactly once
across ranks, and agree with a single process of the same global batch."""

import json
import os

import numpy as np
import pytest
import torch

from common import metrics as bookkeeping
from common.files import load_checkpoint
from conftest import ROOT, run_script, run_to_exit, train_args

pytestmark = pytest.mark.slow  # every test here trains (see pyproject.toml)


# --standalone: the launcher binds its own free port and keeps it, where a port found free beforehand could be taken by
# another job before the launcher binds it
LAUNCHER = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]


def torchrun(argv: list, processes: int = 2):
    return run_script(*LAUNCHER, processes, *argv, env={"OMP_NUM_THREADS": "1"})


def test_one_and_two_processes_take_the_same_steps_to_the_same_weights_without_batch_statistics(tmp_path, tiny_teacher):
    """The same run (global batch 32) on 1 and 2 gloo processes, with a GroupNorm student (no batch statistics) and
    an uneven selection (67 samples: global batches of 23, 22, 22, split 12/11 and 11/11 across the ranks): the same
    samples, the same number of Adam steps, and the same final weights within float tolerance (each rank's loss is
    scaled by its share of the batch). Resuming the 2-process run in 1 process is refused in one line."""
    flags = ["--teacher-checkpoint", tiny_teacher, "--label-weight", "0.5", "--student", "test_efficientnet_gn",
             "--curriculum", "random_subset", "--fraction", "0.7", "--cache-dir", tmp_path / "cache"]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    run_script(*train_args(one, *flags, epochs=2))
    result = torchrun(train_args(two, *flags, epochs=2))
    assert result.stdout.count("epoch 1/2") == 1  # rank 0 alone prints
    # every selected sample trained exactly once per epoch across the ranks (the run checks it; coverage shows it)
    np.testing.assert_array_equal(np.load(two / "coverage.npy"), np.load(one / "coverage.npy"))
    last_one, last_two = (load_checkpoint(run / "last.pt") for run in (one, two))
    assert (last_one["world_size"], last_two["world_size"]) == (1, 2)
    assert json.loads((two / "config.json").read_text())["world_size"] == 2
    steps = [{int(state["step"]) for state in last["optimizer"]["state"].values()} for last in (last_one, last_two)]
    assert steps[0] == steps[1] == {6}  # 3 global batches an epoch, 2 epochs
    for name, weight in last_one["state_dict"].items():
        torch.testing.assert_close(last_two["state_dict"][name], weight, rtol=1e-4, atol=1e-5, msg=name)
    resumed = run_script("train_student.py", "--resume", two, check=False)
    assert resumed.returncode != 0 and "trained on 2 process(es)" in resumed.stderr, resumed.stderr
    assert len(resumed.stderr.strip().splitlines()) == 1


def test_rl_run_with_two_processes(tmp_path, tiny_teacher, cache_dir):
    out = tmp_path / "rl"
    flags = ["--teacher-checkpoint", tiny_teacher, "--cache-dir", cache_dir, "--student", "resnet10t",
             "--agent-steps", "2", "--score-source", "train-pass", "--pretrain-episodes", "1", "--pretrain-epochs",
             "2", "--pretrain-subset", "0.5"]  # fmt: skip
    torchrun(train_args(out, *flags, epochs=3, script="train_student_rl.py"))
    rows = bookkeeping.read_metrics(out / "metrics.csv")
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    assert [row["epoch"] for row in bookkeeping.read_metrics(out / "proxy" / "metrics.csv")] == ["1", "2"]
    assert (out / "agent.zip").is_file() and (out / "results.json").is_file()


def test_two_processes_fill_the_teacher_view_store_as_one_does(tmp_path, tiny_teacher):
    """--teacher-logits replay under DDP: each rank runs the teacher on its shard, rank 0 stores every view."""
    flags = ["--teacher-checkpoint", tiny_teacher, "--label-weight", "0.5", "--student", "resnet10t",
             "--teacher-logits", "replay"]  # fmt: skip
    torchrun(train_args(tmp_path / "two", *flags, "--cache-dir", tmp_path / "cache-two"))
    run_script(*train_args(tmp_path / "one", *flags, "--cache-dir", tmp_path / "cache-one"))
    (two,) = (tmp_path / "cache-two").glob("teacher-views-*/epoch-0001.npy")
    (one,) = (tmp_path / "cache-one").glob("teacher-views-*/epoch-0001.npy")
    assert two.parent.name == one.parent.name  # the same key: the batch size and process count do not enter it
    stored_two, stored_one = np.load(two), np.load(one)
    assert (stored_two[:, -1] == 1).all()  # every view of the epoch, from both ranks' shards
    np.testing.assert_allclose(stored_two.astype(np.float32), stored_one.astype(np.float32), rtol=1e-3, atol=1e-3)


def test_prioritised_draws_repeat_across_ranks_and_are_trained_and_stored_as_by_one(tmp_path, tiny_teacher):
    """prioritised draws with replacement, so one view can lie in both ranks' shards: every draw is trained once
    (coverage counts repeats), the train-pass scores average rather than add the ranks' rows, and the teacher-view
    store holds the view's logits, not their sum across ranks."""
    flags = ["--teacher-checkpoint", tiny_teacher, "--label-weight", "0.5", "--student", "resnet10t",
             "--curriculum", "prioritised", "--fraction", "1", "--score-source", "train-pass",
             "--teacher-logits", "replay"]  # fmt: skip
    torchrun(train_args(tmp_path / "two", *flags, "--cache-dir", tmp_path / "cache-two"))
    run_script(*train_args(tmp_path / "one", *flags, "--cache-dir", tmp_path / "cache-one"))
    coverage = np.load(tmp_path / "two" / "coverage.npy")
    assert coverage.sum() == 96 and coverage.max() > 1  # 96 draws of 96 samples with replacement repeat some
    np.testing.assert_array_equal(coverage, np.load(tmp_path / "one" / "coverage.npy"))  # the same seeded draws
    (two,) = (tmp_path / "cache-two").glob("teacher-views-*/epoch-0001.npy")
    (one,) = (tmp_path / "cache-one").glob("teacher-views-*/epoch-0001.npy")
    stored_two, stored_one = np.load(two), np.load(one)
    np.testing.assert_array_equal(stored_two[:, -1], stored_one[:, -1])
    np.testing.assert_allclose(stored_two.astype(np.float32), stored_one.astype(np.float32), rtol=1e-3, atol=1e-3)
    difficulty_two, difficulty_one = (
        np.load(tmp_path / "two" / "difficulty.npy"),
        np.load(tmp_path / "one" / "difficulty.npy"),
    )
    # BatchNorm's smaller per-rank batch moves the scores by up to 0.04; a sum of two ranks' rows would move them ~0.5
    np.testing.assert_allclose(difficulty_two, difficulty_one, rtol=0, atol=0.1)


# Every build of a fixed-view store, in every process of a run: which rank, and whether its process group had started.
# And, where COMPILE_BACKEND is set, torch.compile's backend (a cheaper one than inductor).
RANKS_SITE = f"""
import os
import sys

if "RANK" in os.environ:  # the ranks, not the launcher
    sys.path.insert(0, {str(ROOT)!r})
    import functools

    import torch
    import torch.distributed as dist
    from data import views

    if os.environ.get("COMPILE_BACKEND"):
        torch.compile = functools.partial(torch.compile, backend=os.environ["COMPILE_BACKEND"])

    build = views.build_store

    def recorded_build(*args, **kwargs):
        with open(os.environ["STORE_BUILDS"], "a") as log:
            log.write(f"{{os.environ['RANK']}} {{dist.is_initialized()}}\\n")
        return build(*args, **kwargs)

    views.build_store = recorded_build
"""


def test_uneven_shards_with_and_without_compile_finish_and_agree_with_one_process(tmp_path, tiny_teacher):
    """33 selected samples at a global batch of 32: global batches of 17 and 16, so the ranks' parts are 9 and 8, then
    8 and 8 (batches of different sizes on each rank, which a compiled model recompiles for). Under a timeout, so a
    hang fails the test (a compiled run with shards a batch apart once waited forever in DDP's forward). The
    fixed-view stores are built before the process group starts (no rank waits for a build in a collective), each
    once.

    The one-process run compiles with inductor (the test of --compile; a cold compile cache costs minutes on two
    cores); the two-process one with aot_eager, which traces forward and backward as inductor does, through DDP's
    graph splitting, but generates no C++: join's finding does not depend on the backend."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(RANKS_SITE)
    builds = tmp_path / "store-builds.txt"
    site = os.pathsep.join(filter(None, [str(tmp_path / "site"), os.environ.get("PYTHONPATH")]))
    env = {"OMP_NUM_THREADS": "1", "STORE_BUILDS": str(builds), "PYTHONPATH": site}
    flags = ["--teacher-checkpoint", tiny_teacher, "--label-weight", "0.5", "--student", "resnet10t",
             "--curriculum", "random_subset", "--fraction", "0.34375", "--loader", "uint8",
             "--cache-dir", tmp_path / "cache"]  # fmt: skip
    runs = {
        "two": [*LAUNCHER, 2, *train_args(tmp_path / "two", *flags)],  # --batch-size 32: the global batch
        "two-compiled": [*LAUNCHER, 2, *train_args(tmp_path / "two-compiled", *flags, "--compile")],
        "one-compiled": train_args(tmp_path / "one-compiled", *flags, "--compile"),
    }
    for name, argv in runs.items():
        backend = {"COMPILE_BACKEND": "aot_eager"} if name == "two-compiled" else {}
        result = run_to_exit(*argv, env={**env, **backend}, timeout=480)
        assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
    # three stores (validation, test, scoring), each built by one rank of the first run, none in a collective
    built = builds.read_text().splitlines()
    assert len(built) == 3 and all(line.endswith(" False") for line in built), built
    coverage = np.load(tmp_path / "two" / "coverage.npy")
    assert coverage.sum() == 33 and coverage.max() == 1
    rows = {name: bookkeeping.read_metrics(tmp_path / name / "metrics.csv")[0] for name in runs}
    for name in runs:
        np.testing.assert_array_equal(np.load(tmp_path / name / "coverage.npy"), coverage)
        assert rows[name]["selected"] == "33"
    for key in ("train_loss", "val_loss"):
        assert float(rows["two-compiled"][key]) == pytest.approx(float(rows["two"][key]), rel=1e-3)
        # the same global batches (17, then 16); BatchNorm sees a rank's part
        assert float(rows["one-compiled"][key]) == pytest.approx(float(rows["two"][key]), rel=0.12)


# Each rank looks for the teacher-logit cache in a folder of its own, where "another run" left a file for one of them
CACHE_DECISION = f"""
import json
import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, {str(ROOT)!r})
import torch
import torch.distributed as dist

from common.files import cache_key
from training.devices import sum_across_processes
from training.logit_stores import cached_logits

dist.init_process_group("gloo", timeout=timedelta(seconds=60))
rank, shape, parts = dist.get_rank(), (6, 3), {{"teacher": "test"}}
results = []
for case, holder, value in (("a", 1, 3.0), ("b", 0, 5.0)):
    folder = Path(sys.argv[1]) / case / f"rank{{rank}}"
    if rank == holder:
        folder.mkdir(parents=True)
        torch.save(torch.full(shape, value).half(), folder / f"teacher-logits-{{cache_key(parts)}}.pt")
    computed = []

    def compute():  # as the teacher's scoring pass: a collective
        computed.append(rank)
        return sum_across_processes(torch.ones(shape))

    logits, cached = cached_logits(folder, parts, compute, shape, write=rank == 0)
    results.append([case, cached, len(computed), logits.unique().tolist()])
# a file per rank: two ranks printing at once can interleave their lines on the shared stdout
Path(sys.argv[1]).mkdir(parents=True, exist_ok=True)
(Path(sys.argv[1]) / f"rank{{rank}}.json").write_text(json.dumps(results))
dist.destroy_process_group()
"""


def test_the_teacher_logit_cache_is_decided_on_rank_0_for_every_rank(tmp_path):
    """(a) only rank 1 finds a valid cache file: both ranks compute (a collective), as rank 0 decided; (b) only rank
    0 finds one: both use its logits. Deciding alone, the ranks would call mismatched collectives."""
    script = tmp_path / "decide.py"
    script.write_text(CACHE_DECISION)
    result = run_to_exit(*LAUNCHER, 2, script, tmp_path / "caches", env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / "caches" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks == [[["a", False, 1, [2.0]], ["b", True, 0, [5.0]]]] * 2


COMPILE_SITE = """
import functools
import os

if os.environ.get("COMPILE_BACKEND"):
    import torch

    torch.compile = functools.partial(torch.compile, backend=os.environ["COMPILE_BACKEND"])
"""


@pytest.mark.parametrize(
    "case, flags",
    [
        ("even, --compile", ["--compile"]),
        ("uneven, scored curriculum", ["--curriculum", "adaptive", "--fraction", "0.34375", "--score-source",
                                       "train-pass", "--teacher-logits", "replay"]),
    ],
)  # fmt: skip
def test_two_ranks_make_no_host_wait_per_step(tmp_path, tiny_teacher, cache_dir, case, flags):
    """analysis/sync_rehearsal.py counts every caller's waits (torch's own included) on both gloo ranks over two
    epochs: none, with even shards under --compile and with a scored curriculum (train-pass scores, replayed teacher
    views) whose 33 samples split unevenly. Before DDP's buffer broadcast was turned off and join() entered only for
    uneven batch counts, DDP's _find_common_rank made 3 per step. The compiled run uses aot_eager (as above)."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(COMPILE_SITE)
    site = os.pathsep.join(filter(None, [str(tmp_path / "site"), os.environ.get("PYTHONPATH")]))
    out = tmp_path / "waits.json"
    argv = train_args(tmp_path / "unused", "--teacher-checkpoint", tiny_teacher, "--label-weight", "0.5",
                      "--student", "resnet10t", "--cache-dir", cache_dir, *flags, epochs=2)[1:]  # fmt: skip
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": site, "COMPILE_BACKEND": "aot_eager"}
    result = run_to_exit(*LAUNCHER, 2, "-m", "analysis.sync_rehearsal", out, "--", *argv, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = json.loads(out.read_text())
    assert [rank["waits"] for rank in ranks] == [0, 0], ranks
    assert all(rank["steps"] >= 2 for rank in ranks), ranks


EMPTY_SHARD = f"""
import json
import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, {str(ROOT)!r})
import torch
import torch.distributed as dist

from training.devices import Placement, make_loader
from training.loop import predict_logits

dist.init_process_group("gloo", timeout=timedelta(seconds=60))
view = [(torch.full((3, 2, 2), 1.0), 0, 0)]  # one sample: rank 1's strided shard is empty
model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
torch.nn.init.constant_(model[1].weight, 0.5)
logits = predict_logits(model, make_loader(view, 4, 0, torch.device("cpu")), Placement(torch.device("cpu")), "p")
Path(sys.argv[1], f"rank{{dist.get_rank()}}.json").write_text(json.dumps(logits.tolist()))
dist.destroy_process_group()
"""


def test_a_rank_with_an_empty_shard_predicts_zeros_of_the_right_width(tmp_path):
    """One sample on two ranks: rank 1 has no batch; it once crashed on sum_across_processes(None) while rank 0
    waited in the collective. Both now return rank 0's logits."""
    script = tmp_path / "empty.py"
    script.write_text(EMPTY_SHARD)
    result = run_to_exit(*LAUNCHER, 2, script, tmp_path, env={"OMP_NUM_THREADS": "1"}, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    logits = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert logits[0] == logits[1] and len(logits[0]) == 1 and len(logits[0][0]) == 5
