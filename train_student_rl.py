"""KD + a curriculum whose target difficulty a PPO agent picks every epoch (the reference's fifth row).

    python train_student_rl.py --out runs/rl                      # the reference row on timm/mini-imagenet
    python train_student_rl.py --data synthetic --teacher-checkpoint runs/table/teacher/best.pt --epochs 8
    python train_student_rl.py --policy runs/rl/agent.zip --out runs/rl-replay    # replay a trained agent
    python train_student_rl.py --agent bandit --out runs/rl-bandit   # a bandit learning during the run: no proxies

The agent (stable-baselines3 PPO) acts in rl_curriculum_env.CurriculumEnv, where one step is one training epoch, so
one training run gives it only `epochs` steps: too few to learn from (the reference learnt online during its one run).
It first learns over --pretrain-episodes cheap proxy runs (--pretrain-epochs epochs on --pretrain-subset of the
training images, validated on --pretrain-val-subset of the validation images, cached teacher logits), then steers the
full run: replaying its most likely target (--full-run replay) or sampling
and learning on (--full-run learn). Rewards are divided by a running std kept in the agent (inside update()).
`--agent bandit` replaces PPO by a Thompson-sampling bandit over --bins targets (bandit.py) that learns during the
run itself, one pull per epoch: no proxy runs, so it costs one training run.
"""

from __future__ import annotations

import copy
import dataclasses
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.utils import obs_as_tensor

from agents.bandit import ThompsonBandit
from agents.options import check_arms_and_reward, check_bandit_config, read_twin
from common import seeds
from common.cli import field
from common.errors import UserError, run_cli
from common.files import atomic_write, load_checkpoint, save_json
from common.metrics import MetricsLog, read_metrics
from common.run_folder import is_main_process, open_run_folder, results_line, start_run
from common.signals import exit_if_stop_requested
from curriculum_dataloader import STRATEGIES
from data.splits import data_subset
from rl_curriculum_env import CurriculumEnv
from training.config import TrainConfig, check_config
from training.devices import broadcast_from_main, end_distributed
from training.experiment import Experiment

Agent = PPO | ThompsonBandit
PPO_BINS, BANDIT_BINS, PPO_PRETRAIN_EPISODES = 11, 5, 30  # the agents' own defaults (RLConfig.__post_init__)


