"""Integer streams (relative indices, codebook indices, later fixed-point integers), each coded
with whichever coder makes it smallest: raw bit-packing, canonical Huffman, or rANS.

Han et al. 2016 (Deep Compression) and Kim et al. ("synapse code") Huffman-code their index
streams; ANS reaches the order-0 entropy where Huffman loses up to a bit a symbol. A stream's
section record says which coder wrote it and the parameters a decoder needs; its tables (Huffman
code lengths, ANS frequencies) are bits at the start of the section (docs/format.md).
"""

from typing import Annotated, Literal

import numpy as np
from pydantic import ConfigDict, Field

from ..config import Config
from ..errors import CorruptFileError
from . import ans, huffman
from .bitio import pack_fields, packed_size, unpack_fields

MAX_ALPHABET = 1 << 16  # Huffman and ANS; raw bit-packing takes any value below 2**32
Count = Annotated[int, Field(ge=0, le=1 << 40)]


class _Record(Config):
    model_config = ConfigDict(strict=True)  # and Config's frozen, extra="forbid"

    offset: Count = 0  # bytes from the start of the payload; filled in when the file is laid out
    length: Count = 0
    crc32: Annotated[int, Field(ge=0, lt=1 << 32)] = 0
    count: Count  # symbols (or values) in the section


class BitsSection(_Record):
    """Raw bit-packing: `count` fields of `width` bits."""

    kind: Literal["bits"] = "bits"
    width: Annotated[int, Field(ge=0, le=32)]


class HuffmanSection(_Record):
    """Canonical Huffman: code-length table, block-length table, codes."""

    kind: Literal["huffman"] = "huffman"
    count: Annotated[int, Field(ge=1, le=1 << 40)]
    alphabet: Annotated[int, Field(ge=1, le=MAX_ALPHABET)]
    length_width: Annotated[int, Field(ge=1, le=5)]
    block: Annotated[int, Field(ge=1, le=4096)]  # decode steps: bounded, so no file hangs
    block_width: Annotated[int, Field(ge=0, le=32)]


class AnsSection(_Record):
    """rANS (constriction, 24-bit precision): frequency table, then 32-bit words."""

    kind: Literal["ans"] = "ans"
    alphabet: Annotated[int, Field(ge=2, le=MAX_ALPHABET)]
    table_width: Annotated[int, Field(ge=1, le=ans.MAX_TABLE_BITS)]


StreamSection = BitsSection | HuffmanSection | AnsSection
CODERS = ("bits", "huffman", "ans")


def encode_stream(
    symbols: np.ndarray, coders: tuple[str, ...] = CODERS
) -> tuple[StreamSection, bytes]:
    """Code non-negative integers (< 2**32) with the smallest of `coders`; ties go to the simpler
    coder (bits, then Huffman, then ANS), so the choice is deterministic."""
    symbols = np.asarray(symbols, dtype=np.int64).ravel()
    width = int(symbols.max(initial=0)).bit_length()
    if width > 32 or symbols.min(initial=0) < 0:
        raise ValueError("stream symbols must lie in [0, 2**32)")
    best = (packed_size(symbols.size * width), "bits")
    alphabet = max(int(symbols.max(initial=0)) + 1, 2)
    if symbols.size == 0 or alphabet > MAX_ALPHABET:
        coders = ("bits",)
    counts = np.bincount(symbols, minlength=alphabet) if len(coders) > 1 else None
    huff = huffman.plan(symbols, alphabet) if "huffman" in coders else None
    if huff is not None and huff.nbytes < best[0]:
        best = (huff.nbytes, "huffman")
    a_plan = ans.plan(counts) if "ans" in coders else None
    if a_plan is not None and a_plan.estimated_bits / 8 < best[0]:  # code only a likely winner
        encoded = ans.encode(symbols, a_plan)
        if len(encoded) < best[0]:
            best = (len(encoded), "ans")
    match best[1]:
        case "bits":
            return BitsSection(count=symbols.size, width=width), pack_fields(symbols, width)[0]
        case "huffman":
            return _huffman_record(symbols.size, alphabet, huff), huffman.encode(symbols, huff)
        case _:
            record = AnsSection(
                count=symbols.size, alphabet=alphabet, table_width=a_plan.table_width
            )
            return record, encoded


def _huffman_record(count: int, alphabet: int, p: huffman.HuffmanPlan) -> HuffmanSection:
    return HuffmanSection(
        count=count,
        alphabet=alphabet,
        length_width=p.length_width,
        block=p.block,
        block_width=p.block_width,
    )


def decode_stream(section: StreamSection, data: bytes) -> np.ndarray:
    """The symbols of a stream section (int64), every size checked against the section first."""
    match section:
        case BitsSection():
            if len(data) != packed_size(section.count * section.width):
                raise CorruptFileError("bit-packed stream length does not match its count")
            return unpack_fields(data, section.width, section.count)
        case HuffmanSection():
            if section.count > 8 * len(data):  # every code has at least one bit
                raise CorruptFileError("Huffman stream is too short for its symbol count")
            return huffman.decode(
                data,
                alphabet=section.alphabet,
                count=section.count,
                length_width=section.length_width,
                block=section.block,
                block_width=section.block_width,
            )
        case AnsSection():
            return ans.decode(
                data,
                alphabet=section.alphabet,
                count=section.count,
                table_width=section.table_width,
            )
    raise CorruptFileError(f"unknown stream coder {section!r}")


def entropy_bits(symbols: np.ndarray) -> float:
    """The order-0 (empirical) entropy of `symbols` times their count: the bound that no
    symbol-by-symbol code with a static model can beat, tables not counted."""
    # np.unique, not np.bincount: a 32-bit stream's largest symbol would size a 32 GiB table
    counts = np.unique(np.asarray(symbols, dtype=np.int64), return_counts=True)[1]
    if counts.size <= 1:
        return 0.0
    return float(-(counts * np.log2(counts / counts.sum())).sum())
