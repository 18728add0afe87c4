"""train_student_rl.py --agent bandit end to end (its logged choices replayed by hand, exact resume after a kill), its
refusals, the agents' own defaults, and the proxies' validation share (--pretrain-val-subset)."""

import json

import pytest
from test_resume import DATA, comparable, kill_part_way

import train_student_rl
from agents.bandit import ThompsonBandit
from analysis.runs import describe
from common import cli, files, seeds
from common import metrics as bookkeeping
from common.errors import UserError
from conftest import TINY, run_script, train_args
from data import splits as data
from training import experiment as engine

BANDIT_TARGETS = [0.0, 0.25, 0.5, 0.75, 1.0]  # --agent bandit's default 5 bins


def bandit_flags(teacher, cache_dir) -> list:
    return ["--teacher-checkpoint", teacher, "--cache-dir", cache_dir, "--student", "resnet10t", "--agent", "bandit"]


def parse(*flags) -> train_student_rl.RLConfig:
    config = cli.parse_config(train_student_rl.RLConfig, list(flags))
    train_student_rl.check_rl_config(config)
    return config


def test_each_agent_has_its_own_bins_and_proxy_runs_by_default():
    ppo, bandit = parse(), parse("--agent", "bandit")
    assert (ppo.agent, ppo.bins, ppo.pretrain_episodes, ppo.pretrain_val_subset) == ("ppo", 11, 30, 1.0)
    assert (bandit.bins, bandit.pretrain_episodes) == (5, 0)
    assert parse("--agent", "bandit", "--bins", "3").bins == 3
    assert parse("--bins", "5", "--pretrain-episodes", "4").pretrain_episodes == 4


def test_evaluate_names_the_bandits_rows():
    rl = {"student": "resnet10t", "label_weight": 0.0, "script": "train_student_rl.py"}
    assert describe({**rl, "agent": "bandit"}) == (
        "Student (resnet10t, KD + curriculum chosen by the bandit, teacher only)"
    )
    assert "chosen by the RL agent" in describe({**rl, "agent": "ppo"})  # and a run from before --agent:
    assert "chosen by the RL agent" in describe(rl)


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--pretrain-episodes", "3"], "--pretrain-episodes"),
        (["--policy", "runs/rl/agent.zip"], "--policy"),
        (["--action", "box"], "--action box"),
        (["--control-temperature"], "--control-temperature"),
    ],
)
def test_bandit_refuses_the_ppo_agents_options_in_one_line(flags, named):
    with pytest.raises(UserError, match=f"^--agent bandit does not take {named} .*; drop it, or use --agent ppo.$"):
        parse("--agent", "bandit", *flags)


@pytest.mark.parametrize(
    "flags", [["--pretrain-val-subset", "0"], ["--pretrain-val-subset", "1.5"], ["--bandit-discount", "0"],
              ["--bandit-prior-sd", "-1"]]
)  # fmt: skip
def test_out_of_range_agent_flags_are_refused(flags):
    with pytest.raises(UserError, match=flags[0]):
        parse(*flags)


def test_proxy_data_takes_its_own_validation_share():
    splits = data.load_data(TINY)  # 96 training and 32 validation images
    same = data.data_subset(splits, 0.5, seed=0)
    assert (len(same.train), len(same.score), len(same.val)) == (48, 48, 16)
    assert "val_share" not in json.loads(same.identity)  # one share for both: the identity (cache key) of before
    whole = data.data_subset(splits, 0.5, seed=0, val_share=1.0)
    assert (len(whole.train), len(whole.val)) == (48, 32)
    assert whole.val.source.indices.tolist() == list(range(32))
    assert whole.train.source.indices.tolist() == same.train.source.indices.tolist()  # the same training images
    assert json.loads(whole.identity)["val_share"] == 1.0


