"""MiniImageNet (Vinyals et al. 2016) with the 64/16/20 split of Ravi & Larochelle 2017.

Three forms, detected per split from what is in the root folder:

* ``meta_train.npz`` / ``meta_val.npz`` / ``meta_test.npz``: original JPEG
  bytes (``jpeg_bytes`` uint8, ``jpeg_offsets`` int64 N+1, ``labels``,
  ``classes`` = wnids, optional ``class_names`` and ``filenames``);
* the Ravi CSVs ``train.csv`` / ``val.csv`` / ``test.csv`` (header
  ``filename,label``) with the pictures in ``<root>/images/<filename>``;
* image folders ``<root>/<split or train|val|test>/<wnid>/*.jpg``.

Pictures are decoded with Pillow and resized to ``size`` (84) once; the
decoded uint8 array is kept in ``mini-imagenet/`` of purer's cache folder
(``$PURER_CACHE``, default ``~/.cache/purer``), keyed by the source files' paths, sizes and mtimes, so
the next process loads it in a second. Class names are the wnids, sorted;
``class_ids`` index the sorted list of all 100 MiniImageNet wnids.
"""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from purer_plugins.datasets import MiniImageNetOptions

from purer.api import (
    ClassIndex,
    DataError,
    DatasetReader,
    InputSpace,
    SplitData,
    SplitMissing,
    cache_dir,
    cached_array,
    check_split,
    decode_many,
    file_signature,
    files_digest,
    load_npz,
    make_split,
    resolve_root,
    scan_image_folder,
    share,
    to_nchw,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SHORT = {"meta_train": "train", "meta_val": "val", "meta_test": "test"}
HINT = ("meta_test.npz (jpeg bytes), train.csv/val.csv/test.csv with images/, "
        "or train/<wnid>/*.jpg folders")
CACHE_VERSION = "1"
# The split lists, and indices among all 100 wnids as global class ids.
CLASSES = ClassIndex("mini_imagenet_split.json", "all_wnids")


class MiniImageNet(DatasetReader):
    """MiniImageNet from JPEG-bytes npz, Ravi CSVs or image folders."""

    Options = MiniImageNetOptions

    def load(self, split: str) -> SplitData:
        check_split(split, "mini-imagenet")
        opts = self.options
        root = resolve_root(opts.root, "mini-imagenet", "mini-imagenet", HINT)
        layout = opts.layout if opts.layout != "auto" else detect(root, split)
        cache = str(cache_dir(opts.cache_dir) / "mini-imagenet") if opts.disk_cache else None
        if layout == "npz":
            path = root / f"{split}.npz"
            return share(_load_npz(path, file_signature(path, "split file"), opts.size, cache))
        if layout == "csv":
            path = root / f"{SHORT[split]}.csv"
            files, _ = read_csv(path, root / "images")
            digest = files_digest([path, *files])
            return share(_load_csv(path, digest, opts.size, cache))
        folder = split_folder(root, split)
        digest = files_digest(scan_image_folder(folder)[0])
        return share(_load_folder(folder, digest, opts.size, cache))


def detect(root: Path, split: str) -> str:
    """npz, then the Ravi CSV, then a folder per split."""
    if (root / f"{split}.npz").is_file():
        return "npz"
    if (root / f"{SHORT[split]}.csv").is_file():
        return "csv"
    if (root / split).is_dir() or (root / SHORT[split]).is_dir():
        return "folders"
    raise SplitMissing(f"{root}: split {split} not found (expected {split}.npz, "
                    f"{SHORT[split]}.csv with images/, or {SHORT[split]}/<wnid>/ folders)")


def split_folder(root: Path, split: str) -> Path:
    for name in (split, SHORT[split]):
        if (root / name).is_dir():
            return root / name
    raise SplitMissing(f"{root / split}: split folder not found")


def _space(size: int) -> InputSpace:
    return InputSpace(size, MEAN, STD)


def _decoded(cache: str | None, key: str, n: int, size: int, build: Any) -> np.ndarray:
    return cached_array(None if cache is None else Path(cache), key, build, (n, size, size, 3))


# ---------------------------------------------------------------------- npz
@lru_cache(maxsize=3)
def _load_npz(path: Path, signature: tuple, size: int, cache: str | None) -> SplitData:
    arrays = load_npz(path, {"jpeg_bytes": "u", "jpeg_offsets": "iu", "labels": "iu",
                             "classes": "U"})
    data, offsets = arrays["jpeg_bytes"], arrays["jpeg_offsets"].astype(np.int64)
    labels = arrays["labels"].astype(np.int64)
    _check_offsets(path, data, offsets, len(labels))
    names = _filenames(path, len(labels))

    def build() -> np.ndarray:
        return decode_many(range(len(labels)), size, lambda i: f"{path}[{names[i]}]",
                           lambda i: data[offsets[i]:offsets[i + 1]].tobytes())

    pixels = _decoded(cache, f"npz|{signature}|{size}|{CACHE_VERSION}", len(labels), size, build)
    wnids = [str(c) for c in arrays["classes"].tolist()]
    return make_split(to_nchw(pixels, path), labels, wnids, _space(size), path, CLASSES.global_ids(wnids))


def _check_offsets(path: Path, data: np.ndarray, offsets: np.ndarray, n: int) -> None:
    if data.ndim != 1 or data.dtype != np.uint8:
        raise DataError(f"{path}: jpeg_bytes must be a flat uint8 array")
    if offsets.shape != (n + 1,) or offsets[0] != 0 or offsets[-1] != data.size \
            or bool((np.diff(offsets) <= 0).any()):
        raise DataError(f"{path}: jpeg_offsets must rise from 0 to {data.size} in "
                        f"{n + 1} steps (one more than labels)")


def _filenames(path: Path, n: int) -> list[str]:
    """File names for error messages; indices when the npz has none."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "filenames" in archive.files and archive["filenames"].shape == (n,):
                return [str(f) for f in archive["filenames"].tolist()]
    except (OSError, ValueError):
        pass
    return [str(i) for i in range(n)]


# ---------------------------------------------------------------------- csv
def read_csv(path: Path, images: Path) -> tuple[list[Path], list[str]]:
    """Ravi CSV (``filename,label``) -> image paths and their wnids."""
    try:
        with path.open(newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise DataError(f"{path}: expected the header 'filename,label'")
    body = [r for r in rows[1:] if r]
    bad = next((i for i, r in enumerate(body) if len(r) != 2), None)
    if bad is not None:
        raise DataError(f"{path}: line {bad + 2} does not have 2 columns")
    if not body:
        raise DataError(f"{path}: no images listed")
    return [images / r[0].strip() for r in body], [r[1].strip() for r in body]


@lru_cache(maxsize=3)
def _load_csv(path: Path, digest: str, size: int, cache: str | None) -> SplitData:
    files, wnids = read_csv(path, path.parent / "images")
    pixels = _decoded(cache, f"csv|{digest}|{size}|{CACHE_VERSION}", len(files), size,
                      lambda: decode_many(files, size, lambda i: files[i]))
    names = sorted(set(wnids))
    index = {w: i for i, w in enumerate(names)}
    labels = np.array([index[w] for w in wnids], dtype=np.int64)
    return make_split(to_nchw(pixels, path), labels, names, _space(size), path, CLASSES.global_ids(names))


# ---------------------------------------------------------------------- folders
@lru_cache(maxsize=3)
def _load_folder(folder: Path, digest: str, size: int, cache: str | None) -> SplitData:
    files, labels, names = scan_image_folder(folder)
    pixels = _decoded(cache, f"folders|{digest}|{size}|{CACHE_VERSION}", len(files), size,
                      lambda: decode_many(files, size, lambda i: files[i]))
    return make_split(to_nchw(pixels, folder), np.asarray(labels, dtype=np.int64), names,
                      _space(size), folder, CLASSES.global_ids(names))