@dataclass
class RLConfig(TrainConfig):
    # not flags of this script: the agent picks every epoch's target and steers only strategies that have one
    NOT_APPLICABLE = {"target": "the agent picks every epoch's target"} | dict.fromkeys(
        ("pacing", "start_fraction", "pace_epochs"), "only easy_to_hard / hard_to_easy pace, the agent steers neither"
    )
    # the reference row: teacher-only KD on the 60% of the data nearest the agent's target
    label_weight: float = field(0.0, "weight of the label CE (the reference's RL row: 0, teacher only)")
    curriculum: str = field(
        "adaptive", "strategy the agent's target steers (with gate --arms: any strategy)", choices=STRATEGIES
    )
    fraction: float = field(0.6, "fraction of the training set per epoch (the reference's RL run: 0.6)")
    agent: str = field(
        "ppo", "ppo: learns over proxy runs first (below); bandit: Thompson sampling over --bins targets, learning "
        "during the run (no proxy runs, one run's cost)", choices=("ppo", "bandit"), group="agent",
    )  # fmt: skip
    bins: int | None = field(
        None, "number of evenly spaced targets over [0, 1] with --action discrete (default: 11 for ppo; 5, the "
        "reference's count, for bandit, which must try each bin a few times within one run)",
    )  # fmt: skip
    arms: str = field(
        "targets", "targets: the agent picks one of --bins targets; or label gates, comma-separated (e.g. "
        "all,none,top2): it picks each epoch's label gate (--label-gate's choices; docs/rl-agent.md)",
    )  # fmt: skip
    reward: str = field(
        "curriculum", "curriculum: curriculum_reward (accuracy and loss changes); twin: the change of the run's lead "
        "over --reward-twin, a run of the same seed, on --reward-probe (docs/formulas.md)",
        choices=("curriculum", "twin"),
    )  # fmt: skip
    reward_twin: str | None = field(None, "--reward twin: the twin's run folder (finished, same seed, data and epochs)")
    reward_probe: str = field(
        "val_loss", "--reward twin: the validation loss compared with the twin's: val_loss (cross-entropy on the "
        "labels) or val_kd_loss (the teacher's term alone, label-free)", choices=("val_loss", "val_kd_loss"),
    )  # fmt: skip
    bandit_prior_sd: float = field(5.0, "--agent bandit: prior sd of a bin's mean reward (the reward's units)")
    bandit_discount: float = field(1.0, "--agent bandit: each past reward's weight shrinks by this per epoch (1: none)")
    # the PPO agent (defaults tuned on tests/test_agent_learns.py's surrogate: see docs/rl-agent.md)
    action: str = field(
        "discrete", "discrete: one of --bins targets; box: a continuous target", choices=("discrete", "box"),
        group="agent (PPO)",
    )  # fmt: skip
    control_temperature: bool = field(False, "the agent also moves the KD temperature by +-0.5 within [2, 8]")
    agent_steps: int = field(5, "epochs per PPO rollout: the agent updates every this many epochs")
    agent_epochs: int = field(10, "PPO optimisation passes over each rollout")
    agent_lr: float = field(3e-4, "PPO learning rate")
    gamma: float = field(0.3, "discount per epoch: a short horizon (a target shows in the next epoch or two)")
    gae_lambda: float = field(0.9, "GAE lambda of PPO's advantages")
    ent_coef: float = field(0.03, "PPO entropy bonus (keeps the agent trying targets until one pays)")
    log_std_init: float = field(0.0, "--action box: initial log std of the Gaussian policy over the action in [-1, 1]")
    normalize_reward: bool = field(True, "divide rewards by a running std kept in the agent (PPO wants unit scale)")
    pretrain_episodes: int | None = field(
        None, "proxy training runs the agent learns over before the full run (default: 30 for ppo; the bandit runs "
        "none)", group="proxy runs (the PPO agent's experience before the full run)",
    )  # fmt: skip
    pretrain_epochs: int = field(10, "epochs of each proxy run (the observation counts progress as a fraction)")
    pretrain_subset: float = field(0.1, "fraction of the training images a proxy run trains on")
    pretrain_val_subset: float = field(
        1.0, "fraction of the validation images a proxy run validates on (only forward passes; its accuracy is the "
        "reward, so a small share cannot rank targets: docs/rl-agent.md)",
    )  # fmt: skip
    full_run: str = field(
        "replay", "replay: the pretrained policy's most likely target every epoch; learn: keep sampling and learning",
        choices=("replay", "learn"),
    )  # fmt: skip
    episodes: int = field(1, "full training runs the agent steers (the last one's student is the result)")
    policy: str | None = field(None, "replay this agent.zip deterministically on a fresh run (no proxies, no learning)")

    def __post_init__(self):
        """The agent's own defaults of --bins and --pretrain-episodes, decided once here (config.json holds them)."""
        bandit = self.agent == "bandit"
        if self.bins is None:
            self.bins = BANDIT_BINS if bandit else PPO_BINS
        if self.pretrain_episodes is None:
            self.pretrain_episodes = 0 if bandit else PPO_PRETRAIN_EPISODES

    @property
    def gate_arms(self) -> list[str] | None:
        """The label gates the agent picks from (--arms), or None when it picks targets."""
        return None if self.arms == "targets" else [gate.strip() for gate in self.arms.split(",")]

    @property
    def label_gates(self) -> tuple[str, ...]:
        return tuple(self.gate_arms) if self.gate_arms else (self.label_gate,)


BUFFER_FIELDS = ("observations", "actions", "rewards", "returns", "episode_starts", "values", "log_probs", "advantages")


def make_agent(config: RLConfig, env: CurriculumEnv) -> PPO:
    policy_kwargs = {"net_arch": [64, 64]}
    if isinstance(env.action_space, spaces.Box):
        policy_kwargs["log_std_init"] = config.log_std_init
    agent = PPO(
        "MlpPolicy",
        env,
        n_steps=config.agent_steps,
        batch_size=config.agent_steps,
        n_epochs=config.agent_epochs,
        learning_rate=config.agent_lr,
        gamma=config.gamma,
        gae_lambda=config.gae_lambda,
        ent_coef=config.ent_coef,
        policy_kwargs=policy_kwargs,
        seed=config.seed,
        device="cpu",  # a 64x64 MLP: the GPU would only add transfers
        verbose=0,
    )
    agent.set_logger(Logger(folder=None, output_formats=[]))  # configure() would make an SB3-<time> folder in /tmp
    agent.reward_scale = RunningMeanStd(shape=()) if config.normalize_reward else None  # saved in agent.zip
    return agent


