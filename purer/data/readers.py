"""Helpers shared by the dataset readers: checking, decoding, packing, caching.

Every reader ends in :func:`make_split`, so all of them hand out the same
layout: uint8 NCHW images grouped by label, labels 0..K-1 following the
alphabetical order of the class names. Every fault a user can cause (missing
folder, truncated file, bad array, damaged compression, unsafe pickle)
becomes a one-line :class:`~purer.errors.DataError` that starts with the
path it concerns. Readers size what they allocate from what the file says
and check that size before allocating (:func:`load_npz`,
:class:`PlainDataUnpickler`), so a small hostile file cannot ask for tens of
GiB.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from purer.errors import DataError, SplitMissing
from purer.types import InputSpace, SplitData

SPLITS = ("meta_train", "meta_val", "meta_test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DATA_DIR_ENV = "PURER_DATA_DIR"


# ---------------------------------------------------------------------- places
class ClassIndex:
    """A dataset's shipped class lists (a JSON file under ``purer/data``) and
    the dataset-global id of each class name.

    Global ids tell teachers' classes apart across splits and zoos: two
    teachers share a class exactly when they share its id.
    """

    def __init__(self, filename: str, all_key: str) -> None:
        self.filename, self.all_key = filename, all_key

    @functools.cached_property
    def lists(self) -> dict[str, Any]:
        """The JSON's content: split lists and the list of all class names."""
        import json
        from importlib import resources

        return json.loads(resources.files("purer.data").joinpath(self.filename).read_text())

    def global_ids(self, names: Sequence[str]) -> list[int] | None:
        """Each name's index in the full class list; None if any name is foreign."""
        index = {n: i for i, n in enumerate(self.lists[self.all_key])}
        return [index[n] for n in names] if all(n in index for n in names) else None


def check_split(split: str, dataset: str) -> str:
    """Refuse split names other than the three meta splits, early and by name."""
    if split not in SPLITS:
        raise DataError(f"{dataset}: unknown split {split!r} (allowed: {', '.join(SPLITS)})")
    return split


def resolve_root(root: str | None, dataset: str, env_subdir: str, hint: str) -> Path:
    """The dataset folder: ``root``, else ``$PURER_DATA_DIR/<env_subdir>``.

    A missing folder is the most common user error, so the message says what
    the folder should contain (``hint``).
    """
    if root is None:
        base = os.environ.get(DATA_DIR_ENV)
        if not base:
            raise DataError(f"{dataset}: no root folder given; pass --root DIR (or set "
                            f"{DATA_DIR_ENV}) pointing at {hint}")
        path = Path(base).expanduser() / env_subdir
    else:
        path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"{path}: {dataset} root folder not found (expected {hint})")
    return path


