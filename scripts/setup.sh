#!/usr/bin/env bash
# Installs RadSAM and everything it needs into the current Python: pyproject.toml's
# dependencies (the list RadSAM/RadSAMSlicerLib/dependencies.py REQUIREMENTS holds, which
# also drives the install in Slicer) and the test tools. Safe to run again: pip skips
# what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install --disable-pip-version-check -q -e ".[test]"
# The development tools (radsam benchmark / bench-speed): a separate package, not in the wheel.
"$PY" -m pip install --disable-pip-version-check -q -e ./bench
"$PY" -c "import sys; sys.path.insert(0, 'RadSAM'); from RadSAMSlicerLib.dependencies import missing; \
m = missing(); sys.exit('setup: still missing: ' + ', '.join(m) if m else 0)"
"$PY" -c "import RadSAMLib, RadSAMBench" || { echo "setup: RadSAMLib or RadSAMBench failed to import" >&2; exit 1; }
