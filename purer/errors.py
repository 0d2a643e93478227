"""Errors that reach the user as one line: what, where, and what is allowed."""


class PurerError(Exception):
    """Base class: the CLI prints ``str(error)`` alone, without a traceback."""


class PluginError(PurerError):
    """A plugin could not be loaded or registered something invalid."""


class ConfigError(PurerError):
    """A configuration value is missing or not allowed."""


class DataError(PurerError):
    """A dataset file is missing, corrupt or not what it claims to be."""


class SplitMissing(DataError):
    """A dataset folder holds no file or folder for one split (some folders
    hold only some splits; a split that is there but unreadable is a plain
    :class:`DataError`)."""


class ZooError(PurerError):
    """A teacher's weights or manifest entry is missing, corrupt or inconsistent."""


class RunError(PurerError):
    """A run folder is in use or taken, or its checkpoints are corrupt or cannot be written."""


class DivergenceError(PurerError):
    """Training produced a NaN/Inf loss or an exploding memory."""
