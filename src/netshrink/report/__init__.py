"""What a run and a model report: stage and layer tables (`tables`), the report of a recipe run,
report.json -> report.md (`run`), and its PNG plots (`plots`, matplotlib imported only to draw).

Sizes come from the codec (netshrink.codec.summary): a stage's bytes and a layer's bits are
those of the .nsk file, never an estimate. The public names are re-exported here.
"""

from .plots import (
    MAX_WEIGHT_PLOTS,
    accuracy_vs_size_figure,
    distinct_levels,
    layers_figure,
    save_png,
    weights_figure,
    write_sensitivity_plot,
)
from .run import (
    REPORT_FILE,
    FinalRecord,
    ReportStage,
    RunReport,
    layer_rows,
    read_run_report,
    render_report,
    report_markdown,
)
from .tables import (
    COLUMNS,
    NARROW,
    WIDE_COLUMNS,
    console,
    format_percent,
    format_size,
    layer_table,
    measurement_table,
    measurements_json,
    measurements_markdown,
    print_measurements,
    storage_table,
)

__all__ = [
    "COLUMNS",
    "NARROW",
    "WIDE_COLUMNS",
    "MAX_WEIGHT_PLOTS",
    "REPORT_FILE",
    "FinalRecord",
    "ReportStage",
    "RunReport",
    "accuracy_vs_size_figure",
    "console",
    "distinct_levels",
    "format_percent",
    "format_size",
    "layer_rows",
    "layer_table",
    "layers_figure",
    "measurement_table",
    "measurements_json",
    "measurements_markdown",
    "print_measurements",
    "read_run_report",
    "render_report",
    "report_markdown",
    "save_png",
    "storage_table",
    "weights_figure",
    "write_sensitivity_plot",
]
