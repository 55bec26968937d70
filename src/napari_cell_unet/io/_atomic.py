"""Atomic file writing: write a temporary file next to the target, then rename it into place.

Outputs are also checked before long work starts (``check_output_file``, ``check_output_folder``), so
that hours of training or segmentation are not lost to a read-only folder or a typo.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import OutputError, OutputExistsError

# mkstemp creates files readable by their owner only; a saved file should get the usual permissions.
_UMASK = os.umask(0)
os.umask(_UMASK)


def check_writable(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise OutputError(f"{path}: is a folder, not a file")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: already exists (pass overwrite=True to replace it)")
    if not path.parent.is_dir():
        raise OutputError(f"{path}: folder {path.parent} does not exist")


def check_output_folder(folder: str | Path) -> Path:
    """Create ``folder`` (with parents) if needed and prove that a file can be written in it."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise OutputError(f"{folder}: cannot write in this folder ({_reason(exc)})") from None
    return folder


def check_output_file(path: str | Path, overwrite: bool, hint: str = "add --overwrite to replace it") -> Path:
    """Before long work: ``path`` can be created (or, with ``overwrite``, replaced)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder, not a file")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: already exists ({hint})")
    check_output_folder(path.parent)
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``path`` in one step.

    The new file gets the permissions of the file it replaces, or the usual ones (0666 minus the umask).
    A failed write (disk full, permissions) raises ``OutputError`` and leaves any existing file unchanged.
    """
    path = Path(path)
    check_writable(path, overwrite)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({_reason(exc)})") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        kept = "; the existing file is unchanged" if path.exists() else ""
        raise OutputError(f"{path}: writing failed ({_reason(exc)}){kept}") from exc
    finally:
        tmp_path.unlink(missing_ok=True)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__
