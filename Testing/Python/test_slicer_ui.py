"""The widget code and its Qt Designer file agree: every ``self.ui.<name>`` the widget
uses exists in ``RadSAM.ui`` with a class that has what the code uses on it.

This runs without Slicer: RadSAM.py is parsed (not imported; it needs Qt), the .ui is
read as XML.
"""
from __future__ import annotations

import ast
import xml.etree.ElementTree as ET

import pytest

from conftest import ROOT

MODULE = ROOT / "RadSAM" / "RadSAM.py"
UI = ROOT / "RadSAM" / "Resources" / "UI" / "RadSAM.ui"

BUTTONS = {"QPushButton", "QToolButton", "QCheckBox", "QRadioButton"}
# What the code touches on a widget -> the classes that have it.
USES = {
    "currentNode": {"qMRMLNodeComboBox", "qMRMLSegmentSelectorWidget"},
    "setCurrentNode": {"qMRMLNodeComboBox", "qMRMLSegmentSelectorWidget"},
    "currentNodeChanged": {"qMRMLNodeComboBox", "qMRMLSegmentSelectorWidget"},
    "currentSegmentID": {"qMRMLSegmentSelectorWidget"},
    "setCurrentSegmentID": {"qMRMLSegmentSelectorWidget"},
    "currentSegmentChanged": {"qMRMLSegmentSelectorWidget"},
    "currentPath": {"ctkPathLineEdit"},
    "addItem": {"QComboBox", "ctkComboBox"},
    "currentIndex": {"QComboBox", "ctkComboBox"},
    "currentIndexChanged": {"QComboBox", "ctkComboBox"},
    "currentText": {"QComboBox", "ctkComboBox"},
    "clicked": BUTTONS,
    "click": BUTTONS,
    "checked": BUTTONS,
    "value": {"QSpinBox", "QProgressBar", "ctkSliderWidget"},
    "maximum": {"QSpinBox", "QProgressBar"},
    "setMaximum": {"QSpinBox", "QProgressBar"},
    "setValue": {"QSpinBox", "QProgressBar"},
    "text": {"QLabel", "QPushButton", "QToolButton", "QCheckBox", "QLineEdit"},
}
QT_CLASSES = {"QWidget", "QLabel", "QComboBox", "QSpinBox", "QProgressBar", "QCheckBox", "QPushButton",
              "QToolButton", "QRadioButton", "QLineEdit"}


def ui_widgets():
    root = ET.parse(UI).getroot()
    widgets = {w.get("name"): w for w in root.iter("widget")}
    custom = {c.findtext("class") for c in root.iter("customwidget")}
    return root, widgets, custom


def code_uses():
    """``{widget name: {attributes used}}`` from ``self.ui.NAME.ATTR`` in RadSAM.py, plus
    the widgets named in ``SHORTCUTS`` (clicked through ``getattr``)."""
    tree = ast.parse(MODULE.read_text())
    uses: dict = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and node.value.attr == "ui" and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "self"):
            uses.setdefault(node.attr, set())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and isinstance(node.value.value, ast.Attribute) and node.value.value.attr == "ui"):
            uses.setdefault(node.value.attr, set()).add(node.attr)
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SHORTCUTS" for t in node.targets):
            for key in node.value.keys:
                uses.setdefault(key.value, set()).add("click")
    return uses


def test_every_widget_the_code_uses_exists_with_the_right_class():
    _, widgets, _ = ui_widgets()
    uses = code_uses()
    assert len(uses) >= 20, "the parser found too few widget uses; did RadSAM.py change its ui access?"
    missing = sorted(n for n in uses if n not in widgets)
    assert not missing, f"used in RadSAM.py, absent from RadSAM.ui: {missing}"
    wrong = []
    for name, attrs in sorted(uses.items()):
        cls = widgets[name].get("class")
        for attr in attrs:
            if attr in USES and cls not in USES[attr]:
                wrong.append(f"{name} ({cls}).{attr}")
    assert not wrong, f"widgets whose class lacks what the code uses: {wrong}"


def test_checked_buttons_are_checkable():
    _, widgets, _ = ui_widgets()
    for name, attrs in code_uses().items():
        w = widgets[name]
        if "checked" in attrs and w.get("class") != "QCheckBox":
            prop = w.find("./property[@name='checkable']/bool")
            assert prop is not None and prop.text == "true", f"{name} is read as checked but is not checkable"


def test_ui_classes_are_declared_and_connections_resolve():
    root, widgets, custom = ui_widgets()
    for name, w in widgets.items():
        cls = w.get("class")
        assert cls in QT_CLASSES or cls in custom, f"{name}: class {cls} is neither Qt nor a declared custom widget"
    for c in root.iter("connection"):
        assert c.findtext("sender") in widgets and c.findtext("receiver") in widgets


def test_parser_catches_a_missing_widget(tmp_path, monkeypatch):
    """The check above can fail: a widget name the .ui lacks is reported."""
    src = MODULE.read_text().replace("self.ui.segmentButton", "self.ui.segmentButtonTypo", 1)
    fake = tmp_path / "RadSAM.py"
    fake.write_text(src)
    monkeypatch.setattr(__import__(__name__), "MODULE", fake)
    with pytest.raises(AssertionError, match="segmentButtonTypo"):
        test_every_widget_the_code_uses_exists_with_the_right_class()


def test_the_module_defaults_to_radsamlibs_default_model():
    """The widget's model choices come from RadSAMLib's catalogue, the default first, and
    the logic's ModelSpec names RadSAMLib.DEFAULT_MODEL."""
    import sys

    from RadSAMLib import DEFAULT_MODEL, catalog
    tree = ast.parse(MODULE.read_text())
    models = next(n.value for n in ast.walk(tree)
                  if isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "MODELS" for t in n.targets))
    assert "catalog.MODELS" in ast.unparse(models)
    assert catalog.MODELS[0].name == DEFAULT_MODEL and "default" in catalog.MODELS[0].label.lower()
    sys.path.insert(0, str(ROOT / "RadSAM"))
    from RadSAMSlicerLib import ModelSpec
    assert ModelSpec().name == DEFAULT_MODEL


EFFECT = ROOT / "RadSAM" / "SegmentEditorRadSAMLib" / "SegmentEditorEffect.py"


def test_the_editor_effect_drives_module_widgets_that_exist():
    """The effect's buttons click the module's by name, and its pressed buttons mirror
    the module's checkable ones: every name must be in RadSAM.ui, with that property."""
    _, widgets, _ = ui_widgets()
    tree = ast.parse(EFFECT.read_text())
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id in ("BUTTONS", "CHECKABLE"):
            names[node.targets[0].id] = ast.literal_eval(node.value)
    buttons = [b[0] for b in names["BUTTONS"]]
    assert set(names["CHECKABLE"]) <= set(buttons)
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)
            and n.value.attr == "ui"}
    for name in set(buttons) | used:
        assert name in widgets, f"the effect uses {name}, absent from RadSAM.ui"
    for name in names["CHECKABLE"]:
        prop = widgets[name].find("./property[@name='checkable']/bool")
        assert prop is not None and prop.text == "true", f"{name} is mirrored as pressed but is not checkable"
