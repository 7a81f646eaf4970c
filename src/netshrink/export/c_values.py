"""What the C export's graph walk (netshrink.export.c_graph) passes around: the C element types,
a tensor's storage (Buffer), integers in memory (Stored), producers not yet emitted (Pending, Cat),
a layer's integer weights (Weights), the emitted steps (Step); and the scratch plan that places
every arena buffer (plan_arenas)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    from .c_sparse import SparseWeights

_CTYPES = (
    ("int8_t", -(1 << 7), (1 << 7) - 1),
    ("uint8_t", 0, (1 << 8) - 1),
    ("int16_t", -(1 << 15), (1 << 15) - 1),
    ("uint16_t", 0, (1 << 16) - 1),
    ("int32_t", -(1 << 31), (1 << 31) - 1),
    ("int64_t", -(1 << 63), (1 << 63) - 1),
)

BITS = {"int8_t": 8, "uint8_t": 8, "int16_t": 16, "uint16_t": 16, "int32_t": 32, "int64_t": 64}


def ctype_for(lo: int, hi: int) -> str:
    return next(name for name, low, high in _CTYPES if low <= lo and hi <= high)


def c_identifier(name: str) -> str:
    return re.sub(r"\W", "_", name)


@dataclass(eq=False)
class Buffer:
    """Storage of one tensor: in a scratch arena (offset planned later), the caller's input /
    logits, or a const array `name` in flash ("const"). `start` / `end`: the steps that write
    it first and read it last."""

    ctype: str
    count: int
    where: str = "arena"
    name: str = ""
    start: int = -1
    end: int = -1
    offset: int = 0


@dataclass(frozen=True)
class PerPosition:
    """Divisors that differ from output to output (an average pool whose windows hold different
    numbers of values): the const table `table`, read at the C index `index` (of the pool's
    loop), its values within [lo, hi]."""

    table: str
    lo: int
    hi: int
    index: str


@dataclass(eq=False)
class Stored:
    """Integers in memory at scale 2**-frac (divided by `divisor`), all within [lo, hi]."""

    buf: Buffer
    shape: tuple[int, ...]
    frac: int
    lo: int
    hi: int
    divisor: int = 1


@dataclass(eq=False)
class Pending:
    """A producer not yet emitted: `body(epilogue, out_ctype)` writes its loop nest, `args` its
    input (and temporary) buffers; the consumer that stores it decides the epilogue."""

    name: str
    shape: tuple[int, ...]
    frac: int
    divisor: int
    lo: int
    hi: int
    saturate: tuple[int, int] | None
    body: Callable[[Callable[[int], str], str], str]
    args: list
    users: int
    clamps: tuple = ()
    stored: Stored | None = None


@dataclass(eq=False)
class Cat:
    """A concatenation waiting for its quantizer: each part requantized on its own."""

    name: str
    shape: tuple[int, ...]
    parts: list  # [(Stored, clamps)]
    outer: int
    users: int


@dataclass
class Step:
    fn: str
    params: list  # (pname, Buffer, const)
    body: str


@dataclass
class Weights:
    cname: str
    frac: int
    ctype: str
    ints: np.ndarray  # (out, row)
    bias: list[int] | None
    bias_frac: int | None
    packed: tuple[int, int] | None  # (index bits, codebook size)
    sparse: SparseWeights | None = None  # set when the layer is stored sparse


def plan_arenas(buffers: list[Buffer]) -> dict[int, int]:
    """Offsets in one arena per element width: largest tensors first, each at the lowest offset
    free of every tensor alive at the same time (greedy by size, liveness from the steps)."""
    sizes = {}
    for bits in (8, 16, 32, 64):
        placed: list[Buffer] = []
        group = [
            b for b in buffers if b.where == "arena" and b.start >= 0 and BITS[b.ctype] == bits
        ]
        for buf in sorted(group, key=lambda b: (-b.count, b.start)):
            buf.end = max(buf.end, buf.start)
            busy = sorted(
                (p.offset, p.offset + p.count)
                for p in placed
                if p.start <= buf.end and buf.start <= p.end
            )
            offset = 0
            for low, high in busy:
                if offset + buf.count <= low:
                    break
                offset = max(offset, high)
            buf.offset = offset
            placed.append(buf)
        if placed:
            sizes[bits] = max(p.offset + p.count for p in placed)
    return sizes
