"""The model as a torch.fx graph, for the methods that read or rewrite its dataflow: filter
pruning's channel analysis (netshrink.prune.channel_graph), batch-norm folding and fixed-point
quantization (netshrink.quant). A neutral module, so that no method family imports another
for it.
"""

from torch import fx, nn

from netshrink.errors import UnsupportedLayerError


class _Tracer(fx.Tracer):
    """An fx tracer that remembers whose forward it is in, to name it when tracing fails."""

    def __init__(self) -> None:
        super().__init__()
        self.inside: list[str] = []

    def call_module(self, m, forward, args, kwargs):
        self.inside.append(self.path_of_module(m))
        out = super().call_module(m, forward, args, kwargs)
        self.inside.pop()  # not popped when tracing fails, so the failing module stays on top
        return out


def trace(model: nn.Module, purpose: str) -> fx.GraphModule:
    """`torch.fx.symbolic_trace`, with an UnsupportedLayerError that names the failing module
    and what needed the trace (`purpose`, e.g. "filter pruning")."""
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's forward means "untraceable"
        where = (
            f"module {tracer.inside[-1]!r}" if tracer.inside else f"{type(model).__name__}.forward"
        )
        raise UnsupportedLayerError(
            f"{purpose} needs an fx-traceable forward, but torch.fx failed in {where}: "
            f"{first_line(exc)}; remove Python control flow on tensor values there so that "
            "torch.fx.symbolic_trace(model) succeeds"
        ) from None
    return fx.GraphModule(tracer.root, graph)


def first_line(exc: Exception) -> str:
    """`Type: first line of the message`, for error messages that quote a failure."""
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
