"""Errors that users see. Each one states the rule, the bad value and where it came from."""

from __future__ import annotations

from typing import Any


class AutocompressError(Exception):
    """Base class of every error autocompress raises on purpose (the CLI prints these without a traceback)."""

    exit_code = 1


class ConfigError(AutocompressError):
    """A study config or search space is invalid.

    The message names the file, the field path (``search.groups[1].weight_bits``), the bad value and what is
    allowed, e.g. ``studies/a.yaml: sparsity: must be in [0, 1), but got 1.5``.
    """

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None,
                 value: Any = None, allowed: str | None = None, has_value: bool = False) -> None:
        self.file, self.field, self.value, self.allowed = file, field, value, allowed
        parts = []
        if file:
            parts.append(str(file))
        if field:
            parts.append(f"field `{field}`")
        where = ": ".join(parts)
        text = message
        if has_value or value is not None:
            text += f" (got {value!r})"
        if allowed:
            text += f"; allowed: {allowed}"
        super().__init__(f"{where}: {text}" if where else text)


class TaskError(AutocompressError):
    """A task could not be loaded or returned something unusable."""

    exit_code = 2


class StudyNotFoundError(AutocompressError):
    """A study folder, database or study name does not exist."""

    exit_code = 2
