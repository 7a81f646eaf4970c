"""The base of every netshrink settings and record model: frozen and strict about its fields.

`Config` is a pydantic `BaseModel` that is immutable (`frozen=True`: a config is a value, safe
to share, cache and hash) and refuses unknown fields (`extra="forbid"`: a misspelt recipe key or
a forged file field is an error, never silently ignored). The methods' configs (`*Config`), the
structural edits, the model spec, the checkpoint sidecar and the `.nsk` header records derive
from it; a subclass adds to its `model_config` (the file records add `strict=True`).

`Settings`, the base of the methods' settings, also lays a nested setting given as a mapping
over its field's default (`merge_over_defaults`), so a recipe, a CLI flag and a Python dict that
set one field of a nested config agree on the rest.

Example:
    >>> class Point(Config):
    ...     x: int = 0
    >>> Point(x=1).x, Point(y=1)  # the second raises a ValidationError: extra field
"""

import functools
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from .errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


class Config(BaseModel):
    """A frozen pydantic model that forbids unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Settings(Config):
    """A method's settings (its config, its stage, training): a `Config` whose nested settings
    given as mappings are laid over the field's default (`merge_over_defaults`). Not for file
    records: a before-validator makes pydantic's strict JSON parsing refuse arrays for tuples."""

    @model_validator(mode="before")
    @classmethod
    def _over_defaults(cls, data):
        if isinstance(data, dict):
            return merge_over_defaults(cls, data)
        return data


def merge_over_defaults(cls: type[BaseModel], given: dict) -> dict:
    """`given` with each nested mapping laid over its field's default, at any depth: a recipe,
    the CLI or a Python dict that sets `quant: {weights: 8}` in a config whose default is
    `QuantConfig(weights=4, activations=4, calibrate="mse")` keeps the activations and the
    calibration of that default rather than falling back to QuantConfig's own. A mapping naming
    another `kind` than the default's is taken as it is."""
    merged = dict(given)
    for name, info in cls.model_fields.items():
        value, default = given.get(name), info.default
        if not isinstance(value, dict) or not isinstance(default, BaseModel):
            continue
        if "kind" in value and value["kind"] != getattr(default, "kind", None):
            continue
        base = default.model_dump(exclude_unset=True)
        if "kind" in type(default).model_fields:  # a tagged union's member: keep its tag
            base["kind"] = default.kind
        merged[name] = merge_over_defaults(type(default), {**base, **value})
    return merged


def to_config(cls: type[Config], value: Any) -> Any:
    """`value` as a `cls`: a mapping of its fields is validated into one (a ConfigError naming
    the field when it is wrong); anything else is returned as it is."""
    if not isinstance(value, Mapping):
        return value
    try:
        return cls.model_validate(dict(value))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "config"
        raise ConfigError(f"{cls.__name__}: {where}: {err['msg']}") from None


def takes_mappings(function: F) -> F:
    """Let every parameter of `function` annotated with a `Config` class (or `Config | None`)
    also take a plain mapping of its fields: `share_kmeans(model, {"bits": 4})` is
    `share_kmeans(model, ShareKmeansConfig(bits=4))`. The public face of the methods in Python,
    validated by the same config as the recipe and the command line."""
    signature = inspect.signature(function)

    @functools.cache
    def config_classes() -> dict[str, type[Config]]:  # resolved on first call: forward refs
        found = {}
        for name, parameter in signature.parameters.items():
            if cls := _config_class(_resolve(parameter.annotation, function.__globals__)):
                found[name] = cls
        return found

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        for name, cls in config_classes().items():
            if name in bound.arguments:
                bound.arguments[name] = to_config(cls, bound.arguments[name])
        return function(*bound.args, **bound.kwargs)

    return wrapper  # type: ignore[return-value]


def _resolve(annotation: Any, scope: dict) -> Any:
    """A parameter's annotation, evaluated when it is a string (`from __future__ import
    annotations`); None when it names what the module imports only for type checkers."""
    if not isinstance(annotation, str):
        return annotation
    try:
        return eval(annotation, scope)  # the module's own annotation text, not input
    except NameError:
        return None


def _config_class(hint: Any) -> type[Config] | None:
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = typing.get_args(hint) if union else (hint,)
    found = [o for o in options if isinstance(o, type) and issubclass(o, Config)]
    return found[0] if len(found) == 1 else None
