"""netshrink: compress convolutional image classifiers for embedded devices.

The public API, and nothing else: every method of `METHODS` with its config (each method's
function is named as its recipe `method:`, except `sensitivity` -> `sensitivity_analysis`,
`qat` -> `train_quantized`, `compressive` -> `train_compressive`), recipes (`load_recipe`,
`run_recipe`), the file (`pack`, `unpack`, `packed_bytes`, `summarize`), the exports
(`export_onnx`, `export_onnx_int8`, `export_c`: imported on first use, they load ONNX Runtime),
what a model deploys as, measured (`ExportConfig`, `export_artifacts`: a recipe's `export:`),
and `evaluate` / `measure`.

Data: netshrink's own sources (`load_data`) or the user's (`LoaderSplits`, or a torch Dataset /
DataLoader / list of batches handed straight to `fit`, `quantize`, `distill`, ...). Device:
everything computes where the model is; `device=` / `resolve_device` move it (CUDA when
present for "auto").

Methods change the model in place and return it, except the fixed-point ones, which build a
new module (a traced graph) and leave theirs as it was: `quantize` returns it,
`train_quantized` returns it with its training history, `search_bits` a `BitSearchResult`
holding it. `prune_filters`, `factor_svd` and `fold_batchnorm` work in place but replace
layers: build an optimizer after them.
"""

from .baseline import cached_baseline, train_model
from .checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from .codec import PackConfig, load_packed, pack, packed_bytes, summarize, unpack
from .compressive import CompressiveConfig, train_compressive
from .data import DataConfig, DataSplits, load_data
from .deploy import Artifact, ExportConfig, export_artifacts
from .device import resolve_device
from .distill import DistillConfig, distill
from .errors import (
    ConfigError,
    CorruptFileError,
    DataError,
    Error,
    ImportNotAllowedError,
    LimitError,
    UnsupportedLayerError,
)
from .fold import FoldBatchnormConfig, fold_batchnorm
from .loaders import LoaderSplits
from .measure import (
    Measurement,
    count_macs,
    count_parameters,
    dense_bytes,
    measure,
    measure_latency,
)
from .methods import METHODS, parse_stage, run_stage
from .models import MODELS, ModelSpec, build_model
from .pipeline import RunResult, run_recipe
from .prune import (
    PruneFiltersConfig,
    PruneGradualConfig,
    PruneIncrementalConfig,
    PruneIterativeConfig,
    PruneMagnitudeConfig,
    PruneVariationalConfig,
    prune_filters,
    prune_gradual,
    prune_incremental,
    prune_iterative,
    prune_magnitude,
    prune_variational,
)
from .prune.sensitivity import sensitivity_analysis
from .quant.qat import QatConfig, train_quantized
from .quant.quantize import QuantConfig, quantize
from .quant.search import BitSearchConfig, search_bits
from .recipe import Recipe, load_recipe
from .share.product import SharePqConfig, ShareRqConfig, share_pq, share_rq
from .share.scalar import ShareBinaryConfig, ShareKmeansConfig, share_binary, share_kmeans
from .share.soft import ShareSoftConfig, share_soft
from .share.svd import FactorSvdConfig, factor_svd
from .train import EvalResult, FitConfig, evaluate, fit

# The exports load ONNX Runtime or need a compiler: imported when first asked for, so they are
# attributes (netshrink.export_onnx) but not in __all__; their reference is their own module's.
_LAZY = {
    "export_onnx": "netshrink.export.onnx",
    "export_onnx_int8": "netshrink.export.qdq",
    "export_c": "netshrink.export.c",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'netshrink' has no attribute {name!r}")


__all__ = [
    "Artifact",
    "BitSearchConfig",
    "build_model",
    "cached_baseline",
    "CheckpointMeta",
    "CompressiveConfig",
    "ConfigError",
    "CorruptFileError",
    "count_macs",
    "count_parameters",
    "DataConfig",
    "DataError",
    "DataSplits",
    "dense_bytes",
    "distill",
    "DistillConfig",
    "Error",
    "EvalResult",
    "evaluate",
    "export_artifacts",
    "ExportConfig",
    "factor_svd",
    "FactorSvdConfig",
    "fit",
    "FitConfig",
    "fold_batchnorm",
    "FoldBatchnormConfig",
    "ImportNotAllowedError",
    "LimitError",
    "LoaderSplits",
    "load_checkpoint",
    "load_data",
    "load_packed",
    "load_recipe",
    "measure",
    "measure_latency",
    "Measurement",
    "METHODS",
    "MODELS",
    "ModelSpec",
    "pack",
    "PackConfig",
    "packed_bytes",
    "parse_stage",
    "prune_filters",
    "prune_gradual",
    "prune_incremental",
    "prune_iterative",
    "prune_magnitude",
    "prune_variational",
    "PruneFiltersConfig",
    "PruneGradualConfig",
    "PruneIncrementalConfig",
    "PruneIterativeConfig",
    "PruneMagnitudeConfig",
    "PruneVariationalConfig",
    "QatConfig",
    "QuantConfig",
    "quantize",
    "Recipe",
    "resolve_device",
    "run_recipe",
    "run_stage",
    "RunResult",
    "save_checkpoint",
    "search_bits",
    "sensitivity_analysis",
    "share_binary",
    "share_kmeans",
    "share_pq",
    "share_rq",
    "share_soft",
    "ShareBinaryConfig",
    "ShareKmeansConfig",
    "SharePqConfig",
    "ShareRqConfig",
    "ShareSoftConfig",
    "summarize",
    "train_compressive",
    "train_model",
    "train_quantized",
    "unpack",
    "UnsupportedLayerError",
]
