"""The lmlab version, written into every saved config.json as `lmlab_version`."""

__version__ = "0.1.0"
