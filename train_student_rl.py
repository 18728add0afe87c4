"""KD + a curriculum whose target difficulty an agent picks every epoch (the reference's fifth row).

    python train_student_rl.py --out runs/rl                      # the reference row on timm/mini-imagenet
    python train_student_rl.py --data synthetic --teacher-checkpoint runs/table/teacher/best.pt --epochs 8
    python train_student_rl.py --policy runs/rl/agent.zip --out runs/rl-replay    # replay a trained agent
    python train_student_rl.py --agent bandit --out runs/rl-bandit   # a bandit learning during the run: no proxies

The agent acts in rl_curriculum_env.CurriculumEnv, where one step is one training epoch, so one training run gives it
only `epochs` steps: too few to learn from (the reference learnt online during its one run). The PPO agent
(stable-baselines3) first learns over --pretrain-episodes cheap proxy runs (--pretrain-epochs epochs on
--pretrain-subset of the training images, validated on --pretrain-val-subset of the validation images, cached teacher
logits), then steers the full run: replaying its most likely target (--full-run replay) or sampling and learning on
(--full-run learn). `--agent bandit` replaces it by a Thompson-sampling bandit over --bins targets that learns during
the run itself, one pull per epoch: no proxy runs, so it costs one training run. Every agent is one class behind the
protocol of agents/base.py (agents/: docs/extending.md adds one); every flag: agents/config.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from agents import AGENTS, Agent
from agents.base import drive
from agents.config import RLConfig, check_rl_config, read_twin
from agents.ppo import PPOAgent, PPOSettings
from common import seeds
from common.errors import run_cli
from common.files import RESUME_KEYS, load_checkpoint, save_json
from common.metrics import MetricsLog, read_metrics
from common.run_folder import is_main_process, open_run_folder, results_line, start_run
from common.signals import exit_if_stop_requested
from data.splits import data_subset
from rl_curriculum_env import CurriculumEnv
from training.devices import end_distributed
from training.experiment import Experiment

__all__ = ["RLConfig", "choose", "drive", "make_agent", "update"]


# ----------------------------------------------------------------------------------------------------------------------
# The PPO agent's entry points: an outside loop that calls `choose`, steps any env with CurriculumEnv's spaces, adds
# the transition to `agent.rollout_buffer` and calls `update` when it is full learns as this script does


def make_agent(config: RLConfig, env) -> PPOAgent:
    """A fresh PPO agent of the config's hyperparameters, for any env with CurriculumEnv's spaces."""
    return PPOAgent(PPOSettings.of(config), env)


def choose(agent: Agent, observation: np.ndarray, learn: bool, seed: int):
    """(env_action, action, value, log_prob) of one epoch: sampled while learning, the mode when replaying."""
    decision = agent.decide(observation, learn, seed)
    return decision.env_action, decision.action, decision.value, decision.log_prob


def update(agent: PPOAgent, next_observation: np.ndarray, done: bool, seed: int) -> None:
    """PPO's update once the rollout buffer is full (reward normalisation included)."""
    agent.update(next_observation, done, seed)


# ----------------------------------------------------------------------------------------------------------------------
# The run


def make_env(config: RLConfig, experiment: Experiment, log: MetricsLog, twin: list[float] | None = None):
    return CurriculumEnv(experiment, config.action, config.bins, config.control_temperature, log,
                         gates=config.gate_arms, twin=twin, probe=config.reward_probe)  # fmt: skip


def steer(agent: Agent, env: CurriculumEnv, episodes: int, learn: bool, purpose: str, folder: str,
          resume: dict | None = None) -> None:  # fmt: skip
    """Train `episodes` runs of the environment's experiment, one epoch per agent step, learning unless `learn` is
    off (replay: the policy's most likely action); the steps are seeded by `purpose` (agent-proxy, or the agent's
    own stream), episode and epoch. After every epoch the run `folder`'s last.pt holds the student, the environment's
    counters and the agent, so a kill loses at most the epoch in progress."""
    seed = env.base_seed
    if resume is None:
        start = env.reset(seed=seed)[0], True, False
    else:
        env.load_state(resume["env"], resume)
        start = np.asarray(resume["observation"]), resume["episode_start"], env.epoch >= env.num_epochs

    def checkpoint(observation, episode_start) -> None:
        env.record_step({"env": env.state_dict(), "observation": observation, "episode_start": episode_start,
                         "agent": agent.state_dict()}, agent.belief())  # fmt: skip
        proxy = "proxy " if purpose == "agent-proxy" else ""
        exit_if_stop_requested(folder, f"{proxy}run {env.episode}, epoch {env.epoch}/{env.num_epochs}")

    seed_of = lambda: seeds.derive(seed, purpose, episode=env.episode, epoch=env.epoch)  # noqa: E731
    drive(agent, env, episodes - env.episodes_done, learn, seed_of, start, after_step=checkpoint)


