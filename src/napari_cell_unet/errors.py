"""The one base class of every documented error, so the CLI and the widgets catch them in one place.

A ``CellUnetError`` message is one line that names the file, layer or argument and what is wrong with it;
it is shown to the user as is, without a traceback. Anything else that escapes is a bug.
"""

from __future__ import annotations


class CellUnetError(Exception):
    """A documented, user-facing error: bad input file, layer, model file, argument or training data."""


class OutputError(CellUnetError, OSError):
    """An output that cannot be written (folder missing or read-only, a file in the way, disk full)."""


class OutputExistsError(OutputError, FileExistsError):
    """An output file exists and replacing it was not asked for."""
