"""Exceptions with one-line, user-facing messages.

The command-line tools catch :class:`EncdistError` and print ``error: <message>``
with no traceback; library users can catch the specific subclasses.
"""

__all__ = [
    "EncdistError",
    "ConfigError",
    "DatasetError",
    "CheckpointError",
    "BitstreamError",
    "PretrainedWeightsError",
]


class EncdistError(Exception):
    """Base class of every error this package raises on bad input."""


class ConfigError(EncdistError, ValueError):
    """A config names an unknown type, misses a required key or has a bad value."""


class DatasetError(EncdistError, OSError):
    """A dataset folder is missing or empty, or an image cannot be read."""


class CheckpointError(EncdistError, ValueError):
    """A checkpoint is unreadable or belongs to another architecture."""


class BitstreamError(EncdistError, ValueError):
    """A bitstream is empty, truncated, corrupt or made by another model configuration."""


class PretrainedWeightsError(EncdistError, RuntimeError):
    """Pretrained weights cannot be obtained (e.g. no network and no local checkpoint)."""
