"""The .nsk container: magic, version, a zlib-compressed JSON header, the sections, CRC32s.

    offset  size  field
    0       8     magic 89 4E 53 4B 0D 0A 1A 0A ("\\x89NSK\\r\\n\\x1a\\n")
    8       2     format version (uint16 LE): 1, or 2 when a tensor is `sign` or `vector`
    10      2     flags (uint16 LE) = 0
    12      4     H: header length in bytes (uint32 LE)
    16      4     CRC32 of the H header bytes (uint32 LE)
    20      H     header: zlib stream of UTF-8 JSON (netshrink.codec.header.Header)
    20+H    P     payload: the sections, back to back in the order of their offsets
    end-4   4     CRC32 of every byte before it (uint32 LE)

Reading checks, in order and before anything is decoded or allocated from the file's claims:
magic, version, lengths, the header's CRC, its size once inflated, its schema, that the sections
tile the payload exactly, the size limits (`check_limits`), each section's CRC and the file's.
"""

import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from ..edits import MAX_EDITS, check_edit_counts
from ..errors import ConfigError, CorruptFileError, LimitError
from ..untrusted import MAX_DECODED_BYTES, check_budget, decode_budget
from .encodings import working_bytes
from .header import DTYPES, MAX_TENSORS, TAG_VERSION, BytesSection, Header, TensorRecord
from .streams import BitsSection, HuffmanSection

MAGIC = b"\x89NSK\r\n\x1a\n"
VERSION = 2  # the newest this reader reads; a file states the oldest that holds its encodings
PREFIX = struct.Struct("<8sHHII")
TRAILER = 4
MAX_FILE_BYTES = 1 << 32
# Inflated JSON: parsing takes up to ~40 bytes of memory a byte (empty objects in `data`), so
# 4 MiB stays under 200 MB; a real header holds a few hundred bytes a tensor plus its edits.
MAX_HEADER_BYTES = 4 << 20
MAX_TENSOR_ELEMENTS = 1 << 31


@dataclass(frozen=True)
class Container:
    """A parsed, checked file: its header and each tensor's section bytes by role."""

    header: Header
    sections: list[dict[str, memoryview]]
    size: int
    decoded_bytes: int  # the tensors plus the largest decoder's working arrays, bounded


def container_bytes(header: Header, payload: list[bytes], where: str = "<memory>") -> bytes:
    """The bytes of a .nsk file, read back as a reader would (every check, the edit counts)
    before they are returned: what a reader would refuse is a ConfigError here, so netshrink
    never writes it. The header must already hold the sections' offsets, lengths and CRCs."""
    text = json.dumps(
        header.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), allow_nan=False
    )
    packed = zlib.compress(text.encode(), 9)
    version = format_version(header)
    body = PREFIX.pack(MAGIC, version, 0, len(packed), zlib.crc32(packed)) + packed
    body += b"".join(payload)
    body += struct.pack("<I", zlib.crc32(body))
    try:
        parse_container(body, where, max_decoded_bytes=None)
        check_edit_counts(header.edits)
    except (CorruptFileError, ConfigError) as exc:
        raise ConfigError(f"cannot pack this model: {exc}") from None
    return body


def format_version(header: Header) -> int:
    """The oldest format version that has every encoding `header` uses (so a file without the
    later encodings keeps version 1 and its bytes)."""
    return max((TAG_VERSION.get(r.encoding, 1) for r in header.tensors), default=1)


