"""Choosing layers: every method takes a `layers` filter, given as names or as a predicate.

Names are the model's own module names; a DistributedDataParallel wrapper is looked through, so a
`module.` prefix never appears in a config or a recipe.
"""

import copy
from collections.abc import Callable, Iterable

from torch import fx, nn
from torch.nn.utils import parametrize

from .errors import ConfigError

LayerFilter = Iterable[str] | Callable[[str, nn.Module], bool] | None
DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel (or DataParallel) wrapper, else the model."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


def copy_model(model: nn.Module) -> nn.Module:
    """`copy.deepcopy(model)`, with every parametrized module of the copy given a class of its own.

    torch's parametrize gives each parametrized module a class of its own, which deepcopy shares
    between a module and its copy; registering or removing a parametrization on the copy would
    then add or delete a property on the original's class too, and break the original.
    """
    copied = copy.deepcopy(model)
    for module in copied.modules():
        if parametrize.is_parametrized(module):
            own_class(module)
    return copied


def own_class(module: nn.Module) -> None:
    """Give `module` a copy of its class, so that changing the class leaves other modules alone."""
    cls = type(module)
    body = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, body)


def select_layers(
    model: nn.Module,
    layers: LayerFilter = None,
    *,
    types: tuple[type[nn.Module], ...] = DEFAULT_TYPES,
    scales: bool = False,
) -> list[tuple[str, nn.Module]]:
    """(name, module) of the layers a method should act on, in model order.

    `layers=None` takes every module of `types`; a predicate is asked about each module of
    `types`; names are taken as given (any module type) and an unknown name is a ConfigError.
    Without `scales`, `None` and a predicate leave out the depthwise convs that hold a
    pre-activation batch norm's per-channel scales (netshrink.fold.batchnorms_as_convs): they
    are not weights to prune or share (pruning one zeroes a whole channel); a name still
    chooses one, and `scales=True` (reports) takes them too.
    """
    model = unwrap(model)
    modules = dict(_real_modules(model))
    if layers is None or callable(layers):
        held = set() if scales else _batchnorm_convs(model)
        typed = [(n, m) for n, m in modules.items() if isinstance(m, types) and n not in held]
        return typed if layers is None else [(n, m) for n, m in typed if layers(n, m)]
    wanted = [layers] if isinstance(layers, str) else list(layers)
    unknown = [n for n in wanted if n not in modules]
    if unknown:
        known = ", ".join(n for n, m in modules.items() if isinstance(m, types))
        raise ConfigError(f"no layer named {', '.join(unknown)} in the model; layers are: {known}")
    chosen = set(wanted)
    return [(n, m) for n, m in modules.items() if n in chosen]


def _batchnorm_convs(model: nn.Module) -> set[str]:
    """The modules that hold a batch norm as a depthwise conv: the `bn` of each
    netshrink.edits.BatchNormAsConv in the model's edit list, found by its `kind` (edits imports
    this module, so this one reads the list where edits.edit_list keeps it, changing nothing)."""
    store = model.meta if isinstance(model, fx.GraphModule) else vars(model)
    edits = store.get("structural_edits") or ()
    return {e.bn for e in edits if getattr(e, "kind", None) == "batchnorm_as_conv"}


def _real_modules(model: nn.Module):
    # parametrization modules hang off the layers they parametrize; they are not layers
    for name, module in model.named_modules():
        if name and "parametrizations" not in name.split("."):
            yield name, module
