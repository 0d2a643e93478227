"""Where purer keeps what it can rebuild: cached zoos and decoded images.

One folder, ``~/.cache/purer`` unless ``PURER_CACHE`` names another. The
older ``PURER_CACHE_DIR`` (decoded images only) is still read, with a
deprecation warning, when ``PURER_CACHE`` is unset.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

CACHE_ENV = "PURER_CACHE"
DEPRECATED_CACHE_ENV = "PURER_CACHE_DIR"


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """``explicit`` when given, else ``$PURER_CACHE``, else ``~/.cache/purer``."""
    if explicit is not None:
        return Path(explicit).expanduser()
    value = os.environ.get(CACHE_ENV)
    if not value and os.environ.get(DEPRECATED_CACHE_ENV):
        warnings.warn(f"{DEPRECATED_CACHE_ENV} is deprecated; set {CACHE_ENV} instead "
                      "(it holds cached zoos and decoded images alike)", DeprecationWarning,
                      stacklevel=2)
        value = os.environ[DEPRECATED_CACHE_ENV]
    return Path(value).expanduser() if value else Path.home() / ".cache" / "purer"