def make_bandit(config: RLConfig) -> ThompsonBandit:
    arms = len(config.gate_arms) if config.gate_arms else config.bins
    return ThompsonBandit(arms, prior_sd=config.bandit_prior_sd, discount=config.bandit_discount)


def make_env(config: RLConfig, experiment: Experiment, log: MetricsLog, twin: list[float] | None = None):
    return CurriculumEnv(experiment, config.action, config.bins, config.control_temperature, log,
                         gates=config.gate_arms, twin=twin, probe=config.reward_probe)  # fmt: skip


def load_agent(path: str, env: CurriculumEnv) -> PPO:
    if not Path(path).is_file():
        raise UserError(f"--policy {path} does not exist; pass the agent.zip of a train_student_rl.py run.")
    try:
        agent = PPO.load(path, device="cpu")
    except Exception as err:  # another zip, a truncated file, another library version: one message for all
        raise UserError(
            f"cannot load --policy {path} ({err}); pass the agent.zip of a train_student_rl.py run."
        ) from None
    if agent.action_space != env.action_space or agent.observation_space != env.observation_space:
        raise UserError(
            f"{path} was trained with another action space ({agent.action_space}); "
            "pass the same --action, --bins and --control-temperature as the run that trained it."
        )
    return agent


def choose(agent: Agent, observation: np.ndarray, learn: bool, seed: int):
    """The policy's action for one epoch: sampled while learning (with its value and log-probability for PPO),
    the mode when replaying. Seeded per step, so a resumed run samples what the uninterrupted one would. The bandit
    ignores the observation: its action is the bin of its largest posterior draw."""
    if isinstance(agent, ThompsonBandit):
        arm = agent.draw(seed)
        return arm, arm, None, None
    torch.manual_seed(seed)
    if not learn:
        return agent.predict(observation, deterministic=True)[0], None, None, None
    agent.policy.set_training_mode(False)
    with torch.no_grad():
        action, value, log_prob = agent.policy(obs_as_tensor(observation[None], agent.device))
    action = action.cpu().numpy()
    box = isinstance(agent.action_space, spaces.Box)
    env_action = np.clip(action, agent.action_space.low, agent.action_space.high) if box else action
    if isinstance(agent.action_space, spaces.Discrete):
        action = action.reshape(-1, 1)
    return env_action[0], action, value, log_prob


def update(agent: PPO, next_observation: np.ndarray, done: bool, seed: int) -> None:
    """PPO's update on a full rollout: returns and advantages with GAE, then `agent_epochs` passes (stable-baselines3's
    collect_rollouts ending and train, one epoch-long step at a time)."""
    buffer = agent.rollout_buffer
    if getattr(agent, "reward_scale", None) is not None:
        agent.reward_scale.update(buffer.rewards.reshape(-1))
        buffer.rewards = buffer.rewards / np.sqrt(agent.reward_scale.var + 1e-8)
    with torch.no_grad():
        last_value = agent.policy.predict_values(obs_as_tensor(next_observation[None], agent.device))
    agent.rollout_buffer.compute_returns_and_advantage(last_values=last_value, dones=np.array([done]))
    np.random.seed(seed % 2**32)  # the buffer's minibatch order
    torch.manual_seed(seed)
    agent.train()
    agent.rollout_buffer.reset()


def learn_from(agent: Agent, transition: tuple, next_observation: np.ndarray, done: bool, seed: int) -> None:
    """One step's lesson: the bandit adds the reward to its bin's posterior; PPO stores the transition
    (observation, action, reward, episode_start, value, log_prob) and runs `update` once its rollout is full."""
    observation, action, reward, episode_start, value, log_prob = transition
    if isinstance(agent, ThompsonBandit):
        agent.update(int(action), reward)
        return
    agent.rollout_buffer.add(observation[None], action, np.array([reward]), np.array([episode_start]), value, log_prob)
    agent.num_timesteps += 1
    if agent.rollout_buffer.full:
        update(agent, next_observation, done, seed)


def agent_columns(agent: Agent, env: CurriculumEnv) -> dict:
    """Metrics columns of the agent's belief after a step: for the bandit, how often it would now pull each arm
    (`bandit_p<target>` or `bandit_p<gate>`) and its most likely arm; none for PPO."""
    if not isinstance(agent, ThompsonBandit):
        return {}
    probabilities = agent.probabilities()
    best = int(np.argmax(probabilities))
    if env.gates:
        names, columns = env.gates, {"bandit_best_gate": env.gates[best]}
    else:
        names, columns = [f"{target:g}" for target in env.targets], {"bandit_best_target": float(env.targets[best])}
    columns["bandit_best_probability"] = float(probabilities[best])
    columns.update({f"bandit_p{name}": float(p) for name, p in zip(names, probabilities, strict=True)})
    return columns


