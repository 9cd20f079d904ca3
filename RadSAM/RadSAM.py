"""RadSAM 3D Slicer module: segment a whole organ from one prompt, then fix it with clicks.

The module class, a thin widget (its UI is ``Resources/UI/RadSAM.ui``) and the test for
the real application. All MRML <-> RadSAMLib work is in ``RadSAMSlicerLib.RadSAMLogic``
(no Qt; tested with pytest and the slicer-core wheel); the widget only turns user actions
into logic calls and shows progress and messages. torch and RadSAMLib are not imported
here: the first action asks to install what is missing.
"""
import logging
import os

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleTest,
                                           ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from RadSAMSlicerLib import ModelSpec, RadSAMLogic  # noqa: F401  (RadSAMLogic is the module's logic)
from RadSAMSlicerLib import bounds as boundsview
from RadSAMSlicerLib import dependencies, editor, geometry, prefetch, segmentio
from RadSAMSlicerLib.errors import is_out_of_memory, is_user_error, message_for

from RadSAMLib import catalog

# (label, RadSAMLib model name, needs a checkpoint file), from RadSAMLib's torch-free
# catalogue (RadSAMLib ships inside the extension; torch may not be installed yet).
MODELS = tuple((m.label, m.name, m.needs_checkpoint) for m in catalog.MODELS)
DEVICES = ("auto", "cpu", "cuda")
# (label, RadSAMLogic.window value; "view": the volume's display window/level)
WINDOWS = (
    ("Soft tissue (W 400, L 40)", "soft-tissue"),
    ("Lung (W 1400, L -500)", "lung"),
    ("Bone (W 1000, L 400)", "bone"),
    ("From the prompt region", "auto"),
    ("The volume's current window/level", "view"),
)

# Keyboard shortcuts, active while the module is shown: widget name -> key. None of them
# is a key Slicer itself uses in a view or the main window (Testing/Python/
# test_slicer_shortcuts.py lists those, from Slicer's source): plain letters move through
# slices (b/f), toggle layers (g/t/v) or reset views (r); Home/End/PageDown, with or
# without Shift, turn the 3D view; `[`/`]` switch the background volume. Bottom and Top
# are the Lower and Upper bounds. Ctrl+Z/Ctrl+Y mean undo/redo here as in the Segment
# Editor, whose shortcuts are only installed while the Segment Editor is shown.
SHORTCUTS = {
    "boxButton": "Shift+B",
    "pointPositiveButton": "Shift+A",
    "pointNegativeButton": "Shift+D",
    "maskButton": "Shift+M",
    "bottomButton": "Shift+L",
    "topButton": "Shift+U",
    "segmentButton": "Shift+S",
    "undoButton": "Ctrl+Z",
    "redoButton": "Ctrl+Y",
}

BOX_NAME, POSITIVE_NAME, NEGATIVE_NAME = "RadSAM box", "RadSAM +", "RadSAM -"
# Correction clicks (edit mode) go to lists of their own: they stay visible until cleared
# and are never read as the next segmentation's prompt.
FIX_POSITIVE_NAME, FIX_NEGATIVE_NAME = "RadSAM correction +", "RadSAM correction -"
COLORS = {BOX_NAME: (1.0, 0.8, 0.1), POSITIVE_NAME: (0.1, 0.9, 0.2), NEGATIVE_NAME: (0.9, 0.1, 0.1),
          FIX_POSITIVE_NAME: (0.3, 1.0, 0.6), FIX_NEGATIVE_NAME: (1.0, 0.4, 0.6)}


