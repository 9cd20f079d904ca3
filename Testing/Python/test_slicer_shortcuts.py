"""RadSAM's keyboard shortcuts take no key away from Slicer.

While the RadSAM module is shown its shortcuts are ``QShortcut``s on the main window
(``RadSAM.SHORTCUTS``). Qt gives a shortcut the key before the focused view sees it, so a
RadSAM key that Slicer also uses is lost to the user: Shift+End / Shift+Home, RadSAM's
first Bottom/Top keys, are the 3D view's "rotate to posterior / inferior".

``SLICER_KEYS`` lists Slicer's default keys, each from the Slicer source file that binds
it (paths in Slicer/Slicer, as read on its main branch). The keys of the views'
interaction widgets are also checked against the real widgets of the installed
``slicer-core`` build: every listed key must do something there (the table is not
stale), and no RadSAM key may do anything there (in every state a key can reach them).
Without slicer-core, only the table check runs.

RadSAM.py is parsed, not imported (it needs Qt).
"""
from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET

import pytest

from conftest import ROOT

MODULE = ROOT / "RadSAM" / "RadSAM.py"
UI = ROOT / "RadSAM" / "Resources" / "UI" / "RadSAM.ui"
EFFECT = ROOT / "RadSAM" / "SegmentEditorRadSAMLib" / "SegmentEditorEffect.py"

DM = "Libs/MRML/DisplayableManager/"
CAMERA = DM + "vtkMRMLCameraWidget.cxx"                    # 3D views
SLICE = DM + "vtkMRMLSliceIntersectionWidget.cxx"          # slice views
MARKUPS = "Modules/Loadable/Markups/VTKWidgets/vtkSlicerMarkupsWidget.cxx"   # pointer on a markup
EDITOR = "Modules/Loadable/Segmentations/Widgets/qMRMLSegmentEditorWidget.cxx"  # Segment Editor shown
MAIN_UI = "Base/QTApp/Resources/UI/qSlicerMainWindow.ui"
MAIN = "Base/QTApp/qSlicerMainWindow.cxx"

# (keys in QKeySequence's portable text, what Slicer does with them, source). "Num+" is
# the keypad. Keys bound with vtkEvent::AnyModifier are listed with the modifiers that
# produce them on a US keyboard (V: Shift+V; the braces: Shift+[ and Shift+]).
SLICER_KEYS = [
    ("End Num+1", "3D view: rotate to anterior", CAMERA),
    ("Shift+End Shift+Num+1", "3D view: rotate to posterior", CAMERA),
    ("PgDown Num+3", "3D view: rotate to left", CAMERA),
    ("Shift+PgDown Shift+Num+3", "3D view: rotate to right", CAMERA),
    ("Home Num+7", "3D view: rotate to superior", CAMERA),
    ("Shift+Home Shift+Num+7", "3D view: rotate to inferior", CAMERA),
    ("Up Down Left Right Num+8 Num+2 Num+4 Num+6", "3D view: rotate in small steps", CAMERA),
    ("Shift+Up Shift+Down Shift+Left Shift+Right Shift+Num+8 Shift+Num+2 Shift+Num+4 Shift+Num+6",
     "3D view: pan in small steps", CAMERA),
    ("+ -", "3D view: zoom", CAMERA),
    ("Ctrl+B", "3D view: lock the camera tilt", CAMERA),
    ("Ins Num+0", "3D view: reset the camera", CAMERA),
    ("Clear Num+5", "3D view: reset the rotation", CAMERA),
    ("Shift+Clear Shift+Num+5", "3D view: reset the translation", CAMERA),
    ("R", "3D view: reset the field of view", CAMERA),
    ("Up Down Left Right F B", "slice view: next / previous slice", SLICE),
    ("G T", "slice view: toggle the label / foreground layer", SLICE),
    ("V", "slice view: show the slice in 3D", SLICE),
    ("Shift+V", "slice views: show all slices in 3D", SLICE),
    ("[ ] Shift+[ Shift+]", "slice view: previous / next background (foreground) volume", SLICE),
    ("R", "slice view: reset the field of view", SLICE),
    ("S", "markup under the pointer: snap the point to the slice", MARKUPS),
    ("Del Backspace", "markup under the pointer: delete the point", MARKUPS),
    ("Shift+Del", "markup under the pointer: reset", MARKUPS),
    ("1 2 3 4 5 6 7 8 9 0", "Segment Editor: effects 1-10", EDITOR),
    ("Shift+1 Shift+2 Shift+3 Shift+4 Shift+5 Shift+6 Shift+7 Shift+8 Shift+9 Shift+0",
     "Segment Editor: effects 11-20", EDITOR),
    ("Esc", "Segment Editor: no effect", EDITOR),
    ("Space", "Segment Editor: the last effect again", EDITOR),
    ("Z Ctrl+Z", "Segment Editor: undo", EDITOR),
    ("Y Ctrl+Y", "Segment Editor: redo", EDITOR),
    ("Q W / * , . < >", "Segment Editor: previous / next segment", EDITOR),
    ("I", "Segment Editor: toggle the editable intensity range", EDITOR),
    ("Ctrl+O", "Add Data", MAIN_UI),
    ("Ctrl+S", "Save Data", MAIN_UI),
    ("Ctrl+W", "Close Scene", MAIN_UI),
    ("Ctrl+Z", "scene undo (an action on no menu or toolbar)", MAIN_UI),
    ("Ctrl+Y", "scene redo (an action on no menu or toolbar)", MAIN_UI),
    ("Ctrl+X Ctrl+C Ctrl+V", "cut / copy / paste", MAIN_UI),
    ("Ctrl+2", "Application Settings", MAIN_UI),
    ("Ctrl+4", "Extensions Manager", MAIN_UI),
    ("Ctrl+6", "maximize the view", MAIN_UI),
    ("Ctrl+0", "Error Log", MAIN_UI),
    ("Ctrl+H", "the home module", MAIN_UI),
    ("Ctrl+3", "Python Interactor", MAIN),
    ("Ctrl+5", "show / hide the module panel", MAIN),
]