def agent_state(agent: Agent) -> dict:
    """Everything that makes the agent continue exactly: PPO's weights, optimiser, timestep count and partial rollout;
    the bandit's sums per bin."""
    if isinstance(agent, ThompsonBandit):
        return agent.state_dict()
    buffer = agent.rollout_buffer
    return {
        "policy": agent.policy.state_dict(),
        "optimizer": agent.policy.optimizer.state_dict(),
        "num_timesteps": agent.num_timesteps,
        "n_updates": agent._n_updates,
        "buffer": {name: getattr(buffer, name).copy() for name in BUFFER_FIELDS},
        "buffer_pos": buffer.pos,
        "buffer_full": buffer.full,
        "reward_scale": getattr(agent, "reward_scale", None),  # None in an agent.zip of an older version
    }


def load_agent_state(agent: Agent, state: dict) -> None:
    if isinstance(agent, ThompsonBandit):
        agent.load_state_dict(state)
        return
    agent.policy.load_state_dict(state["policy"])
    agent.policy.optimizer.load_state_dict(state["optimizer"])
    agent.num_timesteps, agent._n_updates = state["num_timesteps"], state["n_updates"]
    buffer = agent.rollout_buffer
    for name, value in state["buffer"].items():
        setattr(buffer, name, value.copy())
    buffer.pos, buffer.full = state["buffer_pos"], state["buffer_full"]
    agent.reward_scale = copy.deepcopy(state["reward_scale"])


def drive(agent: Agent, env, episodes: int, learn: bool, seed_of, start: tuple, after_step=None) -> None:
    """The agent's loop, the one the script and its tests run: per step `choose`, one env step and, when learning,
    `learn_from` (PPO: the transition into the rollout buffer, `update` once it is full); until `episodes` more
    episodes have ended. `start`: (observation, episode_start, done) to go on from (done: reset first);
    `seed_of()`: the next step's seed; `after_step(observation, episode_start)` checkpoints a step. With several
    processes the agent acts on rank 0 and the other ranks train their shard with its action."""
    main = is_main_process()
    observation, episode_start, done = start
    ended = 0
    while ended < episodes:
        if done:
            observation, episode_start = env.reset()[0], True
        seed = seed_of()
        if main:
            env_action, action, value, log_prob = choose(agent, observation, learn, seed)
        env_action = broadcast_from_main(env_action if main else None)
        next_observation, reward, done, _, _ = env.step(env_action)
        if learn and main:
            learn_from(agent, (observation, action, reward, episode_start, value, log_prob), next_observation, done,
                       seed)  # fmt: skip
        observation, episode_start = next_observation, done
        ended += int(done)
        if after_step is not None:
            after_step(observation, episode_start)


def steer(
    agent: Agent, env: CurriculumEnv, episodes: int, learn: bool, purpose: str, resume: dict | None = None
) -> None:
    """Train `episodes` runs of the environment's experiment, one epoch per agent step, learning unless `learn` is
    off (replay: the policy's most likely action); the steps are seeded by `purpose` (agent-proxy, agent-full,
    bandit), episode and epoch. After every epoch the run folder's last.pt holds the student, the environment's
    counters and the agent, so a kill loses at most the epoch in progress."""
    seed = env.experiment.config.seed
    if resume is None:
        start = env.reset(seed=seed)[0], True, False
    else:
        env.load_state(resume["env"], resume)
        start = resume["observation"], resume["episode_start"], env.epoch >= env.num_epochs

    def checkpoint(observation, episode_start) -> None:
        env.record_step({"env": env.state_dict(), "observation": observation, "episode_start": episode_start,
                         "agent": agent_state(agent)}, agent_columns(agent, env))  # fmt: skip
        exit_if_stop_requested(env.experiment.config.out, f"{'proxy ' if purpose == 'agent-proxy' else ''}run "
                               f"{env.episode}, epoch {env.epoch}/{env.num_epochs}")  # fmt: skip

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