class RadSAM(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "RadSAM"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["RadSAM contributors"]
        self.parent.helpText = (
            "Segment a whole 3D organ in a CT from one prompt (a box or points on one slice) and the "
            "organ's bottom and top slices, with a 2D promptable model (LiteMedSAM fine-tuned for mask prompts, by default) "
            "propagated slice by slice. Correct with single clicks in edit mode; undo/redo any step. "
            "Also a Segment Editor effect (masking and undo are the editor's). Slicer 5.6 or later.")
        self.parent.acknowledgementText = (
            "Uses LiteMedSAM (MedSAM, Ma et al., Nature Communications 2024) and Segment Anything (Meta AI).")
        slicer.app.connect("startupCompleted()", self.registerEditorEffect)

    def registerEditorEffect(self):
        """The RadSAM effect in the Segment Editor (Slicer's scripted-effect template)."""
        import qSlicerSegmentationsEditorEffectsPythonQt as effects
        instance = effects.qSlicerSegmentEditorScriptedEffect(None)
        path = os.path.join(os.path.dirname(__file__), "SegmentEditorRadSAMLib", "SegmentEditorEffect.py")
        instance.setPythonSource(path.replace("\\", "/"))
        instance.self().register()


class RadSAMWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Thin: UI events -> RadSAMLogic calls; a timer pumps results into the segment."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None      # made on first use, after the dependencies are there
        self.job = None
        self._shortcuts = []
        self.editorEffect = None     # the Segment Editor effect RadSAM writes through, if any
        self.editorStatusLabel = None
        # The slice view RadSAM counts slices in: the one last clicked, scrolled or typed
        # in (Red until then). Bottom/Top remember the axis they were set on.
        self.activeSliceNode = None
        self.boundsAxis = None
        self._observedInteractors = set()
        self.installer = self.installThen = self.installDialog = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/RadSAM.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        for label, _, _ in MODELS:
            self.ui.modelComboBox.addItem(label)
        for device in DEVICES:
            self.ui.deviceComboBox.addItem(device)
        for label, _ in WINDOWS:
            self.ui.windowComboBox.addItem(label)
        self.ui.modelComboBox.currentIndexChanged.connect(self.updateGUI)
        self.ui.volumeSelector.currentNodeChanged.connect(self.onVolumeChanged)
        self.ui.segmentSelector.currentNodeChanged.connect(self.updateGUI)
        self.ui.segmentSelector.currentSegmentChanged.connect(self.updateGUI)

        self.ui.boxButton.clicked.connect(lambda: self.onPlace(self.ui.boxButton, BOX_NAME))
        self.ui.pointPositiveButton.clicked.connect(lambda: self.onPlace(
            self.ui.pointPositiveButton, FIX_POSITIVE_NAME if self.ui.editModeCheckBox.checked else POSITIVE_NAME))
        self.ui.pointNegativeButton.clicked.connect(lambda: self.onPlace(
            self.ui.pointNegativeButton, FIX_NEGATIVE_NAME if self.ui.editModeCheckBox.checked else NEGATIVE_NAME))
        self.ui.bottomButton.clicked.connect(lambda: self.onSetBound(self.ui.bottomSpinBox))
        self.ui.topButton.clicked.connect(lambda: self.onSetBound(self.ui.topSpinBox))
        self.ui.bottomSpinBox.valueChanged.connect(self.showBounds)
        self.ui.topSpinBox.valueChanged.connect(self.showBounds)
        self.ui.segmentButton.clicked.connect(self.onSegment)
        self.ui.clearPromptsButton.clicked.connect(self.onClearPrompts)
        self.ui.undoButton.clicked.connect(lambda: self.onHistory("undo"))
        self.ui.redoButton.clicked.connect(lambda: self.onHistory("redo"))
        self.ui.cancelButton.clicked.connect(self.onCancel)

        # Back-to-back ticks: each one waits on the job with the GIL released (the worker
        # runs), so the interval only has to let Qt process events in between.
        self.timer = qt.QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self.onTimer)
        # First-use installs run in subprocesses; this timer reads their output.
        self.installTimer = qt.QTimer()
        self.installTimer.setInterval(100)
        self.installTimer.timeout.connect(self.onInstallTimer)
        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()
        # Encode the chosen volume while the user looks at it (follows the view; RadSAMSlicerLib.prefetch).
        self.lookAhead, self.lookAheadTimer = prefetch.LookAhead(), qt.QTimer()
        self.lookAheadTimer.setInterval(100)
        self.lookAheadTimer.timeout.connect(lambda: prefetch.poll(self))
        self.lookAheadTimer.start()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneClosed)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.onNodeRemoved)
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        self.addObserver(interaction, interaction.InteractionModeChangedEvent, self.onInteractionModeChanged)
        self.observeSliceViews()
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:      # None without a main window (--no-main-window tests)
            layoutManager.layoutChanged.connect(self.observeSliceViews)
        self.updateGUI()

    # -- module lifecycle --------------------------------------------------------------------
    def enter(self):
        self.observeSliceViews()
        self.removeShortcuts()
        mainWindow = slicer.util.mainWindow()
        if mainWindow is None:       # no window to take keys in
            return
        for name, key in SHORTCUTS.items():
            shortcut = qt.QShortcut(qt.QKeySequence(key), mainWindow)
            shortcut.connect("activated()", getattr(self.ui, name).click)
            self._shortcuts.append(shortcut)

    def exit(self):
        self.removeShortcuts()
        self.stopPlacing()

    def removeShortcuts(self):
        for shortcut in self._shortcuts:
            shortcut.setEnabled(False)
            shortcut.deleteLater()
        self._shortcuts = []

    def cleanup(self):
        self.exit()
        boundsview.remove_bounds(slicer.mrmlScene)
        self.timer.stop()
        self.installTimer.stop()
        self.lookAheadTimer.stop()
        if self.installer is not None:
            self.installer.cancel()
        self.removeObservers()
        if self.logic is not None:
            self.logic.shutdown()

    def onSceneClosed(self, caller=None, event=None):
        if self.logic is not None:
            self.logic.clear_cache()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeRemoved(self, caller, event, node):
        if self.logic is not None and node is not None and node.IsA("vtkMRMLVolumeNode"):
            self.logic.forget_volume(node.GetID())

    # -- helpers -----------------------------------------------------------------------------
    def showMessage(self, text, error=False):
        for label in (self.ui.statusLabel, self.editorStatusLabel):
            if label is not None:
                label.text = text
                label.setStyleSheet("color: #c0392b" if error else "")

    def useSegmentEditor(self, effect, segmentation=None, segmentId=None, volume=None, statusLabel=None):
        """Work on the Segment Editor's volume and segment, writing through ``effect`` (its
        masking applies; each step is an editor undo state). ``None``: write in place again."""
        self.editorEffect, self.editorStatusLabel = effect, statusLabel
        if effect is not None:
            if volume is not None:
                self.ui.volumeSelector.setCurrentNode(volume)
            if segmentation is not None:
                self.ui.segmentSelector.setCurrentNode(segmentation)
                if segmentId:
                    self.ui.segmentSelector.setCurrentSegmentID(segmentId)
        self.configureWriter()
        self.updateGUI()

    def configureWriter(self):
        if self.logic is None:
            return
        effect = self.editorEffect
        if effect is None:
            self.logic.writer, self.logic.on_step = segmentio.write_slices, None
            self.logic.selected_segment = None
            return
        # The editor writes into its selected segment: a run stops if the user selects another.
        self.logic.selected_segment = lambda: (effect.parameterSetNode().GetSegmentationNode(),
                                               effect.parameterSetNode().GetSelectedSegmentID())
        modes = {editor.ADD: slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeAdd,
                 editor.REMOVE: slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeRemove}
        self.logic.writer = editor.EditorWriter(
            lambda labelmap, mode: effect.modifySelectedSegmentByLabelmap(labelmap, modes[mode]))
        self.logic.on_step = lambda name: effect.saveStateForUndo()

    def showError(self, exc):
        """User errors go to the status line; a GPU out-of-memory offers the CPU."""
        text = message_for(exc)
        self.showMessage(text, error=True)
        if is_out_of_memory(exc):
            if slicer.util.confirmYesNoDisplay(text + "\n\nSwitch to the CPU now?"):
                self.ui.deviceComboBox.currentText = "cpu"
                self.logic.set_model(self.modelSpec())
        elif not is_user_error(exc):
            logging.error("RadSAM failed", exc_info=exc)
            slicer.util.errorDisplay(text)

    def ensureLogic(self, then=None):
        """True when the logic is ready. On first use: ask once (no wait cursor), then
        install what is missing in subprocesses (``dependencies.Installer``) while Slicer
        stays responsive: a progress dialog shows the package and pip's latest output
        line and can cancel. ``then`` runs once the installs succeed (the action that
        needed them)."""
        if self.logic is not None:
            return True
        if self.installer is not None:
            self.showMessage("RadSAM is still installing its Python packages (see the progress window).")
            return False
        try:
            todo = dependencies.to_install()
        except dependencies.DependencyError as e:
            self.showMessage(str(e), error=True)
            slicer.util.errorDisplay(str(e))
            return False
        if not todo:
            self.createLogic()
            return True
        if not slicer.util.confirmOkCancelDisplay(dependencies.question(todo), "RadSAM: first use"):
            self.showMessage("RadSAM needs its Python packages: press Segment again to install them.", error=True)
            return False
        self.installer = dependencies.Installer(dependencies.install_steps(todo))
        self.installThen = then
        self.installDialog = slicer.util.createProgressDialog(
            parent=slicer.util.mainWindow(), windowTitle="RadSAM: installing Python packages",
            labelText=self.installer.status(), maximum=len(self.installer.steps), value=0,
            windowModality=qt.Qt.NonModal, autoClose=False, autoReset=False)   # Slicer stays usable
        self.installDialog.canceled.connect(self.onInstallCancel)
        self.installDialog.show()
        self.showMessage("Installing RadSAM's Python packages; Slicer stays usable meanwhile.")
        self.installTimer.start()
        return False

    def onInstallCancel(self):
        if self.installer is not None:
            self.installer.cancel()     # the timer reports it

    def onInstallTimer(self):
        installer = self.installer
        if installer is None:
            self.installTimer.stop()
            return
        for line in installer.poll():
            logging.info(f"RadSAM install: {line}")      # pip's full output, in the Python console
        if not installer.finished:
            self.installDialog.labelText = installer.status()
            self.installDialog.value = max(installer.index, 0)
            return
        self.installTimer.stop()
        self.installer, then = None, self.installThen
        self.installThen = None
        self.installDialog.close()
        self.installDialog = None
        if installer.cancelled:
            self.showMessage("Installation cancelled; what was installed stays. Press Segment to continue it.",
                             error=True)
        elif installer.error is not None:
            self.showMessage(str(installer.error).splitlines()[0], error=True)
            slicer.util.errorDisplay(str(installer.error))
        else:
            self.createLogic()
            self.showMessage("RadSAM's Python packages are installed.")
            if then is not None:
                then()

    def createLogic(self):
        self.logic = RadSAMLogic(slicer.mrmlScene)
        self.configureWriter()

    def modelSpec(self):
        _, name, needsFile = MODELS[self.ui.modelComboBox.currentIndex]
        checkpoint = self.ui.checkpointPathLineEdit.currentPath if needsFile else None
        return ModelSpec(name=name, checkpoint=checkpoint or None, device=self.ui.deviceComboBox.currentText)

    def windowChoice(self, volume):
        """RadSAMLogic.window for the Window box (the view's: the volume's display window/level)."""
        choice = WINDOWS[self.ui.windowComboBox.currentIndex][1]
        if choice != "view":
            return choice
        from RadSAMLib.preprocess import Window
        display = volume.GetDisplayNode() if volume is not None else None
        if display is None:
            return "soft-tissue"
        return Window.from_level(display.GetWindow(), display.GetLevel())

    # -- the view the user is in --------------------------------------------------------------
    # Events that mean "the user works in this view": clicks (placing included), scrolling
    # through slices with the wheel or the keyboard. Hovering does not count (the mouse
    # crosses other views on its way to the panel).
    VIEW_EVENTS = ("LeftButtonPressEvent", "RightButtonPressEvent", "MiddleButtonPressEvent",
                   "MouseWheelForwardEvent", "MouseWheelBackwardEvent", "KeyPressEvent")

    def observeSliceViews(self, *args):
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            return
        for name in layoutManager.sliceViewNames():
            sliceWidget = layoutManager.sliceWidget(name)
            interactor = sliceWidget.sliceView().interactor()
            if interactor is None or interactor in self._observedInteractors:
                continue
            self._observedInteractors.add(interactor)
            sliceNode = sliceWidget.mrmlSliceNode()
            for event in self.VIEW_EVENTS:
                # Above the view's own interactor style, which may abort an event it handles
                # (placing a markup, scrolling); this observer only notes the view.
                self.addObserver(interactor, getattr(vtk.vtkCommand, event),
                                 lambda caller, event, node=sliceNode: self.onViewUsed(node), priority=2.0)

    def onViewUsed(self, sliceNode):
        if sliceNode is not self.activeSliceNode:
            self.activeSliceNode = sliceNode
            self.updateBoundsRange()

    def activeView(self, required=True):
        """The slice node of the view last clicked, scrolled or typed in (Red until then).
        Without slice views (no main window): an error, or ``None`` if not ``required``."""
        node = self.activeSliceNode
        if node is None or node.GetScene() is None:
            layoutManager = slicer.app.layoutManager()
            red = layoutManager.sliceWidget("Red") if layoutManager is not None else None
            node = red.mrmlSliceNode() if red is not None else None
        if node is None and required:
            raise ValueError("there is no slice view: type the Bottom and Top slice numbers in the RadSAM module")
        return node

    def viewAxis(self, volume):
        """Propagation axis: the axis Bottom/Top were set on; without bounds, the volume
        axis closest to the active view's normal (without views: the volume's slices, k)."""
        if self.boundsAxis is not None and self.bounds() is not None:
            return self.boundsAxis
        view = self.activeView(required=False)
        return geometry.view_slice(volume, view)[0] if view is not None else 0

    def currentSliceIndex(self, volume, axis):
        """The slice across ``axis`` through the active view's centre."""
        m = self.activeView().GetSliceToRAS()
        return geometry.slice_index_at(volume, [m.GetElement(r, 3) for r in range(3)], axis)

    def markupsNode(self, name, create=True):
        cls = "vtkMRMLMarkupsROINode" if name == BOX_NAME else "vtkMRMLMarkupsFiducialNode"
        node = slicer.mrmlScene.GetFirstNode(name, cls)
        if node is None and create:
            node = slicer.mrmlScene.AddNewNodeByClass(cls, name)
            node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().SetSelectedColor(*COLORS[name])
        if node is not None and name != BOX_NAME and \
                not self.hasObserver(node, node.PointPositionDefinedEvent, self.onPointPlaced):
            self.addObserver(node, node.PointPositionDefinedEvent, self.onPointPlaced)
        return node

    def target(self):
        """The (volume, segmentation, segment, axis) to work on; a segmentation and a
        segment are created when none is selected."""
        volume = self.ui.volumeSelector.currentNode()
        geometry.check_volume(volume)
        seg = self.ui.segmentSelector.currentNode()
        if seg is None:
            seg = self.logic.create_segmentation(volume)
            self.ui.segmentSelector.setCurrentNode(seg)
        segmentId = self.ui.segmentSelector.currentSegmentID()
        if not segmentId:
            segmentId = self.logic.add_segment(seg)
            self.ui.segmentSelector.setCurrentSegmentID(segmentId)
        return self.logic.target_for(volume, seg, segmentId, self.viewAxis(volume))

    def bounds(self):
        lo, hi = self.ui.bottomSpinBox.value, self.ui.topSpinBox.value
        if lo < 0 and hi < 0:
            return None
        return (lo if lo >= 0 else None, hi if hi >= 0 else None)

    # -- prompt toolbar ---------------------------------------------------------------------
    def onPlace(self, button, name):
        for other in (self.ui.boxButton, self.ui.pointPositiveButton, self.ui.pointNegativeButton):
            if other is not button:
                other.checked = False
        if not button.checked:
            self.stopPlacing()
            return
        node = self.markupsNode(name)
        if name == BOX_NAME:
            node.RemoveAllControlPoints()   # one box at a time
        slicer.modules.markups.logic().SetActiveList(node)
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        interaction.SetPlaceModePersistence(0 if name == BOX_NAME else 1)
        interaction.SetCurrentInteractionMode(interaction.Place)

    def onInteractionModeChanged(self, caller, event=None):
        """The placing buttons show the interaction mode: a placed box, Esc or a right
        click ends placing, and the button is released."""
        if caller.GetCurrentInteractionMode() != caller.Place:
            for button in (self.ui.boxButton, self.ui.pointPositiveButton, self.ui.pointNegativeButton):
                button.checked = False

    def stopPlacing(self):
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        interaction.SetCurrentInteractionMode(interaction.ViewTransform)
        for button in (self.ui.boxButton, self.ui.pointPositiveButton, self.ui.pointNegativeButton):
            button.checked = False

    def onSetBound(self, spinBox):
        """The active view's current slice, counted across the axis that view looks
        along. A bound set in a view looking along another axis than the other bound
        clears the other one (the two must count the same slices)."""
        volume = self.ui.volumeSelector.currentNode()
        try:
            geometry.check_volume(volume)
            axis, idx = geometry.view_slice(volume, self.activeView())
            n = geometry.volume_shape(volume)[axis]
            if not 0 <= idx < n:
                raise ValueError(f"the current slice ({idx}) is outside the volume (0..{n - 1})")
            other = self.ui.topSpinBox if spinBox is self.ui.bottomSpinBox else self.ui.bottomSpinBox
            if self.boundsAxis is not None and axis != self.boundsAxis and other.value >= 0:
                other.value = -1
                self.showMessage(f"{self.activeView().GetName()} view: its slices run along another axis than "
                                 "the other bound's; set that bound again in this view.", error=True)
            self.boundsAxis = axis
            self.updateBoundsRange()
            spinBox.value = idx
            self.showBounds()      # also when the number did not change but the axis did
        except Exception as e:
            self.showMessage(str(e), error=True)

    def showBounds(self, *args):
        """Draw Bottom/Top in the slice views (planes on those slices; display only)."""
        volume = self.ui.volumeSelector.currentNode()
        try:
            if self.bounds() is None:
                self.boundsAxis = None     # no bounds: the next ones follow the active view
            elif self.boundsAxis is None and volume is not None \
                    and volume.GetImageData() is not None:
                self.boundsAxis = self.viewAxis(volume)   # typed numbers
            if volume is None or volume.GetImageData() is None or self.boundsAxis is None:
                boundsview.remove_bounds(slicer.mrmlScene)
            else:
                boundsview.show_bounds(slicer.mrmlScene, volume, self.boundsAxis, self.bounds())
        except Exception as e:     # drawing must never get in the way of segmenting
            logging.warning(f"RadSAM: could not draw the bounds: {e}")

    def onClearPrompts(self):
        for name in COLORS:
            node = self.markupsNode(name, create=False)
            if node is not None:
                node.RemoveAllControlPoints()
        self.ui.maskButton.checked = False
        self.ui.bottomSpinBox.value = self.ui.topSpinBox.value = -1
        self.showBounds()

    # -- actions -----------------------------------------------------------------------------
    def onSegment(self):
        if not self.ensureLogic(then=self.onSegment):
            return
        try:
            self.logic.set_model(self.modelSpec())
            target = self.target()
            self.logic.window = self.windowChoice(target.volume_node)
            maskSlice = self.currentSliceIndex(target.volume_node, target.axis) if self.ui.maskButton.checked else None
            job = self.logic.start_segment_from_markups(
                target, self.bounds(), box_node=self.markupsNode(BOX_NAME, create=False),
                positive=self.markupsNode(POSITIVE_NAME, create=False),
                negative=self.markupsNode(NEGATIVE_NAME, create=False), mask_slice=maskSlice)
        except Exception as e:
            self.showError(e)
            return
        self.startProgress(job, "Segmenting")

    def onPointPlaced(self, caller, event=None):
        """Edit mode: each new point is a correction on its slice, re-propagated at once."""
        if caller.GetName() in (FIX_POSITIVE_NAME, FIX_NEGATIVE_NAME) and caller.GetNumberOfControlPoints() > 0:
            # Not inside the markups node's own event: act once it has returned.
            qt.QTimer.singleShot(0, lambda: self.correctWithLastPoint(caller))

    def correctWithLastPoint(self, node):
        if node.GetNumberOfControlPoints() == 0 or not self.ensureLogic(then=lambda: self.correctWithLastPoint(node)):
            return
        n = node.GetNumberOfControlPoints() - 1
        ras = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(n, ras)
        positive = node.GetName() in (POSITIVE_NAME, FIX_POSITIVE_NAME)
        try:
            self.logic.set_model(self.modelSpec())
            target = self.target()
            self.logic.window = self.windowChoice(target.volume_node)   # if the segment has none yet
            job = self.logic.start_edit_at(target, ras, positive=positive)
        except Exception as e:
            self.showError(e)
            return
        if job is None:   # a job is running: the click waits for it (the point stays shown)
            self.showMessage(f"Correction queued ({self.logic.queued} waiting); it runs when the current step ends.")
            return
        self.startProgress(job, "Correcting")

    def onHistory(self, which):
        if self.logic is None:
            return
        try:
            change = getattr(self.logic, which)()
            self.showMessage(f"{which}: {len(change.slices)} slices restored" if change else f"nothing to {which}")
        except Exception as e:
            self.showError(e)
        self.updateGUI()

    def onCancel(self):
        if self.logic is not None:
            self.logic.cancel()
            self.showMessage("Cancelling after the current slice...")

    # -- progress ----------------------------------------------------------------------------
    def startProgress(self, job, what):
        self.job = job
        self.ui.progressBar.setValue(0)
        self.ui.progressBar.show()
        self.ui.cancelButton.show()
        self.showMessage(self.logic.notice or f"{what}... (first use loads the model and encodes slices)")
        self.timer.start()
        self.updateGUI()

    def onTimer(self):
        try:
            self.logic.tick()
        except Exception as e:
            self.logic.cancel()
            self.showError(e)
        if self.logic.job is not None and self.logic.job is not self.job:
            self.job = self.logic.job     # a queued correction started
            self.showMessage("Correcting (queued click)...")
        done, total = self.job.progress
        self.ui.progressBar.setMaximum(max(total, 1))
        self.ui.progressBar.setValue(done)
        if self.editorStatusLabel is not None and total and self.logic.busy:   # the effect has no bar
            self.editorStatusLabel.text = f"{done} / {total} slices (Cancel stops after the current slice)"
        if self.logic.busy:
            return
        self.timer.stop()
        self.ui.progressBar.hide()
        self.ui.cancelButton.hide()
        job, self.job = self.job, None
        if job.error is not None:
            self.showError(job.error)
        elif job.result is not None and job.result.cancelled:
            self.showMessage(f"Cancelled: {len(job.result.slices)} slices were updated (Undo restores them).")
        elif job.result is not None:
            self.showMessage(f"Done: {len(job.result.slices)} slices updated.")
        self.updateGUI()

    def onVolumeChanged(self, node=None):
        # Slice numbers belong to one volume: a new volume starts without bounds.
        self.ui.bottomSpinBox.value = self.ui.topSpinBox.value = -1
        self.showBounds()
        self.updateBoundsRange()
        self.updateGUI()

    def updateBoundsRange(self):
        """The bound spin boxes count slices along the axis RadSAM propagates across."""
        volume = self.ui.volumeSelector.currentNode()
        n = 0
        if volume is not None and volume.GetImageData() is not None:
            try:
                n = geometry.volume_shape(volume)[self.viewAxis(volume)]
            except Exception:
                n = 0
        for spinBox in (self.ui.bottomSpinBox, self.ui.topSpinBox):
            spinBox.maximum = max(n - 1, 0)

    def updateGUI(self, *args):
        busy = self.logic is not None and self.logic.busy
        _, _, needsFile = MODELS[self.ui.modelComboBox.currentIndex]
        self.ui.checkpointPathLineEdit.enabled = needsFile
        self.ui.segmentButton.enabled = self.ui.volumeSelector.currentNode() is not None and not busy
        # With the Segment Editor effect, the editor's Undo/Redo are RadSAM's.
        own = self.logic is not None and not busy and self.editorEffect is None
        self.ui.undoButton.enabled = own and self.logic.can_undo()
        self.ui.redoButton.enabled = own and self.logic.can_redo()
        self.ui.inputsCollapsibleButton.enabled = not busy


