"""The loop nests of the generated C, one C99 template per kind of step (elementwise, concat part,
conv, linear, pooling), and the functions that fill them: a window's taps along each axis, one
output channel's weight row unpacked from its indices, the bias term. A producer's body is a
function of its epilogue (netshrink.export.c_fixed.make_epilogue) and of its output's C type, so
that the consumer that stores it decides both."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import UnsupportedLayerError
from .c_fixed import literal
from .c_sparse import (
    SPARSE_CONV,
    SPARSE_DOT,
    SPARSE_LINEAR,
    conv_keep,
    linear_keep,
    multiply_keep,
    row_walk,
)
from .c_values import Pending, Stored, Weights, ctype_for

ELEMENTWISE = """\
    int i;
    for (i = 0; i < {n}; ++i) {{
        int64_t v = {expr};
{epilogue}        y[i] = ({out})v;
    }}
"""

# A reduction over some dimensions (a mean or max over the channels): output `i` starts at `base`
# in the input, the values it reduces lie at `offset` (in `r`) from there.
REDUCE = """\
    int i, r;
    for (i = 0; i < {n}; ++i) {{
        int64_t s = {init};
        for (r = 0; r < {count}; ++r) {{
            int64_t t = x[{base} + {offset}];
            {update}
        }}
        int64_t v = s;
{epilogue}        y[i] = ({out})v;
    }}
"""

CAT = """\
    int o, j;
    for (o = 0; o < {outer}; ++o) {{
{parts}    }}
"""

CAT_PART = """\
        for (j = 0; j < {chunk}; ++j) {{
            int64_t v = x{i}[o * {chunk} + j];
{epilogue}            y[o * {total} + {off} + j] = ({out})v;
        }}
"""

_CONV = """\
    int oc, oy, ox, ic, ky, kx;{decl}
    for (oc = 0; oc < {oc}; ++oc) {{
        const {in_t} *xg = x + (oc / {ocg}) * {group_in};
        const {w_t} *wr = {row};
        const {acc} b0 = {bias};{decode}
        for (oy = 0; oy < {oh}; ++oy) {{
{window_y}            for (ox = 0; ox < {ow}; ++ox) {{
{window_x}                {acc} acc = b0;
                int64_t v;
                for (ic = 0; ic < {icg}; ++ic) {{
                    const {in_t} *xc = xg + ic * {hw};
                    const {w_t} *wc = wr + ic * {khw};
                    for (ky = ky0; ky < ky1; ++ky) {{
                        const int base = (iy0 + ky * {dh}) * {w} + ix0;
                        for (kx = kx0; kx < kx1; ++kx)
                            acc += ({acc})wc[ky * {kw} + kx] * xc[base + kx * {dw}];
                    }}
                }}
                v = acc;
{epilogue}                y[(oc * {oh} + oy) * {ow} + ox] = ({out})v;
            }}
        }}
    }}
"""

_LINEAR = """\
    int oc, r, i;{decl}
    for (oc = 0; oc < {out_f}; ++oc) {{
        const {w_t} *wr = {row};
        const {acc} b0 = {bias};{decode}
        for (r = 0; r < {rows}; ++r) {{
            const {in_t} *xr = x + r * {in_f};
            {acc} acc = b0;
            int64_t v;
            for (i = 0; i < {in_f}; ++i)
                acc += ({acc})wr[i] * xr[i];
            v = acc;
{epilogue}            y[r * {out_f} + oc] = ({out})v;
        }}
    }}
"""

_POOL = """\
    int c, oy, ox, ky, kx;
    for (c = 0; c < {c}; ++c) {{
        const {in_t} *xc = x + c * {hw};
        for (oy = 0; oy < {oh}; ++oy) {{
{window_y}            for (ox = 0; ox < {ow}; ++ox) {{
{window_x}                {acc} s = {init};
                int64_t v;
                for (ky = ky0; ky < ky1; ++ky)
                    for (kx = kx0; kx < kx1; ++kx) {{
                        const {in_t} t = xc[(iy0 + ky * {dh}) * {w} + ix0 + kx * {dw}];
                        {update}
                    }}
                v = s;
{epilogue}                y[(c * {oh} + oy) * {ow} + ox] = ({out})v;
            }}
        }}
    }}
