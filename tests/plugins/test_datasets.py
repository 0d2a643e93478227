"""Dataset readers: every form read from tiny fixtures written here, plus the
real files in ../shared/data when present (``-m realdata``)."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import SHARED_DATA as SHARED  # noqa: E402
from PIL import Image
from purer_plugins.datasets import cifar_fs, mini_imagenet, synthetic_shapes
from purer_plugins.datasets.cifar_fs import CifarFS
from purer_plugins.datasets.mini_imagenet import MiniImageNet
from purer_plugins.datasets.synthetic_shapes import SyntheticShapes

from purer.data import readers
from purer.errors import DataError

CIFAR_NAMES = cifar_fs.CLASSES.lists["fine_label_names"]
WNIDS = mini_imagenet.CLASSES.lists


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Keep decoded-image caches out of the home folder."""
    monkeypatch.setenv("PURER_CACHE", str(tmp_path / "cache"))


def cifar(root: Path, **options) -> CifarFS:
    return CifarFS(CifarFS.Options(root=str(root), **options))


def mini(root: Path, **options) -> MiniImageNet:
    return MiniImageNet(MiniImageNet.Options(root=str(root), **options))


def assert_layout(data, classes: int, per_class: int, size: int) -> None:
    """The common contract of every reader."""
    assert data.images.dtype == torch.uint8
    assert tuple(data.images.shape) == (classes * per_class, 3, size, size)
    assert data.labels.dtype == torch.int64
    assert data.labels.tolist() == [c for c in range(classes) for _ in range(per_class)]
    assert data.class_names == sorted(data.class_names)
    assert data.space.size == size


# ---------------------------------------------------------------------- plugin
def test_plugin_registers_the_three_readers():
    from purer_plugins import datasets

    from purer.plugins import PluginHost

    host = PluginHost()
    host.register_plugin(datasets, "datasets")
    assert host.names("dataset") == ["cifar-fs", "mini-imagenet", "synthetic-shapes"]
    assert host.get("dataset", "cifar-fs") is CifarFS
    assert sorted(host.plugins["datasets"].registers["dataset"]) == [
        "cifar-fs", "mini-imagenet", "synthetic-shapes"]


# ---------------------------------------------------------------------- cifar-fs pickles
def write_cifar_pickles(folder: Path, per_class: tuple[int, int] = (2, 1)) -> None:
    """Tiny cifar-100-python: pixel 0 holds the image's serial number, every
    other byte its fine label, so any mix-up shows."""
    folder.mkdir(parents=True)
    serial = 0
    for name, n in zip(("train", "test"), per_class):
        labels = [c for c in range(100) for _ in range(n)][::-1]  # not grouped
        data = np.repeat(np.array(labels, dtype=np.uint8)[:, None], 3072, axis=1)
        data[:, 0] = (np.arange(len(labels)) + serial) % 256
        serial += len(labels)
        record = {"data": data, "fine_labels": labels, "coarse_labels": [0] * len(labels),
                  "filenames": [f"img_{i}.png" for i in range(len(labels))],
                  "batch_label": name}
        (folder / name).write_bytes(pickle.dumps(record, protocol=4))
    meta = {"fine_label_names": CIFAR_NAMES, "coarse_label_names": ["x"] * 20}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=4))


def test_cifar_pickles_give_the_bertinetto_split(tmp_path):
    write_cifar_pickles(tmp_path / "cifar-100-python")
    reader = cifar(tmp_path)
    seen = set()
    for split, k in (("meta_train", 64), ("meta_val", 16), ("meta_test", 20)):
        data = reader.load(split)
        assert_layout(data, k, 3, 32)
        assert data.class_names == cifar_fs.CLASSES.lists[split]
        assert data.class_ids == [CIFAR_NAMES.index(n) for n in data.class_names]
        # every byte but the first is the image's true fine label
        body = data.images.reshape(len(data), -1)[:, 1:]
        expected = torch.tensor(data.class_ids)[data.labels]
        assert bool((body == expected[:, None].to(torch.uint8)).all())
        seen |= set(data.class_names)
    assert len(seen) == 100


def test_cifar_pickle_root_may_be_the_pickle_folder_itself(tmp_path):
    write_cifar_pickles(tmp_path / "cifar-100-python")
    data = cifar(tmp_path / "cifar-100-python").load("meta_val")
    assert data.num_classes == 16