def read_container(
    path: str | Path, max_decoded_bytes: int | None = MAX_DECODED_BYTES
) -> Container:
    """Read and check a .nsk file; anything wrong with it raises CorruptFileError (LimitError
    when it would decode to more than its budget, see netshrink.untrusted)."""
    path = Path(path)
    if not path.is_file():
        raise CorruptFileError(f"{path}: no such file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise CorruptFileError(f"{path}: {size} bytes is past the format's 4 GiB limit")
    return parse_container(path.read_bytes(), str(path), max_decoded_bytes)


def parse_container(
    data: bytes, where: str = "<bytes>", max_decoded_bytes: int | None = MAX_DECODED_BYTES
) -> Container:
    """Check and split the bytes of a .nsk file (see the module docstring for the order)."""
    header_bytes = _prefix(data, where)
    header = _parse_header(header_bytes, where)
    if format_version(header) > PREFIX.unpack_from(data)[1]:
        raise CorruptFileError(f"{where}: an encoding newer than the file's format version")
    payload = memoryview(data)[PREFIX.size + len(header_bytes) : len(data) - TRAILER]
    _check_tiling(header, len(payload), where)
    decoded = check_limits(header, len(data), where, max_decoded_bytes)
    sections = [
        {role: payload[s.offset : s.offset + s.length] for role, s in record.sections.items()}
        for record in header.tensors
    ]
    for record, parts in zip(header.tensors, sections):
        for role, section in record.sections.items():
            if zlib.crc32(parts[role]) != section.crc32:
                raise CorruptFileError(f"{where}: the {role} section of {record.name} is corrupt")
    if zlib.crc32(memoryview(data)[:-TRAILER]) != struct.unpack("<I", data[-TRAILER:])[0]:
        raise CorruptFileError(f"{where}: file checksum mismatch (the file is damaged)")
    return Container(header, sections, len(data), decoded)


def _prefix(data: bytes, where: str) -> bytes:
    if len(data) < PREFIX.size + TRAILER or data[:8] != MAGIC:
        hint = " (a pickle: netshrink never unpickles)" if data[:1] == b"\x80" else ""
        raise CorruptFileError(f"{where}: not a netshrink compressed file{hint}")
    _, version, flags, length, crc = PREFIX.unpack_from(data)
    if not 1 <= version <= VERSION:
        raise CorruptFileError(
            f"{where}: format version {version}; this netshrink reads versions 1 to {VERSION}"
            + (" (upgrade netshrink)" if version > VERSION else "")
        )
    if flags or PREFIX.size + length + TRAILER > len(data):
        raise CorruptFileError(f"{where}: truncated or damaged file (bad header length)")
    header = data[PREFIX.size : PREFIX.size + length]
    if zlib.crc32(header) != crc:
        raise CorruptFileError(f"{where}: header checksum mismatch (the file is damaged)")
    return header


def _parse_header(packed: bytes, where: str) -> Header:
    inflate = zlib.decompressobj()
    try:
        text = inflate.decompress(packed, MAX_HEADER_BYTES)
    except zlib.error as exc:
        raise CorruptFileError(f"{where}: header is not a zlib stream ({exc})") from None
    if inflate.unconsumed_tail or not inflate.eof or inflate.unused_data:
        raise CorruptFileError(f"{where}: header is damaged or over {MAX_HEADER_BYTES} bytes")
    _check_list_lengths(text, where)
    try:
        return Header.model_validate_json(text)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "top level"
        raise CorruptFileError(f"{where}: invalid header at {loc}: {err['msg']}") from None
    except ConfigError as exc:  # a model spec's own validator
        raise CorruptFileError(f"{where}: invalid header ({exc})") from None


def _check_list_lengths(text: bytes, where: str) -> None:
    """The edit and tensor counts, before pydantic validates every item of an overlong list
    (its max_length counts after: ten thousand forged edits cost a tenth of a second). The C
    JSON parser reads the whole header in a few milliseconds."""
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CorruptFileError(f"{where}: header is not JSON ({exc})") from None
    if not isinstance(raw, dict):
        return  # the schema says what is wrong
    for field, cap in (("edits", MAX_EDITS), ("tensors", MAX_TENSORS)):
        items = raw.get(field)
        if isinstance(items, list) and len(items) > cap:
            raise CorruptFileError(f"{where}: {len(items)} {field}, more than the {cap} allowed")


def _check_tiling(header: Header, payload: int, where: str) -> None:
    spans = sorted((s.offset, s.length) for r in header.tensors for s in r.sections.values())
    end = 0
    for offset, length in spans:
        if offset != end:
            raise CorruptFileError(f"{where}: sections overlap or leave gaps in the payload")
        end += length
    if end != payload:
        raise CorruptFileError(f"{where}: sections cover {end} of {payload} payload bytes")


def check_limits(
    header: Header, file_size: int, where: str, max_decoded_bytes: int | None = MAX_DECODED_BYTES
) -> int:
    """Refuse a header whose tensors, with the decoders' working arrays, would take more than
    the file's budget (netshrink.untrusted.decode_budget), and any section whose count cannot
    fit its length, before anything is allocated. Returns the bytes decoding may take."""
    budget = decode_budget(file_size, max_decoded_bytes)
    names = [record.name for record in header.tensors]
    if len(set(names)) != len(names):
        raise CorruptFileError(f"{where}: a tensor name appears twice")
    total, working, largest = 0, 0, "tensors"
    for record in header.tensors:
        numel = record.numel
        if numel > MAX_TENSOR_ELEMENTS:
            raise LimitError(
                f"{where}: {record.name} claims {numel} elements (shape), past the format's "
                f"{MAX_TENSOR_ELEMENTS}"
            )
        total += numel * DTYPES[record.dtype][1].itemsize
        for role, section in record.sections.items():
            _check_section(record, role, section, where)
        if working_bytes(record) > working:  # decoded one at a time: the largest counts
            working, largest = working_bytes(record), record.name
    if total > budget:
        raise LimitError(
            f"{where}: tensors claim {total} bytes (shape), more than a {file_size}-byte file "
            f"may decode to ({budget} bytes); if you trust it, raise the cap (--max-decoded)"
        )
    check_budget(total + working, budget, where, f"decoding (tensors, then {largest}'s sections)")
    return total + working


def _check_section(record: TensorRecord, role: str, section, where: str) -> None:
    if section.count > record.numel:
        raise CorruptFileError(f"{where}: {record.name} {role} holds more entries than elements")
    if isinstance(section, BytesSection):
        expected = section.count * DTYPES[section.dtype][1].itemsize
    elif isinstance(section, BitsSection):
        expected = (section.count * section.width + 7) // 8
    else:
        expected = section.length
    if section.length != expected or (
        isinstance(section, HuffmanSection) and section.count > 8 * section.length
    ):
        raise CorruptFileError(f"{where}: {record.name} {role} length does not fit its count")
