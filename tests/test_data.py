"""Tests for netshrink.data: the IDX / CIFAR-10 / image-folder readers, load_data's splits and
the BatchLoader. Every data set but the installed Fashion-MNIST is written by the test itself."""

from __future__ import annotations

import gzip
import pickle
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays
from PIL import Image
from pydantic import ValidationError

from netshrink import data
from netshrink.data import (
    BatchLoader,
    DataConfig,
    ImageSet,
    load_data,
    read_cifar10_binary,
    read_idx,
)
from netshrink.errors import ConfigError, DataError
from netshrink.folders import ImageFiles, read_image_folder

FASHION = Path("/usr/share/datasets/fashion-mnist")
IDX_CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}
needs_fashion = pytest.mark.skipif(
    not all((FASHION / f"{s}.gz").is_file() for s in data._IDX_STEMS),
    reason=f"Fashion-MNIST is not at {FASHION} (apt-get install -y dataset-fashion-mnist)",
)


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """Write array as an IDX file (gzipped when gz, whatever the name)."""
    code = IDX_CODES[array.dtype.str[1:]]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def write_cifar(path: Path, labels: list[int], seed: int = 0) -> np.ndarray:
    """Write a CIFAR-10 binary batch with random pixels; returns the images [N, 3, 32, 32]."""
    images = np.random.default_rng(seed).integers(0, 256, (len(labels), 3, 32, 32), np.uint8)
    label_bytes = np.asarray(labels, np.uint8)[:, None]
    records = np.concatenate([label_bytes, images.reshape(len(labels), -1)], 1)
    path.write_bytes(records.tobytes())
    return images


def write_png(path: Path, value: int | tuple[int, int, int], size=(6, 6)) -> None:
    """A constant image: gray when value is an int, else RGB."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "L" if isinstance(value, int) else "RGB"
    Image.new(mode, size, value).save(path)


def write_folder(root: Path, counts: dict[str, int], size=(6, 6)) -> None:
    """Class k's images all have gray value 10 * (k + 1), so labels can be read off pixels."""
    for k, (name, count) in enumerate(sorted(counts.items())):
        for i in range(count):
            write_png(root / name / f"{i:03d}.png", 10 * (k + 1), size)


def ids_set(n: int, shape=(1, 4, 4)) -> ImageSet:
    """A set whose labels are the example indices, so batches show which examples they hold."""
    images = torch.randint(
        0, 256, (n, *shape), generator=torch.Generator().manual_seed(n), dtype=torch.uint8
    )
    return ImageSet(images, torch.arange(n))


# ------------------------------------------------------------------------------------------- IDX


@settings(max_examples=40, deadline=None)
@given(
    arr=st.sampled_from(list(IDX_CODES)).flatmap(
        lambda t: arrays(np.dtype(t), array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5))
    ),
    gz=st.booleans(),
)
def test_idx_round_trip(arr, gz):
    with tempfile.TemporaryDirectory() as tmp:
        got = read_idx(write_idx(Path(tmp) / "a.idx", arr, gz))
    assert got.dtype == arr.dtype.newbyteorder("=") and got.shape == arr.shape
    assert got.tobytes() == arr.astype(got.dtype).tobytes()  # bytes: NaNs and -0.0 compare too
    assert got.flags.writeable


def test_idx_gzip_detected_by_content_not_name(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / "plain-name", arr, gz=True)), arr)
    assert np.array_equal(read_idx(write_idx(tmp_path / "x.gz", arr, gz=False)), arr)


def test_idx_truncated_and_too_long(tmp_path):
    path = write_idx(tmp_path / "t-idx3-ubyte", np.zeros((2, 3, 4), np.uint8))
    full = path.read_bytes()
    path.write_bytes(full[:-5])
    with pytest.raises(DataError, match="truncated") as err:
        read_idx(path)
    assert str(path) in str(err.value) and "has 35 bytes" in str(err.value)
    path.write_bytes(full[:10])  # inside the dims
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)
    path.write_bytes(full + b"abc")
    with pytest.raises(DataError, match="has 3 extra bytes"):
        read_idx(path)
    path.write_bytes(gzip.compress(full)[:-12])  # a cut gzip stream
    with pytest.raises(DataError, match=str(path)):
        read_idx(path)


