"""Placing prompts in Slicer: the Segment Editor effect stays active while a box or points
are placed, drawing Bottom/Top leaves the user's active markups list alone, and the module
works without slice views or a main window (the extension's generic tests).

The widget and the effect run on slicer-core's real MRML (interaction and selection
nodes, the Markups module's logic, which makes every new markups node the active one)
with the application stood in for by ``slicer_app`` (Qt widgets from RadSAM.ui, the
Segment Editor's handling of the interaction node, as in Slicer's source).
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install slicer-core)")
vtk = pytest.importorskip("vtk")

from slicer_app import SegmentEditor, start  # noqa: E402

SHAPE = (12, 40, 50)          # (k, j, i)


@pytest.fixture
def app(monkeypatch):
    app = start(monkeypatch)
    yield app
    app.close()


@pytest.fixture
def bare_app(monkeypatch):
    """No slice views, no main window: Slicer started with --no-main-window."""
    app = start(monkeypatch, layout=False, main_window=False)
    yield app
    app.close()


def volume(scene):
    vol = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
    img = vtk.vtkImageData()
    img.SetDimensions(SHAPE[2], SHAPE[1], SHAPE[0])
    img.AllocateScalars(vtk.VTK_SHORT, 1)
    vol.SetAndObserveImageData(img)
    vol.SetSpacing(0.8, 0.8, 2.5)
    vol.SetOrigin(-20.0, -16.0, -15.0)
    return vol


def ras(vol, kji):
    from RadSAMSlicerLib import geometry
    return [float(v) for v in geometry.kji_to_world(vol, np.array(kji, float))]


def editor_on(app):
    """A volume and a segment in the Segment Editor, RadSAM's effect active in it, the Red
    view on the volume's slice 5."""
    vol = volume(app.scene)
    seg = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    sid = seg.GetSegmentation().AddEmptySegment("", "liver")
    widget = app.widget()
    effect = app.effect()
    node = effect.scriptedEffect.parameterSetNode()
    node.SetAndObserveSegmentationNode(seg)
    node.SetAndObserveSourceVolumeNode(vol)
    node.SetSelectedSegmentID(sid)
    app.layout.sliceWidget("Red").mrmlSliceNode().JumpSliceByCentering(*ras(vol, (5, 20, 25)))
    editor = SegmentEditor(app.interaction)
    editor.setActiveEffect(effect)
    return vol, widget, effect, editor


def test_the_effect_stays_active_while_a_box_is_placed(app):
    from RadSAMSlicerLib import markups
    vol, widget, effect, editor = editor_on(app)
    interaction = app.interaction
    effect.click("boxButton")
    assert interaction.GetCurrentInteractionMode() == interaction.Place
    assert interaction.GetPlaceModePersistence() == 0
    assert editor.active is effect and editor.deactivations == 0
    assert effect.buttons["boxButton"].checked and widget.ui.boxButton.checked
    # The user draws the box: the markups widget fills the active place node, then ends a
    # non-persistent placement by going back to ViewTransform.
    box = app.scene.GetNodeByID(app.selection.GetActivePlaceNodeID())
    assert box.GetName() == "RadSAM box"
    lo, hi = np.array(ras(vol, (5, 10, 12))), np.array(ras(vol, (5, 30, 40)))
    box.SetCenterWorld(*((lo + hi) / 2))
    box.SetSizeWorld(*(np.abs(hi - lo) + [0, 0, 1.0]))
    interaction.SwitchToViewTransformMode()
    assert editor.active is effect and editor.deactivations == 0
    assert not effect.buttons["boxButton"].checked and not widget.ui.boxButton.checked
    # The box is there for Segment, on the view's slice.
    idx, (x0, y0, x1, y1) = markups.box_prompt(vol, box, axis=0)
    assert idx == 5 and np.allclose((x0, y0, x1, y1), (12, 10, 40, 30), atol=1e-6)


def test_points_are_placed_into_radsams_list_also_after_setting_a_bound(app):
    """Point + stays in Place mode (persistent) with the effect active; pressing Bottom
    meanwhile draws a plane, and the next click is still a RadSAM point."""
    from RadSAMSlicerLib import bounds
    vol, widget, effect, editor = editor_on(app)
    interaction, click = app.interaction, app.mrml.markups.AddControlPoint
    effect.click("pointPositiveButton")
    assert interaction.GetCurrentInteractionMode() == interaction.Place
    assert interaction.GetPlaceModePersistence() == 1
    click(*ras(vol, (5, 20, 25)))
    click(*ras(vol, (5, 22, 27)))
    effect.click("bottomButton")                     # Red view: slice 5
    assert widget.ui.bottomSpinBox.value == 5 and app.scene.GetFirstNodeByName(bounds.BOTTOM_NAME)
    click(*ras(vol, (5, 24, 29)))
    points = app.scene.GetFirstNodeByName("RadSAM +")
    assert points.GetNumberOfControlPoints() == 3
    assert interaction.GetCurrentInteractionMode() == interaction.Place
    assert editor.active is effect and editor.deactivations == 0 and effect.buttons["pointPositiveButton"].checked
    interaction.SwitchToViewTransformMode()          # Esc / right click
    assert not effect.buttons["pointPositiveButton"].checked and editor.active is effect


