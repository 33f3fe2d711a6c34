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
