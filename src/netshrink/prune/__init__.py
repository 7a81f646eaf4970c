"""Pruning: magnitude thresholds, iterative / incremental / gradual schedules, sparse variational
dropout, filter pruning and sensitivity analysis. Masks are parametrizations
(`weight = dense * mask`)."""

from ..mask import Mask, bake_masks, layer_sparsity, restore_masks
from .filters import FilterPlan, PruneFiltersConfig, mask_filters, plan_filters, prune_filters
from .gradual import (
    GradualPruner,
    PruneGradualConfig,
    cubic_sparsity,
    prune_gradual,
    spread_over,
    training_steps,
)
from .incremental import PruneIncrementalConfig, incremental_ratios, prune_incremental
from .iterative import PruneIterativeConfig, prune_iterative
from .magnitude import (
    GlobalSparsity,
    LayerSparsity,
    PruneMagnitudeConfig,
    StdThreshold,
    prune_magnitude,
)
from .sensitivity import (
    Sensitivity,
    budget_sparsities,
    plot_sensitivity,
    sensitivity_analysis,
)
from .variational import PruneVariationalConfig, prune_variational

__all__ = [
    "FilterPlan",
    "PruneFiltersConfig",
    "mask_filters",
    "plan_filters",
    "prune_filters",
    "GlobalSparsity",
    "GradualPruner",
    "LayerSparsity",
    "Mask",
    "PruneGradualConfig",
    "PruneIncrementalConfig",
    "PruneIterativeConfig",
    "PruneMagnitudeConfig",
    "PruneVariationalConfig",
    "Sensitivity",
    "StdThreshold",
    "bake_masks",
    "budget_sparsities",
    "cubic_sparsity",
    "incremental_ratios",
    "layer_sparsity",
    "plot_sensitivity",
    "prune_gradual",
    "spread_over",
    "training_steps",
    "prune_incremental",
    "prune_iterative",
    "prune_magnitude",
    "prune_variational",
    "restore_masks",
    "sensitivity_analysis",
]
