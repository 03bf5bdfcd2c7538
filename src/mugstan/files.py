"""Files: atomic writes, and reading the files a user names without hanging or unpickling.

``atomic_file(dest)`` yields a temporary path beside ``dest``; when the block ends without an
error the file is moved over ``dest`` in one rename, otherwise it is removed. ``atomic_folder``
does the same for a folder (written whole, then swapped in by renames); an interrupted swap is
finished by ``recover_folder`` on the next write.

Reading: ``regular_file(path, what)`` checks a file the user named without opening it (a FIFO
would block), and ``read_safetensors`` reads tensors, a damaged file being a one-line error.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterator, Union


@contextlib.contextmanager
def atomic_file(dest: Union[str, Path]) -> Iterator[Path]:
    """``with atomic_file("x.safetensors") as tmp: write(tmp)`` -> x.safetensors appears whole."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; the result is an ordinary file
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_folder(dest: Union[str, Path]) -> Iterator[Path]:
    """``with atomic_folder("ckpt/last") as tmp: write files into tmp`` -> ckpt/last replaced whole.

    The steps, each a single rename, so that a crash at any point leaves either the old folder or
    the new one (``recover_folder`` finishes or undoes the swap on the next write or ``--resume``):

    1. the files are written into ``.NAME.XXXX.tmp`` (a crash here: the old folder is untouched;
       the leftover is removed later);
    2. ``.NAME.XXXX.tmp`` -> ``.NAME.new``: the new folder is complete;
    3. ``NAME`` -> ``.NAME.old`` (when there is an old one);
    4. ``.NAME.new`` -> ``NAME``;
    5. ``.NAME.old`` is deleted.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(dest)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    new, old = _sibling(dest, "new"), _sibling(dest, "old")
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes the folder private; the result is an ordinary folder
        os.replace(tmp, new)
        if dest.exists():
            os.replace(dest, old)
        os.replace(new, dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _sibling(dest: Path, kind: str) -> Path:
    return dest.with_name(f".{dest.name}.{kind}")


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def recover_folder(dest: Union[str, Path]) -> None:
    """Finish or undo an ``atomic_folder`` write that was interrupted, so ``dest`` is whole again.

    A complete new folder (``.NAME.new``) takes the place of ``NAME``; an old one left aside
    (``.NAME.old``) is deleted once ``NAME`` exists; half-written ``.NAME.*.tmp`` folders are
    deleted. Called by every writer before it writes, and by ``--resume`` before it reads; readers
    that must not change anything use ``readable_folder``.
    """
    dest = Path(dest)
    new, old = _sibling(dest, "new"), _sibling(dest, "old")
    if new.is_dir():
        if dest.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(dest, old)
        os.replace(new, dest)
    if old.exists():
        if dest.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:  # only the old folder is left (nothing newer was completed): it is the current one
            os.replace(old, dest)
    # earlier versions named it .NAME.old-PID
    for legacy in sorted(dest.parent.glob(f".{glob.escape(dest.name)}.old-*")):
        if dest.exists():
            shutil.rmtree(legacy, ignore_errors=True)
        else:
            os.replace(legacy, dest)
    for leftover in dest.parent.glob(f".{glob.escape(dest.name)}.*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)


def readable_folder(dest: Union[str, Path]) -> Path:
    """The folder that holds ``dest``'s latest complete contents, without changing anything:
    ``dest`` itself, or ``.NAME.new`` / ``.NAME.old`` when a write was interrupted between its renames."""
    dest = Path(dest)
    if dest.exists():
        return dest
    for kind in ("new", "old"):
        if _sibling(dest, kind).is_dir():
            return _sibling(dest, kind)
    return dest


def regular_file(path: Union[str, Path], what: str) -> Path:
    """``path`` as a Path when it is a regular file (or a symlink to one); else a one-line
    ``UserError`` naming ``what`` (e.g. "data.test_ann") and the path. Checked with ``stat``, never
    by opening: opening a FIFO for reading would wait for a writer forever."""
    from mugstan.errors import MissingFileError, UserError

    path = Path(path).expanduser()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise MissingFileError(f"{what}: {path} does not exist") from None
    except OSError as err:
        raise UserError(f"{what}: {path} cannot be read ({err.strerror})") from None
    if stat.S_ISDIR(mode):
        raise UserError(f"{what}: {path} is a folder, not a file")
    if not stat.S_ISREG(mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device or socket"
        raise UserError(f"{what}: {path} is {kind}, not a regular file")
    return path


def read_safetensors(file, rebuild: str) -> dict:
    """The tensors of a .safetensors file; a missing, empty, truncated or corrupt file is a one-line
    error naming it and ``rebuild`` (how to get a good one)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from mugstan.errors import CorruptFileError, one_line

    file = regular_file(file, "weights")
    if file.stat().st_size == 0:
        raise CorruptFileError(f"{file}: empty file (0 bytes); {rebuild}")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as err:
        raise CorruptFileError(
            f"{file}: not a readable safetensors file, corrupt or truncated ({one_line(err)}); {rebuild}"
        ) from None
