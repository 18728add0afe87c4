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