# RadSAM keys that are Slicer's on purpose, for the same action: undo/redo of the RadSAM
# module's own steps. The Segment Editor's are installed only while it is shown (never
# together with the RadSAM module); the main window's scene undo/redo actions are on no
# menu or toolbar, so their shortcuts are inactive.
SAME_ACTION = {"Ctrl+Z": "undo", "Ctrl+Y": "redo"}

MODIFIERS = ("Ctrl", "Shift", "Alt", "Meta", "Num")


def normal(key: str) -> tuple:
    """``(modifiers, key)`` of one QKeySequence text, letters upper case."""
    if key == "+" or key.endswith("++"):      # the "+" key itself
        mods, name = key[:-1].split("+")[:-1], "+"
    else:
        *mods, name = key.split("+")
    assert all(m in MODIFIERS for m in mods), key
    return frozenset(mods), name.upper() if len(name) == 1 else name


def slicer_keys() -> dict:
    """``{normal key: [(what, source)]}`` of SLICER_KEYS."""
    out: dict = {}
    for keys, what, source in SLICER_KEYS:
        for key in keys.split():
            out.setdefault(normal(key), []).append((what, source))
    return out


def radsam_shortcuts(path=MODULE) -> dict:
    tree = ast.parse(path.read_text())
    node = next(n for n in ast.walk(tree)
                if isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "SHORTCUTS" for t in n.targets))
    return ast.literal_eval(node.value)


def shadowed(shortcuts: dict) -> list:
    taken = slicer_keys()
    return [f"{name}: {key} is Slicer's '{what}' ({source})"
            for name, key in shortcuts.items() if normal(key) in taken and key not in SAME_ACTION
            for what, source in taken[normal(key)]]


def test_radsam_keys_shadow_none_of_slicers():
    shortcuts = radsam_shortcuts()
    assert len(shortcuts) >= 9 and "bottomButton" in shortcuts and "topButton" in shortcuts
    assert not shadowed(shortcuts)
    assert len({normal(k) for k in shortcuts.values()}) == len(shortcuts), "two RadSAM buttons share a key"
    for key, action in SAME_ACTION.items():
        assert any(action in what for what, _ in slicer_keys()[normal(key)])


def test_the_check_catches_slicers_camera_keys():
    """RadSAM's former Bottom/Top keys are found (the check can fail)."""
    found = shadowed({"bottomButton": "Shift+End", "topButton": "Shift+Home", "boxButton": "b"})
    assert len(found) == 3 and "rotate to posterior" in found[0] and "rotate to inferior" in found[1]
    assert "previous slice" in found[2]