def test_without_its_override_the_editor_ends_the_placement(app, monkeypatch):
    """What users hit before: Slicer deselects an effect without interactionNodeModified
    as soon as placing starts, and the effect's deactivate stops the placement."""
    vol, widget, effect, editor = editor_on(app)
    monkeypatch.delattr(type(effect), "interactionNodeModified")
    effect.click("boxButton")
    assert editor.active is None and editor.deactivations == 1
    assert app.interaction.GetCurrentInteractionMode() == app.interaction.ViewTransform
    assert not widget.ui.boxButton.checked


# -- the bounds leave the active place node alone --------------------------------------
def place_nodes(selection):
    return selection.GetActivePlaceNodeID(), selection.GetActivePlaceNodeClassName()


@pytest.mark.parametrize("own", ["vtkMRMLMarkupsFiducialNode", "vtkMRMLMarkupsLineNode", None])
def test_drawing_bounds_keeps_the_users_active_markups_list(app, own):
    from RadSAMSlicerLib import bounds
    vol = volume(app.scene)
    mine = app.scene.AddNewNodeByClass(own, "mine") if own else None   # made active by the Markups logic
    before = place_nodes(app.selection)
    assert before == ((mine.GetID(), own) if own else (None, None))
    nodes = bounds.show_bounds(app.scene, vol, 0, (2, 9))
    assert len(nodes) == 2 and place_nodes(app.selection) == before
    bounds.show_bounds(app.scene, vol, 1, (3, None))      # new planes again, on another axis
    assert place_nodes(app.selection) == before
    if own == "vtkMRMLMarkupsFiducialNode":
        # The user's next click (Slicer's "place a point" toolbar) lands in their list.
        app.interaction.SetCurrentInteractionMode(app.interaction.Place)
        assert app.mrml.markups.AddControlPoint(*ras(vol, (4, 20, 20))) == 0
        assert mine.GetNumberOfControlPoints() == 1
    # Without the guard, the Markups logic makes the plane the active place node.
    plane = app.scene.AddNewNodeByClass("vtkMRMLMarkupsPlaneNode", "someone else's plane")
    assert place_nodes(app.selection) == (plane.GetID(), "vtkMRMLMarkupsPlaneNode")


# -- no layout, no main window ----------------------------------------------------------
def test_the_module_works_without_slice_views_or_a_main_window(bare_app):
    from RadSAMSlicerLib import bounds
    app = bare_app
    vol = volume(app.scene)
    widget = app.widget()                        # setup() observes no views
    widget.enter()
    assert widget._shortcuts == []
    widget.ui.volumeSelector.setCurrentNode(vol)
    assert widget.ui.bottomSpinBox.maximum == SHAPE[0] - 1       # slices counted along k
    widget.ui.bottomSpinBox.value = 3                             # typed bounds are drawn
    widget.ui.topSpinBox.value = 8
    assert widget.boundsAxis == 0 and app.scene.GetFirstNodeByName(bounds.TOP_NAME) is not None
    widget.onSetBound(widget.ui.bottomSpinBox)                    # the button: no view to read
    assert "no slice view" in widget.ui.statusLabel.text and widget.ui.bottomSpinBox.value == 3
    widget.exit()
    widget.cleanup()
    assert app.scene.GetFirstNodeByName(bounds.TOP_NAME) is None


def test_with_a_main_window_the_shortcuts_click_the_buttons(app):
    vol = volume(app.scene)
    widget = app.widget()
    widget.ui.volumeSelector.setCurrentNode(vol)
    app.layout.sliceWidget("Red").mrmlSliceNode().JumpSliceByCentering(*ras(vol, (7, 20, 25)))
    widget.enter()
    keys = {s.key: s for s in widget._shortcuts}
    assert set(keys) == set(app.module.SHORTCUTS.values())
    assert all(s.parent is app.main_window for s in keys.values())
    keys[app.module.SHORTCUTS["bottomButton"]].activated.emit()
    assert widget.ui.bottomSpinBox.value == 7
    widget.exit()
    assert not any(s.enabled for s in keys.values())
    widget.cleanup()
