"""Bottom and Top drawn in the slice views: one locked markups plane per bound.

A plane on the bound's slice shows as a line in every view that crosses it (Slicer draws
a markups plane's intersection with each slice) and as an outlined rectangle in a view
parallel to it when that view is on the bound; it is labelled *RadSAM bottom* / *RadSAM
top*. The planes are display only: locked, not saved with the scene, never read as a
prompt and never written into a segment. Adding them leaves the user's active markups
list (the one the place toolbar and the next click add to) as it was.
"""
from __future__ import annotations

from contextlib import contextmanager

from . import geometry

BOTTOM_NAME, TOP_NAME = "RadSAM bottom", "RadSAM top"
COLOR = (0.2, 0.7, 1.0)


def _selection_nodes(scene) -> list:
    nodes = scene.GetNodesByClass("vtkMRMLSelectionNode")
    return [nodes.GetItemAsObject(n) for n in range(nodes.GetNumberOfItems())]


@contextmanager
def keep_active_place_node(scene):
    """Restore the selection node's active place node (ID and class) on exit.

    The Markups module's logic makes every markups node added to the scene the active
    place node (``vtkSlicerMarkupsLogic::OnMRMLSceneNodeAdded``): without this, drawing a
    bound would turn the user's next click (a point of their own list, or of RadSAM's
    while placing) into a stray plane point."""
    saved = [(node, node.GetActivePlaceNodeID(), node.GetActivePlaceNodeClassName())
             for node in _selection_nodes(scene)]
    try:
        yield
    finally:
        for node, node_id, class_name in saved:
            if node.GetActivePlaceNodeClassName() != class_name:
                node.SetReferenceActivePlaceNodeClassName(class_name)
            if node.GetActivePlaceNodeID() != node_id:
                node.SetReferenceActivePlaceNodeID(node_id)


def _plane(scene, name):
    node = scene.GetFirstNode(name, "vtkMRMLMarkupsPlaneNode")
    if node is not None:
        return node
    with keep_active_place_node(scene):
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsPlaneNode", name)
        node.SetSaveWithScene(False)
        node.SetLocked(True)
        node.SetSelectable(False)
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is not None:
        display.SetSelectedColor(*COLOR)
        display.SetColor(*COLOR)
        display.SetFillOpacity(0.05)
        display.SetHandlesInteractive(False)
        display.SetPointLabelsVisibility(False)
    return node


def remove_bounds(scene) -> None:
    for name in (BOTTOM_NAME, TOP_NAME):
        node = scene.GetFirstNode(name, "vtkMRMLMarkupsPlaneNode")
        while node is not None:
            scene.RemoveNode(node)
            node = scene.GetFirstNode(name, "vtkMRMLMarkupsPlaneNode")


def show_bounds(scene, volume_node, axis: int, bounds) -> list:
    """Draw ``bounds`` (``(bottom, top)`` slice indices across numpy ``axis``, either may be
    ``None``; ``None`` for none) on ``volume_node``'s slices; planes of bounds not set are
    removed. Returns the plane nodes shown (bottom first)."""
    if volume_node is None or volume_node.GetImageData() is None or not bounds:
        remove_bounds(scene)
        return []
    shown = []
    shape = geometry.volume_shape(volume_node)
    for name, idx in zip((BOTTOM_NAME, TOP_NAME), bounds):
        if idx is None or not 0 <= idx < shape[axis]:
            node = scene.GetFirstNode(name, "vtkMRMLMarkupsPlaneNode")
            if node is not None:
                scene.RemoveNode(node)
            continue
        centre, normal, axes, sizes = geometry.slice_plane(volume_node, axis, int(idx))
        node = _plane(scene, name)
        was = node.StartModify()
        # World coordinates: the plane is not under the volume's transform.
        node.SetAndObserveTransformNodeID(None)
        node.SetAxesWorld(list(axes[0]), list(axes[1]), list(normal))
        node.SetOriginWorld(list(centre))
        node.SetSizeMode(node.SizeModeAbsolute)
        node.SetSize(float(sizes[0]), float(sizes[1]))
        node.EndModify(was)
        shown.append(node)
    return shown
