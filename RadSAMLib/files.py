"""Writing files so that no reader ever sees a half-written one."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path, write, suffix: str = ".tmp", mode: int = 0o644) -> Path:
    """Call ``write(tmp)`` with a temporary path in ``path``'s folder, then rename it to
    ``path`` (``os.replace``): an error or a crash leaves the old file or none, never a
    partial one, and the temporary file is removed on failure. ``suffix`` ends the
    temporary name (writers that pick the format from the extension need the real one);
    ``mode``: the file's permissions (a temporary file is created private)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
