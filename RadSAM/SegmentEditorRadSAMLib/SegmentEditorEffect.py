"""RadSAM as a Segment Editor effect: thin, following Slicer's scripted-effect template.

The effect drives the RadSAM module's widget (its prompt toolbar, bounds, model, progress
and the Qt-free ``RadSAMLogic``) on the editor's source volume and selected segment, and
routes every write through the editor (``RadSAMSlicerLib.editor.EditorWriter``): the
editor's masking settings apply, and each RadSAM step (segment, correction) is saved as
one editor undo state, so the editor's Undo/Redo are RadSAM's.
"""
import os

import qt
import slicer
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

# (module widget button, label, tooltip)
BUTTONS = (
    ("boxButton", "Box", "Click two opposite corners of a box around the organ on one slice"),
    ("pointPositiveButton", "Point +", "Click inside the organ (in Edit mode: a correction that adds)"),
    ("pointNegativeButton", "Point -", "Click outside the organ (in Edit mode: a correction that removes)"),
    ("maskButton", "Mask", "Use the segment's current mask on the current slice as the prompt"),
    ("bottomButton", "Bottom", "The organ's bottom slice: the current slice of the slice view last clicked or "
                               "scrolled in (Shift+L while the RadSAM module is shown)"),
    ("topButton", "Top", "The organ's top slice: the current slice of the slice view last clicked or "
                         "scrolled in (Shift+U while the RadSAM module is shown)"),
    ("segmentButton", "Segment", "Segment from the prompt, slice by slice to the bottom and the top"),
    ("cancelButton", "Cancel", "Stop after the current slice (Undo takes back what was written)"),
    ("clearPromptsButton", "Clear", "Remove the box, points and bounds"),
)


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    def __init__(self, scriptedEffect):
        scriptedEffect.name = "RadSAM"
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects
        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        path = os.path.join(os.path.dirname(__file__), os.pardir, "Resources", "Icons", "RadSAM.png")
        return qt.QIcon(path) if os.path.exists(path) else qt.QIcon()

    def helpText(self):
        return ("<html>Segment a whole organ from one prompt with RadSAM.<p>Draw a <b>Box</b> (or place "
                "<b>Point +</b>) on one slice, set <b>Bottom</b> and <b>Top</b>, press <b>Segment</b>. Tick "
                "<b>Edit mode</b> to correct with single clicks. The editor's masking settings apply, and "
                "each step is one Segment Editor undo step. Model and bounds: the RadSAM module.</html>")

    # Buttons that stay pressed while their mode lasts (placing, the mask prompt); they
    # mirror the module's, which follow the interaction mode (a placed box, Esc, right click).
    CHECKABLE = ("boxButton", "pointPositiveButton", "pointNegativeButton", "maskButton")

    def setupOptionsFrame(self):
        self.buttons = {}
        self._mirrored = False
        rows = (BUTTONS[:4], BUTTONS[4:7], BUTTONS[7:])
        for row in rows:
            layout = qt.QHBoxLayout()
            for name, label, tip in row:
                button = qt.QPushButton(label)
                button.toolTip = tip
                button.checkable = name in self.CHECKABLE
                button.connect("clicked()", lambda name=name: self.click(name))
                layout.addWidget(button)
                self.buttons[name] = button
            self.scriptedEffect.addOptionsWidget(layout)
        self.boundsLabel = qt.QLabel("Bottom: not set   Top: not set")
        self.boundsLabel.toolTip = ("Shown as lines in the slice views; the numbers can be typed in the RadSAM "
                                    "module, with the model, device and window.")
        self.scriptedEffect.addOptionsWidget(self.boundsLabel)
        self.editModeCheckBox = qt.QCheckBox("Edit mode (each click corrects its slice)")
        self.editModeCheckBox.connect("toggled(bool)", self.onEditMode)
        self.scriptedEffect.addOptionsWidget(self.editModeCheckBox)
        self.statusLabel = qt.QLabel("")
        self.statusLabel.wordWrap = True
        self.scriptedEffect.addOptionsWidget(self.statusLabel)

    def moduleWidget(self):
        return slicer.util.getModuleWidget("RadSAM")

    def attach(self):
        """Point the module's widget at the editor's volume and segment, writing through
        this effect."""
        widget = self.moduleWidget()
        node = self.scriptedEffect.parameterSetNode()
        volume = node.GetSourceVolumeNode() if hasattr(node, "GetSourceVolumeNode") else node.GetMasterVolumeNode()
        widget.useSegmentEditor(self.scriptedEffect, node.GetSegmentationNode(), node.GetSelectedSegmentID(),
                                volume, self.statusLabel)
        if not self._mirrored:   # once: the module's pressed state and bounds show here
            self._mirrored = True
            for name in self.CHECKABLE:
                getattr(widget.ui, name).connect("toggled(bool)", self.buttons[name], "setChecked(bool)")
            for spinBox in (widget.ui.bottomSpinBox, widget.ui.topSpinBox):
                spinBox.connect("valueChanged(int)", lambda value: self.updateBoundsLabel())
        self.updateBoundsLabel()
        return widget

    def updateBoundsLabel(self):
        ui = self.moduleWidget().ui
        text = [f"{what}: {box.value if box.value >= 0 else 'not set'}"
                for what, box in (("Bottom", ui.bottomSpinBox), ("Top", ui.topSpinBox))]
        self.boundsLabel.text = "   ".join(text)

    def click(self, name):
        ui = self.attach().ui
        getattr(ui, name).click()   # a checkable button toggles, as in the module
        if name in self.CHECKABLE:
            self.buttons[name].checked = getattr(ui, name).checked

    def onEditMode(self, checked):
        self.attach().ui.editModeCheckBox.checked = checked

    def activate(self):
        self.attach()

    def interactionNodeModified(self, interactionNode):
        """Stay active while a markup is placed. Without this override Slicer deselects the
        effect as soon as the interaction mode leaves ViewTransform
        (``qSlicerSegmentEditorAbstractEffect::interactionNodeModified``), so pressing Box or
        Point would end the placement it has just started (``deactivate`` stops placing).
        The effect handles no view events itself, so nothing clashes with placing; the
        module's placing buttons follow the mode and are mirrored here."""

    def deactivate(self):
        widget = self.moduleWidget()
        widget.stopPlacing()
        widget.useSegmentEditor(None)
