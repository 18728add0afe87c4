"""The RL curriculum: the reward against hand-worked values, the environment's contract, the script end to end."""

import json
import math
import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gymnasium_check_env
from stable_baselines3.common.env_checker import check_env

import train_student_rl
from common import cli
from common import metrics as bookkeeping
from conftest import run_script, train_args
from rl_curriculum_env import CurriculumEnv, curriculum_reward, reward_components
from training import experiment as engine

E = 10  # num_epochs of the hand-worked cases: the early bonus needs epoch < 3


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # first epoch: no previous accuracy or loss -> only the early and absolute terms; 65 > 60 at epoch 1 < 3
        ((65.0, 0.0, 1.2, math.inf, 1, E), {"reward_acc": 0, "reward_loss": 0, "reward_early": 2, "reward_abs": 0}),
        # accuracy 50 -> 55: R_acc = 2 * 5 = 10; loss 1.0 -> 0.8 down: 0; 55 <= 60: no bonus; below 70: 0
        ((55.0, 50.0, 0.8, 1.0, 2, E), {"reward_acc": 10, "reward_loss": 0, "reward_early": 0, "reward_abs": 0}),
        # loss up 0.5 -> 0.7: R_loss = -5 * 0.2 = -1; accuracy 72 -> 71: R_acc = -2; R_abs = 0.1 * 1 = 0.1
        ((71.0, 72.0, 0.7, 0.5, 5, E), {"reward_acc": -2, "reward_loss": -1, "reward_early": 0, "reward_abs": 0.1}),
        # loss up by 3 -> -15, capped at -5; accuracy 80 -> 80: 0; R_abs = 0.1 * 10 = 1
        ((80.0, 80.0, 4.0, 1.0, 9, E), {"reward_acc": 0, "reward_loss": -5, "reward_early": 0, "reward_abs": 1}),
        # early bonus just inside 0.3 E: epoch 2 < 3 (and 61 > 60)
        ((61.0, 61.0, 1.0, 1.0, 2, E), {"reward_acc": 0, "reward_loss": 0, "reward_early": 2, "reward_abs": 0}),
        # just outside: epoch 3 is not < 0.3 * 10
        ((61.0, 61.0, 1.0, 1.0, 3, E), {"reward_acc": 0, "reward_loss": 0, "reward_early": 0, "reward_abs": 0}),
        # accuracy exactly 60 earns no bonus (strictly above), exactly 70 no absolute term
        ((60.0, 60.0, 1.0, 1.0, 1, E), {"reward_acc": 0, "reward_loss": 0, "reward_early": 0, "reward_abs": 0}),
        ((70.0, 0.0, 1.0, math.inf, 9, E), {"reward_acc": 0, "reward_loss": 0, "reward_early": 0, "reward_abs": 0}),
    ],
)
def test_curriculum_reward_by_hand(args, expected):
    components = reward_components(*args)
    assert components == pytest.approx(expected)
    assert curriculum_reward(*args) == pytest.approx(sum(expected.values()))


def rl_args(out, *extra, epochs=1):
    return train_args(out, *extra, epochs=epochs, script="train_student_rl.py")


PROXIES = ["--pretrain-episodes", "2", "--pretrain-epochs", "2", "--pretrain-subset", "0.5"]  # 4 proxy epochs


TINY_RL = "synthetic:classes=4,train=48,val=16,test=16,size=32,seed=0"


def make_env(tmp_path, teacher, **env_options):
    argv = train_args("unused", "--teacher-checkpoint", teacher, "--cache-dir", tmp_path / "cache",
                      "--student", "resnet10t", "--batch-size", "16", data=TINY_RL, epochs=2)[1:]  # fmt: skip
    config = cli.parse_config(train_student_rl.RLConfig, argv)
    return CurriculumEnv(engine.Experiment(config), **env_options)


@pytest.mark.slow
@pytest.mark.parametrize("options", [{}, {"action_mode": "box", "control_temperature": True}])
def test_env_passes_check_env_without_warnings(tmp_path, tiny_teacher, options):
    env = make_env(tmp_path, tiny_teacher, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env, warn=True)
    observation, info = env.reset(seed=0)
    assert env.observation_space.contains(observation) and observation[0] == 0.0
    observation, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert env.observation_space.contains(observation) and observation[0] == pytest.approx(0.5)
    assert {"val_acc", "train_loss", "reward_acc", "reward_loss", "reward_early", "reward_abs"} <= set(info)
    assert reward == pytest.approx(curriculum_reward(info["val_acc"], 0.0, info["train_loss"], math.inf, 1, 2))
    assert not terminated and not truncated
    assert env.step(env.action_space.sample())[2]  # the second of two epochs ends the episode


