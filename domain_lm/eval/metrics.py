"""Re-export of the task metrics, which live in ``domain_lm.tasks.metrics`` (next to the output
contracts that decide what a metric compares). Kept for the report, the eval CLI and the console."""

from domain_lm.tasks.metrics import PRIMARY, parse_number, primary, score

__all__ = ["PRIMARY", "parse_number", "primary", "score"]
