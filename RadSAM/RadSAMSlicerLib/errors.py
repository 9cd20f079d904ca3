"""User-facing errors and messages for the module.

Errors the user can cause are RadSAMLib's own ``RadSAMError`` subclasses (one-line
messages the widget shows as is). RadSAMLib is imported only when an error is raised:
importing it loads torch, which may not be installed yet when the module starts.
"""
from __future__ import annotations

import sys


def user_error(message: str, kind: str = "RadSAMError") -> Exception:
    """A ``RadSAMLib.errors.<kind>`` instance carrying ``message``."""
    from RadSAMLib import errors
    return getattr(errors, kind)(message)


def is_user_error(exc: BaseException) -> bool:
    errors = sys.modules.get("RadSAMLib.errors")
    return errors is not None and isinstance(exc, errors.RadSAMError)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a GPU out-of-memory error from torch (CUDA or MPS)."""
    torch = sys.modules.get("torch")
    oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None) if torch else None
    if oom is not None and isinstance(exc, oom):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and "out of memory" in text


def message_for(exc: BaseException) -> str:
    """The one-line text the module shows for ``exc``."""
    if is_user_error(exc):
        return str(exc)
    if is_out_of_memory(exc):
        return ("the GPU ran out of memory: choose Device 'cpu' (slower, but no memory limit) "
                "or close other GPU programs, then try again")
    return f"unexpected error ({type(exc).__name__}: {exc}); see the Python console for details"
