"""The C program that the graph walk (netshrink.export.c_graph) builds up: its steps, one static
function each, in order; the tensors they read and write (each step's first write and last read
give the liveness that netshrink.export.c_values.plan_arenas packs the scratch arenas with); and
the layers' constants, each stored dense or as packed indices plus a codebook, whichever is
smaller (LayerStorage says which)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from torch import nn

from ..errors import UnsupportedLayerError
from ..quant.fixed import FixedPoint, to_integers
from .c_fixed import make_epilogue
from .c_kernels import CAT, CAT_PART, elementwise
from .c_sparse import SparseWeights, sparse_weights
from .c_values import (
    BITS,
    Buffer,
    Cat,
    Pending,
    PerPosition,
    Step,
    Stored,
    Weights,
    c_identifier,
    ctype_for,
)

STORAGE = ("smallest", "dense", "sparse")  # export_c's choices of how layers are stored


@dataclass(frozen=True)
class LayerStorage:
    """How one layer's constants are stored (`form`): "dense", "codebook" (`index_bits`-bit
    indices into `codebook` entries) or "sparse" (`gap_bits`-bit relative indices and
    `index_bits`-bit indices into `codebook` non-zero values: netshrink.export.c_sparse)."""

    name: str
    values: int
    bits: int
    index_bits: int | None
    codebook: int
    bytes: int
    form: str = "dense"
    gap_bits: int | None = None


class Program:
    """Steps, buffers and const arrays of the C program under construction; `layer_weights`
    converts a layer's weights (once) and records how they are stored."""

    def __init__(self, formats, storage: str = "smallest") -> None:
        self.formats = formats
        self.storage_choice = storage
        self.steps: list[Step] = []
        self.buffers: list[Buffer] = []
        self.consts: list[str] = []
        self.storage: list[LayerStorage] = []
        self.weights: dict[str, Weights] = {}
        self.cnames: set[str] = set()

    def buffer(self, ctype: str, count: int, where: str = "arena") -> Buffer:
        buf = Buffer(ctype, count, where)
        self.buffers.append(buf)
        return buf

    def step(self, label: str, params: list, body: str) -> None:
        index = len(self.steps)
        for _, buf, const in params:
            if not const and buf.start < 0:
                buf.start = index
            buf.end = index
        self.steps.append(Step(f"k{index}_{c_identifier(label)}", params, body))

    def store(self, value, fmt: FixedPoint | None, where: str = "arena") -> Stored:
        """Emit a pending producer with its epilogue; `fmt` None stores the raw accumulator."""
        if fmt is None and isinstance(value, Pending) and isinstance(value.divisor, PerPosition):
            raise UnsupportedLayerError(
                f"{value.name}: an average pool whose windows differ in size must be quantized "
                "right after it (its divisors are applied in its loop)"
            )
        if isinstance(value, Cat):
            return self._store_cat(value, fmt)
        lo, hi, epilogue = make_epilogue(value.name, value, fmt, value.lo, value.hi)
        if fmt is not None:
            ctype = ctype_for(fmt.qmin, fmt.qmax)
        else:
            ctype = (
                ctype_for(lo, hi) if where == "arena" else ctype_for(min(lo, -1), max(hi, 1 << 16))
            )
        out = self.buffer(ctype, math.prod(value.shape), where)
        self.step(value.name, [*value.args, ("y", out, False)], value.body(epilogue, ctype))
        frac, divisor = (fmt.frac, 1) if fmt is not None else (value.frac, value.divisor)
        return Stored(out, value.shape, frac, lo, hi, divisor)

    def _store_cat(self, cat: Cat, fmt: FixedPoint | None) -> Stored:
        if fmt is None:
            raise UnsupportedLayerError(f"{cat.name}: a concatenation must be quantized")
        ctype = ctype_for(fmt.qmin, fmt.qmax)
        out = self.buffer(ctype, math.prod(cat.shape))
        total, offset, loops, params = out.count // cat.outer, 0, [], []
        for index, (x, clamps) in enumerate(cat.parts):
            chunk = x.buf.count // cat.outer
            pending = elementwise(cat.name, x, clamps, x.shape)
            _, _, epilogue = make_epilogue(cat.name, pending, fmt, x.lo, x.hi)
            loops.append(
                CAT_PART.format(
                    i=index, chunk=chunk, total=total, off=offset, out=ctype, epilogue=epilogue(3)
                )
            )
            params.append((f"x{index}", x.buf, True))
            offset += chunk
        body = CAT.format(outer=cat.outer, parts="".join(loops))
        self.step(cat.name, [*params, ("y", out, False)], body)
        return Stored(out, cat.shape, fmt.frac, fmt.qmin, fmt.qmax)

    def table(self, name: str, values: list[int], prefix: str = "lut") -> str:
        """A const table (an element-wise function's, a pool's divisors); returns its C name."""
        cname = _unique(f"{prefix}_{c_identifier(name)}", self.cnames)
        self.consts.append(_array(cname, ctype_for(min(values), max(values)), values))
        return cname

    def constant(self, name: str, values: list[int]) -> Buffer:
        """A const array of a constant tensor's integers (in flash), as a buffer to read."""
        cname = _unique(f"const_{c_identifier(name)}", self.cnames)
        ctype = ctype_for(min(values), max(values))
        self.consts.append(_array(cname, ctype, values))
        return Buffer(ctype, len(values), "const", name=cname)

    def layer_weights(self, name: str, module: nn.Module) -> Weights:
        if name in self.weights:
            return self.weights[name]
        spec = self.formats.weights[name]
        fmt = FixedPoint(spec.bits, spec.frac, spec.signed)
        ints = to_integers(module.weight.detach().double(), fmt).long().numpy()
        bias, bias_frac, bias_ctype = None, None, None
        if module.bias is not None:
            bias_spec = self.formats.biases.get(name)
            if bias_spec is None:
                raise UnsupportedLayerError(f"{name} has a bias without a fixed-point format")
            bias_fmt = FixedPoint(bias_spec.bits, bias_spec.frac, bias_spec.signed)
            bias_ints = to_integers(module.bias.detach().double(), bias_fmt).long()
            if bias_ints.any():  # an all-zero bias (a folded BatchNorm's) costs nothing
                bias, bias_frac = [int(b) for b in bias_ints], bias_fmt.frac
                bias_ctype = ctype_for(bias_fmt.qmin, bias_fmt.qmax)
        cname = _unique(c_identifier(name), self.cnames)
        ctype = "int8_t" if fmt.bits <= 8 else "int16_t"
        w = Weights(cname, fmt.frac, ctype, ints.reshape(len(ints), -1), bias, bias_frac, None)
        stored = self._weight_arrays(w, name, fmt.bits)
        if bias is not None:
            self.consts.append(_array(f"b_{cname}", bias_ctype, bias))
            stored = replace(stored, bytes=stored.bytes + len(bias) * BITS[bias_ctype] // 8)
        self.storage.append(stored)
        self.weights[name] = w
        return w

    def _weight_arrays(self, w: Weights, name: str, bits: int) -> LayerStorage:
        """Write the const arrays of the smallest form allowed by the storage choice (the
        sparse one wherever it is asked for and the layer has a non-zero) and say which."""
        flat = w.ints.reshape(-1)
        width = BITS[w.ctype] // 8
        dense = LayerStorage(name, flat.size, bits, None, 0, flat.size * width)
        options, sparse = [dense], None
        if self.storage_choice != "dense":
            sparse = sparse_weights(w.ints, width)
            options += [*_codebook_option(dense, flat, width), *_sparse_option(dense, sparse)]
        if self.storage_choice == "sparse":
            options = [o for o in options if o.form == "sparse"] or options
        stored = min(options, key=lambda o: o.bytes)
        c = w.cname
        if stored.form == "codebook":
            codebook, indices = np.unique(flat, return_inverse=True)
            w.packed = (stored.index_bits, stored.codebook)
            self.consts.append(_array(f"wi_{c}", "uint8_t", _pack(indices, stored.index_bits)))
            self.consts.append(_array(f"wc_{c}", w.ctype, codebook.tolist()))
        elif stored.form == "sparse":
            w.sparse = sparse
            self.consts.append(_array(f"ws_{c}", "uint8_t", sparse.stream))
            self.consts.append(_array(f"wc_{c}", w.ctype, sparse.codebook))
        else:
            self.consts.append(_array(f"w_{c}", w.ctype, flat.tolist()))
        return stored


def _codebook_option(dense: LayerStorage, flat: np.ndarray, width: int) -> list[LayerStorage]:
    """Packed 1/2/4/8-bit indices into the layer's distinct integers, where they fit."""
    count = len(np.unique(flat))
    bits = next((b for b in (1, 2, 4, 8) if count <= 1 << b), None)
    if bits is None or flat.size * bits >= 1 << 31:
        return []
    size = -(-flat.size * bits // 8) + count * width
    return [replace(dense, form="codebook", index_bits=bits, codebook=count, bytes=size)]


def _sparse_option(dense: LayerStorage, sparse: SparseWeights | None) -> list[LayerStorage]:
    if sparse is None:
        return []
    fields = dict(index_bits=sparse.code_bits, gap_bits=sparse.gap_bits, bytes=sparse.bytes)
    return [replace(dense, form="sparse", codebook=len(sparse.codebook), **fields)]


def _unique(name: str, taken: set[str]) -> str:
    candidate, number = name, 1
    while candidate in taken:
        candidate, number = f"{name}_{number}", number + 1
    taken.add(candidate)
    return candidate


def _pack(indices: np.ndarray, bits: int) -> list[int]:
    """Indices `bits` wide (1, 2, 4 or 8), packed least significant first in each byte."""
    per = 8 // bits
    padded = np.zeros(-(-indices.size // per) * per, dtype=np.int64)
    padded[: indices.size] = indices
    shifts = np.arange(per, dtype=np.int64) * bits
    return (padded.reshape(-1, per) << shifts).sum(1).tolist()


def _array(name: str, ctype: str, values: list[int]) -> str:
    rows = [", ".join(map(str, values[i : i + 24])) for i in range(0, len(values), 24)]
    text = ",\n    ".join(rows)
    return f"static const {ctype} {name}[{len(values)}] = {{\n    {text}\n}};\n"
