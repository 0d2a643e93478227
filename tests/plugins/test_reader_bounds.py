"""Hostile-but-fair dataset files: every reader failure is the documented
one-line DataError naming the file, labels out of range are errors (never
dropped images), and readers bound what they allocate from what the file
says before allocating."""

from __future__ import annotations

import io
import pickle
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from purer_plugins.datasets import cifar_fs
from purer_plugins.datasets.cifar_fs import CifarFS

from purer.data import load_split, readers
from purer.errors import DataError

NAMES = cifar_fs.CLASSES.lists["fine_label_names"]
MiB = 1 << 20


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PURER_CACHE", str(tmp_path / "cache"))
    cifar_fs._load_pickles.cache_clear()
    cifar_fs._load_pickle_split.cache_clear()
    cifar_fs._load_npz.cache_clear()


def write_pickles(folder: Path, train_labels: list) -> Path:
    """cifar-100-python with one image per class in `test` and ``train_labels`` in `train`."""
    folder.mkdir(parents=True)
    for name, labels in (("train", train_labels), ("test", list(range(100)))):
        data = np.zeros((len(labels), 3072), dtype=np.uint8)
        (folder / name).write_bytes(pickle.dumps({"data": data, "fine_labels": labels}, protocol=4))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": NAMES}, protocol=4))
    return folder


def read_error(root: Path, split: str = "meta_train") -> str:
    with pytest.raises(DataError) as error:
        CifarFS(CifarFS.Options(root=str(root))).load(split)
    message = str(error.value)
    assert "\n" not in message
    return message


def peak_bytes(action) -> int:
    """The most memory (numpy's and Python's) allocated while ``action`` runs."""
    tracemalloc.start()
    try:
        action()
    except DataError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


# ---------------------------------------------------------------------- labels
@pytest.mark.parametrize("bad", [100, 150, -1])
def test_cifar_pickle_labels_out_of_range_are_an_error_not_dropped_images(tmp_path, bad):
    folder = write_pickles(tmp_path / "cifar-100-python", [0, 1, bad, 2])
    message = read_error(tmp_path)
    assert message == (f"{folder / 'train'}: 'fine_labels' must lie in 0..99 (one per "
                       f"fine_label_names entry); found {bad} (1 image(s) out of range)")


@pytest.mark.parametrize("labels", [["apple", "bee"], [0, "1"], [0.5, 1.0], [[0], [1]]])
def test_cifar_pickle_labels_that_are_not_integers_are_one_line(tmp_path, labels):
    folder = write_pickles(tmp_path / "cifar-100-python", labels)
    assert read_error(tmp_path).startswith(f"{folder / 'train'}: 'fine_labels' must be a list of "
                                           "integers")


