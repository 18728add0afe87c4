"""A gymnasium environment whose step is one training epoch of the student, and the curriculum reward.

The agent picks the epoch's target difficulty (and optionally nudges the KD temperature), or the epoch's label gate
(`gates`: an arm per gate); the environment trains one epoch of KD on the samples the curriculum strategy selects
around that target, validates, and returns the reward of docs/formulas.md: `curriculum_reward` (the default), or
`twin_reward`, the change of the run's lead over a same-seed twin run on a probe loss. An episode is one training run
of `num_epochs` epochs.

Observation (float32, every entry in [-1, 1]):

| index | meaning |
|---|---|
| 0 | training progress, epochs done / num_epochs |
| 1 | validation accuracy / 100 |
| 2 | training loss squashed to [0, 1): loss / (1 + loss) |
| 3 | change of validation accuracy since the last epoch / 100 |
| 4 | change of the squashed training loss since the last epoch |
| 5 | the last target (on the run's --target-scale: a rank quantile by default) |
| 6-10 | current difficulty scores: mean, std, 10th, 50th and 90th percentile |
| 11 | KD temperature, (T - 2) / 6 (constant unless the agent controls it) |
"""

from __future__ import annotations

import math
import time

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from common import seeds
from common.metrics import MetricsLog
from training.experiment import Experiment, TrainingRun

OBSERVATION_SIZE = 12
TEMPERATURE_RANGE = (2.0, 8.0)
TEMPERATURE_STEP = 0.5


def reward_components(
    val_acc: float, prev_val_acc: float, train_loss: float, prev_train_loss: float, epoch: int, num_epochs: int
) -> dict[str, float]:
    """The four terms of the curriculum reward; accuracies in percent, `epoch` 1-based (docs/formulas.md)."""
    loss_rise = max(train_loss - prev_train_loss, 0.0) if prev_train_loss < math.inf else 0.0
    return {
        "reward_acc": 2.0 * (val_acc - prev_val_acc) if prev_val_acc > 0 else 0.0,
        "reward_loss": 0.0 - min(5.0 * loss_rise, 5.0),  # 0.0 - x: no -0.0 in the logs
        "reward_early": 2.0 if val_acc > 60 and epoch < 0.3 * num_epochs else 0.0,
        "reward_abs": 0.1 * max(val_acc - 70.0, 0.0),
    }


def curriculum_reward(
    val_acc: float, prev_val_acc: float, train_loss: float, prev_train_loss: float, epoch: int, num_epochs: int
) -> float:
    """`R = R_acc + R_loss + R_early + R_abs` (docs/formulas.md)."""
    return sum(reward_components(val_acc, prev_val_acc, train_loss, prev_train_loss, epoch, num_epochs).values())


def twin_reward(
    probe_loss: float, twin_probe_loss: float, prev_probe_loss: float | None, prev_twin_probe_loss: float | None
) -> float:
    """`R = 100 (lead_t - lead_{t-1})` with `lead_t = twin_probe_loss_t - probe_loss_t`: how much this epoch moved the
    run ahead of (or behind) its twin, a run of the same seed that differs only in its actions (docs/formulas.md).
    Before the first epoch both runs are the same student, so the previous losses are None and the lead is 0. Both
    runs go through the same phase of training at the same epoch, so the phase cancels: only the actions remain."""
    prev_lead = 0.0 if prev_probe_loss is None else prev_twin_probe_loss - prev_probe_loss
    return 100.0 * ((twin_probe_loss - probe_loss) - prev_lead)


def squash(loss: float) -> float:
    return loss / (1.0 + loss) if math.isfinite(loss) else 1.0


