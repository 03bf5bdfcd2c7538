"""The user errors of mugstan, defined once.

A user error is a mistake in what a person gave mugstan (a config value, a command-line argument,
a file, a checkpoint, an index, an annotation file, a video), not a bug in mugstan. Its message is
one line that names the file, field or value and says how to fix it. The ``mugstan`` command prints
it as ``error: <message>`` and exits with status 2, without a traceback (``mugstan --debug`` shows
one). Any other exception is a bug and keeps its traceback.

The subclasses also derive from the built-in exception a Python caller would expect
(``ValueError``, ``FileNotFoundError``), so library code can catch either.
The other user errors live next to the code that raises them and derive from ``UserError`` too:
``mugstan.config.ConfigError``, ``mugstan.backbones.convert.WeightsError``,
``mugstan.hub.HubError`` and ``mugstan.data.video.VideoError``.

Corrupt files (a ``.npy``, ``.json``, ``.safetensors`` or ``.pt`` that cannot be parsed) are
reported as corrupt, naming the file and how to rebuild it; never with advice to unpickle
(``allow_pickle`` / ``weights_only=False``), which would run code from the file.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input; the message is one line naming it and the fix."""


class ArgumentError(UserError, ValueError):
    """A command-line argument out of range or contradicting another."""


class AnnotationError(UserError, ValueError):
    """An annotation file that cannot be read as its format (names the file, the line and the fix)."""


class MismatchError(UserError, ValueError):
    """Inputs that do not belong together: an index and another model or video folder, weights
    and the model their config builds."""


class CorruptFileError(UserError, ValueError):
    """A file mugstan wrote or reads (weights, index, training state) whose contents are damaged."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named that is not there."""


class OutputExistsError(UserError, FileExistsError):
    """An output that would overwrite something the user did not ask to replace."""


def one_line(err: BaseException) -> str:
    """The exception's message on one line (parsers sometimes put details on further lines)."""
    text = " ".join(part.strip() for part in str(err).strip().splitlines() if part.strip())
    return text or type(err).__name__