class RadSAMTest(ScriptedLoadableModuleTest):
    """Runs in the real application (ctest, or the module's Reload and Test button):
    the widget loads, the dependencies install, a box on a sample CT propagates into a
    segment between the bottom and top slices, and undo empties it again."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_widget_loads()
        if slicer.app.layoutManager() is not None:     # slice views: not with --no-main-window
            self.setUp()
            self.test_bounds_follow_the_view_and_are_drawn()
        self.setUp()
        self.test_segment_and_undo()

    def test_widget_loads(self):
        widget = slicer.util.getModuleWidget("RadSAM")
        for name in SHORTCUTS:
            self.assertTrue(hasattr(widget.ui, name), name)
        # The Segment Editor effect is registered (at startup, by the module).
        editorWidget = slicer.qMRMLSegmentEditorWidget()
        editorWidget.setMRMLScene(slicer.mrmlScene)
        self.assertIn("RadSAM", editorWidget.availableEffectNames())

    def test_bounds_follow_the_view_and_are_drawn(self):
        """Bottom/Top take the active view's slice across that view's axis, are drawn as
        planes, and Clear removes them."""
        import numpy as np
        volume = slicer.util.addVolumeFromArray(np.zeros((20, 30, 40), np.int16), name="bounds test")
        widget = slicer.util.getModuleWidget("RadSAM")
        widget.ui.volumeSelector.setCurrentNode(volume)
        yellow = slicer.app.layoutManager().sliceWidget("Yellow").mrmlSliceNode()
        widget.onViewUsed(yellow)      # as a click in the Yellow (sagittal) view does
        ras = geometry.kji_to_world(volume, np.array([10.0, 15.0, 7.0]))
        yellow.JumpSliceByCentering(*ras)
        widget.onSetBound(widget.ui.bottomSpinBox)
        self.assertEqual((widget.boundsAxis, widget.ui.bottomSpinBox.value), (2, 7))
        self.assertEqual(widget.ui.topSpinBox.maximum, 39)
        self.assertIsNotNone(slicer.mrmlScene.GetFirstNodeByName(boundsview.BOTTOM_NAME))
        widget.onClearPrompts()
        self.assertIsNone(slicer.mrmlScene.GetFirstNodeByName(boundsview.BOTTOM_NAME))

    def test_segment_and_undo(self):
        import numpy as np
        import SampleData
        from RadSAMLib.prompts import SlicePrompt

        self.delayDisplay("Installing dependencies if needed")
        self.assertTrue(dependencies.ensure(confirm=lambda text: True,
                                            install_torch=dependencies.install_torch_with_pytorch_utils,
                                            pip_install=slicer.util.pip_install))
        volume = SampleData.downloadSample("CTChest")
        logic = RadSAMLogic(slicer.mrmlScene)
        logic.set_model(ModelSpec(device="cpu"))
        try:
            seg = logic.create_segmentation(volume)
            sid = logic.add_segment(seg, "test")
            target = logic.target_for(volume, seg, sid, axis=0)
            nk, nj, ni = geometry.volume_shape(volume)
            k = nk // 2
            box = (ni * 0.3, nj * 0.3, ni * 0.6, nj * 0.6)
            self.delayDisplay("Segmenting 5 slices")
            change = logic.segment(target, k, SlicePrompt(box=box), (k - 2, k + 2))
            self.assertEqual(change.slices, list(range(k - 2, k + 3)))
            arr = slicer.util.arrayFromSegmentBinaryLabelmap(seg, sid, volume)
            self.assertTrue(arr[k].any())
            self.assertFalse(arr[: k - 2].any() or arr[k + 3:].any())
            logic.undo()
            self.assertFalse(np.any(slicer.util.arrayFromSegmentBinaryLabelmap(seg, sid, volume)))
        finally:
            logic.shutdown()
        self.delayDisplay("Test passed")