@pytest.mark.parametrize("head", [b"\x01\x00\x08\x01", b"\x00\x00\x0a\x01", b"\x00\x00", b""])
def test_idx_bad_magic(tmp_path, head):
    path = tmp_path / "bad"
    path.write_bytes(head + b"\x00\x00\x00\x02ab")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(path)


def test_idx_directory_with_dot_names_and_raw_files(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("t10k", 10)):
        images = rng.integers(0, 256, (n, 5, 5), np.uint8)
        write_idx(tmp_path / f"{split}-images.idx3-ubyte", images)
        write_idx(tmp_path / f"{split}-labels.idx1-ubyte", np.arange(n, dtype=np.uint8) % 10)
    for source in (f"mnist:{tmp_path}", str(tmp_path)):
        splits = load_data(DataConfig(source=source, val_fraction=0.2))
        assert (len(splits.train), len(splits.val), len(splits.test)) == (24, 6, 10)
        assert splits.input_shape == (1, 5, 5) and splits.num_classes == 10
    (tmp_path / "t10k-labels.idx1-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_data(DataConfig(source=f"mnist:{tmp_path}"))


# --------------------------------------------------------------------------------- Fashion-MNIST


@needs_fashion
def test_fashion_mnist_files():
    for split, n in (("train", 60000), ("t10k", 10000)):
        images = read_idx(FASHION / f"{split}-images-idx3-ubyte.gz")
        labels = read_idx(FASHION / f"{split}-labels-idx1-ubyte.gz")
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.max() == 9
        assert np.bincount(labels).tolist() == [n // 10] * 10


@needs_fashion
def test_fashion_mnist_default_splits():
    splits = load_data(DataConfig())
    assert (len(splits.train), len(splits.val), len(splits.test)) == (54000, 6000, 10000)
    assert splits.input_shape == (1, 28, 28) and splits.num_classes == 10
    assert splits.class_names[0] == "T-shirt/top" and splits.class_names[9] == "Ankle boot"
    assert abs(splits.mean[0] - 0.286) < 0.001 and abs(splits.std[0] - 0.353) < 0.001
    assert torch.bincount(splits.test.labels).tolist() == [1000] * 10


def test_missing_default_fashion_mnist_says_how_to_install(tmp_path, monkeypatch):
    missing = tmp_path / "fashion-mnist"
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", missing)
    with pytest.raises(DataError) as err:
        load_data(DataConfig())
    message = str(err.value)
    assert "\n" not in message and str(missing) in message
    assert "install it with: apt-get install -y dataset-fashion-mnist" in message


# -------------------------------------------------------------------------------------- CIFAR-10


@pytest.fixture
def cifar_dir(tmp_path) -> Path:
    batches = tmp_path / "cifar-10-batches-bin"
    batches.mkdir()
    for i, name in enumerate(data._CIFAR_FILES):
        write_cifar(batches / name, [k % 10 for k in range(20)], seed=i)
    return tmp_path


def test_cifar10_binary_batch(tmp_path):
    images = write_cifar(tmp_path / "b.bin", [3, 0, 9, 1])
    got_images, got_labels = read_cifar10_binary(tmp_path / "b.bin")
    assert got_images.shape == (4, 3, 32, 32) and got_images.dtype == np.uint8
    assert np.array_equal(got_images, images) and got_labels.tolist() == [3, 0, 9, 1]
    assert got_labels.dtype == np.int64


def test_cifar10_load_data(cifar_dir):
    for source in (
        f"cifar10:{cifar_dir}",
        f"cifar10:{cifar_dir}/cifar-10-batches-bin",
        str(cifar_dir),
    ):
        splits = load_data(DataConfig(source=source, val_fraction=0.1))
        assert (len(splits.train), len(splits.val), len(splits.test)) == (90, 10, 20)
        assert splits.input_shape == (3, 32, 32) and len(splits.mean) == 3
        assert splits.class_names == data.CIFAR10_CLASSES
        assert splits.test.labels.tolist() == [k % 10 for k in range(20)]


def test_cifar10_with_some_of_its_batches(cifar_dir):
    batches = cifar_dir / "cifar-10-batches-bin"
    for name in ("data_batch_2.bin", "data_batch_4.bin", "data_batch_5.bin"):
        (batches / name).unlink()
    splits = load_data(DataConfig(source=f"cifar10:{cifar_dir}", val_fraction=0.1))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (36, 4, 20)
    (batches / "test_batch.bin").unlink()  # no test batch: one is drawn, as for digits
    splits = load_data(DataConfig(source=f"cifar10:{cifar_dir}", val_fraction=0.1))
    assert len(splits.train) + len(splits.val) + len(splits.test) == 40 and len(splits.test) == 8
    for name in ("data_batch_1.bin", "data_batch_3.bin"):
        (batches / name).unlink()
    with pytest.raises(DataError, match="none of data_batch_1.bin"):
        load_data(DataConfig(source=f"cifar10:{cifar_dir}"))


def test_a_relative_data_directory_is_recorded_absolute(tmp_path, monkeypatch, cifar_dir):
    monkeypatch.chdir(cifar_dir)
    config = DataConfig(source="cifar10:cifar-10-batches-bin")
    assert config.source == f"cifar10:{cifar_dir / 'cifar-10-batches-bin'}"
    monkeypatch.chdir(tmp_path.parent)  # a checkpoint read from elsewhere finds it again
    assert len(load_data(config).test) == 20
    assert DataConfig(source="digits").source == "digits"


def test_cifar10_refuses_pickles_and_bad_sizes(tmp_path, cifar_dir):
    pickled = tmp_path / "data_batch_1"
    pickled.write_bytes(pickle.dumps({"data": [1, 2], "labels": [0]}, protocol=2))
    with pytest.raises(DataError, match="binary version") as err:
        read_cifar10_binary(pickled)
    assert str(pickled) in str(err.value)
    short = tmp_path / "short.bin"
    short.write_bytes(bytes(3073 * 2 - 1))
    with pytest.raises(DataError, match="6145 bytes"):
        read_cifar10_binary(short)
    write_cifar(tmp_path / "c100.bin", [1, 42])
    with pytest.raises(DataError, match="label 42"):
        read_cifar10_binary(tmp_path / "c100.bin")
    (cifar_dir / "cifar-10-batches-bin" / "data_batch_3.bin").write_bytes(bytes(100))
    with pytest.raises(DataError, match="data_batch_3.bin has 100 bytes"):
        load_data(DataConfig(source=f"cifar10:{cifar_dir}"))


def test_cifar10_python_version_directory(tmp_path):
    python_dir = tmp_path / "cifar-10-batches-py"
    python_dir.mkdir()
    (python_dir / "data_batch_1").write_bytes(pickle.dumps({}, protocol=2))
    for source in (f"cifar10:{python_dir}", str(python_dir)):
        with pytest.raises(DataError, match="cifar-10-binary.tar.gz"):
            load_data(DataConfig(source=source))


# --------------------------------------------------------------------------------- image folders


def test_image_folder_reads_labels_and_names(tmp_path):
    write_folder(tmp_path, {"cat": 3, "ant": 2, "dog": 4})
    images, labels, names = read_image_folder(tmp_path)
    assert names == ("ant", "cat", "dog") and images.shape == (9, 1, 6, 6)
    assert labels.tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 2]
    assert (images[:, 0, 0, 0] == 10 * (labels + 1)).all()
    write_png(tmp_path / "dog" / "colour.png", (200, 0, 0))
    images, labels, _ = read_image_folder(tmp_path)
    assert images.shape == (10, 3, 6, 6) and images[-1, :, 0, 0].tolist() == [200, 0, 0]
    assert (images[0, :, 0, 0] == 10).all()  # gray images are replicated into RGB


def test_image_folder_sizes(tmp_path):
    write_folder(tmp_path, {"a": 2, "b": 2})
    write_png(tmp_path / "b" / "big.png", 20, size=(9, 7))
    with pytest.raises(DataError, match="image_size") as err:
        read_image_folder(tmp_path)
    assert str(tmp_path / "b" / "big.png") in str(err.value) and "9x7" in str(err.value)
    images, _, _ = read_image_folder(tmp_path, image_size=4)
    assert images.shape == (5, 1, 4, 4) and images[-1].min() == images[-1].max() == 20


def test_image_folder_load_data_split_and_subfolders(tmp_path):
    write_folder(tmp_path / "flat", {"a": 10, "b": 10})
    splits = load_data(
        DataConfig(source=f"folder:{tmp_path / 'flat'}", test_fraction=0.25, val_fraction=0.2)
    )
    assert (len(splits.train), len(splits.val), len(splits.test)) == (12, 3, 5)
    assert splits.class_names == ("a", "b") and splits.num_classes == 2
    assert all(isinstance(s, ImageFiles) for s in (splits.train, splits.val, splits.test))
    pixels = [
        next(s.batches([torch.arange(len(s))])) for s in (splits.train, splits.val, splits.test)
    ]
    every = torch.cat([p[:, 0, 0, 0] for p in pixels])
    assert sorted(every.tolist()) == [10] * 10 + [20] * 10
    write_folder(tmp_path / "tt" / "train", {"a": 4, "b": 4}, size=(5, 5))
    write_folder(tmp_path / "tt" / "test", {"a": 1, "b": 2}, size=(5, 5))
    splits = load_data(DataConfig(source=str(tmp_path / "tt"), val_fraction=0.25, image_size=8))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (6, 2, 3)
    assert splits.input_shape == (1, 8, 8) and splits.test.labels.tolist() == [0, 1, 1]


def test_a_folder_on_disk_serves_the_batches_the_same_images_in_memory_would(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(40):  # colour images of two sizes, so that resizing is exercised too
        size = (10, 12) if i % 3 else (7, 7)
        pixels = rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
        (tmp_path / "tree" / f"c{i % 4}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(tmp_path / "tree" / f"c{i % 4}" / f"{i:03d}.png")
    config = DataConfig(source=f"folder:{tmp_path / 'tree'}", image_size=8, crop_padding=2,
                        hflip=True, val_fraction=0.25, workers=0)  # fmt: skip
    lazy = load_data(config)
    assert isinstance(lazy.train, ImageFiles) and lazy.input_shape == (3, 8, 8)
    images, labels, _ = read_image_folder(tmp_path / "tree", image_size=8)
    splits = (lazy.train, lazy.val, lazy.test)
    in_memory = data.DataSplits(
        *(ImageSet(next(s.batches([torch.arange(len(s))])), s.labels) for s in splits),
        num_classes=4, class_names=lazy.class_names, mean=lazy.mean, std=lazy.std, config=config,
    )  # fmt: skip
    decoded = {  # each file, as the lazy splits decode it
        str(f): x
        for s, m in zip(splits, (in_memory.train, in_memory.val, in_memory.test))
        for f, x in zip(s.files, m.images)
    }
    files = sorted((tmp_path / "tree").glob("*/*.png"))
    assert len(decoded) == 40 and torch.equal(  # = the whole folder read into memory
        torch.stack([decoded[str(f)] for f in files]), torch.from_numpy(images)
    )
    workers = data.DataSplits(**{**lazy.__dict__, "train": ImageFiles(
        **{**lazy.train.__dict__, "workers": 2})})  # fmt: skip
    for other in (in_memory, workers):
        a, b = lazy.loader("train", 8, seed=3), other.loader("train", 8, seed=3)
        a.set_epoch(1), b.set_epoch(1)
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert len(lazy.subset("val", 5, seed=1)[0][0]) == 5


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        read_image_folder(tmp_path / "empty")
    (tmp_path / "empty" / "cls").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        read_image_folder(tmp_path / "empty")
    write_folder(tmp_path / "bad", {"a": 2})
    (tmp_path / "bad" / "a" / "zz.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="zz.png"):
        read_image_folder(tmp_path / "bad")


# ---------------------------------------------------------------------------- digits and splits


def test_digits():
    splits = load_data(DataConfig(source="digits"))
    assert len(splits.train) + len(splits.val) + len(splits.test) == 1797
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1294, 144, 359)
    assert splits.input_shape == (1, 8, 8) and splits.train.images.max() == 255
    big = load_data(DataConfig(source="digits", image_size=28))
    assert big.input_shape == (1, 28, 28) and big.test.images.shape == (359, 1, 28, 28)
    assert torch.equal(big.test.labels, splits.test.labels)


def test_limit_and_seed_determinism():
    a = load_data(DataConfig(source="digits", limit=100, seed=3))
    b = load_data({"source": "digits", "limit": 100, "seed": 3})
    assert (len(a.train), len(a.val), len(a.test)) == (100, 100, 100)
    for x, y in zip((a.train, a.val, a.test), (b.train, b.val, b.test)):
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
    assert a.mean == b.mean and a.std == b.std
    c, d = load_data(DataConfig(source="digits", seed=4)), load_data(DataConfig(source="digits"))
    assert not torch.equal(c.val.images, d.val.images)
    assert torch.equal(c.test.images, d.test.images)  # the test split does not move with seed


def test_normalised_train_epoch_has_zero_mean_unit_std():
    splits = load_data(DataConfig(source="digits"))
    x = torch.cat([x for x, _ in splits.loader("train", 100)])
    assert x.shape == (1294, 1, 8, 8) and x.dtype == torch.float32
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05
    rgb = ids_set(50, (3, 4, 4))
    mean, std = data._channel_stats(rgb)
    x = torch.cat([x for x, _ in BatchLoader(rgb, 7, mean=mean, std=std)])
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std((0, 2, 3), correction=0), torch.ones(3), atol=1e-4)


# ----------------------------------------------------------------------------------- BatchLoader


def test_loader_covers_every_example_once():
    loader = BatchLoader(ids_set(103), 10, mean=[0.5], std=[0.25])
    batches = list(loader)
    assert len(loader) == len(batches) == 11 and loader.dataset_size == 103
    assert torch.cat([y for _, y in batches]).tolist() == list(range(103))
    x, _ = batches[0]
    assert torch.allclose(x, (loader.data.images[:10].float() / 255 - 0.5) / 0.25, atol=1e-5)
    dropped = BatchLoader(ids_set(103), 10, mean=[0.5], std=[0.25], drop_last=True)
    assert len(dropped) == len(list(dropped)) == 10


def test_loader_shards_for_ddp():
    ranks = [
        BatchLoader(ids_set(103), 8, mean=[0], std=[1], shuffle=True, seed=5, rank=r, world_size=2)
        for r in (0, 1)
    ]
    seen = [torch.cat([y for _, y in loader]) for loader in ranks]
    assert [len(loader) for loader in ranks] == [7, 7] and [len(s) for s in seen] == [52, 52]
    assert ranks[0].dataset_size == 52
    assert len(set(seen[0].tolist()) & set(seen[1].tolist())) == 1  # one wrapped example
    assert set(seen[0].tolist()) | set(seen[1].tolist()) == set(range(103))
    tiny = [
        list(BatchLoader(ids_set(1), 4, mean=[0], std=[1], rank=r, world_size=3)) for r in range(3)
    ]
    assert [b[0][1].tolist() for b in tiny] == [[0], [0], [0]]


def test_set_epoch_changes_order_reproducibly():
    def order(epoch, seed=0):
        loader = BatchLoader(ids_set(50), 16, mean=[0], std=[1], shuffle=True, seed=seed)
        loader.set_epoch(epoch)
        return torch.cat([y for _, y in loader]).tolist()

    assert order(0) == order(0) and order(1) == order(1)
    assert order(0) != order(1) and order(0, seed=1) != order(0)
    assert sorted(order(1)) == list(range(50))


def test_crop_and_flip_keep_shapes_and_pixels():
    images = ids_set(64, (2, 6, 5)).images
    plain = dict(mean=[0, 0], std=[1 / 255, 1 / 255])  # x equals the pixel values
    flipped = torch.cat(
        [x for x, _ in BatchLoader(ImageSet(images, torch.arange(64)), 16, hflip=True, **plain)]
    )
    assert flipped.shape == (64, 2, 6, 5)
    same = [torch.allclose(f, o.float(), atol=1e-3) for f, o in zip(flipped, images)]
    mirror = [torch.allclose(f, o.flip(2).float(), atol=1e-3) for f, o in zip(flipped, images)]
    assert all(s or m for s, m in zip(same, mirror)) and 10 < sum(mirror) < 54
    loader = BatchLoader(ImageSet(images, torch.arange(64)), 16, crop_padding=2, **plain)
    cropped = torch.cat([x for x, _ in loader]).round().to(torch.uint8)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    shifts = [
        next(
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if torch.equal(padded[i, :, dy : dy + 6, dx : dx + 5], cropped[i])
        )
        for i in range(64)
    ]  # StopIteration if some image is not a window of its padding
    assert len(set(shifts)) > 5 and cropped.shape == images.shape


def test_splits_loader_defaults():
    splits = load_data(DataConfig(source="digits", crop_padding=1, hflip=True, limit=40))
    train, test = splits.loader("train", 8), splits.loader("test", 8)
    assert train.shuffle and train.crop_padding == 1 and train.hflip
    assert not test.shuffle and test.crop_padding == 0 and not test.hflip
    assert [y.tolist() for _, y in test] == [y.tolist() for _, y in test]
    with pytest.raises(ConfigError):
        splits.loader("validation", 8)
    with pytest.raises(ConfigError):
        splits.loader("train", 8, rank=2, world_size=2)


# ---------------------------------------------------------------------------------------- errors


def test_missing_path_is_one_line_data_error(tmp_path):
    missing = tmp_path / "nope"
    for source in (str(missing), f"mnist:{missing}", f"folder:{missing}", f"cifar10:{missing}"):
        with pytest.raises(DataError) as err:
            load_data(DataConfig(source=source))
        assert "\n" not in str(err.value) and str(tmp_path / "nope") in str(err.value)


def test_bad_source_and_fields_are_config_errors(tmp_path):
    for source in ("imagenet", "cifar100:/x", "mnist:"):
        with pytest.raises(ConfigError, match="fashion-mnist|DIR"):
            load_data(DataConfig(source=source))
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        load_data(DataConfig(source=str(tmp_path / "f")))
    with pytest.raises(DataError, match="cannot tell"):
        load_data(DataConfig(source=str(tmp_path)))
    with pytest.raises(ValidationError):
        DataConfig(val_fraction=1.0)
    for bad in (
        {"limit": 0},
        {"val_fraction": -0.1},
        {"image_size": 0},
        {"colour": True},
        {"test_fraction": 1.0},
        {"crop_padding": -1},
    ):
        with pytest.raises(ConfigError, match="invalid data config"):
            load_data(bad)
    with pytest.raises(ValidationError):
        DataConfig().source = "digits"  # frozen


def test_digits_without_scikit_learn_names_the_extra(monkeypatch):
    import sys

    from netshrink.data import DataConfig, load_data
    from netshrink.errors import DataError

    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails as if missing
    with pytest.raises(DataError, match=r"netshrink\[digits\]"):
        load_data(DataConfig(source="digits"))
