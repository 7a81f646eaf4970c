"""The JSON header of a .nsk file: what the model is and where each tensor's sections lie.

Every record is a frozen, strict pydantic model with `extra="forbid"`: the header is parsed and
validated, never evaluated, and an unknown field is an error rather than something ignored.
docs/format.md lists every field.
"""

import math
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import ConfigDict, Field

from ..config import Config
from ..edits import MAX_EDITS, Edit
from ..models import ModelSpec
from ..untrusted import ClassCount, InputShape
from .streams import AnsSection, BitsSection, Count, HuffmanSection

# name -> (torch dtype, numpy dtype of its little-endian bytes); bfloat16 travels as raw int16
DTYPES: dict[str, tuple[torch.dtype, np.dtype]] = {
    "float32": (torch.float32, np.dtype("<f4")),
    "float16": (torch.float16, np.dtype("<f2")),
    "float64": (torch.float64, np.dtype("<f8")),
    "bfloat16": (torch.bfloat16, np.dtype("<i2")),
    "int8": (torch.int8, np.dtype("i1")),
    "int16": (torch.int16, np.dtype("<i2")),
    "int32": (torch.int32, np.dtype("<i4")),
    "int64": (torch.int64, np.dtype("<i8")),
    "uint8": (torch.uint8, np.dtype("u1")),
    "bool": (torch.bool, np.dtype("?")),
}
DTypeName = Literal[
    "float32", "float16", "float64", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "bool"
]
FLOAT_DTYPES = ("float32", "float16", "float64")  # the dtypes whose values the codec looks at
# Tensor encodings; a new one adds its tag here, its functions to
# netshrink.codec.encodings.ENCODINGS, and the format version that first has it to TAG_VERSION.
EncodingTag = Literal["dense", "sparse", "codebook", "fixed", "sign", "vector"]
TAG_VERSION = {"sign": 2, "vector": 2}  # the rest: version 1
MAX_TENSORS = 1 << 16  # records in one header


class _Strict(Config):
    model_config = ConfigDict(strict=True)  # and Config's frozen, extra="forbid"


class BytesSection(_Strict):
    """`count` values stored as little-endian `dtype` bytes."""

    kind: Literal["bytes"] = "bytes"
    offset: Count = 0
    length: Count = 0
    crc32: Annotated[int, Field(ge=0, lt=1 << 32)] = 0
    count: Count
    dtype: DTypeName


Section = Annotated[
    BytesSection | BitsSection | HuffmanSection | AnsSection, Field(discriminator="kind")
]


class TensorRecord(_Strict):
    """One entry of the state dict: its name, shape and dtype, and how its values are stored."""

    name: Annotated[str, Field(min_length=1, max_length=1024)]
    shape: Annotated[tuple[Annotated[int, Field(ge=0, le=1 << 31)], ...], Field(max_length=16)]
    dtype: DTypeName
    encoding: EncodingTag
    params: dict[str, int] = {}
    sections: dict[str, Section]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)  # exact Python ints (1 for a scalar); called per section


class Header(_Strict):
    """The whole header; `model` is None for a module packed without a known factory."""

    model: ModelSpec | None = None
    input_shape: InputShape | None = None
    num_classes: ClassCount | None = None
    # max_length counts after the items are validated: at_most's earlier check would make a
    # strict header validate its items as Python (a JSON array is then no tuple)
    edits: Annotated[list[Edit], Field(max_length=MAX_EDITS)] = []
    data: dict[str, Any] | None = None  # the checkpoint's data and fit configs, kept as JSON
    fit: dict[str, Any] | None = None
    metrics: dict[str, float] = {}
    measurement: dict[str, float | int | str | None] | None = None
    tensors: Annotated[list[TensorRecord], Field(max_length=MAX_TENSORS)]
