"""Image folders (one sub-folder of images per class, sorted names -> labels 0..K-1), read lazily.

A folder's split is an `ImageFiles`: the file paths and labels in memory, the pixels on disk.
`netshrink.data.BatchLoader` asks a split for the uint8 pixels of each batch of indices; an
`ImageFiles` answers through a torch DataLoader whose worker processes open, convert and resize
the images, so a folder of a million images trains in the memory of a few batches. Shuffling,
cropping, flipping and normalizing stay in the BatchLoader, batch-wise and seeded as for the
in-memory sources: the workers only decode, so their number never changes a result.

Every mistake (no class folders, an empty class, an unreadable image, mixed sizes without
`image_size`) is a DataError naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def default_workers() -> int:
    """Decoding processes when the data config leaves `workers` unset: up to 4, one per core."""
    return min(4, os.cpu_count() or 1)


def list_images(root: Path) -> tuple[list[Path], list[int], tuple[str, ...]]:
    """(files, labels, class names) of a folder tree, in sorted order."""
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory")
    names = tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and p.name[0] != "."))
    if not names:
        raise DataError(
            f"{root} has no class sub-folders; put each class's images in a folder "
            f"named after it, e.g. {root / 'cat' / '001.png'}"
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(names):
        found = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DataError(
                f"class folder {root / name} holds no images (.png, .jpg, ...); add "
                "some or remove it"
            )
        files += found
        labels += [label] * len(found)
    return files, labels, names


def open_image(path: Path, use):
    """`use(image)` of the opened image; DataError naming the file when PIL cannot read it."""
    # PIL signals a bad file with several exception types; the user needs only its name
    try:
        with Image.open(path) as image:
            return use(image)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path} ({exc}); remove or replace it") from exc


def decode(path: Path, mode: str, size: int | None) -> np.ndarray:
    """One image as uint8 [C, H, W]: converted to `mode` ("L" or "RGB"), resized (bilinear)
    to size x size when given."""

    def pixels(image: Image.Image) -> np.ndarray:
        image = image.convert(mode)
        if size is not None and image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        return np.array(image, np.uint8)  # a copy: PIL's buffer is read-only

    values = open_image(path, pixels)
    return values[None] if mode == "L" else np.ascontiguousarray(values.transpose(2, 0, 1))


def folder_format(files: list[Path], image_size: int | None) -> tuple[str, tuple[int, int, int]]:
    """The colour mode every image is read in ("L" when all are grayscale, else "RGB") and the
    (C, H, W) they decode to, from the files' headers (no pixels are read). DataError for mixed
    sizes without `image_size`."""
    headers = [open_image(f, lambda image: (image.mode, image.size)) for f in files]
    mode = "L" if all(m in GRAY_MODES for m, _ in headers) else "RGB"
    for file, (_, size) in zip(files, headers):
        if image_size is None and size != headers[0][1]:
            raise DataError(
                f"{file} is {size[0]}x{size[1]} but {files[0]} is {headers[0][1][0]}x"
                f"{headers[0][1][1]}; set image_size to resize every image"
            )
    width, height = (image_size, image_size) if image_size else headers[0][1]
    return mode, (1 if mode == "L" else 3, height, width)


def read_image_folder(
    root: str | Path,
    image_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Read a whole folder into memory: images uint8 [N, C, H, W], labels int64 [N] and the class
    names, e.g. `read_image_folder("pets/", 32)` (`load_data` reads folders lazily instead)."""
    files, labels, names = list_images(Path(root))
    mode, _ = folder_format(files, image_size)
    pixels = np.stack([decode(f, mode, image_size) for f in files])
    return pixels, np.asarray(labels, np.int64), names


@dataclass(frozen=True, eq=False)
class ImageFiles:
    """One split whose pixels stay on disk: the files, their labels int64 [N], how they decode
    (`mode`, `image_size`, giving `shape` (C, H, W)) and the decoding processes (`workers`)."""

    files: np.ndarray  # object array of Paths: indexed like the labels
    labels: torch.Tensor
    mode: str
    image_size: int | None
    shape: tuple[int, int, int]
    workers: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index) -> ImageFiles:
        """The images at `index` (an index array), as another ImageFiles."""
        index = np.asarray(index, np.int64)
        return ImageFiles(
            self.files[index],
            self.labels[torch.from_numpy(index)],
            self.mode,
            self.image_size,
            self.shape,
            self.workers,
        )

    def batches(self, indices: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The uint8 pixels [B, C, H, W] of each batch of indices, in order, decoded by the
        worker processes ahead of use."""
        loader = DataLoader(
            _Decoder(self),
            batch_sampler=[index.tolist() for index in indices],
            num_workers=self.workers,
            collate_fn=torch.stack,
        )
        yield from loader

    __getitem__ = take  # indexed like an array of images by the split and subsample steps

    def __repr__(self) -> str:
        return f"ImageFiles({len(self)} x {self.shape}, on disk)"


class _Decoder(Dataset):
    """The pixels of one file by index (what a worker process runs)."""

    def __init__(self, files: ImageFiles) -> None:
        self.files, self.mode, self.size = files.files, files.mode, files.image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(decode(self.files[i], self.mode, self.size))
