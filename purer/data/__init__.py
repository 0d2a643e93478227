"""Datasets (through dataset plugins) and few-shot episodes."""

from __future__ import annotations

import pickle
import zipfile
import zlib
from typing import TYPE_CHECKING, Any

from purer.errors import DataError, PurerError

if TYPE_CHECKING:
    from purer.config import PluginSection
    from purer.interfaces import DatasetReader
    from purer.types import SplitData

# What a reader may raise on a file it cannot make sense of, when it did not
# turn the fault into a DataError itself.
READER_FAULTS = (ValueError, TypeError, KeyError, IndexError, OSError, EOFError, MemoryError,
                 OverflowError, UnicodeError, zlib.error, zipfile.BadZipFile,
                 pickle.UnpicklingError)


def load_split(name: str, split: str, root: str | None = None, **options: Any) -> SplitData:
    """Load one split of dataset plugin ``name`` ("meta_train", "meta_val", "meta_test")."""
    from purer.plugins import get_host

    reader = get_host().create("dataset", name, {"root": root, **options}, section="data")
    return _load(reader, name, split)


def read_split(data: PluginSection, split: str) -> SplitData:
    """One split of the dataset a config's ``[data]`` section describes."""
    from purer.plugins import get_host

    return _load(get_host().create("dataset", data.name, data.options, section="data"),
                 data.name, split)


def _load(reader: DatasetReader, name: str, split: str) -> SplitData:
    """``reader.load(split)``; any reader fault reaches the user as one DataError line."""
    try:
        return reader.load(split)
    except PurerError:
        raise
    except READER_FAULTS as exc:
        text = str(exc).strip()
        first = text.splitlines()[0][:300] if text else ""
        raise DataError(f"dataset '{name}', split {split}: cannot be read "
                        f"({type(exc).__name__}{': ' + first if first else ''})") from None
