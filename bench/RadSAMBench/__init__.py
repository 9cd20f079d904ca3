"""RadSAM's development tools, not shipped in the ``radsam`` wheel nor the Slicer extension.

The simulated-user benchmark (issue 3): 3D Dice of volume-level and slice-level
prompting with correction clicks, for any model and propagation strategy
(``radsam benchmark``), and the speed benchmark ``speedbench.py`` (``radsam bench-speed``).
Installed from a checkout by ``scripts/setup.sh`` (``pip install -e bench``).

* :func:`run_case` (``protocol.py``): arrays in, result dicts out (no SimpleITK needed).
* :func:`open_dataset` / :func:`pack_dataset` (``datasets.py``): dataset layouts, npz packs.
* ``user.py``: the simulated user's prompts and clicks; ``stats.py``: means and bootstrap
  intervals; ``report.py``: Markdown tables and plots; ``cli.py``: ``radsam benchmark``.

See ``docs/benchmark/README.md``.
"""
from .datasets import Case, Dataset, open_dataset, pack_dataset
from .protocol import Protocol, Setting, make_settings, run_case

__all__ = ["Case", "Dataset", "open_dataset", "pack_dataset", "Protocol", "Setting", "make_settings", "run_case"]