def file_signature(path: Path, what: str = "file") -> tuple[str, int, int]:
    """(absolute path, size, mtime) of a file: the key of every cache, so an
    edited or replaced file is read again."""
    try:
        st = path.stat()
    except FileNotFoundError:
        error = SplitMissing if what == "split file" else DataError
        raise error(f"{path}: {what} not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def files_digest(files: Sequence[Path]) -> str:
    """sha256 over the signatures of many files (an image folder or CSV list)."""
    h = hashlib.sha256()
    for f in files:
        h.update(repr(file_signature(f)).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------- arrays
def to_nchw(images: np.ndarray, where: str | Path) -> Tensor:
    """uint8 NHWC numpy array -> contiguous uint8 NCHW tensor (one copy)."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"{where}: images must be uint8 N x H x W x 3, got "
                        f"{images.dtype} {tuple(images.shape)}")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def make_split(images: Tensor, labels: np.ndarray | Tensor, class_names: Sequence[str],
               space: InputSpace, where: str | Path,
               class_ids: Sequence[int] | None = None) -> SplitData:
    """Check one split and bring it to the common layout.

    ``labels`` index ``class_names`` (any order). The result's class names are
    sorted alphabetically (the order torchvision's ImageFolder gives), labels
    are remapped to follow them and images are grouped by label, keeping their
    order inside a class, so every form of a dataset yields the same labels.
    """
    labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels)
    names = [str(n) for n in class_names]
    _check_arrays(images, labels, names, space, where, class_ids)
    order = sorted(range(len(names)), key=names.__getitem__)
    remap = torch.empty(len(names), dtype=torch.int64)
    remap[torch.tensor(order, dtype=torch.int64)] = torch.arange(len(names))
    labels = remap[labels.long()]
    if labels.numel() > 1 and bool((labels[1:] < labels[:-1]).any()):
        grouping = torch.argsort(labels, stable=True)
        images, labels = images[grouping], labels[grouping]
    ids = None if class_ids is None else [int(class_ids[i]) for i in order]
    return SplitData(images.contiguous(), labels.contiguous(), [names[i] for i in order],
                     space, ids)


def _check_arrays(images: Tensor, labels: Tensor, names: list[str], space: InputSpace,
                  where: str | Path, class_ids: Sequence[int] | None) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise DataError(f"{where}: images must be uint8 N x 3 x H x W, got "
                        f"{images.dtype} {tuple(images.shape)}")
    if tuple(images.shape[2:]) != (space.size, space.size):
        raise DataError(f"{where}: images are {images.shape[2]}x{images.shape[3]}, "
                        f"expected {space.size}x{space.size}")
    if labels.dim() != 1 or labels.numel() != images.shape[0] or labels.is_floating_point():
        raise DataError(f"{where}: labels must be {images.shape[0]} integers, got "
                        f"{labels.dtype} {tuple(labels.shape)}")
    if len(set(names)) != len(names) or not names:
        raise DataError(f"{where}: class names must be non-empty and distinct")
    if class_ids is not None and len(class_ids) != len(names):
        raise DataError(f"{where}: {len(class_ids)} class ids for {len(names)} classes")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(names)):
        raise DataError(f"{where}: labels must lie in 0..{len(names) - 1}, found "
                        f"{int(labels.min())}..{int(labels.max())}")
    counts = torch.bincount(labels.long(), minlength=len(names))
    empty = [names[i] for i in torch.nonzero(counts == 0).flatten().tolist()]
    if empty:
        raise DataError(f"{where}: class {empty[0]!r} has no images")


def share(split: SplitData) -> SplitData:
    """A new SplitData over the same (cached) tensors, so a caller reassigning
    a field cannot change what the next caller gets. Treat tensors as read-only."""
    return SplitData(split.images, split.labels, list(split.class_names), split.space,
                     None if split.class_ids is None else list(split.class_ids))


# ---------------------------------------------------------------------- npz
def memory_limit() -> int:
    """The most bytes one array read from a file may take: half of this
    machine's physical memory (no dataset split of purer's comes close)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (AttributeError, ValueError, OSError):  # pragma: no cover (not POSIX)
        return 64 << 30


def _npy_header(fh: Any) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from the header of a ``.npy`` stream."""
    fmt = np.lib.format
    version = fmt.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = fmt.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, _, dtype = fmt.read_array_header_2_0(fh)
    else:
        shape, _, dtype = fmt._read_array_header(fh, version)  # (3, 0): utf-8 field names
    return tuple(int(n) for n in shape), np.dtype(dtype)


def _gib(nbytes: int) -> str:
    return f"{nbytes / (1 << 30):.1f} GiB" if nbytes >= 1 << 30 else f"{nbytes:,} bytes"


def load_npz(path: Path, required: dict[str, str]) -> dict[str, np.ndarray]:
    """Read the named arrays of an ``.npz`` without pickle.

    ``required`` maps array name to the numpy dtype kinds allowed ("u", "i",
    "iu", "U", ...). Anything that would need pickle (object arrays) refuses
    to load, so a hostile file cannot run code. Each array's header is read
    first: its size must agree with what the archive says the member holds
    and stay within :func:`memory_limit`, before anything is allocated.
    """
    if not path.is_file():
        raise SplitMissing(f"{path}: split file not found")
    out: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            members = {n[:-4]: n for n in archive.namelist() if n.endswith(".npy")}
            missing = [k for k in required if k not in members]
            if missing:
                raise DataError(f"{path}: missing array {missing[0]!r} "
                                f"(has: {', '.join(members) or 'nothing'})")
            for key in required:
                info = archive.getinfo(members[key])
                with archive.open(info) as fh:
                    shape, dtype = _npy_header(fh)
                if dtype.hasobject:
                    raise DataError(f"{path}: corrupt or unreadable npz (array {key!r} holds "
                                    "Python objects, which would need pickle; refused)")
                nbytes = math.prod(shape) * dtype.itemsize
                if nbytes > info.file_size:
                    raise DataError(f"{path}: array {key!r} claims shape {shape} "
                                    f"({_gib(nbytes)}) but its member holds {_gib(info.file_size)}")
                if nbytes > memory_limit():
                    raise DataError(f"{path}: array {key!r} would take {_gib(nbytes)}, more than "
                                    f"half of this machine's memory")
                with archive.open(info) as fh:
                    out[key] = np.lib.format.read_array(fh, allow_pickle=False)
                    fh.read()  # to the end of the member, where its CRC-32 is checked
    except DataError:
        raise
    except Exception as exc:  # a damaged archive breaks zipfile, zlib or numpy's header parser
        raise DataError(f"{path}: corrupt or unreadable npz ({type(exc).__name__}: "
                        f"{_one_line(exc)})") from None
    for key, kinds in required.items():
        if out[key].dtype.kind not in kinds:
            raise DataError(f"{path}: array {key!r} has dtype {out[key].dtype}, expected "
                            f"kind {kinds!r}")
    return out


# ---------------------------------------------------------------------- images
def decode_image(data: bytes | Path, size: int, where: str | Path) -> np.ndarray:
    """One image file or encoded bytes -> uint8 ``size`` x ``size`` x 3 RGB.

    JPEGs are decoded at reduced resolution when they are much larger than
    ``size`` (``Image.draft``), then resized bilinearly; same pixels every time.
    """
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            img.draft("RGB", (size, size))
            img = img.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"{where}: corrupt or unreadable image ({_one_line(exc)})") from None


def decode_many(items: Sequence[Any], size: int, where: Callable[[int], str | Path],
                load: Callable[[Any], bytes | Path] = lambda x: x) -> np.ndarray:
    """Decode many images in threads (Pillow releases the GIL while decoding)
    into one uint8 N x size x size x 3 array."""
    out = np.empty((len(items), size, size, 3), dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = decode_image(load(items[i]), size, where(i))

    workers = max(1, min(8, os.cpu_count() or 1))
    if len(items) < 64 or workers == 1:
        for i in range(len(items)):
            work(i)
        return out
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(work, range(len(items)), chunksize=64):
            pass
    return out


def scan_image_folder(split_dir: Path) -> tuple[list[Path], list[int], list[str]]:
    """``split_dir/<class>/<image>`` -> (files, labels, class names).

    Classes and files are sorted by name, so the listing (and the labels)
    do not depend on the file system.
    """
    if not split_dir.is_dir():
        raise SplitMissing(f"{split_dir}: split folder not found")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{split_dir}: no class folders inside")
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = sorted(p for p in (split_dir / name).iterdir()
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise DataError(f"{split_dir / name}: class folder holds no images "
                            f"({', '.join(IMAGE_SUFFIXES)})")
        files += found
        labels += [label] * len(found)
    return files, labels, classes


# ---------------------------------------------------------------------- pickle
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside the plain-data allow-list."""


class RefusedAllocation(pickle.UnpicklingError):
    """A pickle asked for more memory than its own size can account for."""


def _reconstruct_function() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class PlainDataUnpickler(pickle.Unpickler):
    """An unpickler that builds plain data only, within a memory budget.

    The CIFAR pickles hold dicts, lists, strings, ints and numpy arrays; the
    only globals they need are numpy's array reconstruction. Every other
    global (``os.system``, ``builtins.eval``, ...) is refused, so a hostile
    file cannot run code while it loads.

    Arrays are the one way a few bytes of pickle can ask for much memory
    (a shape of 10**10 costs a dozen bytes; one string referenced by many
    arrays is copied into each). Every array allocation is sized before it
    happens and counted against ``budget`` bytes (by default twice the
    file's size, about what a real pickle of arrays needs).
    """

    def __init__(self, file: Any, budget: int, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.budget = budget
        unpickler = self

        class BoundedArray(np.ndarray):
            """ndarray whose construction and unpickled state are paid for first."""

            def __new__(cls, shape: Any, dtype: Any = float, *args: Any, **kw: Any) -> Any:
                unpickler.allocate(shape, dtype)
                return super().__new__(cls, shape, dtype, *args, **kw)

            def __setstate__(self, state: Any) -> None:
                if isinstance(state, tuple) and len(state) in (4, 5):
                    shape, dtype = state[-4], state[-3]
                    unpickler.allocate(shape, dtype)
                super().__setstate__(state)

        self.array_type = BoundedArray

    def allocate(self, shape: Any, dtype: Any) -> None:
        """Pay for an array of ``shape`` and ``dtype`` out of the budget."""
        try:
            dims = (shape,) if isinstance(shape, int) else tuple(shape)
            nbytes = math.prod(int(n) for n in dims) * np.dtype(dtype).itemsize
        except (TypeError, ValueError, OverflowError) as exc:
            raise pickle.UnpicklingError(f"bad array shape or dtype ({_one_line(exc)})") from None
        if nbytes < 0 or nbytes > self.budget:
            raise RefusedAllocation(f"an array of shape {dims} would take {_gib(nbytes)}, more "
                                    "than the file's size accounts for")
        self.budget -= nbytes

    def reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> Any:
        self.allocate(shape, dtype)
        return _reconstruct_function()(self.array_type, shape, dtype)

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _NUMPY_GLOBALS:
            raise RefusedGlobal(f"refused global {module}.{name}")
        if name == "_reconstruct":
            return self.reconstruct
        if name == "ndarray":
            return self.array_type
        return getattr(np, name)


def _plain(value: Any) -> Any:
    """The unpickled tree with plain ndarrays (views, no copies) for the bounded ones."""
    if isinstance(value, np.ndarray):
        return value.view(np.ndarray)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


def load_plain_pickle(path: Path, budget: int | None = None) -> Any:
    """Load a pickle of plain data (see :class:`PlainDataUnpickler`).

    ``encoding="latin1"`` reads the Python 2 pickles CIFAR ships, whose array
    bytes are stored as 8-bit strings. ``budget``: the most bytes of arrays
    the pickle may build (default: twice the file's size plus 1 MiB).
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            allowed = budget if budget is not None else 2 * size + (1 << 20)
            unpickler = PlainDataUnpickler(fh, allowed, encoding="latin1")
            return _plain(unpickler.load())
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except RefusedGlobal as exc:
        raise DataError(f"{path}: not a plain-data pickle ({_one_line(exc)})") from None
    except RefusedAllocation as exc:
        raise DataError(f"{path}: refused: {_one_line(exc)}") from None
    except (pickle.UnpicklingError, OSError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, MemoryError, OverflowError, RecursionError,
            UnicodeDecodeError) as exc:
        raise DataError(f"{path}: corrupt pickle ({type(exc).__name__}: "
                        f"{_one_line(exc)})") from None


# ---------------------------------------------------------------------- disk cache
def cached_array(root: Path | None, key: str, build: Callable[[], np.ndarray],
                 shape: tuple[int, ...] | None = None) -> np.ndarray:
    """``build()`` once, then read it back from ``root/<sha256(key)>.npy``.

    Decoding thousands of JPEGs takes minutes; the decoded array loads in a
    second. ``key`` must name everything the pixels depend on (file paths,
    sizes, mtimes, target size). The file is written to a temporary name and
    renamed, so a crash or a parallel process never leaves a half file. With
    ``root=None`` nothing is stored. A cache that cannot be read or written,
    or holds an array of another ``shape``, is ignored: it only saves time.
    """
    if root is None:
        return build()
    target = root / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.npy"
    if target.is_file():
        try:
            array = np.load(target, allow_pickle=False)
            if array.dtype == np.uint8 and (shape is None or array.shape == shape):
                return array
        except (OSError, ValueError, EOFError):
            pass
    array = build()
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=root, prefix=".partial-", suffix=".npy")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, array, allow_pickle=False)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass
    return array


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
