"""The one exception hierarchy of agilenn.

Callers catch :class:`AgileNNError` to handle anything the library raises on bad
data; bad arguments from a programmer still raise ``ValueError``/``TypeError``.
"""

from __future__ import annotations


class AgileNNError(Exception):
    """Base class of every error agilenn raises on bad input data."""


class DataError(AgileNNError):
    """A dataset file is missing, truncated or not in the expected format."""


class CodecError(AgileNNError):
    """A feature payload cannot be decoded (malformed, truncated or foreign)."""


class CheckpointError(AgileNNError):
    """A checkpoint is corrupt, of an unknown format version, or inconsistent."""
