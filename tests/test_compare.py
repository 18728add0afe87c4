"""compare_curricula.py: the Student-t interval of paired differences against hand-worked values, the training
budget, and the CLI on run folders written by the test."""

import json
import math
import subprocess
import sys

import pytest

import compare_curricula as compare
from analysis.runs import run_budget, training_budget
from analysis.stats import minimum_detectable_difference, paired_difference, paired_t_power, t_quantile
from common.errors import UserError
from conftest import ROOT, TINY


def test_t_quantiles_match_closed_forms():
    # 1 dof is the Cauchy distribution: t_p = tan(pi (p - 1/2)); 2 dof: t_p = q sqrt(2 / (1 - q^2)), q = 2p - 1
    assert t_quantile(0.975, 1) == pytest.approx(math.tan(math.pi * 0.475), abs=1e-6)
    assert t_quantile(0.975, 2) == pytest.approx(0.95 * math.sqrt(2 / (1 - 0.95**2)), abs=1e-6)
    assert t_quantile(0.95, 2) == pytest.approx(0.9 * math.sqrt(2 / (1 - 0.9**2)), abs=1e-6)
    assert t_quantile(0.5, 4) == pytest.approx(0.0, abs=1e-9)


def test_paired_difference_by_hand():
    # differences 1, 2, 3 (seed 7 has no partner): mean 2, sd 1, half width t_{0.975,2} / sqrt(3) = 4.30265 / 1.73205
    values, baseline = {0: 80.0, 1: 82.0, 2: 84.0, 7: 99.0}, {0: 79.0, 1: 80.0, 2: 81.0}
    result = paired_difference(values, baseline)
    assert result["mean"] == pytest.approx(2.0) and result["n"] == 3 and result["seeds"] == [0, 1, 2]
    assert result["low"] == pytest.approx(2 - 2.484138, abs=1e-5)
    assert result["high"] == pytest.approx(2 + 2.484138, abs=1e-5)
    one = paired_difference({0: 80.0}, {0: 78.5})
    assert one["mean"] == pytest.approx(1.5) and one["low"] is None
    with pytest.raises(UserError, match="same --seeds"):
        paired_difference({0: 1.0}, {1: 1.0})


def test_compare_rows_and_table():
    groups = {
        "random_subset": {"acc": {0: 79.0, 1: 80.0, 2: 81.0}, "budget": {0: 6.0, 1: 6.0, 2: 6.0}},
        "adaptive": {"acc": {0: 80.0, 1: 82.0, 2: 84.0}, "budget": {0: 6.0, 1: 6.0, 2: 6.0}},
    }
    rows = compare.compare(groups, "random_subset")
    assert [row["strategy"] for row in rows] == ["random_subset", "adaptive"]
    assert rows[0]["vs_baseline"] is None and rows[0]["std"] == pytest.approx(1.0)
    assert rows[1]["mean"] == pytest.approx(82.0) and rows[1]["std"] == pytest.approx(2.0)
    table = compare.markdown_table(rows, "random_subset", 0.95)
    # differences 1, 2, 3: sd 1, so 3 seeds detect 3.26 points (test_minimum_detectable_difference)
    assert "| adaptive | 3 | 82.00 ± 2.00% | — | 6.00 | +2.00 [-0.48, +4.48] | 3.26 | — | — |" in table
    assert "| random_subset | 3 | 80.00 ± 1.00% | — | 6.00 | (baseline) | — | (baseline) | — |" in table
    with pytest.raises(UserError, match="baseline"):
        compare.compare(groups, "soft")


def test_last_epoch_accuracies_are_paired_too():
    # last epochs: adaptive 81, 83, 82 against 80, 80, 80: differences 1, 3, 2 (mean 2, sd 1, the same interval)
    groups = {
        "random_subset": {"acc": {0: 79.0, 1: 80.0, 2: 81.0}, "last": {0: 80.0, 1: 80.0, 2: 80.0}, "budget": {0: 6.0}},
        "adaptive": {"acc": {0: 80.0, 1: 82.0, 2: 84.0}, "last": {0: 81.0, 1: 83.0, 2: 82.0}, "budget": {0: 6.0}},
    }
    adaptive = compare.compare(groups, "random_subset")[1]
    assert adaptive["last_mean"] == pytest.approx(82.0) and adaptive["last_std"] == pytest.approx(1.0)
    assert adaptive["last_vs_baseline"]["mean"] == pytest.approx(2.0)
    assert adaptive["last_vs_baseline"]["low"] == pytest.approx(2 - 2.484138, abs=1e-5)
    table = compare.markdown_table(compare.compare(groups, "adaptive"), "adaptive", 0.95)
    assert "| random_subset | 3 | 80.00 ± 1.00% | 80.00 ± 0.00% | 6.00 | -2.00 [-4.48, +0.48] | 3.26 | -2.00" in table


def test_paired_t_power_by_hand():
    # at no true difference the test rejects with probability `level`, whatever n and sd
    for n, sd in [(2, 1.0), (5, 0.3), (12, 4.0)]:
        assert paired_t_power(0.0, sd, n) == pytest.approx(0.05, abs=1e-6)
        assert paired_t_power(0.0, sd, n, level=0.2) == pytest.approx(0.2, abs=1e-6)
    # n = 3, difference 2, sd 1.3: noncentral t with 2 dof, ncp 2.6647; scipy.stats.nct gives 0.327967
    assert paired_t_power(2.0, 1.3, 3) == pytest.approx(0.327967, abs=1e-6)
    assert paired_t_power(1.0, 1.3, 10) == pytest.approx(0.583035, abs=1e-6)  # scipy.stats.nct: 0.583035


