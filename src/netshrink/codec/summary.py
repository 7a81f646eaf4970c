"""What a .nsk file holds, tensor by tensor and stream by stream: `netshrink inspect` of a file
(`summarize`), and of the file a model would pack to before it is written (`summarize_model`).

For every integer stream it gives the bits a symbol it takes and its order-0 entropy bound (the
empirical entropy of its symbols), so the coder's overhead is visible per stream, and for the
file its information floor (`FileSummary.floor_bytes`: the streams at that bound, the rest as
stored), so what the file still wastes is visible as a whole. Both read the
same container bytes the same way, so a model's rows are the rows `inspect` prints for its file:
every size netshrink reports for a model (a stage's bytes, the layer tables) comes from here.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table
from torch import nn

from ..terminal import console
from ..untrusted import MAX_DECODED_BYTES
from .api import decode_all, packed_bytes
from .container import PREFIX, TRAILER, Container, parse_container, read_container
from .encodings import PackConfig
from .header import DTYPES, BytesSection, Header, TensorRecord
from .streams import decode_stream, entropy_bits


@dataclass(frozen=True)
class SectionSummary:
    role: str
    kind: str  # the coder (bits, huffman, ans) or the stored dtype of raw values
    count: int
    nbytes: int
    entropy_bytes: float | None  # order-0 bound of an integer stream; None for raw values


@dataclass(frozen=True)
class TensorSummary:
    name: str
    shape: tuple[int, ...]
    encoding: str
    numel: int
    nonzero: int
    sections: list[SectionSummary]

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.sections)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / max(self.numel, 1)


@dataclass(frozen=True)
class FileSummary:
    path: Path | None  # None: a model's file not written (summarize_model)
    size: int
    header_bytes: int
    header: Header
    tensors: list[TensorSummary]

    @property
    def floor_bytes(self) -> float:
        """The file's information floor: every integer stream at its order-0 entropy (no coder
        tables), raw values and the header as they are; `size` over it is what coding still
        wastes beyond what the symbols' frequencies allow."""
        streams = sum(
            s.nbytes if s.entropy_bytes is None else s.entropy_bytes
            for t in self.tensors
            for s in t.sections
        )
        return self.header_bytes + PREFIX.size + TRAILER + streams

    @property
    def dense_bytes(self) -> int:
        """The same tensors stored densely at their own dtypes (fp32 for weights)."""
        return sum(r.numel * DTYPES[r.dtype][1].itemsize for r in self.header.tensors)


def summarize(path: str | Path, max_decoded_bytes: int | None = MAX_DECODED_BYTES) -> FileSummary:
    """Read and fully decode a .nsk file, and describe every tensor and stream in it; the file
    may decode to at most `max_decoded_bytes` (netshrink.untrusted; None lifts the cap)."""
    return _summary(read_container(path, max_decoded_bytes), Path(path))


def summarize_model(
    model: nn.Module, config: PackConfig = PackConfig(), **fields: Any
) -> FileSummary:
    """What `pack(model, path, config, **fields)` would write, tensor by tensor, without writing
    it: the encodings `pack` chooses (it runs the same encoder on the same tensors), each
    section's bytes, and `size`, the exact length of the file (header and container included).
    `fields`: pack's `meta`, `spec`, `input_shape`, `num_classes`, `measurement`, which change
    the header only. The rows equal those of `summarize` on the packed file.

    Example:
        >>> summary = summarize_model(model)
        >>> summary.size == pack(model, "model.nsk").stat().st_size
        True
        >>> summary.tensors == summarize("model.nsk").tensors
        True
    """
    data = packed_bytes(model, config, **fields)
    return _summary(parse_container(data, max_decoded_bytes=None), None)


def _summary(container: Container, path: Path | None) -> FileSummary:
    tensors = decode_all(container, str(path or "<memory>"))
    rows = []
    for record, data in zip(container.header.tensors, container.sections):
        sections = [_section(role, s, bytes(data[role])) for role, s in record.sections.items()]
        nonzero = int((tensors[record.name] != 0).sum())
        rows.append(
            TensorSummary(
                record.name, record.shape, _label(record), record.numel, nonzero, sections
            )
        )
    payload = sum(t.nbytes for t in rows)
    header_bytes = container.size - PREFIX.size - TRAILER - payload
    return FileSummary(path, container.size, header_bytes, container.header, rows)


def _section(role: str, section, data: bytes) -> SectionSummary:
    if isinstance(section, BytesSection):
        return SectionSummary(role, section.dtype, section.count, len(data), None)
    bound = entropy_bits(decode_stream(section, data)) / 8
    return SectionSummary(role, section.kind, section.count, len(data), bound)


VECTOR_LABEL = (("k", "k"), ("t", "stages"), ("d", "segment"))  # Gong et al.'s k, stages, segment


def _label(record: TensorRecord) -> str:
    parts = [record.encoding]
    if "index_bits" in record.params:
        parts.append(f"b={record.params['index_bits']}")
    if "centroids" in record.sections:
        parts.append(f"k={record.sections['centroids'].count}")
    if record.encoding == "vector":  # k codewords a segment of d entries, t stages
        parts += [f"{tag}={record.params.get(key)}" for tag, key in VECTOR_LABEL]
    return " ".join(parts)


COLUMNS = (
    "tensor", "shape", "non-zero", "encoding", "section", "coder", "symbols", "bytes",
    "bits/weight", "bits/symbol", "entropy bits/symbol",
)  # fmt: skip


def summary_table(summary: FileSummary) -> Table:
    """One row per section; the tensor's own columns fill its first row."""
    where = summary.path or "packed in memory"
    table = Table(title=f"{where}: {summary.size:,} bytes")
    for name in COLUMNS:
        table.add_column(name, justify="left" if name in ("tensor", "encoding") else "right")
    for t in summary.tensors:
        shape = "x".join(map(str, t.shape)) or "scalar"
        first = [t.name, shape, f"{t.nonzero:,}", t.encoding]
        for i, s in enumerate(t.sections):
            per_symbol = [f"{8 * s.nbytes / s.count:.3f}", _bound(s)] if s.count else ["-", "-"]
            table.add_row(
                *(first if i == 0 else [""] * 4),
                s.role,
                s.kind,
                f"{s.count:,}",
                f"{s.nbytes:,}",
                f"{t.bits_per_weight:.3f}" if i == 0 else "",
                *per_symbol,
            )
    return table


def _bound(s: SectionSummary) -> str:
    return "-" if s.entropy_bytes is None else f"{8 * s.entropy_bytes / s.count:.3f}"


def print_summary(summary: FileSummary) -> None:
    """The per-tensor table, then the totals against the dense tensors."""
    out = console()
    out.print(summary_table(summary))
    h = summary.header
    model = h.model.name if h.model else "none (unpack needs model=)"
    out.print(
        f"model {model}; {len(h.edits)} structural edits; header {summary.header_bytes:,} bytes; "
        f"dense {summary.dense_bytes:,} bytes -> {summary.size:,} bytes "
        f"({summary.dense_bytes / summary.size:.1f}x); information floor "
        f"{summary.floor_bytes:,.0f} bytes (streams at their order-0 entropy): the file is "
        f"{summary.size / summary.floor_bytes:.3f}x it"
    )