def proxy_experiment(config: RLConfig, experiment: Experiment) -> Experiment:
    """The proxy runs: --pretrain-epochs epochs on --pretrain-subset of the training images (validated on
    --pretrain-val-subset of the validation images), KD from the cached teacher logits
    (no teacher forward pass while training), rescored as often per unit of progress as the full run."""
    proxy_config = dataclasses.replace(
        config,
        epochs=config.pretrain_epochs,
        teacher_logits="cached",
        rescore_every=max(1, round(config.rescore_every * config.pretrain_epochs / config.epochs)),
    )
    data = data_subset(experiment.data, config.pretrain_subset, config.seed, config.pretrain_val_subset)
    return Experiment(proxy_config, data)


def pretrain(agent: Agent, experiment: Experiment, config: RLConfig, folder: Path) -> None:
    """The agent learns over --pretrain-episodes proxy runs, logged and checkpointed in FOLDER/proxy (metrics.csv with
    its `episode` column, last.pt); a resumed run continues them where the kill left off."""
    proxy_folder = folder / "proxy"
    if is_main_process():
        proxy_folder.mkdir(exist_ok=True)
    last = proxy_folder / "last.pt"
    resume = load_checkpoint(last, RESUME_KEYS) if config.resume and last.exists() else None
    log = MetricsLog(proxy_folder)
    with proxy_experiment(config, experiment) as proxies:  # their loaders' workers end with the proxy runs
        env = make_env(config, proxies, log)
        if resume is not None:
            agent.load_state_dict(resume["agent"])
        try:
            steer(agent, env, config.pretrain_episodes, True, "agent-proxy", config.out, resume)
        finally:
            log.close()


def run_seconds(path: Path) -> float:
    """Wall-clock seconds of the epochs (and agent steps) logged in a metrics.csv."""
    if not path.exists():
        return 0.0
    return sum(float(row["seconds"]) + float(row["agent_seconds"]) for row in read_metrics(path))


def total_cost(folder: Path, episodes: int) -> dict:
    """The whole run's cost, proxy runs included, as a multiple of one full training run (from the logged seconds)."""
    proxy, full = run_seconds(folder / "proxy" / "metrics.csv"), run_seconds(folder / "metrics.csv")
    return {"pretrain_seconds": proxy, "full_run_seconds": full, "cost_vs_full_run": (proxy + full) / (full / episodes)}


def default_out(config: RLConfig) -> str:
    return f"runs/rl-{config.student}-lw{config.label_weight:g}-s{config.seed}"


def train_and_test(config: RLConfig, experiment: Experiment, checkpoint: dict | None) -> dict:
    """The agent learns over the proxy runs (if it pretrains, unless resumed past them), steers the full run, and the
    full run's student is tested; the agent saves what --policy replays."""
    log = MetricsLog(Path(config.out))  # writes nothing before its first row
    env = make_env(config, experiment, log, read_twin(config))
    agent = AGENTS[config.agent].create(config, env)
    folder = open_run_folder(config, "train_student_rl.py")  # only now: a --policy of another space is refused first
    if agent.pretrains and checkpoint is None:
        pretrain(agent, experiment, config, folder)
    if checkpoint is not None:
        agent.load_state_dict(checkpoint["agent"])
    elif config.resume:  # killed before the full run's first epoch was saved
        env.log.truncate(0)
    steer(agent, env, config.episodes, agent.learns_in_full_run, agent.seed_purpose, config.out, checkpoint)
    if is_main_process():
        agent.save(folder)
    return env.finish()


def main(argv=None) -> None:
    config, checkpoint = start_run(RLConfig, argv, "train_student_rl.py", __doc__, default_out, check_rl_config)
    with Experiment(config) as experiment:  # its loaders' workers stop where the block ends, however it ends
        results = train_and_test(config, experiment, checkpoint)
    if is_main_process():
        folder = Path(config.out)
        results.update(total_cost(folder, config.episodes))
        save_json(folder / "results.json", results)
        proxies = 0 if config.policy else config.pretrain_episodes
        print(
            f"cost: {proxies} proxy runs {results['pretrain_seconds']:.0f}s + full run "
            f"{results['full_run_seconds']:.0f}s = {results['cost_vs_full_run']:.2f}x one full run"
        )
        print(results_line(results, config.out))
    end_distributed()


if __name__ == "__main__":
    run_cli(main)
