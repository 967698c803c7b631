"""The web console: try tasks, write new task templates, read run reports (mounted at ``/console``)."""

from services.console.router import router

__all__ = ["router"]
