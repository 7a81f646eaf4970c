"""The graph walk of the C export: Builder visits a fixed-point model's fx graph in order and
decides what each node becomes in C. A producer (conv / linear, residual add, product, lookup
table, average pool, concatenation, gather) stays pending until the consumer that stores it is
known, so that it is fused with what follows it up to its quantizer (saturation, ReLU / ReLU6,
requantization) into one loop nest; max pooling works on stored tensors; flatten / view /
dropout only relabel a stored tensor, while transpose / permute / slices / chunk / split gather
a copy (any strided view). What is emitted goes to the Builder's
netshrink.export.c_program.Program."""

from __future__ import annotations

import contextlib
import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import UnsupportedLayerError
from ..graph import describe
from ..quant.fixed import to_integers
from ..quant.integer import LUT_BITS, call_node, unzero_padded
from ..quant.modules import ActQuant
from ..quant.plan import (
    NO_DIVISORS,
    constant_value,
    gathers,
    keeps_dims,
    lut_input,
    mean_dims,
    node_kind,
    pool_options,
    reduction,
    reorders,
    spatial_mean,
    static_value,
    zero_pad,
)
from .c_fixed import LIMIT, mac_range, relu_bounds, term
from .c_kernels import (
    ELEMENTWISE,
    REDUCE,
    adaptive_window,
    bias_expression,
    broadcast_index,
    conv_body,
    dilations,
    elementwise,
    linear_body,
    pool_body,
    row_buffers,
    sliding_window,
    strided_index,
)
from .c_program import Program
from .c_values import Cat, Pending, PerPosition, Stored, ctype_for

_MAX_POOLS = (nn.MaxPool2d, nn.AdaptiveMaxPool2d, F.max_pool2d, F.adaptive_max_pool2d)


