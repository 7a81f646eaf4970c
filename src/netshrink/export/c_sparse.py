"""The sparse form of a layer's weights in the C export: Deep Compression's own layout (Han et al.
2016, section 2; the "synapse code" that Kim et al. hand to hardware), walked directly by the
kernel from flash as EIE does (Han et al. 2016, "EIE: Efficient Inference Engine on Compressed
Deep Neural Network"): no dense copy of the weights ever exists in RAM.

Per layer, one bit-packed const stream `ws_<layer>` and a codebook `wc_<layer>` (the layer's
distinct non-zero integer weights). Each entry of the stream is one field, its relative index
(`gap_bits`: the zeros skipped, netshrink.codec.relative's stream, the one the .nsk file codes,
fillers included) above its codebook index (`code_bits`; a filler's is 0), written most
significant bit first as every .nsk stream is (EIE pairs a 4-bit relative index with a 4-bit
weight index the same way). One read per entry keeps the walk cheap.

The kernel walks the stream once per inference, one output channel's row at a time. A linear
layer on one row multiplies as it walks; a conv (and a linear on several rows) first lists the
row's non-zeros as (offset, weight) pairs in the scratch arena, at most as many as the row's
non-zeros, and runs every output position over that list: one multiply-add per non-zero weight
rather than per weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..codec.bitio import pack_fields
from ..codec.relative import MAX_BITS, encode_positions, stream_length

# ns_field reads four bytes, a field of up to 25 bits at any bit offset; the stream ends in four
# zero bytes, so that no read passes the array's end
FIELD_PADDING = 4
MAX_FIELD_BITS = 25


@dataclass(frozen=True)
class SparseWeights:
    """One layer's weights in the sparse form: `entries` fields of `gap_bits` + `code_bits` in
    `stream` (padded), the `codebook`; `bytes` of flash for both; `max_row` the most non-zeros of
    any output channel's row."""

    gap_bits: int
    code_bits: int
    entries: int
    codebook: list[int]
    stream: list[int]
    max_row: int
    bytes: int


def sparse_weights(ints: np.ndarray, width: int) -> SparseWeights | None:
    """The sparse form of integer weights `ints` (out, row) whose dense element is `width` bytes,
    with the gap width that makes it smallest; None when there is no non-zero to store or the
    layer's fields would not fit the reader."""
    flat = ints.reshape(-1)
    positions = np.flatnonzero(flat)
    if positions.size == 0 or flat.size >= 1 << 31:
        return None
    codebook, codes = np.unique(flat[positions], return_inverse=True)
    code_bits = int(len(codebook) - 1).bit_length()  # a single value needs no index
    widths = range(1, min(MAX_BITS, MAX_FIELD_BITS - code_bits) + 1)
    if not widths:
        return None
    gap_bits = min(widths, key=lambda b: stream_length(positions, b) * (b + code_bits))
    gaps = encode_positions(positions, gap_bits)
    if gaps.size * (gap_bits + code_bits) >= 1 << 31:
        return None
    fields = gaps << code_bits
    fields[gaps != (1 << gap_bits) - 1] |= codes  # a filler's code stays 0
    data, _ = pack_fields(fields, gap_bits + code_bits)
    stream = list(data) + [0] * FIELD_PADDING
    return SparseWeights(
        gap_bits=gap_bits,
        code_bits=code_bits,
        entries=int(gaps.size),
        codebook=codebook.tolist(),
        stream=stream,
        max_row=int(np.count_nonzero(ints, axis=1).max()),
        bytes=len(stream) + len(codebook) * width,
    )


# The walk of one row: fillers advance the position, an entry whose position lies past the row
# belongs to a later row and waits (e and pos persist from row to row).
_ROW = """\
        n = 0;
        while (e < {entries}) {{
            const uint32_t f = ns_field(ws_{c}, e * {field_bits}, {field_bits});
            const int32_t d = (int32_t)(f >> {code_bits});
            if (d == {filler}) {{
                pos += {filler};
                ++e;
                continue;
            }}
            if (pos + d + 1 >= (oc + 1) * {row})
                break;
            pos += d + 1;
            ++e;
            {{
                const int32_t q = pos - oc * {row};
                const {w_t} wv = wc_{c}[f & {code_mask}u];
{keep}            }}
        }}
"""

