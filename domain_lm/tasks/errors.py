"""Errors of the task-template layer.

Each maps to one HTTP status in the service: ``UnknownTaskError`` 404, ``InputError`` 422,
``TemplateError`` 400 (render failure) or a load/validate error, ``ContractError`` 502-style
"the model broke its output contract" (it carries the raw model text).
"""

from __future__ import annotations

from domain_lm.errors import DomainLMError


class TemplateError(DomainLMError):
    """A template file is invalid, or a template failed to render.

    ``file`` and ``line`` (1-based) point at the offending YAML node when known, and ``str(e)``
    starts with ``file:line:`` so editors and CI logs can jump to it.
    """

    def __init__(self, message: str, file: str | None = None, line: int | None = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        where = f"{file}:{line}: " if file and line else (f"{file}: " if file else "")
        super().__init__(where + message)


class InputError(DomainLMError, ValueError):
    """Inputs for a task are invalid; ``field`` names the offending input field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"input {field!r}: {message}")


class ContractError(DomainLMError, ValueError):
    """A model output (or a value) breaks the task's output contract; ``raw`` is the text checked."""

    def __init__(self, message: str, raw: str, task: str | None = None) -> None:
        self.message = message
        self.raw = raw
        self.task = task
        prefix = f"task {task!r}: " if task else ""
        shown = raw if len(raw) <= 300 else raw[:300] + "…"
        super().__init__(f"{prefix}{message} (raw output: {shown!r})")

    def with_task(self, task: str) -> "ContractError":
        """The same error naming ``task`` (subclasses with other fields override it to keep them)."""
        return ContractError(self.message, raw=self.raw, task=task)


class UnknownTaskError(DomainLMError, KeyError):
    """No template with that name (or version) is registered."""

    def __init__(self, name: str, version: int | None = None, known: list[str] | None = None) -> None:
        self.name = name
        self.version = version
        what = f"{name!r} version {version}" if version is not None else repr(name)
        hint = f"; known tasks: {', '.join(known)}" if known else ""
        super().__init__(f"unknown task {what}{hint}")

    def __str__(self) -> str:  # KeyError would quote the whole message
        return self.args[0]