class Builder:
    """check_supported, then (once ShapeProp has recorded every node's shape) walk: the steps,
    buffers and constants land in `program`; the input and logits formats on the Builder."""

    def __init__(
        self, graph_module: fx.GraphModule, formats, name: str, storage: str = "smallest"
    ) -> None:
        self.gm, self.formats, self.name = graph_module, formats, name
        self.modules = dict(graph_module.named_modules())
        nodes = graph_module.graph.nodes
        self.kinds = {n: node_kind(n, self.modules, formats.float_layers) for n in nodes}
        self.program = Program(formats, storage)
        self.input_format = self.input_ctype = self.logits_ctype = None
        self.output_frac = self.num_classes = None

    def check_supported(self) -> None:
        bad = []
        for node, kind in self.kinds.items():
            module = self._module(node)
            if kind == "float_layer":
                bad.append(f"{node.name} (left in float; the C code runs integers only)")
            elif kind == "other" and not isinstance(module, ActQuant):
                bad.append(f"{node.name} ({describe(node, module)})")
            elif kind == "lut" and self._quantizer_after(node) is None:
                bad.append(
                    f"{node.name} ({describe(node, module)}: a lookup table needs its one "
                    "user to be its quantizer)"
                )
            elif kind == "avg_pool" and self._divisor_after(node) is None:
                bad.append(f"{node.name} ({NO_DIVISORS})")
            elif kind == "input" and not (
                len(node.users) == 1 and isinstance(self._module(next(iter(node.users))), ActQuant)
            ):
                bad.append(f"{node.name} (an input that is not quantized first)")
        if sum(kind == "input" for kind in self.kinds.values()) != 1:
            bad.append("the model (the C export needs exactly one input)")
        if bad:
            raise UnsupportedLayerError(
                "the C export cannot run " + ", ".join(bad) + "; it supports conv (grouped, "
                "depthwise), linear, ReLU / ReLU6, max and average pooling, spatial means, "
                "residual add, products of two tensors, element-wise functions (lookup tables), "
                "concat and flatten on a fixed-point model (quantize every layer, or replace "
                "these)"
            )

    def walk(self) -> None:
        values: dict = {}
        for node in self.gm.graph.nodes:
            if node.op == "output":
                self._output(node, _arg(node.args[0], values))
                return
            values[node] = self._visit(node, [_arg(a, values) for a in node.args])

    def _visit(self, node: fx.Node, args):
        kind, module = self.kinds[node], self._module(node)
        if isinstance(module, ActQuant):
            return self._quant(node, module, args[0])
        if kind in ("input", "meta"):
            return None
        if kind == "constant":  # a tensor the model holds: its quantizer makes it a const array
            return constant_value(self.gm, node)
        if kind == "layer":
            return self._layer(node, module, self._stored(args[0], node))
        if kind in ("add", "sub"):
            a, b = self._stored(args[0], node), self._stored(args[1], node)
            return self._add(node, a, b, subtract=kind == "sub")
        if kind == "mul":
            return self._mul(node, self._stored(args[0], node), self._stored(args[1], node))
        if kind == "lut":
            return self._lut(node, module, self._stored(args[lut_input(node)], node), args)
        if kind in ("relu", "relu6"):
            return self._relu(node, args[0], 6 if kind == "relu6" else None)
        if kind == "avg_pool" and mean_dims(node) and not spatial_mean(node):
            x, dims = self._stored(args[0], node), mean_dims(node)
            return self._reduce(node, x, "sum", dims, keeps_dims(node))
        if kind == "avg_pool":
            return self._avg_pool(node, module, self._stored(args[0], node))
        if kind == "cat":
            return self._cat(node, args)
        if kind == "pass" and reduction(node):
            return self._reduce(node, self._stored(args[0], node), *reduction(node))
        if kind == "pass" and zero_pad(node):
            return self._pad(node, self._stored(args[0], node))
        if kind == "pass" and (reorders(node) or gathers(node, module)):
            return self._reorder(node, module, args)
        if kind == "pass" and (type(module) in _MAX_POOLS or node.target in _MAX_POOLS):
            return self._max_pool(node, module, self._stored(args[0], node))
        if kind == "pass":
            return self._view(node, args[0])
        raise UnsupportedLayerError(f"the C export cannot run {node.name}")

    # ---- values

    def _module(self, node: fx.Node):
        return self.modules.get(node.target) if node.op == "call_module" else None

    def _shape(self, node: fx.Node) -> tuple[int, ...]:
        meta = node.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            raise UnsupportedLayerError(f"{node.name} does not produce one tensor")
        return tuple(meta.shape)

    def _stored(self, value, node: fx.Node) -> Stored:
        if isinstance(value, Stored):
            return value
        if isinstance(value, Pending):
            if value.stored is None:
                value.stored = self.program.store(value, None)
            return value.stored
        raise UnsupportedLayerError(f"{node.name} reads a value that is not on a fixed-point grid")

    # ---- nodes

    def _quant(self, node: fx.Node, quantizer: ActQuant, value) -> Stored:
        fmt = quantizer.fmt
        if value is None:  # the model's input: the caller quantizes it (quantize_input)
            self.input_format, self.input_ctype = fmt, ctype_for(fmt.qmin, fmt.qmax)
            buf = self.program.buffer(self.input_ctype, math.prod(self._shape(node)), "input")
            return Stored(buf, self._shape(node), fmt.frac, fmt.qmin, fmt.qmax)
        if isinstance(value, torch.Tensor):  # a constant: its integers, in flash
            q = to_integers(value.double(), fmt).long().flatten().tolist()
            buf = self.program.constant(node.name, q)
            return Stored(buf, tuple(value.shape), fmt.frac, min(q), max(q))
        if isinstance(value, (Pending, Cat)) and value.users == 1:
            return self.program.store(value, fmt)
        x = self._stored(value, node)
        same = x.frac == fmt.frac and x.divisor == 1 and fmt.qmin <= x.lo and x.hi <= fmt.qmax
        if same and x.buf.ctype == ctype_for(fmt.qmin, fmt.qmax):
            return x
        return self.program.store(elementwise(node.name, x, (), x.shape), fmt)

    def _relu(self, node: fx.Node, value, ceiling: int | None):
        if isinstance(value, Cat) and value.users == 1:
            parts = [
                (x, (*c, relu_bounds(node, x.frac, x.divisor, ceiling))) for x, c in value.parts
            ]
            return replace(value, parts=parts, users=len(node.users))
        if isinstance(value, Pending) and value.users == 1:
            clamp = relu_bounds(node, value.frac, value.divisor, ceiling)
            return replace(value, clamps=(*value.clamps, clamp), users=len(node.users))
        x = self._stored(value, node)
        clamp = relu_bounds(node, x.frac, x.divisor, ceiling)
        if x.lo >= 0 and (clamp[1] is None or x.hi <= clamp[1]):
            return x
        return self.program.store(elementwise(node.name, x, (clamp,), x.shape), None)

    def _view(self, node: fx.Node, value):
        shape = self._shape(node)
        if isinstance(value, Pending) and value.users == 1:
            return replace(value, shape=shape, users=len(node.users))
        x = self._stored(value, node)
        return Stored(x.buf, shape, x.frac, x.lo, x.hi, x.divisor)

    def _reorder(self, node: fx.Node, module, args):
        """transpose / permute / a slice / chunk / split, and ops that copy values (`gathers`:
        nearest upsampling, pixel shuffle, reflection padding, ...): a copy that gathers each
        output value from where the op takes it. Worked out by running the op on a tensor of
        the flat indices + 1: a view of it gives the gather's storage offset and strides (any
        strided view); a copy holds each output's source index + 1 (0: a zero of padding),
        which the C code reads from a table."""
        if isinstance(args[0], (tuple, list)):  # a part of a chunk / split: picked, not copied
            return args[0][args[1]]
        x = self._stored(args[0], node)
        # float64: interpolate takes no integers; exact below 2**53
        probe = torch.arange(1, math.prod(x.shape) + 1, dtype=torch.float64).reshape(x.shape)
        others = [torch.empty(a.shape) if isinstance(a, Stored | Pending) else a for a in args[1:]]
        view = call_node(node, module, [probe, *others])  # expand_as(x): x's shape
        if isinstance(view, (tuple, list)):
            return tuple(self.program.store(self._gather(node, x, v, probe), None) for v in view)
        return self._gather(node, x, view, probe)

    def _reduce(self, node: fx.Node, x: Stored, op: str, dims, keepdim: bool):
        """A sum (a mean's, divided where it is requantized), max or min over `dims` of `x`
        (CBAM's spatial gate: the mean and the max over the channels). torch.max(x, dim) gives
        (values, indices): the values, stored; the indices are not computed."""
        rank = len(x.shape)
        dims = sorted({d % rank for d in dims})
        strides = [math.prod(x.shape[d + 1 :]) for d in range(rank)]
        kept = [d for d in range(rank) if d not in dims]
        base = strided_index(tuple(x.shape[d] for d in kept), tuple(strides[d] for d in kept))
        reduced = tuple(x.shape[d] for d in dims)
        offset = strided_index(reduced, tuple(strides[d] for d in dims), var="r")
        count, n = math.prod(reduced), math.prod(x.shape[d] for d in kept)
        shape = tuple(1 if d in dims else x.shape[d] for d in range(rank) if keepdim or d in kept)
        if op == "sum":
            init, update = "0", "s += t;"
            lo, hi, divisor = count * min(x.lo, 0), count * max(x.hi, 0), self._divisor_after(node)
        else:
            init, update = f"x[{base}]", f"if (t {'>' if op == 'max' else '<'} s) s = t;"
            lo, hi, divisor = x.lo, x.hi, x.divisor

        def body(epilogue, out):
            return REDUCE.format(
                n=n, count=count, init=init, base=base, offset=offset, update=update,
                out=out, epilogue=epilogue(2),
            )  # fmt: skip

        args = [("x", x.buf, True)]
        pending = Pending(node.name, shape, x.frac, divisor, lo, hi, None, body, args, 1)
        if not hasattr(node.meta.get("tensor_meta"), "shape"):  # a (values, indices) pair
            return self.program.store(pending, None), None
        return pending

    def _lut_tables(self, node: fx.Node, module, x: Stored, args, relus) -> torch.Tensor:
        """The function of every grid value on every channel, [channels, values]: the grid runs
        along the batch dimension of a probe shaped like one value of each channel, so that a
        per-channel function (PReLU's slopes) gives each channel its own row."""
        grid = torch.arange(x.lo, x.hi + 1, dtype=torch.float64)
        values = (grid * 2.0**-x.frac).float()
        channels = x.shape[1] if len(x.shape) > 1 else 1
        shape = (len(values), channels, *[1] * (len(x.shape) - 2))
        probe = values.reshape(-1, *[1] * (len(shape) - 1)).expand(shape).contiguous()
        with torch.no_grad():
            at = lut_input(node)  # the tensor among `args`, the rest numbers (x + 3.0)
            out = call_node(node, module, [*args[:at], probe, *args[at + 1 :]])
            for relu in relus:
                out = F.relu(out) if relu == "relu" else F.relu6(out)
        return out.reshape(len(values), channels).T

    def _pad(self, node: fx.Node, x: Stored) -> Pending:
        """F.pad with zeros (an option-A ResNet shortcut's new channels): each output value
        reads its input value, or is 0 where it falls in the padding (a negative pad crops)."""
        shape = self._shape(node)
        pads = list(static_value(node.args[1], node))  # TF's 'SAME' pads: read off sizes
        pads += [0] * (2 * len(shape) - len(pads))
        inside, index, out_stride, in_stride = [], [], 1, 1
        for dim in reversed(range(len(shape))):
            before = pads[2 * (len(shape) - 1 - dim)]  # pads run from the last dimension back
            at = f"((i / {out_stride}) % {shape[dim]} - {before})"
            if before or shape[dim] != x.shape[dim]:
                inside.append(f"{at} >= 0 && {at} < {x.shape[dim]}")
            index.append(f"{at} * {in_stride}")
            out_stride, in_stride = out_stride * shape[dim], in_stride * x.shape[dim]
        read = f"x[{' + '.join(index)}]"
        expr = f"(({' && '.join(inside)}) ? {read} : 0)" if inside else read
        count = math.prod(shape)

        def body(epilogue, out):
            return ELEMENTWISE.format(n=count, expr=expr, out=out, epilogue=epilogue(2))

        lo, hi = min(x.lo, 0), max(x.hi, 0)
        args = [("x", x.buf, True)]
        return Pending(
            node.name, shape, x.frac, x.divisor, lo, hi, None, body, args, len(node.users)
        )

    def _gather(self, node: fx.Node, x: Stored, view, probe: torch.Tensor) -> Pending:
        shape, lo, hi = tuple(view.shape), x.lo, x.hi
        if view.untyped_storage().data_ptr() == probe.untyped_storage().data_ptr():
            expr = f"x[{strided_index(shape, view.stride(), view.storage_offset())}]"
        else:  # a copy: each output's source, from a table (0: zero padding)
            sources = view.flatten().long().tolist()
            table = self.program.table(node.name, sources, prefix="gather")
            expr = f"x[{table}[i] - 1]"
            if 0 in sources:
                expr, lo, hi = f"({table}[i] ? {expr} : 0)", min(lo, 0), max(hi, 0)
        count = math.prod(shape)

        def body(epilogue, out):
            return ELEMENTWISE.format(n=count, expr=expr, out=out, epilogue=epilogue(2))

        args = [("x", x.buf, True)]
        return Pending(
            node.name, shape, x.frac, x.divisor, lo, hi, None, body, args, len(node.users)
        )

    def _add(self, node: fx.Node, a: Stored, b: Stored, subtract: bool = False) -> Pending:
        """a + b (or a - b) on the finer of their grids; a per-map value (x.amax((2, 3),
        keepdim=True)) or a constant broadcasts."""
        if a.divisor * b.divisor != 1:
            raise UnsupportedLayerError(
                f"{node.name} adds values that are not on fixed-point grids"
            )
        shape = self._shape(node)
        frac = max(a.frac, b.frac)
        ma, mb = 1 << (frac - a.frac), 1 << (frac - b.frac)
        b_lo, b_hi = (-b.hi * mb, -b.lo * mb) if subtract else (b.lo * mb, b.hi * mb)
        lo, hi = a.lo * ma + b_lo, a.hi * ma + b_hi
        if max(-lo, hi) >= LIMIT:
            raise UnsupportedLayerError(f"{node.name}: sums too large for 64-bit integers")
        ia, ib = broadcast_index(shape, a.shape), broadcast_index(shape, b.shape)
        expr = f"{term(f'a[{ia}]', ma)} {'-' if subtract else '+'} {term(f'b[{ib}]', mb)}"
        count = math.prod(shape)

        def body(epilogue, out):
            return ELEMENTWISE.format(n=count, expr=expr, out=out, epilogue=epilogue(2))

        args = [("a", a.buf, True), ("b", b.buf, True)]
        saturate = self._saturation()
        return Pending(node.name, shape, frac, 1, lo, hi, saturate, body, args, len(node.users))

    def _mul(self, node: fx.Node, a: Stored, b: Stored) -> Pending:
        """An element-wise product (a gate broadcast over the maps): the fractional lengths
        add, the product is requantized by the quantizer after it."""
        if a.divisor * b.divisor != 1:
            raise UnsupportedLayerError(
                f"{node.name} multiplies values that are not on fixed-point grids"
            )
        shape = self._shape(node)
        corners = [x * y for x in (a.lo, a.hi) for y in (b.lo, b.hi)]
        lo, hi = min(corners), max(corners)
        if max(-lo, hi) >= LIMIT:
            raise UnsupportedLayerError(f"{node.name}: products too large for 64-bit integers")
        expr = (
            f"(int64_t)a[{broadcast_index(shape, a.shape)}] * b[{broadcast_index(shape, b.shape)}]"
        )
        count = math.prod(shape)

        def body(epilogue, out):
            return ELEMENTWISE.format(n=count, expr=expr, out=out, epilogue=epilogue(2))

        args = [("a", a.buf, True), ("b", b.buf, True)]
        frac, saturate = a.frac + b.frac, self._saturation()
        return Pending(node.name, shape, frac, 1, lo, hi, saturate, body, args, len(node.users))

    def _lut(self, node: fx.Node, module, x: Stored, args) -> Pending:
        """An element-wise function as a device runs it: a table indexed by the input integer,
        each entry the function of that grid value (float32, as the fake-quantized model
        computes it), through any ReLU before the quantizer, rounded to the quantizer's
        format; the quantizer after it then has nothing left to do."""
        if x.divisor != 1:
            raise UnsupportedLayerError(
                f"{node.name} reads a value that is not on a fixed-point grid"
            )
        if x.hi - x.lo >= 1 << LUT_BITS:
            raise UnsupportedLayerError(
                f"{node.name}: its input spans {x.hi - x.lo + 1} values; a table takes at most "
                f"2**{LUT_BITS}"
            )
        quantizer, relus = self._quantizer_after(node)
        tables = self._lut_tables(node, module, x, args, relus)  # [channel, grid value]
        if bool((tables == tables[:1]).all()):  # the same function on every channel
            tables = tables[:1]
        table = to_integers(tables.double(), quantizer.fmt).long().flatten().tolist()
        cname = self.program.table(node.name, table)
        if len(tables) == 1:
            expr = f"{cname}[x[i] - ({x.lo})]"
        else:  # a per-channel function (PReLU): channel c's table starts at c * its length
            inner, width = math.prod(x.shape[2:]), x.hi - x.lo + 1
            expr = f"{cname}[((i / {inner}) % {len(tables)}) * {width} + x[i] - ({x.lo})]"
        count = math.prod(x.shape)

        def body(epilogue, out):
            return ELEMENTWISE.format(n=count, expr=expr, out=out, epilogue=epilogue(2))

        fmt = quantizer.fmt
        args = [("x", x.buf, True)]
        return Pending(
            node.name, x.shape, fmt.frac, 1, min(table), max(table), None, body, args,
            len(node.users),
        )  # fmt: skip

    def _quantizer_after(self, node: fx.Node):
        """(the ActQuant a lookup table's value reaches through its one user, possibly via
        ReLUs, the ReLU kinds on the way), or None."""
        relus = []
        while len(node.users) == 1:
            node = next(iter(node.users))
            module = self._module(node)
            if isinstance(module, ActQuant):
                return module, relus
            if self.kinds[node] not in ("relu", "relu6"):
                return None
            relus.append(self.kinds[node])
        return None

    def _saturation(self) -> tuple[int, int]:
        bits = self.formats.accumulator
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1

    def _cat(self, node: fx.Node, args) -> Cat:
        shape = self._shape(node)
        dim = node.kwargs.get("dim", args[1] if len(args) > 1 else 0)
        dim = dim + len(shape) if dim < 0 else dim
        if dim == 0:
            raise UnsupportedLayerError(f"{node.name} concatenates along the batch dimension")
        parts = [(self._stored(a, node), ()) for a in args[0]]
        return Cat(node.name, shape, parts, math.prod(shape[:dim]), len(node.users))

    def _output(self, node: fx.Node, value) -> None:
        if isinstance(value, (tuple, list)) or value is None:
            raise UnsupportedLayerError("the C export needs a model with one output tensor")
        if isinstance(value, Pending) and value.users == 1:
            x = self.program.store(value, None, where="output")
        else:
            x = self._stored(value, node)
            ctype = ctype_for(min(x.lo, -1), max(x.hi, 1 << 16))
            out = self.program.buffer(ctype, x.buf.count, "output")
            body = ELEMENTWISE.format(n=x.buf.count, expr="x[i]", out=ctype, epilogue="")
            self.program.step("output", [("x", x.buf, True), ("y", out, False)], body)
            x = Stored(out, x.shape, x.frac, x.lo, x.hi, x.divisor)
        if x.divisor != 1:
            raise UnsupportedLayerError("the model's output is an average pool's unfinished sum")
        self.logits_ctype, self.output_frac = x.buf.ctype, x.frac
        self.num_classes = x.buf.count

    # ---- layers and pools

    def _layer(self, node: fx.Node, module: nn.Module, x: Stored) -> Pending:
        if x.divisor != 1:
            raise UnsupportedLayerError(
                f"{node.name} reads a value that is not on a fixed-point grid"
            )
        if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
            padded = self._unzero_padded(node, module, x)
            with _without_padding(module):
                return self._layer(node, module, padded)
        w = self.program.layer_weights(node.target, module)
        frac = w.frac + x.frac
        shift = 0
        if w.bias is not None:
            shift = frac - w.bias_frac
            if shift < 0:
                raise UnsupportedLayerError(f"{node.name}: its bias is finer than its accumulator")
        bias = [b << shift for b in w.bias] if w.bias is not None else [0] * len(w.ints)
        lo, hi, bound = mac_range(w.ints, x.lo, x.hi, bias)
        acc = "int32_t" if bound < 1 << 31 else "int64_t"
        if bound >= LIMIT:
            raise UnsupportedLayerError(f"{node.name}: sums too large for 64-bit integers")
        args = [("x", x.buf, True)]
        for pname, ctype, count in row_buffers(module, w, x):
            args.append((pname, self.program.buffer(ctype, max(count, 1)), False))
        bias_expr = bias_expression(w, acc, shift)
        out_shape = self._shape(node)
        if isinstance(module, nn.Conv2d):
            body = conv_body(module, w, acc, bias_expr, x, out_shape)
        else:
            body = linear_body(module, w, acc, bias_expr, x)
        saturate = self._saturation()
        return Pending(node.name, out_shape, frac, 1, lo, hi, saturate, body, args, len(node.users))

    def _unzero_padded(self, node: fx.Node, conv: nn.Conv2d, x: Stored) -> Stored:
        """A conv's reflection / replication / circular padding as a copy of its input (a
        gather, as F.pad with that mode), stored for the conv to read without padding."""
        probe = torch.arange(1, math.prod(x.shape) + 1, dtype=torch.float64).reshape(x.shape)
        view = unzero_padded(conv, probe)
        return self.program.store(self._gather(node, x, view, probe), None)

    def _divisor_after(self, node: fx.Node) -> int | torch.Tensor | None:
        for user in node.users:  # the quantizer that divides, as IntegerModel finds it
            module = self._module(user)
            if isinstance(module, ActQuant):
                return module.pool_divisor if module.input_frac is not None else None
            if self.kinds[user] in ("relu", "relu6"):
                return self._divisor_after(user)
        return None

    def _avg_pool(self, node: fx.Node, module, x: Stored) -> Pending:
        """The windows' sums, divided by the quantizer after it: by one divisor, or where the
        windows hold different numbers of values (ceil mode, padding not counted, adaptive
        windows that do not tile the input) by each output's own, read from a table."""
        if x.divisor != 1:
            raise UnsupportedLayerError(
                f"{node.name} pools a value that is not on a fixed-point grid"
            )
        out_shape = pooled = self._shape(node)
        (h, w) = x.shape[-2:]
        divisor = self._divisor_after(node)
        window = None
        if spatial_mean(node):  # x.mean((2, 3)): one window over each map, (C,) or (C, 1, 1)
            kernel, stride, padding = (h, w), (h, w), (0, 0)
            pooled = (*x.shape[:-2], 1, 1)
        elif isinstance(module, nn.AdaptiveAvgPool2d) or node.target is F.adaptive_avg_pool2d:
            oh, ow = out_shape[-2:]
            kernel, stride, padding = (h // oh, w // ow), (h // oh, w // ow), (0, 0)
            if isinstance(divisor, torch.Tensor):  # windows that do not tile the input
                kernel, window = (
                    (-(-h // oh) + 1, -(-w // ow) + 1),
                    adaptive_window((h, w), (oh, ow)),
                )
        else:
            options = pool_options(node, module)
            kernel = _pair(options["kernel_size"])
            stride, padding = _pair(options["stride"] or kernel), _pair(options["padding"])
        window = window or sliding_window(kernel, stride, padding, (1, 1))
        n = kernel[0] * kernel[1]  # at most that many values a window
        lo, hi = n * min(x.lo, 0), n * max(x.hi, 0)
        acc = "int32_t" if max(-lo, hi) < 1 << 31 else "int64_t"

        def body(epilogue, out):
            return pool_body(x, pooled, window, acc, "0", "s += t;", epilogue, out)

        if isinstance(divisor, torch.Tensor):
            values = divisor.flatten().tolist()
            table = self.program.table(node.name, values, prefix="divisors")
            divisor = PerPosition(table, min(values), max(values), f"oy * {pooled[-1]} + ox")
        args = [("x", x.buf, True)]
        return Pending(node.name, out_shape, x.frac, divisor, lo, hi, None, body, args, 1)

    def _max_pool(self, node: fx.Node, module, x: Stored) -> Stored:
        out_shape = self._shape(node)
        if isinstance(module, nn.AdaptiveMaxPool2d) or node.target is F.adaptive_max_pool2d:
            window = adaptive_window(x.shape[-2:], out_shape[-2:])
        else:
            options = _max_pool_options(node, module)
            if options["return_indices"]:
                raise UnsupportedLayerError(f"{node.name}: max pooling that returns indices")
            kernel = _pair(options["kernel_size"])
            stride = _pair(options["stride"] or kernel)
            window = sliding_window(
                kernel, stride, _pair(options["padding"]), _pair(options["dilation"])
            )
        ctype = x.buf.ctype
        dh, dw = dilations(window)
        first = f"xc[(iy0 + ky0 * {dh}) * {x.shape[-1]} + ix0 + kx0 * {dw}]"
        update = "if (t > s) s = t;"
        body = pool_body(x, out_shape, window, ctype, first, update, lambda _: "", ctype)
        out = self.program.buffer(ctype, math.prod(out_shape))
        self.program.step(node.name, [("x", x.buf, True), ("y", out, False)], body)
        return Stored(out, out_shape, x.frac, x.lo, x.hi, x.divisor)


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _max_pool_options(node: fx.Node, module) -> dict:
    names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
    if module is not None:
        return {n: getattr(module, n) for n in names}
    options = dict(zip(names, (None, None, 0, 1, False, False)))
    options.update(zip(names, node.args[1:]))
    options.update({k: v for k, v in node.kwargs.items() if k in names})
    return {name: static_value(value, node) for name, value in options.items()}  # x.size(2)


def _arg(arg, values):
    if isinstance(arg, fx.Node):
        return values[arg]
    if isinstance(arg, (list, tuple)):
        return type(arg)(_arg(a, values) for a in arg)
    return arg


@contextlib.contextmanager
def _without_padding(conv: nn.Conv2d):
    """While open, `conv` reads an input that is already padded (its padding and mode set
    aside: a parametrized module cannot be copied); the loop nest is written meanwhile."""
    saved = conv.padding, conv.padding_mode
    conv.padding, conv.padding_mode = (0, 0), "zeros"
    try:
        yield conv
    finally:
        conv.padding, conv.padding_mode = saved
