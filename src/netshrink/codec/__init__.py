"""The compressed file (.nsk): relative-index sparse coding, codebooks, canonical Huffman and rANS
in a checksummed, versioned container that is parsed, never unpickled (Han et al. 2016, Deep
Compression; Kim et al., "synapse code"). The format is written down in docs/format.md.

Example:
    >>> pack(model, "model.nsk", spec=ModelSpec(name="lenet5"), input_shape=(1, 28, 28))
    >>> model = unpack("model.nsk")
"""

from .api import load_packed, load_packed_checkpoint, pack, packed_bytes, unpack
from .container import read_container
from .encodings import ENCODINGS, PackConfig
from .summary import FileSummary, TensorSummary, summarize, summarize_model

__all__ = [
    "ENCODINGS",
    "FileSummary",
    "PackConfig",
    "load_packed",
    "load_packed_checkpoint",
    "TensorSummary",
    "pack",
    "packed_bytes",
    "read_container",
    "summarize",
    "summarize_model",
    "unpack",
]
