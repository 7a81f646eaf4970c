"""netshrink's errors: every mistake a user can make is one of these, with a message that says
what to do. The CLI prints the message (no traceback) and exits 2."""


class Error(Exception):
    """Base class of every error a user can cause."""


class DataError(Error):
    """A data set path is missing, unreadable or malformed."""


class ConfigError(Error):
    """A configuration, recipe, model name or argument is invalid."""


class CorruptFileError(Error):
    """A checkpoint or compressed file is truncated, tampered with, or not what it claims to be."""


class UnsupportedLayerError(Error):
    """A compression method met a layer it cannot handle; the message names the layer."""


class BudgetError(Error):
    """A recipe stage lost more accuracy than its budget allows; the stages before it are kept."""
