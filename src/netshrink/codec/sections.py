"""The parts every tensor encoding is built from: raw value sections, integer streams, relative
indices of kept positions (Han et al. 2016), and the checked reading of a record's sections.
`encodings.py` (values alone) and `shared.py` (a weight-sharing method's own structure) use
them; a config here is anything with PackConfig's `coders` and `index_bits`.
"""

from typing import NamedTuple

import numpy as np

from ..errors import CorruptFileError
from . import relative
from .header import DTYPES, FLOAT_DTYPES, BytesSection, Section, TensorRecord
from .streams import StreamSection, encode_stream

SECTION_COST = 16  # bytes a section adds to the header, roughly: tiny tensors stay dense

Sections = dict[str, tuple[Section, bytes]]


class Encoded(NamedTuple):
    params: dict[str, int]
    sections: Sections

    @property
    def cost(self) -> int:
        return sum(len(b) + SECTION_COST for _, b in self.sections.values())


def bytes_section(values: np.ndarray, dtype: str) -> tuple[BytesSection, bytes]:
    """`values` as little-endian `dtype` bytes."""
    data = np.ascontiguousarray(values, dtype=DTYPES[dtype][1]).tobytes()
    return BytesSection(count=values.size, dtype=dtype), data


def stream_section(symbols: np.ndarray, config) -> tuple[StreamSection, bytes]:
    """Non-negative integers, coded with the smallest of raw bits and `config.coders`."""
    return encode_stream(symbols, ("bits", *config.coders))


def index_stream(config, shape: tuple[int, ...], positions: np.ndarray):
    """(b, coded relative-index stream of `positions`): b as configured, or for "best" the
    smallest of the likely candidates once coded (ties to the smaller b)."""
    if config.index_bits == "paper":
        candidates = [relative.paper_bits(shape)]
    elif config.index_bits == "best":
        candidates = relative.likely_bits(positions)
    else:
        candidates = [config.index_bits]
    coded = [
        (b, stream_section(relative.encode_positions(positions, b), config)) for b in candidates
    ]
    return min(coded, key=lambda c: (len(c[1][1]), c[0]))


def narrowest_float(values: np.ndarray, dtype: str) -> str:
    """The smallest float dtype, no wider than `dtype`, that holds every one of `values` exactly
    (float16 only where the round trip is bit for bit), so that a table costs no more than it
    must and decodes to the same numbers."""
    for name in ("float16", "float32", "float64"):
        kind = DTYPES[name][1]
        if kind.itemsize >= DTYPES[dtype][1].itemsize:
            return dtype
        with np.errstate(over="ignore", invalid="ignore"):
            narrow = values.astype(kind)
        if np.isfinite(narrow).all() and np.array_equal(narrow.astype(values.dtype), values):
            return name
    return dtype


def get_section(record: TensorRecord, role: str, kind) -> Section:
    """The record's `role` section, which must be of `kind`, else CorruptFileError."""
    section = record.sections.get(role)
    if not isinstance(section, kind):
        raise CorruptFileError(f"{record.name}: no {role} section of the right kind")
    return section


def read_bytes(section: BytesSection, data: bytes) -> np.ndarray:
    """The values of a bytes section (its length already checked against its count)."""
    if section.dtype == "bool" and np.frombuffer(data, dtype=np.uint8).max(initial=0) > 1:
        raise CorruptFileError("a bool section holds bytes other than 0 and 1")
    return np.frombuffer(data, dtype=DTYPES[section.dtype][1], count=section.count).copy()


def read_floats(record: TensorRecord, role: str, data: dict[str, bytes]) -> np.ndarray:
    """A float table of the record at the record's own dtype (stored at it or narrower)."""
    section = get_section(record, role, BytesSection)
    if section.dtype not in FLOAT_DTYPES:
        raise CorruptFileError(f"{record.name}: {role} stored as {section.dtype}")
    return read_bytes(section, data[role]).astype(DTYPES[record.dtype][1])
