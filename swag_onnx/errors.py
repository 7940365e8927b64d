"""User-facing errors: one type per kind, each printed by the CLI as one line with exit code 2."""


class SwagError(Exception):
    """Base class of every error that is the user's to fix (not a bug in swag_onnx)."""


class BadModelError(SwagError):
    """The model file is missing, unreadable, not ONNX, or not an image classifier we can use."""


class UnsupportedOpsError(BadModelError):
    """The model contains ops (or op configurations) on the gradient path that have no rule."""


class BadOptionError(SwagError):
    """An option or argument makes no sense (unknown layer, unknown score tensor, ...)."""


class BadImageError(SwagError):
    """An image file is missing, unreadable, truncated, or not an image."""


class BadInputError(SwagError):
    """An input data file other than an image or a model (e.g. annotations) is missing,
    unreadable or malformed; the message names the file and the line, element or index."""
