"""CIFAR-FS: CIFAR-100 with the 64/16/20 class split of Bertinetto et al. 2018.

Three forms are read, detected from what is in the root folder:

* ``meta_train.npz`` / ``meta_val.npz`` / ``meta_test.npz``: arrays
  ``images`` (uint8 N x 32 x 32 x 3), ``labels``, ``classes``, ``class_ids``;
* torchvision's ``cifar-100-python`` folder (``train``, ``test``, ``meta``
  pickles), either the root itself or a sub-folder of it; all 600 images of a
  class (official train then test images) belong to its split;
* image folders ``<root>/<split>/<class>/*.png``.

Class names are sorted alphabetically inside each split (labels follow that
order); ``class_ids`` are CIFAR-100 fine-label indices (apple=0 ... worm=99).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from purer_plugins.datasets import CifarFSOptions

from purer.api import (
    ClassIndex,
    DataError,
    DatasetReader,
    InputSpace,
    SplitData,
    SplitMissing,
    check_split,
    decode_many,
    file_signature,
    files_digest,
    load_npz,
    load_plain_pickle,
    make_split,
    resolve_root,
    scan_image_folder,
    share,
    to_nchw,
)

SPACE = InputSpace(32, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))
PICKLE_DIR = "cifar-100-python"
PICKLE_FILES = ("train", "test", "meta")
HINT = (f"a folder with meta_train.npz/meta_val.npz/meta_test.npz, a {PICKLE_DIR}/ folder "
        "(train, test, meta) or meta_train/<class>/*.png folders")
# The split lists, and CIFAR-100 fine-label indices as global class ids.
CLASSES = ClassIndex("cifar_fs_split.json", "fine_label_names")


class CifarFS(DatasetReader):
    """CIFAR-FS from npz files, the CIFAR-100 python pickles or PNG folders."""

    Options = CifarFSOptions

    def load(self, split: str) -> SplitData:
        check_split(split, "cifar-fs")
        root = resolve_root(self.options.root, "cifar-fs", "cifar-fs", HINT)
        layout = self.options.layout if self.options.layout != "auto" else detect(root, split)
        if layout == "npz":
            path = root / f"{split}.npz"
            return share(_load_npz(path, file_signature(path, "split file")))
        if layout == "pickle":
            folder = pickle_folder(root)
            sig = tuple(file_signature(folder / f) for f in PICKLE_FILES)
            return share(_load_pickle_split(str(folder), sig, split))
        files, _, _ = scan_image_folder(root / split)
        return share(_load_folder(str(root / split), files_digest(files)))


def pickle_folder(root: Path) -> Path:
    """``root/cifar-100-python`` or ``root`` itself when it holds the pickles."""
    for folder in (root / PICKLE_DIR, root):
        if all((folder / f).is_file() for f in PICKLE_FILES):
            return folder
    raise DataError(f"{root / PICKLE_DIR}: CIFAR-100 pickles not found (need "
                    f"{', '.join(PICKLE_FILES)})")


def detect(root: Path, split: str) -> str:
    """Pick the form from what is in ``root``: npz, then pickles, then folders."""
    if (root / f"{split}.npz").is_file():
        return "npz"
    if any((folder / "meta").is_file() for folder in (root / PICKLE_DIR, root)):
        return "pickle"
    if (root / split).is_dir():
        return "folders"
    if any((root / f"{s}.npz").is_file() or (root / s).is_dir() for s in CifarFS.splits):
        raise SplitMissing(f"{root}: split {split} missing (expected {split}.npz or {split}/)")
    raise DataError(f"{root}: no CIFAR-FS data found (expected {HINT})")


# ---------------------------------------------------------------------- npz
@lru_cache(maxsize=6)
def _load_npz(path: Path, signature: tuple) -> SplitData:
    arrays = load_npz(path, {"images": "u", "labels": "iu", "classes": "U", "class_ids": "iu"})
    images = to_nchw(arrays["images"], path)
    names = [str(c) for c in arrays["classes"].tolist()]
    return make_split(images, arrays["labels"].astype(np.int64), names, SPACE, path,
                      [int(i) for i in arrays["class_ids"].tolist()])


# ---------------------------------------------------------------------- pickles
@lru_cache(maxsize=1)
def _load_pickles(folder: str, signature: tuple) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """All 60,000 images (train then test file order), fine labels and names."""
    base = Path(folder)
    meta = load_plain_pickle(base / "meta")
    names = _field(meta, "fine_label_names", base / "meta")
    if not isinstance(names, (list, tuple)) or not names or \
            not all(isinstance(n, (str, bytes)) for n in names):
        raise DataError(f"{base / 'meta'}: 'fine_label_names' must be a list of class names")
    names = [n.decode("latin1") if isinstance(n, bytes) else n for n in names]
    parts, labels = [], []
    for name in ("train", "test"):
        part = load_plain_pickle(base / name)
        data = np.asarray(_field(part, "data", base / name))
        fine = _labels(_field(part, "fine_labels", base / name), len(names), base / name)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 \
                or len(fine) != len(data):
            raise DataError(f"{base / name}: 'data' must be uint8 N x 3072 with N fine labels, "
                            f"got {data.dtype} {data.shape} and {len(fine)} labels")
        parts.append(data.reshape(-1, 3, 32, 32))
        labels.append(fine)
    return torch.from_numpy(np.concatenate(parts)), np.concatenate(labels), \
        [str(n) for n in names]


def _labels(value: Any, classes: int, path: Path) -> np.ndarray:
    """``fine_labels`` as int64, each an index of ``fine_label_names``: an image
    with another label is an error, never silently left out of every split."""
    try:
        labels = np.asarray(value)
    except (ValueError, TypeError):
        labels = np.asarray([], dtype=object)
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise DataError(f"{path}: 'fine_labels' must be a list of integers, got "
                        f"{labels.dtype} {tuple(labels.shape)}")
    labels = labels.astype(np.int64)
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        bad = labels[(labels < 0) | (labels >= classes)]
        raise DataError(f"{path}: 'fine_labels' must lie in 0..{classes - 1} (one per "
                        f"fine_label_names entry); found {int(bad[0])} "
                        f"({bad.size} image(s) out of range)")
    return labels


def _field(obj: Any, key: str, path: Path) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise DataError(f"{path}: expected a dict with key {key!r}")
    return obj[key]


@lru_cache(maxsize=3)
def _load_pickle_split(folder: str, signature: tuple, split: str) -> SplitData:
    images, fine, all_names = _load_pickles(folder, signature)
    wanted = CLASSES.lists[split]
    missing = [n for n in wanted if n not in all_names]
    if missing:
        raise DataError(f"{Path(folder) / 'meta'}: class {missing[0]!r} of the CIFAR-FS "
                        f"{split} split is not among fine_label_names")
    index = np.array([all_names.index(n) for n in wanted])
    keep = np.isin(fine, index)
    local = np.searchsorted(np.sort(index), fine[keep])
    names = [all_names[i] for i in np.sort(index)]
    return make_split(images[torch.from_numpy(keep)], local, names, SPACE, folder,
                      CLASSES.global_ids(names))


# ---------------------------------------------------------------------- folders
@lru_cache(maxsize=3)
def _load_folder(folder: str, digest: str) -> SplitData:
    """``digest`` (over every file's size and mtime) only keys the cache."""
    files, labels, names = scan_image_folder(Path(folder))
    pixels = decode_many(files, SPACE.size, lambda i: files[i])
    return make_split(to_nchw(pixels, folder), np.asarray(labels, dtype=np.int64),
                      names, SPACE, folder, CLASSES.global_ids(names))