def test_tooltips_name_the_keys_the_module_binds():
    """Every "(key)" a tooltip names (module and effect) is the button's shortcut."""
    shortcuts = radsam_shortcuts()
    root = ET.parse(UI).getroot()
    named = 0
    for w in root.iter("widget"):
        tip = w.findtext("./property[@name='toolTip']/string") or ""
        for key in re.findall(r"\(((?:Ctrl|Shift|Alt)\+[^)\s]+)\)", tip):
            assert shortcuts.get(w.get("name")) == key, f"{w.get('name')}: the tooltip says {key}"
            named += 1
    assert named == len(shortcuts)
    tree = ast.parse(EFFECT.read_text())
    buttons = next(ast.literal_eval(n.value) for n in ast.walk(tree) if isinstance(n, ast.Assign)
                   and getattr(n.targets[0], "id", None) == "BUTTONS")
    for name, _, tip in buttons:
        for key in re.findall(r"(?:Ctrl|Shift|Alt)\+\w+", tip):
            assert shortcuts.get(name) == key, f"effect {name}: the tooltip says {key}"


# -- the same keys, asked of Slicer's own view widgets (slicer-core) --------------------------
VTK_KEYSYMS = {"End": "End", "Home": "Home", "PgDown": "Next", "PgUp": "Prior", "Ins": "Insert",
               "Del": "Delete", "Backspace": "BackSpace", "Esc": "Escape", "Space": "space",
               "Up": "Up", "Down": "Down", "Left": "Left", "Right": "Right", "Clear": "Clear",
               "+": "plus", "-": "minus", "[": "bracketleft", "]": "bracketright"}
SHIFTED = {"[": "braceleft", "]": "braceright"}


def vtk_key(key: str) -> tuple:
    """``(keysym, vtkEvent modifiers)`` a Qt view's interactor reports for ``key``."""
    from vtk import vtkEvent
    mods, name = normal(key)
    bits = {"Shift": vtkEvent.ShiftModifier, "Ctrl": vtkEvent.ControlModifier, "Alt": vtkEvent.AltModifier}
    value = sum(bits[m] for m in mods if m in bits)
    if "Num" in mods:
        return "KP_" + name, value
    if "Shift" in mods and name in SHIFTED:
        return SHIFTED[name], value
    if len(name) == 1 and name.isalpha():
        return (name if "Shift" in mods else name.lower()), value
    return VTK_KEYSYMS.get(name, name), value


def view_widgets():
    """``{source: [(widget, state)]}``: Slicer's view interaction widgets in each state a
    key press can find them in (idle; a markup under the pointer or being placed)."""
    slicer = pytest.importorskip("slicer", reason="needs the slicer-core wheel")
    camera = slicer.vtkMRMLCameraWidget()
    intersection = slicer.vtkMRMLSliceIntersectionWidget()
    markups = []
    for cls in ("vtkSlicerPointsWidget", "vtkSlicerLineWidget", "vtkSlicerAngleWidget", "vtkSlicerCurveWidget",
                "vtkSlicerPlaneWidget", "vtkSlicerROIWidget"):
        w = getattr(slicer, cls)()
        markups += [(w, s) for s in (w.WidgetStateIdle, w.WidgetStateOnWidget, w.WidgetStateDefine)]
    return {CAMERA: [(camera, camera.WidgetStateIdle)], SLICE: [(intersection, intersection.WidgetStateIdle)],
            MARKUPS: markups}


def widget_event(widget, state, key) -> int:
    import slicer
    import vtk
    widget.SetWidgetState(state)
    data = slicer.vtkMRMLInteractionEventData()
    data.SetType(vtk.vtkCommand.KeyPressEvent)
    keysym, modifiers = vtk_key(key)
    data.SetKeySym(keysym)
    data.SetModifiers(modifiers)
    data.SetKeyCode(chr(0))
    data.SetKeyRepeatCount(chr(0))
    return widget.TranslateInteractionEventToWidgetEvent(data)


def test_the_table_lists_what_slicers_view_widgets_do():
    widgets = view_widgets()
    checked = 0
    for keys, what, source in SLICER_KEYS:
        if source not in widgets:
            continue
        for key in keys.split():
            events = [widget_event(w, s, key) for w, s in widgets[source]]
            assert any(events), f"{key} ({what}) does nothing in {source}: the table is stale"
            checked += 1
    assert checked > 50


def test_no_radsam_key_does_anything_in_slicers_views():
    widgets = view_widgets()
    for name, key in radsam_shortcuts().items():
        for source, instances in widgets.items():
            for w, s in instances:
                assert widget_event(w, s, key) == 0, f"{name}: {key} is bound by {w.GetClassName()} ({source})"
    # Asked the same way, the former keys are found.
    camera = widgets[CAMERA][0]
    assert widget_event(*camera, "Shift+End") == camera[0].WidgetEventCameraRotateToPosterior
    assert widget_event(*camera, "Shift+Home") == camera[0].WidgetEventCameraRotateToInferior
