"""User-facing errors: one line that says what was expected and where.

The CLI prints these without a traceback and exits non-zero; anything else is a bug.
"""


class LmlabError(Exception):
    """Base class of every error meant for a user."""


class ConfigError(LmlabError):
    """A config value, preset, family name or config file is wrong."""


class CheckpointError(LmlabError):
    """A model dir or checkpoint is missing, incomplete or corrupt."""


class DataError(LmlabError):
    """A corpus, shard or task file is missing, malformed or too small."""


class TokenizerError(LmlabError):
    """A tokenizer file is missing or does not fit its model."""


class GenerationError(LmlabError):
    """A generation request is out of range (prompt length, sampling parameters)."""


class ConversionError(LmlabError):
    """A foreign checkpoint layout cannot be converted."""


class OutputError(LmlabError):
    """An output cannot be written: the disk is full, the folder read-only or gone."""


class Stopped(LmlabError):
    """A run stopped on request (SIGTERM, SIGINT) after writing a checkpoint; the CLI exits with
    `exit_code` (128 + the signal's number)."""

    def __init__(self, message: str, exit_code: int = 143):
        super().__init__(message)
        self.exit_code = exit_code


class CollectiveError(LmlabError):
    """Under torchrun, a collective did not complete: another process stalled past the timeout or died."""
