"""The error and warning types raised while reading datasets."""
from __future__ import annotations

import os
import sys
import warnings


class DataError(ValueError):
    """A dataset on disk is missing, malformed or inconsistent.

    The message always names the offending file and, where there is one, the
    offending row (1-based line of an ``.inter`` file, user key of a JSON split,
    row index of an ``.npy`` matrix) and value.
    """


class DataWarning(UserWarning):
    """Something in a dataset was repaired or excluded (duplicates, cold users)."""


def warn_data(message: str) -> None:
    """Issue a :class:`DataWarning` attributed to the first caller outside ckdlab.

    The warning then shows the user's own line (``data = load(...)`` in a
    notebook or script) rather than a line inside the package.
    """
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = sys._getframe(1), 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package_dir + os.sep):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, DataWarning, stacklevel=level)
