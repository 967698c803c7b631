"""One router per feature: tasks, OpenAI-compatible chat, health and metrics."""
