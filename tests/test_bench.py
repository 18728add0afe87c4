"""bench.py runs the real code paths and writes every figure (its speed targets are read off its output, not tested)."""

import json
import sys
import time
from pathlib import Path

import pytest

import bench
from analysis import gpu_check
from common import process_tree
from conftest import ROOT, run_script


@pytest.mark.slow
def test_bench_writes_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    result = run_script("bench.py", "--train", 32, "--repeats", 1, "--batch-size", 16, "--device", "cpu",
                        "--agent-epochs", 2, "--json", out)  # fmt: skip
    figures = json.loads(out.read_text())
    for key in (
        "epoch_labels_s",
        "epoch_kd_online_s",
        "epoch_kd_replay_s",
        "ratio_kd_replay",
        "score_cached_s",
        "score_recompute_s",
        "ratio_score_cached",
        "agent_s_per_epoch",
        "rl_epoch_s",
    ):
        assert figures[key] > 0, key
    # no comparison of two timings: with one repetition on a shared CPU either can be the larger
    assert "scoring pass, teacher logits cached" in result.stdout
    assert "scoring pass, teacher recomputed" in result.stdout
    assert "replayed teacher logits of the views" in result.stdout


@pytest.mark.slow
def test_bench_loader_rows_write_the_speedups(tmp_path):
    out = tmp_path / "loader.json"
    result = run_script("bench.py", "--only", "loader", "--loader-images", 4, "--repeats", 1, "--json", out,
                        env={"OMP_NUM_THREADS": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf")})  # fmt: skip
    figures = json.loads(out.read_text())
    for key in ("loader_train_speedup", "loader_train_speedup_full_res", "loader_fixed_speedup",
                "loader_train_pil_per_s", "loader_fixed_store_per_s", "loader_device_train_batch_per_s"):  # fmt: skip
        assert figures[key] > 0, key
    assert "epoch_labels_s" not in figures  # only the loader rows ran
    assert "cores to feed 3,000 img/s" in result.stdout


@pytest.mark.slow
def test_the_gpu_check_runs_in_its_reduced_form_on_a_cpu_and_counts_no_host_syncs(tmp_path):
    out = tmp_path / "gpu.json"
    result = run_script("bench.py", "--only", "gpu", "--device", "cpu", "--repeats", 1, "--json", out,
                        env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    lines = result.stdout.splitlines()
    assert "PASS host waits per step = 0: 0 in the counted epoch and evaluation passes" in lines
    assert [line.split()[0] for line in lines if line.split()[:1] in (["PASS"], ["FAIL"], ["SKIP"])] == [
        "PASS",
        "SKIP",
        "SKIP",
        "SKIP",
        "SKIP",
        "SKIP",
    ]  # speeds, memory and the multi-process rows: GPU criteria
    figures = json.loads(out.read_text())
    assert figures["gpu_host_syncs"] == 0 and figures["gpu_sync_places"] == [] and not figures["gpu_failed"]
    rows = {name: value for name, value, _ in figures["gpu_rows"]}
    for name in ("loader alone: training views", "teacher forward alone, eager", "KD step, eager, online teacher",
                 "KD step, eager, replay teacher", "whole epoch, eager, online teacher (host waits counted)",
                 "evaluation pass, stored views, no workers (the run's)"):  # fmt: skip
        assert rows[name] > 0, name
    assert "epoch_labels_s" not in figures  # only the check ran


def gpu_rows(loader: float, online: float, replay: float, peak: float) -> list:
    steps = [(f"KD step, {kind}, {logits} teacher", speed, peak) for kind in ("eager", "compiled")
             for logits, speed in (("online", online), ("replay", replay))]  # fmt: skip
    return [("loader alone: training views", loader, None), ("teacher forward alone, eager", 5000.0, 9000.0), *steps]


def rank(seconds: float, places: dict | None = None) -> dict:
    return {"steps": 40, "epoch_seconds": [seconds + 1, seconds], "by_caller": places or {}}


def test_the_gpu_checks_verdicts_pass_and_fail_each_criterion():
    """What an 8-GPU node would be judged by: all PASS on good figures; each fault a FAIL line of its own."""
    uneven = "8 processes, --compile, uneven shards"
    good_runs = [gpu_check.ProcessRun("1 process", "finished", "", [rank(8.0)]),
                 gpu_check.ProcessRun("8 processes", "finished", "", [rank(1.2)] * 8),
                 gpu_check.ProcessRun(uneven, "finished", "", [rank(2.0)] * 8)]  # fmt: skip
    good = gpu_check.verdicts(gpu_rows(3000, 2000, 2600, 20_000), [], good_runs, True, 80_000, 8)
    assert [check.state for check in good] == ["PASS"] * 6, [check.line() for check in good]
    assert good[4].line() == "PASS 8-GPU scaling efficiency >= 0.7: 0.83 (8.0 s an epoch on 1, 1.2 s on 8)"
    hung = gpu_check.ProcessRun(uneven, "hung", "did not finish within 200 s")
    bad_runs = [good_runs[0], gpu_check.ProcessRun("8 processes", "finished", "", [rank(3.0, {"x.py:1 f: item": 40})]),
                hung]  # fmt: skip
    bad = gpu_check.verdicts(gpu_rows(1500, 2000, 1800, 90_000), ["y.py:2 g: item"], bad_runs, True, 80_000, 8)
    assert [check.state for check in bad] == ["FAIL"] * 6, [check.line() for check in bad]
    assert "8 processes, --compile, uneven shards: hung (did not finish within 200 s)" in bad[5].line()
    assert "replay slower than online" in bad[2].line() and "90,000 of 80,000 MiB" in bad[3].line()


def test_a_failed_gpu_check_exits_non_zero(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "main", lambda bench, tmp: {"gpu_failed": True})
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--only", "gpu", "--device", "cpu", "--json", str(tmp_path / "gpu.json")])
    assert exit_.value.code == 1 and json.loads((tmp_path / "gpu.json").read_text())["gpu_failed"]


HANGING_WORKER = """
import os
import sys
import time
from pathlib import Path

if os.getsid(0) != os.getpid():  # torchrun starts each worker in a session of its own; make sure it is
    os.setsid()
Path(sys.argv[1], str(os.getpid())).write_text("")
print("worker waiting forever", flush=True)
time.sleep(3600)
"""


@pytest.mark.slow
def test_a_hung_multi_process_run_is_ended_whole_and_named(tmp_path):
    """Two workers that hang in sessions of their own: past the timeout torchrun and both are killed (the output
    goes to a file, so nothing waits on a pipe an orphan holds), and the run is named as hung."""
    (tmp_path / "pids").mkdir()
    (tmp_path / "hang.py").write_text(HANGING_WORKER)
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            str(tmp_path / "hang.py"), str(tmp_path / "pids")]  # fmt: skip
    start = time.monotonic()
    code, _, tail = process_tree.run_to_end(argv, {"OMP_NUM_THREADS": "1"}, 12, tmp_path / "run.log", cwd=ROOT)
    assert code is None and time.monotonic() - start < 40
    workers = [int(path.name) for path in (tmp_path / "pids").iterdir()]
    assert len(workers) == 2 and "ended torchrun and its workers" in tail, tail
    time.sleep(0.5)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists() and "Z" not in process_state(pid)], workers


def process_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
