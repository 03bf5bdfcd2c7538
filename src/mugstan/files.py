"""Atomic writes: a reader sees the old file or folder or the new one, never half of one.

``atomic_file(dest)`` yields a temporary path beside ``dest``; when the block ends without an
error the file is moved over ``dest`` in one rename, otherwise it is removed. ``atomic_folder``
does the same for a folder (written whole, then swapped in: the old one is renamed aside, the new
one renamed into place, the old one deleted).
"""

from __future__ import annotations

import contextlib
import os
import shutil
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
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; the result is an ordinary file
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_folder(dest: Union[str, Path]) -> Iterator[Path]:
    """``with atomic_folder("ckpt/last") as tmp: write files into tmp`` -> ckpt/last replaced whole."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        if dest.exists():
            os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