_MULTIPLY = """\
                acc += ({acc})wv * x[q];
"""

_LIST = """\
                si[n] = ({si_t})q;
                sv[n] = wv;
                ++n;
"""

_CONV_LIST = """\
                const int32_t tap = q % {khw}, ky = tap / {kw}, kx = tap % {kw};
                so[n] = ({so_t})((q / {khw}) * {hw} + ky * {dh} * {w} + kx * {dw});
                sy[n] = ({sy_t})ky;
                sx[n] = ({sy_t})kx;
                sv[n] = wv;
                ++n;
"""

# one row of input: the walk multiplies as it goes
SPARSE_DOT = """\
    int oc, n;
    int32_t e = 0, pos = -1;
    for (oc = 0; oc < {out_f}; ++oc) {{
        {acc} acc = {bias};
        int64_t v;
{walk}        (void)n;
        v = acc;
{epilogue}        y[oc] = ({out})v;
    }}
"""

SPARSE_LINEAR = """\
    int oc, r, n, k;
    int32_t e = 0, pos = -1;
    for (oc = 0; oc < {out_f}; ++oc) {{
        const {acc} b0 = {bias};
{walk}        for (r = 0; r < {rows}; ++r) {{
            const {in_t} *xr = x + r * {in_f};
            {acc} acc = b0;
            int64_t v;
            for (k = 0; k < n; ++k)
                acc += ({acc})sv[k] * xr[si[k]];
            v = acc;
{epilogue}            y[r * {out_f} + oc] = ({out})v;
        }}
    }}
"""

# A window wholly inside the input reads every listed tap at its offset; a window cut by the
# border (padding) checks each tap against the window's bounds.
SPARSE_CONV = """\
    int oc, oy, ox, n, k;
    int32_t e = 0, pos = -1;
    for (oc = 0; oc < {oc}; ++oc) {{
        const {in_t} *xg = x + (oc / {ocg}) * {group_in};
        const {acc} b0 = {bias};
{walk}        for (oy = 0; oy < {oh}; ++oy) {{
{window_y}            for (ox = 0; ox < {ow}; ++ox) {{
{window_x}                const int32_t base = iy0 * {w} + ix0;
                {acc} acc = b0;
                int64_t v;
                if (ky0 == 0 && ky1 == {kh} && kx0 == 0 && kx1 == {kw}) {{
                    for (k = 0; k < n; ++k)
                        acc += ({acc})sv[k] * xg[base + so[k]];
                }} else {{
                    for (k = 0; k < n; ++k)
                        if (sy[k] >= ky0 && sy[k] < ky1 && sx[k] >= kx0 && sx[k] < kx1)
                            acc += ({acc})sv[k] * xg[base + so[k]];
                }}
                v = acc;
{epilogue}                y[(oc * {oh} + oy) * {ow} + ox] = ({out})v;
            }}
        }}
    }}
"""


def row_walk(cname: str, sparse: SparseWeights, row: int, w_t: str, keep: str) -> str:
    """The C that walks output channel `oc`'s entries, running `keep` on each non-zero `wv` at
    `q` (its index in the row)."""
    return _ROW.format(
        entries=sparse.entries, c=cname, field_bits=sparse.gap_bits + sparse.code_bits,
        code_bits=sparse.code_bits, code_mask=(1 << sparse.code_bits) - 1,
        filler=(1 << sparse.gap_bits) - 1, row=row, w_t=w_t, keep=keep,
    )  # fmt: skip


def multiply_keep(acc: str) -> str:
    return _MULTIPLY.format(acc=acc)


def linear_keep(si_t: str) -> str:
    return _LIST.format(si_t=si_t)


def conv_keep(shape: dict, so_t: str, sy_t: str) -> str:
    """List a conv's non-zero: its input offset (`shape`: the conv's khw, kw, hw, dh, w, dw),
    its tap (ky, kx) for windows cut by the border, its weight."""
    return _CONV_LIST.format(**shape, so_t=so_t, sy_t=sy_t)
