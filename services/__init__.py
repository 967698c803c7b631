"""The FastAPI service: task endpoints, OpenAI-compatible chat, health and metrics (see ``app``)."""
