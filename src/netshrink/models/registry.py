"""Naming an architecture: a zoo name or a user's ``package.module:factory``, with JSON arguments.

A compressed file stores a ``ModelSpec`` (never code): unpacking rebuilds the architecture from it,
replays the structural edits, then loads the tensors.

The import policy (docs/security.md), the same for every file and every caller: a zoo name is
built freely; an import path is imported and called only when the caller names that exact
``package.module:factory`` in ``allow_import`` (``--allow-import`` on the command line). Never a
package prefix, never because a file says so: a checkpoint, ``.nsk``, recipe or run directory
written by someone else would otherwise run any function it names (``os:system``).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
from collections.abc import Callable, Collection
from typing import Any

import pydantic
from pydantic import field_validator
from torch import nn

from netshrink.config import Config
from netshrink.errors import ConfigError, ImportNotAllowedError
from netshrink.models.densenet import densenet
from netshrink.models.googlenet import googlenet
from netshrink.models.lenet import lenet5, lenet5_caffe, lenet300_100
from netshrink.models.mobilenet import mobilenet_v2
from netshrink.models.resnet import resnet20
from netshrink.models.vgg import vgg16, vgg_small

from ..config import takes_mappings

MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet300_100": lenet300_100,
    "lenet5": lenet5,
    "lenet5_caffe": lenet5_caffe,
    "vgg_small": vgg_small,
    "resnet20": resnet20,
    "mobilenet_v2": mobilenet_v2,
    "vgg16": vgg16,
    "googlenet": googlenet,
    "densenet": densenet,
}

_IDENT = r"[A-Za-z_]\w*"
_ZOO_NAME = re.compile(_IDENT)
_IMPORT_PATH = re.compile(rf"{_IDENT}(?:\.{_IDENT})*:{_IDENT}")
_SPEC_TEXT = re.compile(r"\s*([\w.:]+)\s*(?:\((.*)\))?\s*", re.DOTALL)

# The exact factories a caller trusts, as "package.module:factory" strings.
AllowImport = Collection[str]


class ModelSpec(Config):
    """An architecture: ``name`` (a key of ``MODELS`` or ``package.module:factory``) and keyword
    ``args`` for its factory. Args are kept as their JSON round trip (tuples become lists), so a
    spec read back from a file equals the one written."""

    name: str
    args: dict[str, Any] = {}

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if _ZOO_NAME.fullmatch(name) or _IMPORT_PATH.fullmatch(name):
            return name
        raise ConfigError(
            f"model name {name!r} is neither a zoo name ({', '.join(MODELS)}) nor an import "
            "path of the form 'package.module:factory'"
        )

    @field_validator("args")
    @classmethod
    def _check_args(cls, args: dict[str, Any]) -> dict[str, Any]:
        try:
            return json.loads(json.dumps(args, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"model arguments {args!r} are not JSON-serialisable ({exc}); use numbers, "
                "strings, booleans, null, lists and objects only"
            ) from exc

    def to_json(self) -> dict[str, Any]:
        """Return ``{"name": ..., "args": {...}}``, ready for ``json.dumps``."""
        return {"name": self.name, "args": dict(self.args)}

    @classmethod
    def from_json(cls, data: Any) -> ModelSpec:
        """Inverse of ``to_json``; a malformed ``data`` raises ConfigError."""
        try:
            return cls.model_validate(data)
        except pydantic.ValidationError as exc:
            raise ConfigError(f"invalid model spec {data!r}: {exc}") from exc

    @classmethod
    def parse(cls, text: str, args_json: str | None = None) -> ModelSpec:
        """Parse ``"lenet5"``, ``"vgg_small(width=0.5, batch_norm=False)"`` or
        ``"mypkg.models:make_net"`` (as typed on the command line), plus optional extra
        arguments as a JSON object; a key given in both raises ConfigError.

        Example:
            >>> ModelSpec.parse("vgg_small(width=0.5)", '{"batch_norm": false}').args
            {'width': 0.5, 'batch_norm': False}
        """
        match = _SPEC_TEXT.fullmatch(text)
        if match is None:
            raise ConfigError(
                f"cannot parse model {text!r}; write a name such as 'vgg_small', "
                "'vgg_small(width=0.5)' or 'mypkg.models:make_net'"
            )
        name, call_args = match.group(1), match.group(2)
        args = _parse_keywords(text, call_args) if call_args is not None else {}
        extra = _parse_args_json(args_json) if args_json is not None else {}
        both = sorted(set(args) & set(extra))
        if both:
            raise ConfigError(
                f"model argument(s) {', '.join(both)} given both in {text!r} and in the JSON "
                "arguments; give each once"
            )
        return cls(name=name, args={**args, **extra})


def _parse_keywords(text: str, call_args: str) -> dict[str, Any]:
    """Keyword arguments of ``name(k=v, ...)`` with literal values; nothing is evaluated."""
    try:
        call = ast.parse(f"f({call_args})", mode="eval").body
    except SyntaxError as exc:
        raise ConfigError(f"cannot parse the arguments of model {text!r}: {exc.msg}") from exc
    if not isinstance(call, ast.Call):
        raise ConfigError(f"cannot parse the arguments of model {text!r}")
    source = f"f({call_args})"
    if call.args:
        given = ast.get_source_segment(source, call.args[0])
        raise ConfigError(
            f"model {text!r}: positional argument {given!r} is not accepted; "
            "name every argument, e.g. width=0.5"
        )
    args: dict[str, Any] = {}
    for keyword in call.keywords:
        given = ast.get_source_segment(source, keyword)
        if keyword.arg is None:
            raise ConfigError(f"model {text!r}: {given!r} is not accepted; name every argument")
        if keyword.arg in args:
            raise ConfigError(f"model {text!r}: argument {keyword.arg!r} is given twice")
        try:
            args[keyword.arg] = ast.literal_eval(keyword.value)
        except (ValueError, TypeError, SyntaxError, RecursionError) as exc:
            raise ConfigError(
                f"model {text!r}: the value in {given!r} is not a literal "
                "(use numbers, strings, True/False/None, lists or dicts)"
            ) from exc
    return args


def _parse_args_json(args_json: str) -> dict[str, Any]:
    try:
        extra = json.loads(args_json)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"model arguments {args_json!r} are not valid JSON: {exc}") from exc
    if not isinstance(extra, dict):
        raise ConfigError(
            f'model arguments {args_json!r} must be a JSON object, e.g. {{"width": 0.5}}'
        )
    return extra


@takes_mappings
def build_model(
    spec: ModelSpec,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    input_size: int | None = None,
    allow_import: AllowImport = (),
    where: str | None = None,
) -> nn.Module:
    """Build the architecture named by ``spec``; the data-derived arguments fill in whatever
    ``spec.args`` leaves unset (and, for an import path, only those the factory accepts).

    A zoo name is always built. An import path is imported and called only when it is listed,
    exactly, in ``allow_import`` (the caller's trust; see the module docstring), else
    ImportNotAllowedError, which names ``where`` the spec came from and the flag that allows it.

    Example:
        >>> build_model(ModelSpec.parse("lenet5"), num_classes=3).fc3.out_features
        3
        >>> build_model(ModelSpec.parse("mypkg.nets:small"), allow_import=["mypkg.nets:small"])
    """
    given = {"num_classes": num_classes, "in_channels": in_channels, "input_size": input_size}
    data_args = {k: v for k, v in given.items() if v is not None and k not in spec.args}
    check_buildable(spec, allow_import, where)
    if ":" in spec.name:
        factory = _import_factory(spec.name)
        data_args = _accepted(factory, data_args)
    else:
        factory = MODELS[spec.name]
    kwargs = {**spec.args, **data_args}
    _check_binds(spec.name, factory, kwargs)
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"model {spec.name!r} rejected its arguments {kwargs}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model factory {spec.name!r} returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def check_buildable(spec: ModelSpec, allow_import: AllowImport = (), where: str | None = None):
    """Raise unless `build_model` may build `spec`: a zoo name, or an import path the caller
    allowed (ImportNotAllowedError). Callers check it before writing anything for the model (a
    cache entry, a lock), so a refused spec leaves no trace."""
    if ":" in spec.name:
        check_import_allowed(spec.name, allow_import, where)
    elif spec.name not in MODELS:
        raise ConfigError(
            f"unknown model {spec.name!r}; the zoo has: {', '.join(sorted(MODELS))} "
            "(or give an import path 'package.module:factory')"
        )


def allowed_imports(allow_import: AllowImport | None) -> frozenset[str]:
    """Check and normalize an ``allow_import`` argument: exact ``package.module:factory`` names.

    ``True`` or a bare package name are refused: trusting a whole package trusts every callable
    in it (``netshrink.cli:main`` runs any command) with arguments chosen by the file.
    """
    if allow_import is None:
        return frozenset()
    if isinstance(allow_import, (bool, str)) or not isinstance(allow_import, Collection):
        raise ConfigError(
            f"allow_import={allow_import!r}: give a list of the exact 'package.module:factory' "
            "names you trust, e.g. allow_import=['mypkg.nets:small']"
        )
    names = frozenset(allow_import)
    for name in names:
        if not isinstance(name, str) or not _IMPORT_PATH.fullmatch(name):
            raise ConfigError(
                f"--allow-import {name!r}: name the exact factory you trust, "
                "'package.module:factory' (a package or module alone is not accepted)"
            )
    return names


def check_import_allowed(name: str, allow_import: AllowImport | None, where: str | None) -> None:
    """Raise ImportNotAllowedError unless the import path ``name`` is in ``allow_import``."""
    if name in allowed_imports(allow_import):
        return
    source = f"{where} builds its model with" if where else "the model is"
    raise ImportNotAllowedError(
        f"{source} {name!r}, which imports and runs code; netshrink imports only the factories "
        f"you name. If you trust it: --allow-import {name} (Python: allow_import=[{name!r}])"
    )


def _import_factory(path: str) -> Callable[..., Any]:
    module_name, attr = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except (ImportError, SyntaxError) as exc:
        raise ConfigError(
            f"cannot import model {path!r}: {exc}; is the package installed or on PYTHONPATH?"
        ) from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ConfigError(f"model {path!r}: module {module_name!r} has no callable {attr!r}")
    return factory


def _accepted(factory: Callable[..., Any], data_args: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``data_args`` that ``factory``'s signature takes by keyword."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return data_args
    keyword_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = {p.name for p in params if p.kind in keyword_kinds}
    return {k: v for k, v in data_args.items() if k in names}


def _check_binds(name: str, factory: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """Report an unknown or missing argument before calling, with the names the factory takes."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        raise ConfigError(
            f"model {name!r}: {exc}; it takes {', '.join(signature.parameters) or 'no arguments'}"
        ) from exc
