"""Where netshrink writes for a person: the stdout console that tables print to.

A base module (it imports only rich) so that the codec, the report and the CLI can all print
without importing one another.
"""

from rich.console import Console

# Stage tables with every column even on a narrow terminal (`--wide`; set by the CLI's main).
WIDE_TABLES = False


def console() -> Console:
    """stdout; wide enough for the stage table when it is a file or a pipe (rich assumes 80)."""
    out = Console()
    return out if out.is_terminal else Console(width=160)
