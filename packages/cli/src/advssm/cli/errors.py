"""The two kinds of error the CLI reports: a bad configuration (exit 2) and a runtime failure (exit 1)."""
from __future__ import annotations


class ConfigError(ValueError):
    """An unknown or invalid setting; the message names the key and the fix. Exit code 2."""


class DataError(RuntimeError):
    """A data set that cannot be found or read; the message says where to put which files. Exit code 1."""
