"""User-facing errors. The CLI prints these as one paragraph and exits non-zero, no traceback."""


class DomainLMError(Exception):
    """An error the user can fix; the message says what went wrong and how to fix it."""


class ConfigError(DomainLMError):
    """The pipeline config (or an override) is invalid."""


class ModelNotFoundError(DomainLMError):
    """A base model or checkpoint is missing from the model store."""


class DataError(DomainLMError):
    """An input data path is missing, unreadable or malformed."""


class NotAvailableError(DomainLMError):
    """A capability that this build does not provide (the message names the alternative)."""
