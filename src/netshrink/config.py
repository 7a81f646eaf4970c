"""The base of every netshrink settings and record model: frozen and strict about its fields.

`Config` is a pydantic `BaseModel` that is immutable (`frozen=True`: a config is a value, safe
to share, cache and hash) and refuses unknown fields (`extra="forbid"`: a misspelt recipe key or
a forged file field is an error, never silently ignored). The methods' configs (`*Config`), the
structural edits, the model spec, the checkpoint sidecar and the `.nsk` header records derive
from it; a subclass adds to its `model_config` (the file records add `strict=True`).

Example:
    >>> class Point(Config):
    ...     x: int = 0
    >>> Point(x=1).x, Point(y=1)  # the second raises a ValidationError: extra field
"""

from pydantic import BaseModel, ConfigDict


class Config(BaseModel):
    """A frozen pydantic model that forbids unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")
