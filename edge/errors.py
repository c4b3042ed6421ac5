"""User-facing errors.

Every error a user can cause (a missing file, a corrupt model, an image without a face, a config typo) is an
`EdgeError` whose message names the cause in one readable line. The CLI prints it and exits 1, without a traceback.
"""


class EdgeError(Exception):
    """An error the user can fix; `str(err)` is the whole message."""


class ModelError(EdgeError):
    """A model file is missing, corrupt, of the wrong shape, or its runtime/delegate is unavailable."""


class ImageError(EdgeError):
    """An image file is missing or cannot be decoded."""


class NoFaceError(EdgeError):
    """An image that must contain a face contains none."""


class DataError(EdgeError):
    """An input table (CSV) is missing, malformed or refers to files that do not exist."""
