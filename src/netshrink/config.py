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

from pydantic import BaseModel, ConfigDict, model_validator


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
