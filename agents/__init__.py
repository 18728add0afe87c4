"""The agents the RL script drives, one class each behind the protocol of agents/base.py, found by name in AGENTS
(--agent's choices): importing the package registers every agent of its modules."""

from agents import bandit, ppo  # noqa: F401  (each registers its agents)
from agents.base import AGENTS, Agent  # noqa: F401
