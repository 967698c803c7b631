"""``domain-lm ppo``: RLHF with PPO-Max from the SFT model against the reward model."""

from __future__ import annotations

from domain_lm.cli.common import stage_app

app = stage_app("ppo", "Run PPO-Max (needs the reward stage). Every trick is a ppo.tricks.use_* switch (-s ppo.tricks.use_ptx=false).")
