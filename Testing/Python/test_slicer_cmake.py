"""Extension packaging sanity: the CMake files list every script and resource that exists
(and nothing that does not), the Extensions Index entry follows the catalog schema and
agrees with the CMake metadata, and the icon is a 128x128 PNG. No CMake or Slicer needed.
"""
from __future__ import annotations

import json
import re
import struct

import pytest

from conftest import ROOT

SKIP_PARTS = {"__pycache__", "Testing"}
# slicer-extension-catalog-entry-schema-v1.0.1.json: properties, required keys, tier enum.
SCHEMA_PROPERTIES = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
                     "build_subdirectory", "enabled", "tier"}
SCHEMA_REQUIRED = {"$schema", "category", "scm_url"}


def cmake_text(path) -> str:
    return re.sub(r"#[^\n]*", "", path.read_text())   # drop comments


def cmake_list(path, var: str) -> list:
    m = re.search(r"set\(\s*" + var + r"\b(.*?)\)", cmake_text(path), re.S)
    assert m, f"{path}: no set({var} ...)"
    name = re.search(r"set\(\s*MODULE_NAME\s+(\S+)\s*\)", cmake_text(path)).group(1)
    return [item.replace("${MODULE_NAME}", name) for item in m.group(1).split()]


def cmake_var(path, var: str) -> str:
    m = re.search(r"set\(\s*" + var + r'\s+"([^"]*)"', cmake_text(path))
    assert m, f"{path}: no set({var} \"...\")"
    return m.group(1)


def files_under(folder, pattern="*"):
    out = set()
    for p in folder.rglob(pattern):
        rel = p.relative_to(folder)
        if p.is_file() and not SKIP_PARTS & set(rel.parts) and p.suffix != ".pyc" and p.name != "CMakeLists.txt":
            out.add(rel.as_posix())
    return out


def test_module_cmake_lists_every_script_and_resource():
    folder = ROOT / "RadSAM"
    cm = folder / "CMakeLists.txt"
    scripts = set(cmake_list(cm, "MODULE_PYTHON_SCRIPTS"))
    resources = set(cmake_list(cm, "MODULE_PYTHON_RESOURCES"))
    present = files_under(folder, "*.py")
    assert scripts == present, f"RadSAM/CMakeLists.txt: add {sorted(present - scripts)}, remove {sorted(scripts - present)}"
    assert resources == {"Resources/" + f for f in files_under(folder / "Resources")} and resources
    text = cmake_text(cm)
    assert "slicerMacroBuildScriptedModule" in text and "WITH_GENERIC_TESTS" in text
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py", text)


def test_radsamlib_cmake_ships_the_whole_package_with_subdir():
    folder = ROOT / "RadSAMLib"
    cm = folder / "CMakeLists.txt"
    listed = {s if s.endswith(".py") else s + ".py" for s in cmake_list(cm, "MODULE_PYTHON_SCRIPTS")}
    present = files_under(folder, "*.py")
    assert listed == present, (f"RadSAMLib/CMakeLists.txt MODULE_PYTHON_SCRIPTS: add {sorted(present - listed)}, "
                               f"remove {sorted(listed - present)}")
    data = {f for f in files_under(folder) if not f.endswith(".py")}     # e.g. weights/*.safetensors
    res = set(cmake_list(cm, "MODULE_PYTHON_RESOURCES"))
    assert res == data, f"RadSAMLib/CMakeLists.txt MODULE_PYTHON_RESOURCES: add {sorted(data - res)}, remove {sorted(res - data)}"
    text = cmake_text(cm)
    assert "WITH_SUBDIR" in text and re.search(r"set\(\s*MODULE_NAME\s+RadSAMLib\s*\)", text)


def test_development_tools_ship_in_neither_the_wheel_nor_the_extension():
    """The benchmarks live in bench/RadSAMBench (their own distribution): the radsam wheel
    packs RadSAMLib only, and no CMake list names them."""
    assert not (ROOT / "RadSAMLib" / "benchmark").exists() and not (ROOT / "RadSAMLib" / "speedbench.py").exists()
    assert 'include = ["RadSAMLib*"]' in (ROOT / "pyproject.toml").read_text()
    for cm in ROOT.rglob("CMakeLists.txt"):
        text = cmake_text(cm)
        assert "benchmark" not in text and "speedbench" not in text and "RadSAMBench" not in text, cm


def test_top_level_cmake_metadata_and_modules():
    cm = ROOT / "CMakeLists.txt"
    text = cmake_text(cm)
    subdirs = re.findall(r"add_subdirectory\(\s*(\S+?)\s*\)", text)
    with_cmake = {p.parent.name for p in ROOT.glob("*/CMakeLists.txt")} - {"training"}
    assert set(subdirs) == with_cmake and "training" not in subdirs
    assert cmake_var(cm, "EXTENSION_CATEGORY") == "Segmentation"
    assert cmake_var(cm, "EXTENSION_DEPENDS") == "PyTorch"
    for var in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION"):
        assert cmake_var(cm, var)
    for var in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        url = cmake_var(cm, var)
        path = re.sub(r"^https://raw\.githubusercontent\.com/[^/]+/[^/]+/[^/]+/", "", url)
        assert (ROOT / path).is_file(), f"{var} points at {path}, which is not in the repository"
    assert "Slicer_EXTENSION_GENERATE_CONFIG" in text and "Slicer_EXTENSION_CPACK" in text


def test_extensions_index_entry_follows_the_catalog_schema():
    entry = json.loads((ROOT / "RadSAM.json").read_text())
    assert SCHEMA_REQUIRED <= set(entry) and set(entry) <= SCHEMA_PROPERTIES
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert entry.get("tier", 5) in (1, 3, 5)
    cm = ROOT / "CMakeLists.txt"
    assert entry["category"] == cmake_var(cm, "EXTENSION_CATEGORY")
    assert entry["build_dependencies"] == cmake_var(cm, "EXTENSION_DEPENDS").split()
    assert entry["scm_url"].removesuffix(".git") == cmake_var(cm, "EXTENSION_HOMEPAGE")


@pytest.mark.parametrize("icon", ["Resources/RadSAM.png", "RadSAM/Resources/Icons/RadSAM.png"])
def test_icon_is_a_128_pixel_png(icon):
    head = (ROOT / icon).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", head[16:24]) == (128, 128)