def _py2_style_array(array: np.ndarray) -> object:
    """An object that pickles like a Python 2 numpy array (bytes as a latin-1 str)."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct

    class Py2Array:
        def __reduce__(self):
            state = (1, array.shape, array.dtype, False, array.tobytes().decode("latin1"))
            return (_reconstruct, (np.ndarray, (0,), "b"), state)

    return Py2Array()


def test_cifar_python2_pickles_are_read(tmp_path):
    """The files torchvision downloads are Python 2 pickles naming numpy.core."""
    write_cifar_pickles(tmp_path / "cifar-100-python")
    for name in ("train", "test"):
        path = tmp_path / "cifar-100-python" / name
        record = pickle.loads(path.read_bytes())
        record["data"] = _py2_style_array(record["data"])
        raw = pickle.dumps(record, protocol=2)
        raw = raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")  # numpy 2
        assert b"numpy.core.multiarray" in raw and b"_codecs" not in raw
        path.write_bytes(raw)
    data = cifar(tmp_path).load("meta_test")
    assert_layout(data, 20, 3, 32)
    body = data.images.reshape(len(data), -1)[:, 1:]
    assert bool((body == torch.tensor(data.class_ids)[data.labels][:, None].to(torch.uint8)).all())


class Evil:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    write_cifar_pickles(tmp_path / "cifar-100-python")
    pwned = tmp_path / "pwned"
    bad = tmp_path / "cifar-100-python" / "train"
    bad.write_bytes(pickle.dumps({"data": Evil(pwned), "fine_labels": []}))
    with pytest.raises(DataError) as err:
        cifar(tmp_path).load("meta_train")
    message = str(err.value)
    assert str(bad) in message and "system" in message and "\n" not in message
    assert not pwned.exists()


def test_pickle_of_builtins_eval_is_refused(tmp_path):
    path = tmp_path / "meta"
    path.write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(DataError, match="refused global builtins.eval"):
        readers.load_plain_pickle(path)


def test_truncated_pickle_names_the_file(tmp_path):
    write_cifar_pickles(tmp_path / "cifar-100-python")
    path = tmp_path / "cifar-100-python" / "test"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match=f"^{path}: corrupt pickle"):
        cifar(tmp_path).load("meta_test")


# ---------------------------------------------------------------------- cifar-fs npz
def write_cifar_npz(path: Path, names: list[str], labels: list[int], size: int = 32) -> np.ndarray:
    images = np.zeros((len(labels), size, size, 3), dtype=np.uint8)
    images[..., 0] = np.array(labels, dtype=np.uint8)[:, None, None]
    images[..., 1] = np.arange(len(labels), dtype=np.uint8)[:, None, None]
    np.savez_compressed(path, images=images, labels=np.array(labels, dtype=np.int64),
                        classes=np.array(names),
                        class_ids=np.array([CIFAR_NAMES.index(n) for n in names]))
    return images


def test_cifar_npz_is_sorted_by_name_and_grouped(tmp_path):
    # classes deliberately unsorted and images interleaved
    write_cifar_npz(tmp_path / "meta_test.npz", ["wolf", "apple", "lion"], [0, 1, 2, 0, 1, 2])
    data = cifar(tmp_path).load("meta_test")
    assert_layout(data, 3, 2, 32)
    assert data.class_names == ["apple", "lion", "wolf"]
    assert data.class_ids == [0, CIFAR_NAMES.index("lion"), CIFAR_NAMES.index("wolf")]
    # original label in channel 0 (wolf=0, apple=1, lion=2), order kept in a class
    assert data.images[:, 0, 0, 0].tolist() == [1, 1, 2, 2, 0, 0]
    assert data.images[:, 1, 0, 0].tolist() == [1, 4, 2, 5, 0, 3]


def test_cifar_npz_loads_are_cached_in_process(tmp_path):
    write_cifar_npz(tmp_path / "meta_val.npz", ["apple", "bee"], [0, 1])
    first, second = cifar(tmp_path).load("meta_val"), cifar(tmp_path).load("meta_val")
    assert first.images is second.images and first is not second
    os.utime(tmp_path / "meta_val.npz", ns=(1, 1))  # a changed file is read again
    assert cifar(tmp_path).load("meta_val").images is not first.images


def test_cifar_npz_missing_split_names_the_file(tmp_path):
    write_cifar_npz(tmp_path / "meta_train.npz", ["apple"], [0])
    with pytest.raises(DataError, match=f"{tmp_path}: split meta_val missing"):
        cifar(tmp_path).load("meta_val")
    with pytest.raises(DataError, match=f"{tmp_path / 'meta_val.npz'}: split file not found"):
        cifar(tmp_path, layout="npz").load("meta_val")


def test_cifar_corrupt_npz_names_the_file(tmp_path):
    path = tmp_path / "meta_test.npz"
    path.write_bytes(b"PK\x03\x04 this is not a zip archive")
    with pytest.raises(DataError, match=f"^{path}: corrupt or unreadable npz"):
        cifar(tmp_path).load("meta_test")


def test_cifar_npz_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "meta_test.npz"
    np.savez(path, images=np.zeros((1, 32, 32, 3), np.uint8), labels=np.zeros(1, np.int64),
             classes=np.array([{"evil": 1}], dtype=object), class_ids=np.zeros(1, np.int64))
    with pytest.raises(DataError, match=f"^{path}: corrupt or unreadable npz"):
        cifar(tmp_path).load("meta_test")


def test_cifar_npz_missing_array_and_bad_labels(tmp_path):
    path = tmp_path / "meta_test.npz"
    np.savez(path, images=np.zeros((2, 32, 32, 3), np.uint8), labels=np.array([0, 1]))
    with pytest.raises(DataError, match=f"^{path}: missing array 'classes'"):
        cifar(tmp_path).load("meta_test")
    np.savez(path, images=np.zeros((2, 32, 32, 3), np.uint8), labels=np.array([0, 5]),
             classes=np.array(["apple", "bee"]), class_ids=np.array([0, 6]))
    with pytest.raises(DataError, match=f"^{path}: labels must lie in 0..1"):
        cifar(tmp_path).load("meta_test")


# ---------------------------------------------------------------------- cifar-fs folders
def write_png_folders(root: Path, split: str, classes: dict[str, int], size: int = 32) -> None:
    for name, n in classes.items():
        folder = root / split / name
        folder.mkdir(parents=True)
        for i in range(n):
            pixel = (CIFAR_NAMES.index(name) if name in CIFAR_NAMES else 200, i, 7)
            Image.new("RGB", (size, size), pixel).save(folder / f"{i:03d}.png")


def test_cifar_png_folders(tmp_path):
    write_png_folders(tmp_path, "meta_val", {"tractor": 2, "beaver": 2, "camel": 2})
    data = cifar(tmp_path).load("meta_val")
    assert_layout(data, 3, 2, 32)
    assert data.class_names == ["beaver", "camel", "tractor"]
    assert data.class_ids == [CIFAR_NAMES.index(n) for n in data.class_names]
    assert data.images[:, 0, 5, 5].tolist() == [cid for cid in data.class_ids for _ in range(2)]
    assert data.images[:, 1, 5, 5].tolist() == [0, 1, 0, 1, 0, 1]


def test_folders_with_foreign_class_names_have_no_class_ids(tmp_path):
    write_png_folders(tmp_path, "meta_test", {"not_cifar": 1, "apple": 1})
    assert cifar(tmp_path).load("meta_test").class_ids is None


def test_corrupt_png_names_the_file(tmp_path):
    write_png_folders(tmp_path, "meta_test", {"apple": 2})
    bad = tmp_path / "meta_test" / "apple" / "001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=f"^{bad}: corrupt or unreadable image"):
        cifar(tmp_path).load("meta_test")


def test_missing_root_and_empty_root(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=f"^{missing}: cifar-fs root folder not found"):
        cifar(missing).load("meta_test")
    with pytest.raises(DataError, match=f"^{tmp_path}: no CIFAR-FS data found"):
        cifar(tmp_path).load("meta_test")
    monkeypatch.delenv(readers.DATA_DIR_ENV, raising=False)
    with pytest.raises(DataError, match="no root folder given"):
        CifarFS().load("meta_test")
    with pytest.raises(DataError, match="unknown split 'train'"):
        cifar(tmp_path).load("train")


def test_root_defaults_to_purer_data_dir(tmp_path, monkeypatch):
    (tmp_path / "cifar-fs").mkdir()
    write_cifar_npz(tmp_path / "cifar-fs" / "meta_test.npz", ["apple"], [0])
    monkeypatch.setenv(readers.DATA_DIR_ENV, str(tmp_path))
    assert CifarFS().load("meta_test").class_names == ["apple"]


# ---------------------------------------------------------------------- mini-imagenet
def jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (100, 90)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


MINI_CLASSES = {w: (40 + 60 * i, 200 - 50 * i, 90) for i, w in
                enumerate(sorted(WNIDS["meta_test"])[:3][::-1])}  # written unsorted


def mini_records(per_class: int = 2) -> list[tuple[str, str, bytes]]:
    return [(f"{w}{i:08d}.jpg", w, jpeg(colour)) for w, colour in MINI_CLASSES.items()
            for i in range(per_class)]


def write_mini_csv(root: Path, csv_name: str = "test.csv") -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    with (root / csv_name).open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["filename", "label"])
        for name, wnid, data in mini_records():
            (root / "images" / name).write_bytes(data)
            writer.writerow([name, wnid])


def write_mini_folders(root: Path, folder: str = "test") -> None:
    for name, wnid, data in mini_records():
        (root / folder / wnid).mkdir(parents=True, exist_ok=True)
        (root / folder / wnid / name).write_bytes(data)


def write_mini_npz(path: Path) -> None:
    records = mini_records()
    wnids = list(MINI_CLASSES)
    blobs = [np.frombuffer(d, dtype=np.uint8) for _, _, d in records]
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    np.savez(path, jpeg_bytes=np.concatenate(blobs), jpeg_offsets=offsets,
             labels=np.array([wnids.index(w) for _, w, _ in records], dtype=np.int64),
             classes=np.array(wnids), class_names=np.array(["a", "b", "c"]),
             filenames=np.array([n for n, _, _ in records]))


def check_mini(data) -> None:
    assert_layout(data, 3, 2, 84)
    assert data.class_names == sorted(MINI_CLASSES)
    index = WNIDS["all_wnids"]
    assert data.class_ids == [index.index(w) for w in data.class_names]
    centre = data.images[:, :, 42, 42].int()
    expected = torch.tensor([MINI_CLASSES[w] for w in data.class_names for _ in range(2)])
    assert int((centre - expected).abs().max()) <= 3  # JPEG rounding only
    assert data.space.mean == (0.485, 0.456, 0.406)


def test_mini_imagenet_csv(tmp_path):
    write_mini_csv(tmp_path)
    check_mini(mini(tmp_path).load("meta_test"))


def test_mini_imagenet_folders(tmp_path):
    write_mini_folders(tmp_path, "test")
    check_mini(mini(tmp_path).load("meta_test"))
    write_mini_folders(tmp_path, "meta_val")
    check_mini(mini(tmp_path).load("meta_val"))


def test_mini_imagenet_npz(tmp_path):
    write_mini_npz(tmp_path / "meta_test.npz")
    check_mini(mini(tmp_path).load("meta_test"))


def test_mini_imagenet_forms_agree_pixel_for_pixel(tmp_path):
    write_mini_csv(tmp_path / "a")
    write_mini_folders(tmp_path / "b")
    write_mini_npz(tmp_path / "c.npz")
    (tmp_path / "c").mkdir()
    (tmp_path / "c.npz").rename(tmp_path / "c" / "meta_test.npz")
    a, b, c = (mini(tmp_path / x).load("meta_test") for x in "abc")
    assert torch.equal(a.images, b.images) and torch.equal(a.images, c.images)
    assert a.class_names == b.class_names == c.class_names


def test_mini_imagenet_decoded_images_are_cached_on_disk(tmp_path, monkeypatch):
    write_mini_npz(tmp_path / "meta_test.npz")
    first = mini(tmp_path).load("meta_test")
    cached = list((tmp_path / "cache" / "mini-imagenet").glob("*.npy"))
    assert len(cached) == 1 and not list(cached[0].parent.glob(".partial-*"))
    mini_imagenet._load_npz.cache_clear()  # as if in a new process

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite the disk cache")

    monkeypatch.setattr(mini_imagenet, "decode_many", no_decoding)
    assert torch.equal(mini(tmp_path).load("meta_test").images, first.images)
    mini_imagenet._load_npz.cache_clear()
    with pytest.raises(AssertionError):
        mini(tmp_path, disk_cache=False).load("meta_test")


def test_mini_imagenet_size_option(tmp_path):
    write_mini_folders(tmp_path)
    data = mini(tmp_path, size=32).load("meta_test")
    assert tuple(data.images.shape[1:]) == (3, 32, 32) and data.space.size == 32


def test_mini_imagenet_corrupt_jpeg_in_npz_names_file_and_image(tmp_path):
    write_mini_npz(tmp_path / "meta_test.npz")
    with np.load(tmp_path / "meta_test.npz") as z:
        arrays = dict(z)
    arrays["jpeg_bytes"][arrays["jpeg_offsets"][1] + 2: arrays["jpeg_offsets"][2]] = 0
    np.savez(tmp_path / "meta_test.npz", **arrays)
    name = arrays["filenames"][1]
    with pytest.raises(DataError, match=f"{tmp_path / 'meta_test.npz'}\\[{name}\\]: corrupt"):
        mini(tmp_path).load("meta_test")


def test_mini_imagenet_bad_offsets(tmp_path):
    write_mini_npz(tmp_path / "meta_test.npz")
    with np.load(tmp_path / "meta_test.npz") as z:
        arrays = dict(z)
    arrays["jpeg_offsets"] = arrays["jpeg_offsets"][:-1]
    np.savez(tmp_path / "meta_test.npz", **arrays)
    with pytest.raises(DataError, match="jpeg_offsets must rise"):
        mini(tmp_path).load("meta_test")


def test_mini_imagenet_csv_errors(tmp_path):
    write_mini_csv(tmp_path)
    missing = tmp_path / "images" / next(iter(mini_records()))[0]
    missing.unlink()
    with pytest.raises(DataError, match=f"^{missing}: file not found"):
        mini(tmp_path).load("meta_test")
    (tmp_path / "val.csv").write_text("file,wnid\nx.jpg,n01\n")
    with pytest.raises(DataError, match=f"^{tmp_path / 'val.csv'}: expected the header"):
        mini(tmp_path).load("meta_val")
    with pytest.raises(DataError, match=f"^{tmp_path}: split meta_train not found"):
        mini(tmp_path).load("meta_train")


# ---------------------------------------------------------------------- synthetic-shapes
def synth(**options) -> SyntheticShapes:
    return SyntheticShapes(SyntheticShapes.Options(**options))


def test_synthetic_split_sizes_and_disjoint_combinations():
    table = synthetic_shapes.class_table(100)
    assert [len(table[s]) for s in ("meta_train", "meta_val", "meta_test")] == [64, 16, 20]
    names = [n for s in table.values() for _, n, _ in s]
    assert len(set(names)) == 100
    assert sorted(gid for s in table.values() for gid, _, _ in s) == list(range(100))
    # every primitive of the held-out classes was seen in meta-training
    train = [c for _, _, c in table["meta_train"]]
    for _, _, combo in table["meta_val"] + table["meta_test"]:
        for part, value in enumerate(combo):
            assert value in {c[part] for c in train}


def test_synthetic_loads_with_the_common_layout():
    data = synth(images_per_class=7).load("meta_val")
    assert_layout(data, 16, 7, 32)
    table = {n: gid for gid, n, _ in synthetic_shapes.class_table(100)["meta_val"]}
    assert data.class_ids == [table[n] for n in data.class_names]


def test_synthetic_is_deterministic_to_the_byte(monkeypatch):
    """Same bytes twice, and the pinned hash: the bytes must not depend on the
    machine, the thread count, the chunking or the torch build."""
    generate = synthetic_shapes._generate.__wrapped__
    first = generate("meta_test", 100, 30).images
    assert torch.equal(first, generate("meta_test", 100, 30).images)
    monkeypatch.setattr(synthetic_shapes, "_CHUNK", 7)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert torch.equal(first, generate("meta_test", 100, 30).images)
    finally:
        torch.set_num_threads(threads)
    assert hashlib.sha256(first.numpy().tobytes()).hexdigest() == SYNTHETIC_SHA256


SYNTHETIC_SHA256 = "525ef0ebf596f30de50ee3bd310e3f94b60e2ea26574e0b343a00e702b560ccc"


def test_synthetic_space_matches_its_pixels():
    measured = synthetic_shapes.measure_space(100, 40)
    for got, want in zip(measured.mean + measured.std,
                         synthetic_shapes.SPACE.mean + synthetic_shapes.SPACE.std):
        assert abs(got - want) < 0.01


def test_synthetic_classes_option():
    data = synth(classes=25, images_per_class=3).load("meta_test")
    assert data.num_classes == 25 - 16 - 4


# ---------------------------------------------------------------------- CLI
@pytest.fixture
def cli():
    import click
    from purer_plugins import datasets

    from purer.cli import data_cmd

    @click.group()
    def root() -> None:
        pass

    data_cmd.register(root)
    datasets.register_commands(root)  # the plugin's own `data download cifar-fs`
    return root


@pytest.fixture
def readers_only(monkeypatch):
    """A plugin host with the dataset plugin alone (the others load slowly)."""
    from purer_plugins import datasets

    import purer.plugins

    host = purer.plugins.PluginHost()
    host.register_plugin(datasets, "datasets")
    monkeypatch.setattr(purer.plugins, "get_host", lambda: host)
    return host


def test_cli_data_show_prints_splits_and_writes_a_grid(cli, tmp_path, readers_only):
    out = tmp_path / "grid.png"
    result = CliRunner().invoke(cli, ["data", "show", "synthetic-shapes", "--out", str(out),
                                      "--set", "images_per_class=5", "--per-class", "3",
                                      "--classes", "4"])
    assert result.exit_code == 0, result.output
    for word in ("meta_train", "meta_val", "meta_test", "64", "16", "20", "320"):
        assert word in result.output
    with Image.open(out) as picture:
        assert picture.size[0] > picture.size[1] * 0.5  # 3 columns x 4 rows
    assert f"picture of meta_train: {out.resolve()}" in result.output


def test_cli_data_show_puts_its_picture_in_a_named_folder(cli, tmp_path, readers_only,
                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["data", "show", "synthetic-shapes", "--split", "meta_val",
                                      "--set", "images_per_class=5", "--classes", "2"])
    assert result.exit_code == 0, result.output
    picture = tmp_path / "runs" / "data" / "synthetic-shapes-meta_val.png"
    assert picture.is_file() and not list(tmp_path.glob("*.png"))
    assert str(picture.resolve()) in result.output


def test_cli_data_show_lists_missing_splits(cli, tmp_path, readers_only):
    write_cifar_npz(tmp_path / "meta_test.npz", ["apple", "bee"], [0, 1])
    result = CliRunner().invoke(cli, ["data", "show", "cifar-fs", "--root", str(tmp_path),
                                      "--split", "meta_test", "--out", str(tmp_path / "g.png")])
    assert result.exit_code == 0, result.output
    assert "missing" in result.output and "apple" in result.output
    assert (tmp_path / "g.png").is_file()
    result = CliRunner().invoke(cli, ["data", "show", "cifar-fs", "--root", str(tmp_path)])
    assert isinstance(result.exception, DataError)


def test_cli_download_offline_is_one_line(cli, tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    result = CliRunner().invoke(cli, ["data", "download", "cifar-fs", "--root", str(tmp_path)])
    assert isinstance(result.exception, DataError)
    message = str(result.exception)
    assert "\n" not in message and f"{tmp_path}/cifar-100-python/train" in message


def test_cli_download_success(cli, tmp_path, monkeypatch):
    import torchvision.datasets

    def fake(root, train, download):
        write_cifar_pickles(Path(root) / "cifar-100-python")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", fake)
    result = CliRunner().invoke(cli, ["data", "download", "cifar-fs", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert cifar(tmp_path).load("meta_val").num_classes == 16


# ---------------------------------------------------------------------- real data
needs_cifar = pytest.mark.skipif(not (SHARED / "cifar-fs" / "meta_test.npz").is_file(),
                                 reason=f"no CIFAR-FS npz under {SHARED}")
needs_mini = pytest.mark.skipif(not (SHARED / "mini-imagenet" / "meta_test.npz").is_file(),
                                reason=f"no MiniImageNet npz under {SHARED}")


@pytest.mark.realdata
@needs_cifar
def test_real_cifar_fs_counts():
    reader = cifar(SHARED / "cifar-fs")
    for split, k in (("meta_train", 64), ("meta_val", 16), ("meta_test", 20)):
        data = reader.load(split)
        assert_layout(data, k, 600, 32)
        assert data.class_names == cifar_fs.CLASSES.lists[split]
        assert data.class_ids == [CIFAR_NAMES.index(n) for n in data.class_names]


@pytest.mark.realdata
@pytest.mark.slow  # decodes 12,000 JPEGs into a fresh cache
@needs_mini
def test_real_mini_imagenet_test_split():
    data = mini(SHARED / "mini-imagenet").load("meta_test")
    assert_layout(data, 20, 600, 84)
    assert data.class_names == WNIDS["meta_test"]