class CurriculumEnv(gym.Env):
    """One step = one epoch of KD on the samples selected around the agent's target difficulty.

    `action_mode="discrete"` (default): one of `bins` evenly spaced targets over [0, 1] (default 11; the reference used
    5); `"box"`: `Box(-1, 1, (1,))`, mapped affinely to the target `(a + 1) / 2` in [0, 1] (stable-baselines3 asks for
    a symmetric, normalised Box: a Gaussian policy starts centred on it, at target 0.5). With `control_temperature`
    the action gains a second part that moves the KD temperature by -0.5, 0 or +0.5 within [2, 8], as the reference's
    agent could. With `gates` (label gates, curriculum_dataloader.label_gate) the action is `Discrete(len(gates))`:
    the epoch's label gate, at the run's own target.

    `twin` (the probe loss per epoch of a finished run of the same seed, e.g. its plain-KD twin) replaces the reward
    by `twin_reward` on the metrics column `probe` (`val_loss`, the validation cross-entropy, or the label-free
    `val_kd_loss`).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        experiment: Experiment,
        action_mode: str = "discrete",
        bins: int = 11,
        control_temperature: bool = False,
        log: MetricsLog | None = None,
        gates: list[str] | None = None,
        twin: list[float] | None = None,
        probe: str = "val_loss",
    ):
        super().__init__()
        self.experiment, self.log = experiment, log  # handed to each run; the env itself writes nothing
        self.num_epochs = experiment.config.epochs
        self.action_mode, self.control_temperature = action_mode, control_temperature
        self.targets = np.linspace(0.0, 1.0, bins)
        self.gates, self.twin, self.probe = gates, twin, probe
        self.prev_probe: float | None = None
        if gates is not None:
            if action_mode != "discrete" or control_temperature:
                raise ValueError("gate arms are a discrete action of their own: no box action, no temperature")
            self.action_space = spaces.Discrete(len(gates))
        elif action_mode == "discrete":
            self.action_space = spaces.MultiDiscrete([bins, 3]) if control_temperature else spaces.Discrete(bins)
        elif action_mode == "box":
            self.action_space = spaces.Box(-1.0, 1.0, shape=(2 if control_temperature else 1,), dtype=np.float32)
        else:
            raise ValueError(f"unknown action mode {action_mode!r}; use box or discrete")
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(OBSERVATION_SIZE,), dtype=np.float32)
        self.run: TrainingRun | None = None
        self.completed_run: TrainingRun | None = None  # the last finished episode's run (reset starts a new one)
        self.episode = self.episodes_done = 0
        self.base_seed = self.run_seed = experiment.config.seed  # the run's --seed; run_seed: the episode's
        self.history: list[dict] = []  # the metrics row of every step of every episode

    # -- action decoding

    def decode(self, action) -> tuple[float, float]:
        """(target difficulty, temperature change) of an action (with gate arms: the run's target, no change)."""
        action = np.asarray(action).reshape(-1)
        if self.gates is not None:
            return self.experiment.config.target, 0.0
        if self.action_mode == "discrete":
            target = float(self.targets[int(action[0])])
            change = TEMPERATURE_STEP * (int(action[1]) - 1) if self.control_temperature else 0.0
        else:
            unit = (np.clip(action, -1.0, 1.0) + 1.0) / 2.0
            target = float(unit[0])
            # thirds of the second dimension -> down, keep, up: the discrete action's three moves
            change = TEMPERATURE_STEP * (min(int(unit[1] * 3), 2) - 1) if self.control_temperature else 0.0
        return target, change

    # -- gymnasium API

    def new_run(self) -> TrainingRun:
        """A fresh student for the current episode, seeded by `run_seed`."""
        folder = self.log.folder if self.log else None
        return TrainingRun(self.experiment, folder, seed=self.run_seed, log=self.log)

    def reset(self, seed: int | None = None, options: dict | None = None):
        """A new episode: a fresh training run seeded by `seed` (the same seed starts the same episode), or without
        one by (config seed, episode)."""
        super().reset(seed=seed)
        self.episode += 1
        self.run_seed = seed if seed is not None else seeds.derive(self.base_seed, "episode", episode=self.episode)
        self.run = self.new_run()
        self.prev_val_acc, self.prev_train_loss, self.last_target = 0.0, math.inf, self.experiment.config.target
        self.prev_probe = None  # the probe loss after the last epoch (twin reward), None before the first
        self.run.refresh_scores()  # the first observation already describes the difficulty of the data
        self.agent_clock = time.perf_counter()
        return self.observation(), {}

    def step(self, action):
        agent_seconds = time.perf_counter() - self.agent_clock  # the agent's time since the last step returned
        run = self.run
        target, change = self.decode(action)
        gate = None if self.gates is None else self.gates[int(np.asarray(action).reshape(-1)[0])]
        run.temperature = float(np.clip(run.temperature + change, *TEMPERATURE_RANGE))
        row = run.train_epoch(target, gate)
        reward, components = self.reward(row)
        row.update(
            episode=self.episode, reward=reward, **components, temperature=run.temperature, agent_seconds=agent_seconds
        )
        row["seconds"] = row.pop("seconds")  # keep the wall-clock column last
        self.history.append(row)  # the caller records it (record_step) once its own state is up to date
        self.last_target = target
        observation = self.observation(row)
        self.prev_val_acc, self.prev_train_loss = row["val_acc"], row["train_loss"]
        self.prev_probe = row.get(self.probe)
        info = {"val_acc": row["val_acc"], "train_loss": row["train_loss"], **components}
        terminated = run.epoch >= self.num_epochs
        if terminated:
            self.episodes_done, self.completed_run = self.episodes_done + 1, run
        self.agent_clock = time.perf_counter()
        return observation, float(reward), terminated, False, info

    def reward(self, row: dict) -> tuple[float, dict]:
        """The epoch's reward and its logged terms: curriculum_reward's four, or the twin reward with the twin's probe
        loss of the same epoch."""
        if self.twin is None:
            outcome = (row["val_acc"], self.prev_val_acc, row["train_loss"], self.prev_train_loss, self.run.epoch,
                       self.num_epochs)  # fmt: skip
            return curriculum_reward(*outcome), reward_components(*outcome)
        epoch = self.run.epoch
        twin_now, twin_before = self.twin[epoch - 1], self.twin[epoch - 2] if epoch > 1 else None
        reward = twin_reward(row[self.probe], twin_now, self.prev_probe, twin_before)
        return reward, {"twin_probe_loss": twin_now, "twin_lead": twin_now - row[self.probe]}

    # -- the episode's run, for the agent's loop

    @property
    def epoch(self) -> int:
        """Epochs done in the current episode."""
        return self.run.epoch

    def record_step(self, extra_state: dict | None = None, columns: dict | None = None) -> None:
        """Log the last step's row, with the agent's `columns` added, and checkpoint the run, with `extra_state` (the
        agent's) in its last.pt."""
        row = self.history[-1]
        row.update(columns or {})
        row["seconds"] = row.pop("seconds")  # the wall-clock column stays last
        self.run.end_epoch(row, extra_state)

    def finish(self) -> dict:
        """Test the last finished episode's student (TrainingRun.finish)."""
        return self.completed_run.finish()

    def state_dict(self) -> dict:
        return {"episode": self.episode, "episodes_done": self.episodes_done, "prev_val_acc": self.prev_val_acc,
                "prev_train_loss": self.prev_train_loss, "last_target": self.last_target,
                "run_seed": self.run_seed, "prev_probe": self.prev_probe}  # fmt: skip

    def load_state(self, state: dict, checkpoint: dict) -> None:
        """Resume mid-run: the episode's counters, and its training run from the checkpoint."""
        for name, value in state.items():
            setattr(self, name, value)
        self.run = self.new_run()
        self.run.load_state(checkpoint)
        if self.run.epoch >= self.num_epochs:
            self.completed_run = self.run
        self.agent_clock = time.perf_counter()

    def observation(self, row: dict | None = None) -> np.ndarray:
        run = self.run
        scores = run.curriculum.scores
        stats = [scores.mean(), scores.std(), *np.percentile(scores, [10, 50, 90])] if scores is not None else [0.0] * 5
        val_acc = row["val_acc"] if row else 0.0
        loss = squash(row["train_loss"]) if row else 0.0
        prev_loss = squash(self.prev_train_loss) if math.isfinite(self.prev_train_loss) else loss
        vector = [
            run.epoch / self.num_epochs,
            val_acc / 100.0,
            loss,
            (val_acc - self.prev_val_acc) / 100.0 if row else 0.0,
            loss - prev_loss,
            self.last_target,
            *stats,
            (run.temperature - TEMPERATURE_RANGE[0]) / (TEMPERATURE_RANGE[1] - TEMPERATURE_RANGE[0]),
        ]
        return np.clip(np.asarray(vector, dtype=np.float32), -1.0, 1.0)