def pretrain(agent: PPO, experiment: Experiment, config: RLConfig, folder: Path) -> None:
    """The agent learns over --pretrain-episodes proxy runs, logged and checkpointed in FOLDER/proxy (metrics.csv with
    its `episode` column, last.pt); a resumed run continues them where the kill left off."""
    proxy_folder = folder / "proxy"
    if is_main_process():
        proxy_folder.mkdir(exist_ok=True)
    last = proxy_folder / "last.pt"
    resume = load_checkpoint(last) if config.resume and last.exists() else None
    log = MetricsLog(proxy_folder)
    with proxy_experiment(config, experiment) as proxies:  # their loaders' workers end with the proxy runs
        env = make_env(config, proxies, log)
        if resume is not None:
            load_agent_state(agent, resume["agent"])
        try:
            steer(agent, env, config.pretrain_episodes, learn=True, purpose="agent-proxy", resume=resume)
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


def check_rl_config(config: RLConfig) -> None:
    check_config(config)
    rules = [
        (config.episodes >= 1 and config.agent_steps >= 2, "--episodes must be >= 1 and --agent-steps >= 2"),
        (config.bins >= 2, "--bins must be >= 2"),
        (config.agent_epochs >= 1, "--agent-epochs must be >= 1"),
        (config.agent_lr > 0, "--agent-lr must be > 0"),
        (0 < config.gamma <= 1, "--gamma must lie in (0, 1] (a discount per epoch)"),
        (config.ent_coef >= 0, "--ent-coef must be >= 0"),
        (config.pretrain_episodes >= 0 and config.pretrain_epochs >= 1,
         "--pretrain-episodes must be >= 0 and --pretrain-epochs >= 1"),
        (0 < config.pretrain_subset <= 1 and 0 < config.pretrain_val_subset <= 1,
         "--pretrain-subset and --pretrain-val-subset must lie in (0, 1]"),
        (config.bandit_prior_sd > 0 and 0 < config.bandit_discount <= 1,
         "--bandit-prior-sd must be > 0 and --bandit-discount lie in (0, 1]"),
    ]  # fmt: skip
    for ok, message in rules:
        if not ok:
            raise UserError(message + ".")
    check_arms_and_reward(config)
    if config.agent == "bandit":
        check_bandit_config(config)
        return
    if config.policy and not Path(config.policy).is_file():
        raise UserError(f"--policy {config.policy} does not exist; pass the agent.zip of a train_student_rl.py run.")
    if config.policy and not zipfile.is_zipfile(config.policy):
        raise UserError(f"--policy {config.policy} is not a zip file; pass the agent.zip of a train_student_rl.py run.")
    if config.full_run == "replay" and config.pretrain_episodes == 0 and not config.policy:
        raise UserError(
            "--full-run replay needs a trained agent: give --pretrain-episodes >= 1 or --policy, "
            "or use --full-run learn (an untrained agent's most likely target is one constant)."
        )


def default_out(config: RLConfig) -> str:
    return f"runs/rl-{config.student}-lw{config.label_weight:g}-s{config.seed}"


def build_agent(config: RLConfig, env: CurriculumEnv) -> Agent:
    """The bandit, the --policy agent to replay, or a fresh PPO agent."""
    if config.agent == "bandit":
        return make_bandit(config)
    return load_agent(config.policy, env) if config.policy else make_agent(config, env)


def train_and_test(config: RLConfig, experiment: Experiment, checkpoint: dict | None) -> dict:
    """The agent learns over the proxy runs (PPO, unless resumed past them or replaying a --policy), steers the full
    run, and the full run's student is tested; agent.zip is saved for a later --policy."""
    log = MetricsLog(Path(config.out))  # writes nothing before its first row
    env = make_env(config, experiment, log, read_twin(config))
    agent = build_agent(config, env)
    folder = open_run_folder(config, "train_student_rl.py")  # only now: a --policy of another space is refused first
    if not config.policy and config.pretrain_episodes and checkpoint is None:
        pretrain(agent, experiment, config, folder)
    if checkpoint is not None and not config.policy:
        load_agent_state(agent, checkpoint["agent"])
    elif config.resume and checkpoint is None:  # killed before the full run's first epoch was saved
        env.log.truncate(0)
    bandit = isinstance(agent, ThompsonBandit)
    learn = bandit or (not config.policy and config.full_run == "learn")
    steer(agent, env, config.episodes, learn, purpose="bandit" if bandit else "agent-full", resume=checkpoint)
    if not config.policy and not bandit and is_main_process():
        atomic_write(folder / "agent.zip", agent.save)
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
