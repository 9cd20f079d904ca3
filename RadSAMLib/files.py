"""Writing files so that no reader ever sees a half-written one."""
from __future__ import annotations

import os
import secrets
from pathlib import Path


def atomic_write(path, write, suffix: str = ".tmp", mode: int | None = None) -> Path:
    """Call ``write(tmp)`` with a temporary path in ``path``'s folder, then rename it to
    ``path`` (``os.replace``): an error or a crash leaves the old file or none, never a
    partial one, and the temporary file is removed on failure. ``suffix`` ends the
    temporary name (writers that pick the format from the extension need the real one).
    ``mode``: the file's permissions; ``None`` gives what any new file gets under the
    user's umask (``mkstemp`` would force 0600, and colleagues could not read the file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        while tmp is None:
            cand = path.parent / f".{path.name}.{secrets.token_hex(6)}{suffix}"
            try:
                # O_EXCL: never reuse a name another writer holds; 0o666 & ~umask as usual.
                os.close(os.open(cand, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                tmp = cand
            except FileExistsError:
                continue
        write(str(tmp))
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if tmp is not None and os.path.lexists(tmp):
            os.unlink(tmp)
    return path
