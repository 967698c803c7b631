"""``domain-lm dpo``: Direct Preference Optimisation from the SFT model on the preference data."""

from __future__ import annotations

from domain_lm.cli.common import stage_app

app = stage_app("dpo", "Train DPO (TRL) on the same preference pairs as the reward model.")
