"""netshrink: compress convolutional image classifiers for embedded devices.

The public API, and nothing else. The map of the code is docs/architecture.md; what a file may
make netshrink do (the import policy, the decode limits) is docs/security.md.
"""

from .baseline import cached_baseline, train_model
from .checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from .codec import pack, unpack
from .data import DataConfig, DataSplits, load_data
from .errors import (
    ConfigError,
    CorruptFileError,
    DataError,
    Error,
    ImportNotAllowedError,
    LimitError,
    UnsupportedLayerError,
)
from .measure import Measurement, count_macs, count_parameters, measure, measure_latency
from .models import MODELS, ModelSpec, build_model
from .train import EvalResult, FitConfig, evaluate, fit

__all__ = [
    "CheckpointMeta",
    "ConfigError",
    "CorruptFileError",
    "DataConfig",
    "DataError",
    "DataSplits",
    "Error",
    "EvalResult",
    "ImportNotAllowedError",
    "LimitError",
    "FitConfig",
    "MODELS",
    "Measurement",
    "ModelSpec",
    "UnsupportedLayerError",
    "build_model",
    "cached_baseline",
    "count_macs",
    "count_parameters",
    "evaluate",
    "fit",
    "load_checkpoint",
    "load_data",
    "measure",
    "measure_latency",
    "pack",
    "unpack",
    "save_checkpoint",
    "train_model",
]