"""

_ADAPTIVE_AXIS = """\
{pad}const int i{a}0 = (o{a} * {size}) / {out};
{pad}const int k{a}0 = 0;
{pad}const int k{a}1 = ((o{a} + 1) * {size} + {out} - 1) / {out} - i{a}0;
"""


def _axis(pad: str, a: str, k: int, stride: int, padding: int, dil: int, size: int) -> str:
    """The taps [k0, k1) of a window along one axis that fall inside the input."""
    start = f"o{a} * {stride}" + (f" - {padding}" if padding else "")
    if dil == 1:
        first, last = f"-i{a}0", f"{size} - i{a}0"
    else:
        first, last = f"({dil - 1} - i{a}0) / {dil}", f"({size} - i{a}0 + {dil - 1}) / {dil}"
    return (
        f"{pad}const int i{a}0 = {start};\n"
        f"{pad}const int k{a}0 = i{a}0 < 0 ? {first} : 0;\n"
        f"{pad}const int k{a}1 = i{a}0 + {(k - 1) * dil + 1} <= {size} ? {k} : {last};\n"
    )


def sliding_window(kernel, stride, padding, dilation) -> tuple:
    # (kh, sh, ph, dh, kw, ...) flattened per axis: kernel, stride, padding, dilation
    return (kernel[0], stride[0], dilation[0], kernel[1], stride[1], dilation[1], padding)


def adaptive_window(size, out) -> tuple:
    return ("adaptive", size, out)


def _window_code(window, size: tuple[int, int], indent: int) -> tuple[str, str]:
    pad = "    " * indent
    if window[0] == "adaptive":
        _, insize, out = window
        return tuple(
            _ADAPTIVE_AXIS.format(pad=pad + "    " * i, a=a, size=insize[i], out=out[i])
            for i, a in enumerate("yx")
        )
    kh, sh, dh, kw, sw, dw, padding = window
    return (
        _axis(pad, "y", kh, sh, padding[0], dh, size[0]),
        _axis(pad + "    ", "x", kw, sw, padding[1], dw, size[1]),
    )


def dilations(window) -> tuple[int, int]:
    return (1, 1) if window[0] == "adaptive" else (window[2], window[5])


def strided_index(
    shape: tuple[int, ...], strides: tuple[int, ...], offset: int = 0, var: str = "i"
) -> str:
    """The C index that output value `var` (flat, of a contiguous tensor of `shape`) reads from
    a buffer seen through `strides` and `offset` (a torch view's: transpose, slice, broadcast)."""
    terms, out_stride = [str(offset)] if offset else [], 1
    for size, stride in zip(reversed(shape), reversed(strides)):
        if size > 1 and stride:
            terms.append(f"(({var} / {out_stride}) % {size}) * {stride}")
        out_stride *= size
    return " + ".join(terms) or "0"


def broadcast_index(out_shape: tuple[int, ...], shape: tuple[int, ...]) -> str:
    """The C index into a tensor of `shape` broadcast to `out_shape` for the flat output index
    `i` (numpy's rule: shapes aligned on the right, a size-1 dimension repeats)."""
    if tuple(shape) == tuple(out_shape):
        return "i"
    view = torch.empty(shape).expand(out_shape)  # a repeated dimension has stride 0
    return strided_index(tuple(out_shape), view.stride())


def elementwise(name: str, x: Stored, clamps, shape) -> Pending:
    """A pending copy of `x` through `clamps` and the epilogue its consumer chooses."""

    def body(epilogue, out):
        return ELEMENTWISE.format(n=x.buf.count, expr="x[i]", out=out, epilogue=epilogue(2))

    return Pending(
        name, shape, x.frac, x.divisor, x.lo, x.hi, None, body, [("x", x.buf, True)], 1, clamps
    )


def pool_body(x: Stored, out_shape, window, acc, init, update, epilogue, out) -> str:
    c, h, w = x.shape[-3:]
    oh, ow = out_shape[-2:]
    window_y, window_x = _window_code(window, (h, w), 3)
    dh, dw = dilations(window)
    return _POOL.format(
        c=c * math.prod(x.shape[:-3]), hw=h * w, oh=oh, ow=ow, w=w, dh=dh, dw=dw,
        in_t=x.buf.ctype, acc=acc, init=init, update=update, out=out,
        window_y=window_y, window_x=window_x, epilogue=epilogue(4),
    )  # fmt: skip


def _decode(w: Weights, indent: str) -> tuple[str, str]:
    if not w.packed:
        return "", ""
    row = w.ints.shape[1]
    return " int j;", (
        f"\n{indent}for (j = 0; j < {row}; ++j)\n{indent}    wrow[j] = "
        f"wc_{w.cname}[ns_index(wi_{w.cname}, oc * {row} + j, {w.packed[0]})];"
    )


def row_buffers(module: nn.Module, w: Weights, x: Stored) -> list[tuple[str, str, int]]:
    """The scratch a layer's loop nest writes besides its output, as (name, C type, count): a
    packed layer's unpacked row, a sparse layer's list of one row's non-zeros (c_sparse)."""
    if w.packed:
        return [("wrow", w.ctype, w.ints.shape[1])]
    if w.sparse is None or (isinstance(module, nn.Linear) and x.buf.count == w.ints.shape[1]):
        return []  # a linear layer on one row multiplies as it walks
    count = w.sparse.max_row
    if isinstance(module, nn.Conv2d):
        geometry = _conv_geometry(module, x)
        return [
            ("so", ctype_for(0, geometry["max_offset"]), count),
            ("sy", ctype_for(0, max(module.kernel_size) - 1), count),
            ("sx", ctype_for(0, max(module.kernel_size) - 1), count),
            ("sv", w.ctype, count),
        ]
    return [("si", ctype_for(0, w.ints.shape[1] - 1), count), ("sv", w.ctype, count)]


def _conv_geometry(module: nn.Conv2d, x: Stored) -> dict:
    if len(x.shape) != 4 or x.shape[0] != 1:
        raise UnsupportedLayerError(f"the C export runs one image at a time, not {x.shape}")
    _, c, h, width = x.shape
    kh, kw = module.kernel_size
    dilation = module.dilation
    if isinstance(module.padding, str):  # 'valid', or torch's 'same' (extra pad at the end)
        same = module.padding == "same"
        padding = tuple(d * (k - 1) // 2 if same else 0 for d, k in zip(dilation, (kh, kw)))
    else:
        padding = module.padding
    icg = c // module.groups
    max_offset = (icg - 1) * h * width + (kh - 1) * dilation[0] * width + (kw - 1) * dilation[1]
    return dict(
        c=c, h=h, width=width, kh=kh, kw=kw, dh=dilation[0], dw=dilation[1], icg=icg,
        window=sliding_window((kh, kw), module.stride, padding, dilation), max_offset=max_offset,
    )  # fmt: skip


def conv_body(module: nn.Conv2d, w: Weights, acc: str, bias: str, x: Stored, out_shape):
    g = _conv_geometry(module, x)
    oc, oh, ow = out_shape[1:]
    window_y, window_x = _window_code(g["window"], (g["h"], g["width"]), 3)
    shape = dict(
        oc=oc, ocg=oc // module.groups, group_in=g["icg"] * g["h"] * g["width"], in_t=x.buf.ctype,
        w_t=w.ctype, acc=acc, bias=bias, oh=oh, ow=ow, window_y=window_y, window_x=window_x,
        icg=g["icg"], hw=g["h"] * g["width"], khw=g["kh"] * g["kw"], dh=g["dh"], dw=g["dw"],
        w=g["width"], kh=g["kh"], kw=g["kw"],
    )  # fmt: skip
    if w.sparse is not None:
        so_t, sy_t = (ctype for _, ctype, _ in row_buffers(module, w, x)[:2])
        keep = conv_keep(shape, so_t, sy_t)
        walk = row_walk(w.cname, w.sparse, w.ints.shape[1], w.ctype, keep)
        return lambda epilogue, out: SPARSE_CONV.format(
            walk=walk, epilogue=epilogue(4), out=out, **shape
        )
    decl, decode = _decode(w, "        ")
    row = f"w_{w.cname} + oc * {w.ints.shape[1]}" if not w.packed else "wrow"
    return lambda epilogue, out: _CONV.format(
        decl=decl, decode=decode, row=row, epilogue=epilogue(4), out=out, **shape
    )


def linear_body(module: nn.Linear, w: Weights, acc: str, bias: str, x: Stored):
    in_f = w.ints.shape[1]
    shape = dict(
        out_f=len(w.ints), w_t=w.ctype, acc=acc, bias=bias, rows=x.buf.count // in_f,
        in_t=x.buf.ctype, in_f=in_f,
    )  # fmt: skip
    if w.sparse is not None and shape["rows"] == 1:
        walk = row_walk(w.cname, w.sparse, in_f, w.ctype, multiply_keep(acc))
        return lambda epilogue, out: SPARSE_DOT.format(
            walk=walk, epilogue=epilogue(2), out=out, **shape
        )
    if w.sparse is not None:
        si_t = row_buffers(module, w, x)[0][1]
        walk = row_walk(w.cname, w.sparse, in_f, w.ctype, linear_keep(si_t))
        return lambda epilogue, out: SPARSE_LINEAR.format(
            walk=walk, epilogue=epilogue(3), out=out, **shape
        )
    decl, decode = _decode(w, "        ")
    row = f"w_{w.cname} + oc * {in_f}" if not w.packed else "wrow"
    return lambda epilogue, out: _LINEAR.format(
        decl=decl, decode=decode, row=row, epilogue=epilogue(3), out=out, **shape
    )


def bias_expression(w: Weights, acc: str, shift: int) -> str:
    if w.bias is None:
        return "0"
    scaled = f"({acc})b_{w.cname}[oc]"
    return scaled if shift == 0 else f"{scaled} * {literal(1 << shift)}"
