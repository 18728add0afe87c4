"""The agent's label-gate arms and the twin reward (docs/rl-agent.md): the reward by hand, an arm that does what the
twin did earns exactly 0, a gate bandit paid by the twin reward end to end (its rewards recomputed from the logs) and
resumed exactly after a kill, and the refusals."""

import json

import numpy as np
import pytest
from test_resume import DATA, comparable, kill_part_way

import train_student_rl
from agents.bandit import ThompsonBandit
from agents.config import check_arms_and_reward, read_twin
from common import cli, seeds
from common import metrics as bookkeeping
from common.errors import UserError
from conftest import run_script, train_args
from rl_curriculum_env import CurriculumEnv, twin_reward
from training import experiment as engine

ARMS = ["all", "none", "top2"]


def test_twin_reward_by_hand():
    # epoch 1: both runs start as the same student (lead 0): twin 2.10, run 2.00 -> lead 0.10 -> R = 100 x 0.10 = 10
    assert twin_reward(2.00, 2.10, None, None) == pytest.approx(10.0)
    # lead 1.52 - 1.50 = 0.02 before, 1.25 - 1.20 = 0.05 now: R = 100 x 0.03 = 3
    assert twin_reward(1.20, 1.25, 1.50, 1.52) == pytest.approx(3.0)
    # the run fell back: lead 0.05 -> -0.01, R = -6; level with the twin throughout: 0 whatever the phase
    assert twin_reward(1.01, 1.00, 1.20, 1.25) == pytest.approx(-6.0)
    assert twin_reward(0.7, 0.7, 2.3, 2.3) == 0.0 and twin_reward(2.3, 2.3, None, None) == 0.0
    # the rewards of a run sum to its final lead: 10 + 3 - 6 = 7 = 100 x (1.00 - 1.01) ... over its own path
    losses, twin = [2.00, 1.20, 1.01], [2.10, 1.25, 1.00]
    total = sum(twin_reward(losses[t], twin[t], losses[t - 1] if t else None, twin[t - 1] if t else None)
                for t in range(3))  # fmt: skip
    assert total == pytest.approx(100 * (twin[-1] - losses[-1]))


def parse(*flags) -> train_student_rl.RLConfig:
    return cli.parse_config(train_student_rl.RLConfig, [str(flag) for flag in flags])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--curriculum", "none"], "--curriculum none takes no target"),
        (["--arms", "all,oracle", "--label-weight", "0.6"], "--arms all,oracle: give targets, or two or more"),
        (["--arms", "all,all", "--label-weight", "0.6"], "--arms all,all"),
        (["--arms", "all,none"], "gate --arms do not take --label-weight 0 or 1"),
        (["--arms", "all,none", "--label-weight", "0.6", "--label-gate", "top2"], "do not take --label-gate"),
        (["--reward", "twin", "--agent", "bandit"], "--reward twin needs --reward-twin RUN"),
        (["--reward", "twin", "--reward-twin", "runs/x"], "--reward twin compares one run with its twin"),
    ],
)
def test_arms_and_reward_flags_that_cannot_work_are_refused(flags, message):
    with pytest.raises(UserError, match=message):
        check_arms_and_reward(parse(*flags))


def gate_flags(teacher, cache_dir) -> list:
    return ["--teacher-checkpoint", teacher, "--cache-dir", cache_dir, "--student", "resnet10t", "--label-weight",
            "0.5", "--curriculum", "none"]  # fmt: skip


@pytest.mark.slow
def test_an_arm_that_does_what_the_twin_did_earns_zero(tmp_path, tiny_teacher, cache_dir):
    """The gate `all` is plain KD, so a run pulling it from the start is its twin, bit for bit: lead 0, reward 0;
    the twin of another seed is refused."""
    twin = tmp_path / "twin"
    run_script(*train_args(twin, *gate_flags(tiny_teacher, cache_dir), data=DATA, epochs=2))
    argv = train_args("unused", *gate_flags(tiny_teacher, cache_dir), "--agent", "bandit", "--arms", ",".join(ARMS),
                      "--reward", "twin", "--reward-twin", twin, data=DATA, epochs=2)[1:]  # fmt: skip
    config = parse(*argv)
    train_student_rl.check_rl_config(config)
    env = CurriculumEnv(engine.Experiment(config), gates=config.gate_arms, twin=read_twin(config))
    env.reset(seed=0)
    assert env.action_space.n == 3
    for epoch in (1, 2):
        _, reward, _, _, info = env.step(0)
        assert reward == 0.0 and info["twin_lead"] == 0.0, epoch
    assert env.history[-1]["label_gate"] == "all" and env.history[-1]["labels_kept"] == 1.0
    with pytest.raises(UserError, match="no twin of this run: its seed differ"):
        read_twin(parse(*argv, "--seed", "1"))


@pytest.mark.slow
def test_gate_bandit_with_the_twin_reward_end_to_end_and_resumed_exactly(tmp_path, tiny_teacher, cache_dir):
    """Each epoch's gate is the bandit's seeded draw, its reward the twin reward recomputed from the two runs'
    validation losses, and a run killed part-way and resumed logs what the uninterrupted one did."""
    epochs, twin, whole, killed = 4, tmp_path / "twin", tmp_path / "whole", tmp_path / "killed"
    run_script(*train_args(twin, *gate_flags(tiny_teacher, cache_dir), "--label-noise", "0.25", data=DATA,
                           epochs=epochs))  # fmt: skip
    flags = [*gate_flags(tiny_teacher, cache_dir), "--label-noise", "0.25", "--agent", "bandit", "--arms",
             ",".join(ARMS), "--reward", "twin", "--reward-twin", twin]  # fmt: skip
    args = {"data": DATA, "epochs": epochs, "script": "train_student_rl.py"}
    run_script(*train_args(whole, *flags, **args))
    rows, twin_rows = bookkeeping.read_metrics(whole / "metrics.csv"), bookkeeping.read_metrics(twin / "metrics.csv")
    bandit = ThompsonBandit(3)
    for t, row in enumerate(rows):
        arm = bandit.draw(seeds.derive(0, "bandit", episode=1, epoch=t))
        assert row["label_gate"] == ARMS[arm]
        own, other = float(row["val_loss"]), float(twin_rows[t]["val_loss"])
        before = (float(rows[t - 1]["val_loss"]), float(twin_rows[t - 1]["val_loss"])) if t else (None, None)
        assert float(row["reward"]) == pytest.approx(twin_reward(own, other, *before), abs=1e-9)
        assert float(row["twin_lead"]) == pytest.approx(other - own)
        bandit.update(arm, float(row["reward"]))
        assert float(row[f"bandit_p{row['bandit_best_gate']}"]) == float(row["bandit_best_probability"])
    assert len({row["label_gate"] for row in rows}) > 1  # it explored
    assert list(rows[0])[-6:] == ["bandit_best_gate", "bandit_best_probability", *(f"bandit_p{g}" for g in ARMS),
                                  "seconds"]  # fmt: skip
    kill_part_way(train_args(killed, *flags, **args), killed, rows_first=2, total=epochs)
    run_script("train_student_rl.py", "--resume", killed)
    assert comparable(killed) == comparable(whole)
    assert np.isclose(json.loads((killed / "results.json").read_text())["test_acc"],
                      json.loads((whole / "results.json").read_text())["test_acc"])  # fmt: skip