@pytest.mark.slow
def test_proxy_runs_validate_on_pretrain_val_subset(tmp_path, tiny_teacher):
    def proxy_val_images(*flags) -> int:
        argv = train_args("unused", "--teacher-checkpoint", tiny_teacher, "--cache-dir", tmp_path, "--pretrain-subset",
                          "0.25", *flags, script="")[1:]  # fmt: skip
        config = parse(*argv)
        return len(train_student_rl.proxy_experiment(config, engine.Experiment(config)).data.val)

    assert proxy_val_images() == 32  # the default: every validation image
    assert proxy_val_images("--pretrain-val-subset", "0.25") == 8


@pytest.mark.slow
def test_bandit_run_end_to_end_logs_what_it_chose(tmp_path, tiny_teacher, cache_dir):
    """No proxies and no agent.zip; cost 1 run; every epoch's target is the bandit's seeded draw and its logged
    probabilities are those of a bandit fed the logged rewards: the run replayed by hand from metrics.csv."""
    out, epochs = tmp_path / "bandit", 4
    result = run_script(*train_args(out, *bandit_flags(tiny_teacher, cache_dir), epochs=epochs,
                                    script="train_student_rl.py"))  # fmt: skip
    assert not (out / "proxy").exists() and not (out / "agent.zip").exists()
    results = json.loads((out / "results.json").read_text())
    assert results["pretrain_seconds"] == 0 and results["cost_vs_full_run"] == 1.0
    assert "= 1.00x one full run" in result.stdout
    rows = bookkeeping.read_metrics(out / "metrics.csv")
    assert [int(row["epoch"]) for row in rows] == list(range(1, epochs + 1))
    probability_columns = [f"bandit_p{target:g}" for target in BANDIT_TARGETS]
    assert list(rows[0])[-8:] == ["bandit_best_target", "bandit_best_probability", *probability_columns, "seconds"]
    bandit = ThompsonBandit(5)
    for row in rows:
        arm = bandit.draw(seeds.derive(0, "bandit", episode=1, epoch=int(row["epoch"]) - 1))
        assert float(row["target"]) == BANDIT_TARGETS[arm]
        bandit.update(arm, float(row["reward"]))
        probabilities = bandit.probabilities()
        assert [float(row[name]) for name in probability_columns] == probabilities.tolist()
        assert float(row["bandit_best_probability"]) == probabilities.max()
        assert float(row["bandit_best_target"]) == BANDIT_TARGETS[probabilities.argmax()]
    saved = files.load_checkpoint(out / "last.pt")["agent"]
    assert saved == bandit.state_dict()


@pytest.mark.slow
def test_killed_and_resumed_bandit_run_equals_uninterrupted_run(tmp_path, tiny_teacher, cache_dir):
    """The bandit's sums survive a SIGKILL in last.pt: the resumed run draws and logs what the uninterrupted one did."""
    flags, epochs = bandit_flags(tiny_teacher, cache_dir), 5
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    args = {"data": DATA, "epochs": epochs, "script": "train_student_rl.py"}
    run_script(*train_args(whole, *flags, **args))
    kill_part_way(train_args(killed, *flags, **args), killed, rows_first=2, total=epochs)
    run_script("train_student_rl.py", "--resume", killed)
    assert [int(row["epoch"]) for row in comparable(killed)] == list(range(1, epochs + 1))
    assert comparable(killed) == comparable(whole)
    assert len({row["target"] for row in comparable(whole)}) > 1  # it explored: the draws, not one constant, resumed
    assert (
        json.loads((killed / "results.json").read_text())["test_acc"]
        == json.loads((whole / "results.json").read_text())["test_acc"]
    )


@pytest.mark.slow
def test_proxy_validation_noise_script_prints_both_slices(tiny_teacher, cache_dir):
    result = run_script("scripts/proxy_validation_noise.py", "--teacher-checkpoint", tiny_teacher, "--data", TINY,
                        "--cache-dir", cache_dir, "--targets", "0,1", "--seeds", "2", "--pretrain-epochs", "1",
                        "--pretrain-subset", "0.5")  # fmt: skip
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| validation images | target 0 | target 1 |")
    assert [line.split(" | ")[0] for line in table[1:]] == ["| 16", "| 32"]  # today's half, then all 32 images
