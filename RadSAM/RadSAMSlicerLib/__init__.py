"""The Slicer side of RadSAM, without Qt: MRML geometry, segment I/O, markups -> prompts,
the worker thread and ``RadSAMLogic``. Importing this package loads no torch (it may not
be installed yet when Slicer starts), only RadSAMLib's torch-free modules (the model
catalogue, the config); the rest of RadSAMLib is imported on use.
"""
from .jobs import Job, Worker
from .logic import ModelSpec, RadSAMLogic

__all__ = ["Job", "Worker", "ModelSpec", "RadSAMLogic"]