def test_minimum_detectable_difference():
    # scipy.stats.nct solved for power 0.8: 3.2640 sd at 3 seeds, 1.6820 sd at 5, 0.9960 sd at 10
    for n, expected in [(3, 3.2640), (5, 1.6820), (10, 0.9960)]:
        assert minimum_detectable_difference(1.0, n) == pytest.approx(expected, abs=1e-3)
        assert minimum_detectable_difference(2.5, n) == pytest.approx(2.5 * expected, abs=3e-3)  # scales
    # many seeds: near the normal approximation (z_0.975 + z_0.8) sd / sqrt(n) = 2.8016 / sqrt(n)
    assert minimum_detectable_difference(1.0, 400) == pytest.approx(2.8016 / 20, rel=5e-3)  # t, not z: 0.14042
    assert minimum_detectable_difference(1.0, 1) is None and minimum_detectable_difference(0.0, 5) is None


def test_training_budget_counts_selected_samples():
    assert training_budget([{"selected": "60"}, {"selected": "30"}], 100) == pytest.approx(0.9)
    assert training_budget([{"epoch": "1"}, {"epoch": "2"}, {"epoch": "3"}], 100) == 3.0


def test_run_budget_counts_the_agents_proxy_runs(tmp_path):
    (tmp_path / "proxy").mkdir()
    (tmp_path / "metrics.csv").write_text("epoch,selected\n1,60\n2,60\n")  # 1.2 epochs of 100 samples
    (tmp_path / "proxy" / "metrics.csv").write_text("epoch,selected\n1,6\n2,6\n1,6\n2,6\n")  # 0.24 more
    assert run_budget(tmp_path, 100) == pytest.approx(1.44)


def write_run(folder, seed, acc, selected, last=None):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"data": TINY, "seed": seed}))
    (folder / "results.json").write_text(json.dumps({"test_acc": acc, **({"last_test_acc": last} if last else {})}))
    rows = "".join(f"{epoch},{selected}\n" for epoch in (1, 2))
    (folder / "metrics.csv").write_text("epoch,selected\n" + rows)


def test_cli_writes_table_json_and_figure(tmp_path, capsys):
    for seed, (base, other) in enumerate([(50.0, 52.0), (60.0, 61.0)]):
        write_run(tmp_path / f"random_subset-s{seed}", seed, base, 48)  # TINY has 96 training images
        write_run(tmp_path / f"soft-s{seed}", seed, other, 48)
    folders = sorted(str(path) for path in tmp_path.iterdir())
    compare.main([*folders, "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert "| soft | 2 | 56.50 ± 6.36% | — | 1.00 |" in printed  # two epochs of half the data; no last epoch
    # differences 2 and 1: mean 1.5, sd 0.7071, t_{0.975,1} = 12.7062: half width 6.353
    assert "+1.50 [-4.85, +7.85]" in printed
    assert json.loads((tmp_path / "out" / "comparison.json").read_text())[1]["vs_baseline"]["n"] == 2
    assert (tmp_path / "out" / "comparison.png").stat().st_size > 0


def test_cli_pairs_with_several_baselines_and_the_last_epoch(tmp_path, capsys):
    for seed, (base, other, plain) in enumerate([(50.0, 52.0, 55.0), (60.0, 61.0, 65.0)]):
        write_run(tmp_path / f"random_subset-s{seed}", seed, base, 48, last=base + 1)
        write_run(tmp_path / f"soft-s{seed}", seed, other, 48, last=other)
        write_run(tmp_path / f"none-s{seed}", seed, plain, 96, last=plain)
    folders = sorted(str(path) for path in tmp_path.iterdir())
    compare.main([*folders, "--baseline", "random_subset,none", "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert "Paired difference to random_subset" in printed and "Paired difference to none" in printed
    # against random_subset: best-val differences 2 and 1, last epochs 52 - 51 and 61 - 61 (sd 0.7071 both: half width
    # 12.7062 x 0.7071 / sqrt 2 = 6.353; 2 seeds detect 11.55 sd); against none: -3 and -4 both
    versus_random = "+1.50 [-4.85, +7.85] | 8.17 | +0.50 [-5.85, +6.85] | 8.17 |"
    assert f"| soft | 2 | 56.50 ± 6.36% | 56.50 ± 6.36% | 1.00 | {versus_random}" in printed
    assert "| soft | 2 | 56.50 ± 6.36% | 56.50 ± 6.36% | 1.00 | -3.50 [-9.85, +2.85] | 8.17 | -3.50" in printed
    rows = json.loads((tmp_path / "out" / "comparison.json").read_text())
    soft = next(row for row in rows if row["strategy"] == "soft")
    assert soft["versus"]["none"]["vs_baseline"]["mean"] == pytest.approx(-3.5)
    assert soft["versus"]["random_subset"]["last_vs_baseline"]["mean"] == pytest.approx(0.5)


def test_script_refuses_an_out_with_finished_runs_unless_overwrite(tmp_path):
    """scripts/compare_curricula.sh never replaces a finished run or comparison it was not asked to: it stops before
    training anything (no teacher is trained here), naming --overwrite and --out."""
    (tmp_path / "soft-s0").mkdir()
    (tmp_path / "soft-s0" / "last.pt").write_bytes(b"a finished epoch")
    result = subprocess.run(
        [
            "scripts/compare_curricula.sh",
            "--quick",
            "--seeds",
            "0",
            "--out",
            str(tmp_path),
            "--cache-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and f"error: {tmp_path} already holds results (soft-s0)" in result.stderr
    assert "--overwrite" in result.stderr and "--out" in result.stderr
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["last.pt", "soft-s0"]
