"""netshrink's errors: every mistake a user can make is one of these, with a message that says
what to do. The CLI prints the message (no traceback) and exits 2."""


class Error(Exception):
    """Base class of every error a user can cause."""


class DataError(Error):
    """A data set path is missing, unreadable or malformed."""


class ConfigError(Error):
    """A configuration, recipe, model name or argument is invalid."""


class ImportNotAllowedError(ConfigError):
    """A file, recipe or spec names a model factory (`package.module:factory`) that the user did
    not allow by its exact name; importing it would run code the user never chose."""


class DivergedError(ConfigError):
    """Training's loss went to NaN or infinity: the settings (most often the learning rate) are
    too aggressive for the model."""


class CorruptFileError(Error):
    """A checkpoint or compressed file is truncated, tampered with, or not what it claims to be."""


class UnsupportedLayerError(Error):
    """A compression method met a layer it cannot handle; the message names the layer."""


class BudgetError(Error):
    """A recipe stage lost more accuracy than its budget allows; the stages before it are kept."""


class DirectoryInUseError(Error):
    """Another netshrink process is running in the same run directory; the message names it."""


class LimitError(CorruptFileError):
    """A file would decode to more memory than its size allows (or than the cap the user set);
    the message names the field and how to raise the cap for a file the user trusts."""
