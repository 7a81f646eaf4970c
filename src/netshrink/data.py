"""Data sets: Fashion-MNIST / MNIST IDX files, scikit-learn digits, CIFAR-10 binary batches and
image folders, read into uint8 tensors, split train / val / test and served as normalised batches.

Every mistake a user can make (a missing path, a damaged file, a pickled CIFAR batch) is a
DataError that names the file and says what to do. Nothing is downloaded or unpickled.

    >>> splits = load_data(DataConfig(source="digits", image_size=28))
    >>> x, y = next(iter(splits.loader("train", 64)))       # x: float32 [64, 1, 28, 28]
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, ValidationError, field_validator, model_serializer

from .config import Config
from .errors import ConfigError, DataError
from .folders import ImageFiles, default_workers, folder_format, list_images

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
_DIGITS = tuple(str(i) for i in range(10))
_SOURCES = (
    '"fashion-mnist", "fashion-mnist:DIR", "mnist:DIR", "digits", "cifar10:DIR", '
    '"folder:DIR", or a directory holding one of these'
)
_INSTALL_FASHION = "install it with: apt-get install -y dataset-fashion-mnist"
# IDX type byte -> big-endian numpy type (0x0A is unassigned in the format)
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR_RECORD = 1 + 3 * 32 * 32
_CIFAR_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)
_CIFAR_BINARY_ONLY = (
    "netshrink reads only the binary version of CIFAR-10 (cifar-10-binary.tar.gz:"
    " data_batch_1.bin ... data_batch_5.bin, test_batch.bin), never pickles"
)
_Pair = tuple[np.ndarray, np.ndarray]


def _read_bytes(path: Path) -> bytes:
    # gzip is recognised by its magic bytes: names lie, and both forms are in circulation
    try:
        data = path.read_bytes()
        return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"cannot read {path} ({exc}); check the path, or copy the file again",
        ) from exc


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (MNIST's format), gzipped or raw, as a writable native-order array.

    Header: two zero bytes, a type byte (0x08 ubyte, 0x09 byte, 0x0B short, 0x0C int, 0x0D float,
    0x0E double), a dimension count, a big-endian uint32 per dimension; then big-endian values
    that must fill the shape exactly. DataError if unreadable, not IDX, truncated or too long.
    Example: `read_idx(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").shape == (10000,)`.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_DTYPES:
        raise DataError(
            f"{path} is not an IDX file (header {data[:4].hex() or 'empty'}); expected "
            "MNIST-style files such as train-images-idx3-ubyte[.gz]"
        )
    dtype, start = np.dtype(_IDX_DTYPES[data[2]]), 4 + 4 * data[3]
    dims = struct.unpack(f">{data[3]}I", data[4:start]) if len(data) >= start else None
    size = start + math.prod(dims) * dtype.itemsize if dims is not None else start
    if len(data) < size:  # checked before allocating anything: the header may be garbage
        raise DataError(
            f"{path} is truncated: it has {len(data)} bytes, its header calls for "
            f"{size}; copy it again"
        )
    if len(data) > size:
        raise DataError(
            f"{path} has {len(data) - size} extra bytes after the {dims} array its "
            "header declares; it is damaged or not an IDX file"
        )
    values = np.frombuffer(data, dtype, math.prod(dims), start).reshape(dims)
    return values.astype(dtype.newbyteorder("="))


def read_cifar10_binary(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a CIFAR-10 binary batch (records of a label byte and 3072 R, G, B plane bytes) as
    images uint8 [N, 3, 32, 32] and labels int64 [N], e.g. `read_cifar10_binary("test_batch.bin")`.

    Never unpickles: a file starting with the pickle protocol byte 0x80 (the "python version") is
    refused; no binary batch starts so, as labels are 0..9. DataError for that, for a size that is
    not a whole number of records, and for a label over 9.
    """
    path = Path(path)
    data = _read_bytes(path)
    if data[:1] == b"\x80":
        raise DataError(f"{path} is a pickled CIFAR-10 batch; {_CIFAR_BINARY_ONLY}")
    count, rest = divmod(len(data), _CIFAR_RECORD)
    if rest or not count:
        hint = "" if path.suffix == ".bin" else f"; {_CIFAR_BINARY_ONLY}"
        raise DataError(
            f"{path} has {len(data)} bytes, not a whole number of {_CIFAR_RECORD}-byte "
            f"CIFAR-10 records: truncated or not a CIFAR-10 batch{hint}"
        )
    records = np.frombuffer(data, np.uint8).reshape(count, _CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise DataError(f"{path}: record {bad} has label {labels[bad]}, not 0..9; is it CIFAR-100?")
    return records[:, 1:].reshape(count, 3, 32, 32).copy(), labels


class DataConfig(Config):
    """Which data set to load, and how to split, shrink, resize and augment it.

    source: "fashion-mnist" (the Debian package's files), "fashion-mnist:DIR", "mnist:DIR",
    "digits" (scikit-learn, 8x8), "cifar10:DIR" (binary batches), "folder:DIR", or a directory
    whose kind is detected; a relative DIR is made absolute (against the working directory).
    limit: at most this many examples in each split (quick runs). val_fraction: share of the
    training file held out for validation. seed: the train / val split and the limit subsample.
    image_size: resize every image (bilinear) at load time, e.g. 8x8 digits to 28 for LeNet-5.
    crop_padding, hflip: training augmentation (random crop after zero padding, random
    horizontal flip). test_fraction: held out as the test split by sources
    without one (digits, a folder without train/ and test/). workers: processes decoding a
    folder's images (None: up to 4); it never changes a result, so no cache or stage key holds it.
    """

    source: str = Field("fashion-mnist", min_length=1)
    limit: int | None = Field(None, gt=0)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    seed: int = 0
    image_size: int | None = Field(None, gt=0)
    crop_padding: int = Field(0, ge=0)
    hflip: bool = False
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    workers: int | None = Field(None, ge=0)

    @model_serializer(mode="wrap")
    def _default_workers_unwritten(self, handler):
        # a machine's setting, not the data's: at its default it stays out of files and keys
        data = handler(self)
        if data.get("workers") is None:
            data.pop("workers", None)
        return data

    @field_validator("source")
    @classmethod
    def _absolute(cls, source: str) -> str:
        """A directory as an absolute path, so that a checkpoint or a run that records this
        config finds its data again from any working directory."""
        try:
            kind, path = _parse_source(source)
        except ConfigError:
            return source  # load_data says what is wrong with it
        if path is None or path == FASHION_MNIST_DIR and kind == "fashion-mnist":
            return source
        absolute = os.path.abspath(path)
        return absolute if kind == "auto" else f"{kind}:{absolute}"


@dataclass(frozen=True, eq=False)
class ImageSet:
    """One split: images uint8 [N, C, H, W] and labels int64 [N]."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        x, y = self.images, self.labels
        if (x.dtype, x.ndim, y.dtype, y.shape) != (torch.uint8, 4, torch.int64, x.shape[:1]):
            raise DataError(
                f"an ImageSet needs uint8 images [N, C, H, W] and int64 labels [N], "
                f"not {x.dtype} {tuple(x.shape)} and {y.dtype} {tuple(y.shape)}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def take(self, index) -> ImageSet:
        """The images at `index`, as another ImageSet."""
        index = torch.as_tensor(index, dtype=torch.int64)
        return ImageSet(self.images[index], self.labels[index])

    def batches(self, indices: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The uint8 pixels of each batch of indices (an ImageFiles reads them from disk)."""
        for index in indices:
            yield self.images[index]

    def __repr__(self) -> str:
        return f"ImageSet({len(self)} x {self.shape})"


@dataclass(frozen=True, eq=False)
class DataSplits:
    """The train / val / test splits (in memory, or an image folder's files on disk); mean and
    std are per channel, of the training split, in [0, 1] scale."""

    train: ImageSet | ImageFiles
    val: ImageSet | ImageFiles
    test: ImageSet | ImageFiles
    num_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    config: DataConfig

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return self.train.shape

    def has(self, split: str) -> bool:
        """Whether `split` holds any example (a source without validation images has none)."""
        return len(getattr(self, check_split(split))) > 0

    def subset(self, split: str, images: int | None, *, seed: int = 0, batch_size: int = 500):
        """`images` examples of `split` (all for None) drawn by a permutation seeded with
        `seed`, in file order, as a list of normalized batches: a fixed set to measure on
        repeatedly (the bit-width search's)."""
        data = getattr(self, check_split(split))
        count = len(data) if images is None else min(images, len(data))
        generator = torch.Generator().manual_seed(seed)
        index = torch.randperm(len(data), generator=generator)[:count].sort().values
        return list(BatchLoader(data.take(index), batch_size, mean=self.mean, std=self.std))

    def loader(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool | None = None,
        augment: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
        seed: int | None = None,
        drop_last: bool = False,
    ) -> BatchLoader:
        """A BatchLoader over "train", "val" or "test", e.g. `splits.loader("train", 128)`.
        Shuffling and the config's augmentation default to on for "train" only; seed to the
        config's."""
        check_split(split)
        augment = split == "train" if augment is None else augment
        return BatchLoader(
            getattr(self, split),
            batch_size,
            mean=self.mean,
            std=self.std,
            shuffle=split == "train" if shuffle is None else shuffle,
            crop_padding=self.config.crop_padding if augment else 0,
            hflip=self.config.hflip and augment,
            seed=self.config.seed if seed is None else seed,
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
        )


def check_split(split: str) -> str:
    if split not in ("train", "val", "test"):
        raise ConfigError(f'unknown split "{split}"; use "train", "val" or "test"')
    return split


def load_data(config: DataConfig | Mapping[str, Any]) -> DataSplits:
    """Read config.source, split it train / val (/ test), subsample each split to config.limit
    and resize to config.image_size; the same config gives the same tensors. E.g.
    `load_data(DataConfig(source="digits")).input_shape == (1, 8, 8)`.

    config may be a mapping of DataConfig fields. ConfigError for an invalid field or source
    name, DataError for a missing path or a malformed file. A source without a test split has
    one drawn with a fixed seed, so that runs with different seeds share their test images.
    """
    try:
        config = DataConfig.model_validate(config)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid data config: {problems}") from None
    train, test, names = _read_source(config)
    if test is None:
        train, test = _split(*train, config.test_fraction, _rng(0, 0))
    train, val = _split(*train, config.val_fraction, _rng(config.seed, 1))
    sets = [
        _to_set(*_subsample(*xy, config.limit, _rng(config.seed, 2 + i)), config.image_size)
        for i, xy in enumerate((train, val, test))
    ]
    if not len(sets[0]):
        raise DataError(f"{config.source} leaves no training examples; lower val_fraction")
    mean, std = _channel_stats(sets[0])
    return DataSplits(
        *sets, num_classes=len(names), class_names=names, mean=mean, std=std, config=config
    )


def _read_source(config: DataConfig) -> tuple[_Pair, _Pair | None, tuple[str, ...]]:
    kind, path = _parse_source(config.source)
    if kind == "digits":
        try:  # only this source needs scikit-learn: an extra, `pip install netshrink[digits]`
            from sklearn.datasets import load_digits
        except ImportError:
            raise DataError(
                "the digits data set comes with scikit-learn, which is not installed: "
                "pip install 'netshrink[digits]' (or scikit-learn)"
            ) from None

        digits = load_digits()
        images = np.round(digits.images * (255 / 16)).astype(np.uint8)[:, None]
        return (images, digits.target.astype(np.int64)), None, _DIGITS
    if not path.is_dir():
        if kind == "fashion-mnist" and path == FASHION_MNIST_DIR:
            raise DataError(f"Fashion-MNIST not found at {path}; {_INSTALL_FASHION}")
        problem = "is not a directory" if path.exists() else "does not exist"
        raise DataError(f"data path {path} {problem}; give a directory ({_SOURCES})")
    kind = _detect(path) if kind == "auto" else kind
    if kind == "cifar10":
        return _read_cifar_dir(path)
    if kind == "folder":
        return _read_folder_dir(path, config)
    return _read_idx_dir(path, {"fashion-mnist": FASHION_MNIST_CLASSES, "mnist": _DIGITS}.get(kind))


def source_path(source: str) -> Path | None:
    """The directory a data source reads (None for scikit-learn's digits), without reading it;
    ConfigError for a source that names nothing netshrink knows."""
    return _parse_source(source)[1]


def _parse_source(source: str) -> tuple[str, Path | None]:
    # (kind, directory); kind "auto" means: tell from the files
    if source in ("digits", "fashion-mnist"):
        return source, FASHION_MNIST_DIR if source == "fashion-mnist" else None
    name, colon, rest = source.partition(":")
    if colon and name in ("fashion-mnist", "mnist", "cifar10", "folder"):
        if not rest:
            raise ConfigError(f'data source "{source}" names no directory; write "{name}:DIR"')
        return name, Path(rest).expanduser()
    # "kind:DIR" with an unknown kind is a typo, not a path (a drive letter "C:" is one letter)
    typo = colon and len(name) > 1 and name.replace("-", "").isalnum()
    looks_like_path = any(c in source for c in "/\\") or source.startswith((".", "~"))
    if Path(source).exists() or (looks_like_path and not typo):
        return "auto", Path(source).expanduser()
    raise ConfigError(f'unknown data source "{source}"; use {_SOURCES}')


def _detect(path: Path) -> str:
    if _find_idx(path, _IDX_STEMS[0]):
        return "idx"
    # the python version too: reading it as CIFAR-10 explains that only the binary one is read
    cifar = ("data_batch_1.bin", "cifar-10-batches-bin", "data_batch_1", "cifar-10-batches-py")
    if any((path / name).exists() for name in cifar):
        return "cifar10"
    if any(p.is_dir() and p.name[0] != "." for p in path.iterdir()):
        return "folder"
    raise DataError(
        f"cannot tell which data set {path} holds (no IDX files, CIFAR-10 .bin "
        f"batches or class folders); name its kind: {_SOURCES}"
    )


def _find_idx(directory: Path, stem: str) -> Path | None:
    # raw or .gz, and the train-images.idx3-ubyte spelling that some mirrors use
    for name in (stem, stem.replace("-idx", ".idx", 1)):
        for file in (directory / name, directory / f"{name}.gz"):
            if file.is_file():
                return file
    return None


def _read_idx_dir(path: Path, names: tuple[str, ...] | None):
    files = [_find_idx(path, stem) for stem in _IDX_STEMS]
    missing = [stem for stem, file in zip(_IDX_STEMS, files) if file is None]
    if missing:
        hint = _INSTALL_FASHION if path == FASHION_MNIST_DIR else "copy the four IDX files there"
        raise DataError(f"{path} lacks {', '.join(missing)} (raw or .gz); {hint}")
    pairs = []
    for images_file, labels_file in (files[:2], files[2:]):
        images, labels = read_idx(images_file), read_idx(labels_file)
        if images.dtype != np.uint8 or images.ndim != 3:
            raise DataError(
                f"{images_file} holds {images.dtype} {images.shape}, not uint8 images [N, H, W]"
            )
        if labels.shape != images.shape[:1] or labels.dtype.kind not in "iu" or labels.min() < 0:
            raise DataError(
                f"{labels_file} does not hold one label 0..K-1 for each of the "
                f"{len(images)} images in {images_file}"
            )
        pairs.append((images[:, None], labels.astype(np.int64)))
    top = int(max(pairs[0][1].max(), pairs[1][1].max()))
    names = names or tuple(str(i) for i in range(top + 1))
    if top >= len(names):
        raise DataError(f"{path} has label {top}, but the data set has {len(names)} classes")
    return pairs[0], pairs[1], names


def _read_cifar_dir(path: Path):
    """The training batches that are there (any of data_batch_1..5.bin) and test_batch.bin when
    it is there (else a test split is drawn from the training images, as for digits)."""
    if (path / "cifar-10-batches-bin").is_dir():  # the tarball's own folder
        path = path / "cifar-10-batches-bin"
    present = [name for name in _CIFAR_FILES[:5] if (path / name).is_file()]
    if not present:
        pickled = (path / "data_batch_1").is_file() or (path / "cifar-10-batches-py").is_dir()
        hint = _CIFAR_BINARY_ONLY if pickled else "unpack cifar-10-binary.tar.gz there"
        raise DataError(f"{path} holds none of data_batch_1.bin ... data_batch_5.bin; {hint}")
    parts = [read_cifar10_binary(path / name) for name in present]
    train = tuple(np.concatenate([part[i] for part in parts]) for i in (0, 1))
    test_file = path / _CIFAR_FILES[5]
    test = read_cifar10_binary(test_file) if test_file.is_file() else None
    return train, test, CIFAR10_CLASSES


def _read_folder_dir(path: Path, config: DataConfig):
    """A folder's files (read lazily, see netshrink.folders), flat or with train/ and test/."""
    workers = default_workers() if config.workers is None else config.workers

    def files(root: Path):
        found, labels, names = list_images(root)
        mode, shape = folder_format(found, config.image_size)
        paths = np.empty(len(found), object)
        paths[:] = found
        labels = torch.tensor(labels, dtype=torch.int64)
        return ImageFiles(paths, labels, mode, config.image_size, shape, workers), names

    train_dir, test_dir = path / "train", path / "test"
    if not (train_dir.is_dir() and test_dir.is_dir()):
        images, names = files(path)
        return (images, images.labels.numpy()), None, names
    images, names = files(train_dir)
    test_images, test_names = files(test_dir)
    if test_names != names:
        raise DataError(
            f"{test_dir} has classes {test_names} but {train_dir} has {names}; give "
            "both the same class folders"
        )
    if test_images.shape != images.shape:
        raise DataError(
            f"images in {test_dir} are {test_images.shape} (C, H, W), in "
            f"{train_dir} {images.shape}; set image_size and use one colour mode"
        )
    return (images, images.labels.numpy()), (test_images, test_images.labels.numpy()), names


def _rng(seed: int, purpose: int) -> np.random.Generator:
    # one stream per purpose, so that changing the limit does not move the val split
    return np.random.default_rng([purpose, seed % 2**64])


def _split(
    images: np.ndarray,
    labels: np.ndarray,
    fraction: float,
    rng: np.random.Generator,
) -> tuple[_Pair, _Pair]:
    # (kept, held out), each in file order
    order = rng.permutation(len(labels))
    held = round(len(labels) * fraction)
    kept, out = np.sort(order[held:]), np.sort(order[:held])
    return (images[kept], labels[kept]), (images[out], labels[out])


def _subsample(
    images: np.ndarray, labels: np.ndarray, limit: int | None, rng: np.random.Generator
) -> _Pair:
    if limit is None or len(labels) <= limit:
        return images, labels
    keep = np.sort(rng.permutation(len(labels))[:limit])
    return images[keep], labels[keep]


def _to_set(images, labels: np.ndarray, size: int | None) -> ImageSet | ImageFiles:
    if isinstance(images, ImageFiles):  # decoded at its size when a batch is read
        return images
    x = torch.from_numpy(np.ascontiguousarray(images))
    if size is not None and x.shape[-2:] != (size, size):
        # bilinear, antialiased when shrinking (as PIL does); in chunks, so that a float copy
        # of a whole split is never held at once
        parts = [
            F.interpolate(part.float(), size=(size, size), mode="bilinear", antialias=True)
            for part in x.split(4096)
        ]
        x = torch.cat(parts).round_().clamp_(0, 255).to(torch.uint8)
    return ImageSet(x, torch.from_numpy(np.ascontiguousarray(labels, np.int64)))


STATS_SAMPLE = 10_000  # images of a folder on disk that its mean and std are read from


def _channel_stats(split: ImageSet | ImageFiles) -> tuple[tuple[float, ...], tuple[float, ...]]:
    # exact, from a 256-bin histogram per channel, with no float copy of the split; of a folder
    # on disk, from a seeded sample of STATS_SAMPLE images, read batch by batch. A constant
    # channel gets std 1 so that normalising cannot divide by zero
    channels = split.shape[0]
    hist = torch.zeros(channels, 256, dtype=torch.float64)
    index = torch.arange(len(split))
    if isinstance(split, ImageFiles) and len(split) > STATS_SAMPLE:
        generator = torch.Generator().manual_seed(0)
        index = torch.randperm(len(split), generator=generator)[:STATS_SAMPLE].sort().values
    for images in split.batches(index.split(512)):  # a few MB at a time, on disk or not
        for c in range(channels):
            hist[c] += torch.bincount(images[:, c].reshape(-1), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for c in range(channels):
        mean = (hist[c] * values).sum() / hist[c].sum()
        var = (hist[c] * values.square()).sum() / hist[c].sum() - mean.square()
        means.append(float(mean))
        stds.append(float(var.clamp_min(0).sqrt()) or 1.0)
    return tuple(means), tuple(stds)


def mix_seed(*words: int) -> int:
    # one generator seed from (seed, epoch, stream); SeedSequence decorrelates nearby inputs
    state = np.random.SeedSequence([w % 2**64 for w in words]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def _random_crop(x: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    # a random crop of the zero-padded batch, per image, gathered in one indexing operation
    b, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    dy, dx = torch.randint(0, 2 * padding + 1, (2, b, 1), generator=gen)
    rows = (dy + torch.arange(h))[:, None, :, None]
    cols = (dx + torch.arange(w))[:, None, None, :]
    return padded[
        torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols
    ]


class BatchLoader:
    """Batches (x float32 [B, C, H, W] = (pixels / 255 - mean) / std, y int64 [B]) cut straight
    from an ImageSet's uint8 tensors (or an ImageFiles' files, decoded by its workers),
    batch-wise: per-sample Python transforms are slow on a few cores. E.g.
    `BatchLoader(splits.train, 128, mean=splits.mean, std=splits.std, shuffle=True)`.

    Shuffling and augmentation (random crop after crop_padding zeros, random horizontal flip)
    come from generators seeded by (seed, epoch): call set_epoch(epoch) before each epoch. For
    DDP every rank draws the same permutation and takes perm[rank::world_size], wrapped so that
    all ranks take the same number of steps; dataset_size is what one rank sees per epoch.
    """

    def __init__(
        self,
        data: ImageSet | ImageFiles,
        batch_size: int,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool = False,
        crop_padding: int = 0,
        hflip: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        channels = data.shape[0]
        if (
            batch_size < 1
            or not 0 <= rank < world_size
            or crop_padding < 0
            or len(mean) != channels
            or len(std) != channels
            or min(std) <= 0
        ):
            raise ConfigError(
                f"invalid loader: batch_size {batch_size} (>= 1), rank {rank} of "
                f"{world_size}, crop_padding {crop_padding} (>= 0), mean {mean}, "
                f"std {std} (one value per channel, {channels}; std > 0)"
            )
        self.data, self.batch_size, self.shuffle, self.seed = data, batch_size, shuffle, seed
        self.crop_padding, self.hflip, self.drop_last = crop_padding, hflip, drop_last
        self.rank, self.world_size, self.epoch = rank, world_size, 0
        self.dataset_size = math.ceil(len(data) / world_size)
        self._pin = torch.cuda.is_available()
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        # (x / 255 - mean) / std folded into one multiply and one add per pixel
        self._scale = 1 / (255 * std_t)
        self._shift = -torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) / std_t

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shuffle and augmentation the next pass draws."""
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.dataset_size // self.batch_size
        return math.ceil(self.dataset_size / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order()
        # a stream per rank, so that ranks do not crop and flip in lockstep
        gen = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, 1 + self.rank))
        indices = [
            order[start : start + self.batch_size]
            for start in range(0, len(self) * self.batch_size, self.batch_size)
        ]
        for index, x in zip(indices, self.data.batches(indices)):
            if self.crop_padding:
                x = _random_crop(x, self.crop_padding, gen)
            if self.hflip:
                flip = torch.rand(len(x), generator=gen) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(3), x)
            x = x.float().mul_(self._scale).add_(self._shift)
            # page-locked, so that the copy to a GPU overlaps the step (netshrink.device)
            yield (x.pin_memory() if self._pin else x), self.data.labels[index]

    def _order(self) -> torch.Tensor:
        n = len(self.data)
        if self.shuffle:  # the same seed on every rank: one permutation, so shards are disjoint
            gen = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, 0))
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        total = self.dataset_size * self.world_size
        if total > n:  # wrap around: DDP needs every rank to take the same number of steps
            order = order.repeat(math.ceil(total / n))[:total]
        return order[self.rank :: self.world_size]