# ---------------------------------------------------------------------- npz
def damaged_npz(folder: Path, fault: type[BaseException]) -> Path:
    """``folder/meta_test.npz`` with one byte of the images' deflate stream
    changed so that ``np.load`` fails with ``fault``."""
    path = folder / "meta_test.npz"
    pattern = np.tile(np.arange(32, dtype=np.uint8), 2 * 32 * 32 * 3).reshape(64, 32, 32, 3)
    np.savez_compressed(path, images=pattern, labels=np.arange(64) % 2,
                        classes=np.array(NAMES[:2]), class_ids=np.array([0, 1]))
    original = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("images.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for offset in range(info.compress_size):
        data = bytearray(original)
        data[start + offset] ^= 0xFF
        path.write_bytes(bytes(data))
        try:
            with np.load(path) as archive:
                archive["images"]
        except fault:
            return path
        except Exception:
            continue
    raise AssertionError(f"no byte of the stream gives {fault}")


@pytest.mark.parametrize("fault", [zlib.error, zipfile.BadZipFile], ids=["zlib.error", "bad CRC"])
def test_npz_with_a_damaged_deflate_stream_is_one_line(tmp_path, fault):
    path = damaged_npz(tmp_path, fault)
    message = read_error(tmp_path, "meta_test")
    assert message.startswith(f"{path}: corrupt or unreadable npz ("), message


def _npz_with_header(path: Path, shape: tuple[int, ...]) -> None:
    """An npz whose images.npy header claims ``shape`` and holds 100 bytes of data."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": shape})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("images.npy", header.getvalue() + bytes(100))
        for key, value in (("labels", np.zeros(2, np.int64)), ("classes", np.array(NAMES[:2])),
                           ("class_ids", np.array([0, 1]))):
            buffer = io.BytesIO()
            np.save(buffer, value)
            archive.writestr(f"{key}.npy", buffer.getvalue())


def test_npz_header_claiming_more_than_it_holds_is_refused_before_allocating(tmp_path):
    path = tmp_path / "meta_test.npz"
    _npz_with_header(path, (100_000, 84, 84, 3))  # 2 GiB claimed, a few hundred bytes on disk
    assert peak_bytes(lambda: read_error(tmp_path, "meta_test")) < 16 * MiB
    message = read_error(tmp_path, "meta_test")
    assert message.startswith(f"{path}: array 'images' claims shape (100000, 84, 84, 3) (2.0 GiB)")


def test_npz_arrays_beyond_the_memory_limit_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "meta_test.npz"
    np.savez(path, images=np.zeros((4, 32, 32, 3), np.uint8), labels=np.arange(4) % 2,
             classes=np.array(NAMES[:2]), class_ids=np.array([0, 1]))
    monkeypatch.setattr(readers, "memory_limit", lambda: 1000)
    assert "more than half of this machine's memory" in read_error(tmp_path, "meta_test")


# ---------------------------------------------------------------------- pickle bombs
def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class HugeEmpty:
    """A dozen bytes of pickle asking numpy for a 3 GiB array."""

    def __reduce__(self):
        return (_reconstruct(), (np.ndarray, (1_000_000, 3072), np.dtype("u1")))


class HugeNew:
    def __reduce__(self):
        return (np.ndarray, ((1_000_000, 3072), np.dtype("u1")))


class SharedBytes:
    """An array whose data is one memoized string: pickled once, copied into every array."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __reduce__(self):
        state = (1, (len(self.text),), np.dtype("u1"), False, self.text)
        return (_reconstruct(), (np.ndarray, (0,), "b"), state)


@pytest.mark.parametrize("bomb", ["reconstruct", "constructor", "shared"])
def test_a_tiny_pickle_cannot_allocate_much_more_than_its_size(tmp_path, bomb):
    path = tmp_path / "train"
    if bomb == "shared":
        text = "\x07" * MiB
        payload = [SharedBytes(text) for _ in range(200)]  # 200 MiB from a 1 MiB file
    else:
        payload = HugeEmpty() if bomb == "reconstruct" else HugeNew()
    path.write_bytes(pickle.dumps({"data": payload, "fine_labels": []}, protocol=4))
    assert path.stat().st_size < 2 * MiB
    assert peak_bytes(lambda: readers.load_plain_pickle(path)) < 16 * MiB
    with pytest.raises(DataError) as error:
        readers.load_plain_pickle(path)
    assert str(error.value).startswith(f"{path}: refused: an array of shape ")
    assert "more than the file's size accounts for" in str(error.value)


def test_real_sized_pickle_arrays_stay_within_the_budget(tmp_path):
    path = tmp_path / "train"
    data = np.arange(2000 * 3072, dtype=np.uint32).astype(np.uint8).reshape(2000, 3072)
    path.write_bytes(pickle.dumps({"data": data, "fine_labels": [0] * 2000}, protocol=4))
    loaded = readers.load_plain_pickle(path)
    assert type(loaded["data"]) is np.ndarray and np.array_equal(loaded["data"], data)


# ---------------------------------------------------------------------- the safety net
def test_any_reader_fault_reaches_the_user_as_one_data_error_line(register_plugin):
    import purer
    from purer.api import DatasetReader

    class Broken(DatasetReader):
        def load(self, split):
            raise ValueError("cannot reshape array of size 7 into shape (3,32,32)\ndetails")

    class Plugin:
        @purer.hookimpl
        def register_datasets(self, register):
            register("broken-data", Broken)

    register_plugin(Plugin(), name="broken-plugin")
    with pytest.raises(DataError) as error:
        load_split("broken-data", "meta_val")
    assert str(error.value) == ("dataset 'broken-data', split meta_val: cannot be read "
                                "(ValueError: cannot reshape array of size 7 into shape (3,32,32))")
