"""The user's own data: a torch `Dataset`, a `DataLoader` or any re-iterable of `(x, y)` batches,
wherever netshrink's own `DataSplits` is taken.

`LoaderSplits(train, val, test)` has what the methods ask of their data (`loader(split, ...)`,
`has(split)`, `subset(...)`, `input_shape`, `num_classes`), so `fit`, the pruning, sharing and
fixed-point methods, distillation and recipes' stages run on it unchanged; `as_data` turns what a
user hands a public function into one of the two.

- a map-style `Dataset` is batched here: netshrink's batch size, a shuffle seeded by (seed,
  epoch), a `DistributedSampler` under torchrun, worker processes and pinned memory as asked;
- a `DataLoader` is used as it is: its own batch size, sampler, workers and transforms (under
  torchrun give it a `DistributedSampler`; its `set_epoch` is called every epoch);
- any other re-iterable of `(x, y)` batches (a list of tensors, say) is iterated as it is.

Its transforms are the user's: netshrink's augmentation settings apply to its own sources only.

    >>> data = LoaderSplits(train_dataset, val=val_loader)
    >>> netshrink.fit(model, data, {"epochs": 3})
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset

from .data import DataSplits, check_split, mix_seed
from .errors import ConfigError

SPLITS = ("train", "val", "test")


def is_map_dataset(source) -> bool:
    """A map-style torch Dataset (items by index, a length): what netshrink batches itself."""
    return isinstance(source, Dataset) and not isinstance(source, IterableDataset)


def check_reiterable(source, what: str) -> None:
    """ConfigError for a one-shot iterator (a generator): a second epoch would find it empty."""
    if source is not None and iter(source) is source:
        raise ConfigError(
            f"the {what} data is a one-shot iterator (a generator?): a second pass would find "
            "it empty; give a Dataset, a DataLoader or a list of (x, y) batches"
        )


class SourceLoader:
    """Batches of one user source with the interface of netshrink's `BatchLoader`: `len` (batches
    an epoch, when the source knows), `set_epoch` and iteration over `(x, y)`."""

    def __init__(
        self,
        source,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        workers: int = 0,
    ) -> None:
        self.source, self.epoch = source, 0
        self._seed, self._shuffle = seed, shuffle
        if is_map_dataset(source):
            sampler = (
                DistributedSampler(source, world_size, rank, shuffle=shuffle, seed=seed)
                if world_size > 1
                else None
            )
            self._generator = torch.Generator()
            self.loader = DataLoader(
                source,
                batch_size,
                shuffle=shuffle and sampler is None,
                sampler=sampler,
                generator=self._generator,
                drop_last=drop_last,
                num_workers=workers,
                pin_memory=torch.cuda.is_available(),
                persistent_workers=workers > 0,
            )
        elif isinstance(source, IterableDataset):
            self.loader = DataLoader(source, batch_size, num_workers=workers)
        else:  # a DataLoader or a re-iterable of batches: used as it is
            self.loader = source

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shuffle the next pass draws."""
        self.epoch = epoch
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)

    def __len__(self) -> int:
        try:
            return len(self.loader)
        except TypeError:
            raise ConfigError(
                "this data does not say how many batches it holds (an iterable without a "
                "length): give a Dataset, a DataLoader or a list of batches"
            ) from None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._shuffle and is_map_dataset(self.source):
            self._generator.manual_seed(mix_seed(self._seed, self.epoch, 0))
        for batch in self.loader:
            yield batch_pair(batch)


