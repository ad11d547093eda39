"""The error and warning types raised while reading datasets."""
from __future__ import annotations


class DataError(ValueError):
    """A dataset on disk is missing, malformed or inconsistent.

    The message always names the offending file and, where there is one, the
    offending row (1-based line of an ``.inter`` file, user key of a JSON split,
    row index of an ``.npy`` matrix) and value.
    """


class DataWarning(UserWarning):
    """Something in a dataset was repaired or excluded (duplicates, cold users)."""
