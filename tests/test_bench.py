"""bench.py runs the real code paths and writes every figure (its speed targets are read off its output, not tested)."""

import json

import pytest

from conftest import run_script


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
    assert "host syncs in the step loop: 0" in result.stdout.splitlines()
    figures = json.loads(out.read_text())
    assert figures["gpu_host_syncs"] == 0 and figures["gpu_sync_places"] == []
    rows = {name: value for name, value, _ in figures["gpu_rows"]}
    for name in ("loader alone: training views", "eager, online teacher: steps alone",
                 "eager, online teacher: whole epochs", "eager, replay teacher: whole epochs",
                 "evaluation pass, stored views, no workers (the run's)"):  # fmt: skip
        assert rows[name] > 0, name
    assert "epoch_labels_s" not in figures  # only the check ran