@pytest.mark.slow
def test_env_passes_gymnasium_check_env_and_a_seed_starts_the_same_episode(tmp_path, tiny_teacher):
    env = make_env(tmp_path, tiny_teacher)
    gymnasium_check_env(env)
    episodes = []
    for seed in (3, 3, 4):
        first = env.reset(seed=seed)[0]
        episodes.append(np.concatenate([first, env.step(4)[0], env.step(9)[0]]))
    np.testing.assert_array_equal(episodes[0], episodes[1])
    assert not np.array_equal(episodes[0], episodes[2])  # another seed: another student, another episode


@pytest.mark.slow
def test_action_decoding(tmp_path, tiny_teacher):
    box = make_env(tmp_path, tiny_teacher, action_mode="box", control_temperature=True)
    assert box.decode([-1.0, -1.0]) == (0.0, -0.5)
    assert box.decode([1.0, 0.0]) == (1.0, 0.0)
    assert box.decode([0.0, 1.0]) == (0.5, 0.5)
    discrete = make_env(tmp_path, tiny_teacher, action_mode="discrete", bins=5)
    assert [discrete.decode(i)[0] for i in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.mark.slow
def test_rl_script_end_to_end_then_replay(tmp_path, tiny_teacher, cache_dir):
    out = tmp_path / "rl"
    flags = ["--teacher-checkpoint", tiny_teacher, "--cache-dir", cache_dir, "--agent-steps", "2",
             "--control-temperature"]  # fmt: skip
    result = run_script(*rl_args(out, *flags, *PROXIES, "--full-run", "learn", epochs=5))
    for name in ("agent.zip", "best.pt", "last.pt", "results.json", "metrics.csv", "config.json", "proxy/metrics.csv"):
        assert (out / name).is_file(), name
    proxy_rows = bookkeeping.read_metrics(out / "proxy" / "metrics.csv")  # the proxy runs, logged apart
    assert [(row["episode"], row["epoch"]) for row in proxy_rows] == [("1", "1"), ("1", "2"), ("2", "1"), ("2", "2")]
    assert all(int(row["selected"]) == round(0.6 * 48) for row in proxy_rows)  # 60% of half the 96 images
    results = json.loads((out / "results.json").read_text())
    rows = bookkeeping.read_metrics(out / "metrics.csv")
    full = sum(float(row["seconds"]) + float(row["agent_seconds"]) for row in rows)
    assert results["full_run_seconds"] == pytest.approx(full)
    assert results["cost_vs_full_run"] == pytest.approx(1 + results["pretrain_seconds"] / full)
    assert f"= {results['cost_vs_full_run']:.2f}x one full run" in result.stdout
    rows = bookkeeping.read_metrics(out / "metrics.csv")
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3, 4, 5]
    previous_acc, previous_loss = 0.0, math.inf
    for row in rows:  # every logged reward is the reward of the logged values, to the last bit
        acc, loss = float(row["val_acc"]), float(row["train_loss"])
        expected = reward_components(acc, previous_acc, loss, previous_loss, int(row["epoch"]), 5)
        assert float(row["reward"]) == sum(expected.values())
        for name, value in expected.items():
            assert float(row[name]) == value
        assert 0 <= float(row["target_difficulty"]) <= 1 and 2 <= float(row["temperature"]) <= 8
        previous_acc, previous_loss = acc, loss
    assert json.loads((out / "config.json").read_text())["script"] == "train_student_rl.py"

    replayed = tmp_path / "replay"
    run_script(*rl_args(replayed, *flags, "--policy", out / "agent.zip", epochs=5))
    first = bookkeeping.read_metrics(replayed / "metrics.csv")
    assert len(first) == 5 and not (replayed / "agent.zip").exists() and not (replayed / "proxy").exists()
    again = tmp_path / "replay-again"
    run_script(*rl_args(again, *flags, "--policy", out / "agent.zip", epochs=5))
    targets = [row["target_difficulty"] for row in first]
    replayed_again = bookkeeping.read_metrics(again / "metrics.csv")
    assert targets == [row["target_difficulty"] for row in replayed_again]  # deterministic


@pytest.mark.slow
def test_replay_refuses_an_agent_of_another_action_space(tmp_path, tiny_teacher, cache_dir):
    out = tmp_path / "rl"
    flags = ["--teacher-checkpoint", tiny_teacher, "--cache-dir", cache_dir, "--agent-steps", "2",
             "--pretrain-episodes", "0", "--full-run", "learn"]  # fmt: skip
    run_script(*rl_args(out, *flags, epochs=2))
    result = run_script(*rl_args(tmp_path / "r2", *flags, "--action", "box", "--policy", out / "agent.zip"),
                        check=False)  # fmt: skip
    assert result.returncode == 2 and "--action" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_replay_without_a_trained_agent_is_refused(tmp_path, tiny_teacher):
    flags = ["--teacher-checkpoint", tiny_teacher, "--pretrain-episodes", "0"]
    result = run_script(*rl_args(tmp_path / "rl", *flags), check=False)
    assert result.returncode == 2 and "--full-run learn" in result.stderr and "Traceback" not in result.stderr
