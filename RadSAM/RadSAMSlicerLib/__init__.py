"""The Slicer side of RadSAM, without Qt: MRML geometry, segment I/O, markups -> prompts,
the worker thread and ``RadSAMLogic``. Importing this package loads neither torch nor
RadSAMLib (they may not be installed yet when Slicer starts); they are imported on use.
"""
from .jobs import Job, Worker
from .logic import ModelSpec, RadSAMLogic

__all__ = ["Job", "Worker", "ModelSpec", "RadSAMLogic"]
