"""User-facing error types.

Every mistake a user can make (bad config value, missing dataset, corrupt checkpoint)
raises a subclass of :class:`HbnnError`, which is also a ``ValueError`` so plain Python
callers can catch it the usual way. The CLI turns any of them into one line on stderr
and exit code 2.
"""

from __future__ import annotations

__all__ = ["HbnnError", "ConfigError", "DatasetError", "CheckpointError", "FormatError", "DistError"]


class HbnnError(ValueError):
    """Base class of all user-facing hbnn errors (message = one line saying what and how to fix)."""


class ConfigError(HbnnError):
    """An invalid configuration key or value."""


class DatasetError(HbnnError):
    """A dataset that is missing, truncated or in the wrong format."""


class CheckpointError(HbnnError):
    """A checkpoint that is corrupt, truncated, or of an incompatible schema."""


class FormatError(HbnnError):
    """A packed-model file that is corrupt, truncated, or of an unknown version."""


class DistError(HbnnError):
    """A distributed (torchrun) job that cannot go on: a peer process died, hung or was stopped."""