def batch_pair(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """`(x, y)` of one batch, checked: the one shape netshrink's loops take."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise ConfigError(
            f"a batch must be (images, labels), not {type(batch).__name__}; give a Dataset "
            "whose items are (image tensor, label) pairs"
        )
    x, y = batch[0], batch[1]
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ConfigError(
            f"a batch must hold tensors (images [B, C, H, W], labels [B]), not "
            f"{type(x).__name__} and {type(y).__name__}"
        )
    return x, y


def training_examples(data: DataSplits | LoaderSplits) -> int:
    """The examples of the training split: its length for netshrink's splits, one pass over
    the batches for a user's loader (whose length may be unknown). A prior's or a KL term's
    1 / N_train."""
    if isinstance(data, DataSplits):
        return len(data.train)
    return sum(int(batch_pair(b)[1].shape[0]) for b in data.loader("train", 256))


def length_of(source) -> int | None:
    """How many batches `source` yields in one pass, when it says; None otherwise."""
    try:
        return len(source)
    except TypeError:
        return None


class LoaderSplits:
    """The user's train / val / test data (each a Dataset, a DataLoader, a re-iterable of `(x, y)`
    batches, or None), served as netshrink's methods ask for it. `num_classes` and `class_names`
    default to the training dataset's `classes` (as torchvision's sets have); `workers` and
    `seed` apply to the Datasets netshrink batches itself."""

    config = None  # no netshrink DataConfig: checkpoints record no data source

    def __init__(
        self,
        train,
        val=None,
        test=None,
        *,
        num_classes: int | None = None,
        class_names: tuple[str, ...] | None = None,
        workers: int = 0,
        seed: int = 0,
    ) -> None:
        if train is None:
            raise ConfigError("LoaderSplits needs training data")
        for split, source in zip(SPLITS, (train, val, test)):
            check_reiterable(source, split)
        self.train, self.val, self.test = train, val, test
        classes = getattr(_dataset_of(train), "classes", None)
        self.class_names = tuple(class_names or classes or ())
        self.num_classes = num_classes or (len(self.class_names) or None)
        self.workers, self.seed = workers, seed
        self._input_shape: tuple[int, ...] | None = None

    def has(self, split: str) -> bool:
        """Whether the split was given (and, when it says its length, is not empty)."""
        source = getattr(self, check_split(split))
        return source is not None and length_of(source) != 0

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W) of the images, read from the first training batch."""
        if self._input_shape is None:
            x, _ = next(iter(self.loader("train", 1, shuffle=False)))
            self._input_shape = tuple(int(d) for d in x.shape[1:])
        return self._input_shape

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
    ) -> SourceLoader:
        """Batches of `split` (see the module docstring for what each kind of source does);
        `augment` is ignored: the user's transforms are theirs."""
        source = getattr(self, check_split(split))
        if source is None:
            raise ConfigError(f'no "{split}" data was given: pass LoaderSplits({split}=...)')
        return SourceLoader(
            source,
            batch_size,
            shuffle=split == "train" if shuffle is None else shuffle,
            seed=self.seed if seed is None else seed,
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
            workers=self.workers,
        )

    def subset(self, split: str, images: int | None, *, seed: int = 0, batch_size: int = 500):
        """The first `images` examples of `split` (all for None), in order, as a list of batches:
        a fixed set to measure on repeatedly."""
        batches, seen = [], 0
        for x, y in self.loader(split, batch_size, shuffle=False):
            take = len(y) if images is None else min(len(y), images - seen)
            batches.append((x[:take], y[:take]))
            seen += take
            if images is not None and seen >= images:
                break
        return batches

    def __repr__(self) -> str:
        given = [s for s in SPLITS if getattr(self, s) is not None]
        return f"LoaderSplits({', '.join(given)})"


def _dataset_of(source):
    return source.dataset if isinstance(source, DataLoader) else source


def as_data(data, *, val=None, test=None):
    """What a public function was handed, as data the methods read: netshrink's `DataSplits` and a
    `LoaderSplits` as they are; a Dataset, DataLoader or iterable of batches as the training
    split of a `LoaderSplits` (with `val` and `test` beside it)."""
    if isinstance(data, (DataSplits, LoaderSplits)):
        if val is not None or test is not None:
            raise ConfigError(
                "val / test go with a training Dataset or DataLoader, not with splits"
            )
        return data
    if isinstance(data, torch.Tensor) or not isinstance(data, Iterable):
        raise ConfigError(
            f"cannot train on {type(data).__name__}: give netshrink.load_data(...), a "
            "LoaderSplits, a torch Dataset, a DataLoader or a list of (x, y) batches"
        )
    return LoaderSplits(data, val, test)


def batches_of(source, batch_size: int = 256):
    """Batches to evaluate: a map-style Dataset is batched (in order), anything else is taken as
    an iterable of `(x, y)` batches."""
    if is_map_dataset(source) or isinstance(source, IterableDataset):
        return SourceLoader(source, batch_size)
    return source
