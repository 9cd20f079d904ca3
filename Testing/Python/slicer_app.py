"""The RadSAM module's widget and Segment Editor effect, run without the Slicer application.

slicer-core gives Slicer's real MRML (scene, interaction and selection nodes, the Markups
module's logic); what only the application has is stood in for here, as little as the
widget and the effect use:

- ``qt``: widgets with the properties and signals RadSAM touches, built from
  ``RadSAM.ui`` (names, classes, ``checkable``, spin box ranges); signals call their slots
  at once; ``QTimer.singleShot`` queues until :meth:`App.process_events`.
- ``slicer.app`` (application logic, layout manager or none, main window or none),
  ``slicer.mrmlScene``, ``slicer.modules.markups.logic()``, the GUI helpers of
  ``slicer.util``, ``slicer.ScriptedLoadableModule`` and ``SegmentEditorEffects``.
- :class:`SegmentEditor`: what Slicer's Segment Editor does around an active scripted
  effect when the interaction node changes (see its docstring).

:func:`start` installs all of this for one test (pytest's ``monkeypatch``) and returns an
:class:`App`; ``App.widget()`` runs the module widget's real ``setup()``; ``App.close()``
ends it.
"""
from __future__ import annotations

import importlib.util
import inspect
import sys
import types
import xml.etree.ElementTree as ET

from conftest import ROOT

RADSAM = ROOT / "RadSAM"
sys.path.insert(0, str(RADSAM))        # RadSAMSlicerLib, as in the other slicer-core tests


# -- qt ------------------------------------------------------------------------------------------
class Signal:
    def __init__(self):
        self.slots = []

    def connect(self, slot):
        self.slots.append(slot)

    def emit(self, *args):
        for slot in list(self.slots):
            _call(slot, args)


def _call(slot, args):
    """Call ``slot`` with as many of ``args`` as it takes (as PythonQt does)."""
    try:
        params = inspect.signature(slot).parameters.values()
    except (TypeError, ValueError):
        return slot(*args)
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return slot(*args)
    n = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty for p in params)
    n = max(n, min(len(args), sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)))
    return slot(*args[:n])


class QObject:
    def __init__(self, *args, **kwargs):
        self.__dict__.setdefault("_signals", {})

    def __getattr__(self, name):
        # Signals are made on first use; anything else missing is an error, as in Qt.
        if name in self.SIGNALS:
            return self.__dict__.setdefault("_signals", {}).setdefault(name, Signal())
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    SIGNALS = ("destroyed",)

    def connect(self, signature, receiver, slot=None):
        """PythonQt's ``obj.connect("signal(args)", callable)`` and
        ``obj.connect("signal(args)", receiver, "slot(args)")``."""
        signal = getattr(self, signature.split("(")[0])
        if slot is None:
            signal.connect(receiver)
        else:
            signal.connect(getattr(receiver, slot.split("(")[0]))

    def deleteLater(self):
        pass


class QWidget(QObject):
    def __init__(self, *args, **kwargs):
        super().__init__()
        self.enabled = True
        self.visible = True
        self.toolTip = ""
        self.styleSheet = ""

    def hide(self):
        self.visible = False

    def show(self):
        self.visible = True

    def setStyleSheet(self, sheet):
        self.styleSheet = sheet

    def setMRMLScene(self, scene):
        self.mrmlScene = scene


class QLabel(QWidget):
    def __init__(self, text="", *args):
        super().__init__()
        self.text = text
        self.wordWrap = False


class QAbstractButton(QWidget):
    SIGNALS = ("clicked", "toggled")

    def __init__(self, text="", *args):
        super().__init__()
        self.text = text
        self.checkable = False
        self._checked = False

    @property
    def checked(self):
        return self._checked

    @checked.setter
    def checked(self, value):
        value = bool(value) and self.checkable
        if value != self._checked:
            self._checked = value
            self.toggled.emit(value)

    def setChecked(self, value):
        self.checked = value

    def click(self):
        if not self.enabled:
            return
        if self.checkable:
            self.checked = not self._checked
        self.clicked.emit(self._checked)


class QPushButton(QAbstractButton):
    pass


class QToolButton(QAbstractButton):
    pass


class QCheckBox(QAbstractButton):
    def __init__(self, text="", *args):
        super().__init__(text)
        self.checkable = True


class QSpinBox(QWidget):
    SIGNALS = ("valueChanged",)

    def __init__(self, *args):
        super().__init__()
        self.minimum, self.maximum, self._value = 0, 99, 0

    @property
    def value(self):
        return self._value

    @value.setter
    def value(self, v):
        v = min(max(int(v), self.minimum), self.maximum)
        if v != self._value:
            self._value = v
            self.valueChanged.emit(v)

    def setValue(self, v):
        self.value = v


class QProgressBar(QWidget):
    def __init__(self, *args):
        super().__init__()
        self.value, self.maximum = 0, 100

    def setValue(self, v):
        self.value = v

    def setMaximum(self, v):
        self.maximum = v


class QComboBox(QWidget):
    SIGNALS = ("currentIndexChanged",)

    def __init__(self, *args):
        super().__init__()
        self.items, self._index = [], -1

    def addItem(self, text):
        self.items.append(text)
        if self._index < 0:
            self.currentIndex = 0

    @property
    def currentIndex(self):
        return self._index

    @currentIndex.setter
    def currentIndex(self, i):
        if i != self._index:
            self._index = i
            self.currentIndexChanged.emit(i)

    @property
    def currentText(self):
        return self.items[self._index] if self._index >= 0 else ""

    @currentText.setter
    def currentText(self, text):
        if text in self.items:
            self.currentIndex = self.items.index(text)


class ctkCollapsibleButton(QWidget):
    pass


class ctkPathLineEdit(QWidget):
    def __init__(self, *args):
        super().__init__()
        self.currentPath = ""


class qMRMLWidget(QWidget):
    pass


class qMRMLNodeComboBox(QWidget):
    SIGNALS = ("currentNodeChanged",)

    def __init__(self, *args):
        super().__init__()
        self._node = None

    def currentNode(self):
        return self._node

    def setCurrentNode(self, node):
        if node is not self._node:
            self._node = node
            self.currentNodeChanged.emit(node)


class qMRMLSegmentSelectorWidget(qMRMLNodeComboBox):
    SIGNALS = ("currentNodeChanged", "currentSegmentChanged")

    def __init__(self, *args):
        super().__init__()
        self._segment = None

    def currentSegmentID(self):
        return self._segment

    def setCurrentSegmentID(self, segment_id):
        if segment_id != self._segment:
            self._segment = segment_id
            self.currentSegmentChanged.emit(segment_id)


class QHBoxLayout(QObject):
    def __init__(self, *args):
        super().__init__()
        self.widgets = []

    def addWidget(self, widget):
        self.widgets.append(widget)


QVBoxLayout = QHBoxLayout


class QIcon:
    def __init__(self, *args):
        pass


class QKeySequence:
    def __init__(self, text):
        self.text = text


class QTimer(QObject):
    SIGNALS = ("timeout",)
    pending: list = []        # singleShot callables, run by App.process_events

    def __init__(self, *args):
        super().__init__()
        self.active, self.interval = False, 0

    def setInterval(self, ms):
        self.interval = ms

    def start(self, *args):
        self.active = True

    def stop(self):
        self.active = False

    def isActive(self):
        return self.active

    @staticmethod
    def singleShot(ms, function):
        QTimer.pending.append(function)


class QShortcut(QObject):
    SIGNALS = ("activated",)
    made: list = []

    def __init__(self, key, parent):
        super().__init__()
        if parent is None:
            raise TypeError("QShortcut needs a parent widget")
        self.key, self.parent, self.enabled = key.text, parent, True
        QShortcut.made.append(self)

    def setEnabled(self, enabled):
        self.enabled = enabled


def qt_module():
    qt = types.ModuleType("qt")
    for name, value in list(globals().items()):
        if isinstance(value, type) and (name.startswith(("Q", "q", "ctk"))):
            setattr(qt, name, value)
    qt.Qt = types.SimpleNamespace(NonModal=0)
    return qt


def load_ui(path):
    """The widgets of a Qt Designer file, by name, as the stand-ins above."""
    root = ET.parse(path).getroot()
    widgets = {}
    for w in root.iter("widget"):
        cls = globals()[w.get("class")]
        widget = cls()
        for prop in w.findall("property"):
            name, value = prop.get("name"), list(prop)[0]
            if value.tag == "bool":
                setattr(widget, name, value.text == "true")
            elif value.tag == "number":
                setattr(widget, name, int(value.text))
            elif value.tag == "string" and name in ("text", "toolTip"):
                setattr(widget, name, value.text or "")
        widgets[w.get("name")] = widget
    top = widgets[root.find("widget").get("name")]
    top.children = widgets
    return top


# -- the application -----------------------------------------------------------------------------
class SliceWidget:
    def __init__(self, node):
        self.node = node

    def mrmlSliceNode(self):
        return self.node

    def sliceView(self):
        return types.SimpleNamespace(interactor=lambda: None)


class LayoutManager(QObject):
    """Slice views Red (axial), Yellow (sagittal), Green (coronal) on real slice nodes."""
    SIGNALS = ("layoutChanged",)

    def __init__(self, scene):
        import slicer
        import vtk
        super().__init__()
        self.views = {}
        for name, orientation in (("Red", "Axial"), ("Yellow", "Sagittal"), ("Green", "Coronal")):
            node = slicer.vtkMRMLSliceNode()
            node.SetName(name)
            node.SetLayoutName(name)
            node.SetSingletonTag(name)
            scene.AddNode(node)
            rotation = vtk.vtkMatrix3x3()
            getattr(slicer.vtkMRMLSliceNode, f"Get{orientation}SliceToRASMatrix")(rotation)
            for r in range(3):
                for c in range(3):
                    node.GetSliceToRAS().SetElement(r, c, rotation.GetElement(r, c))
            node.UpdateMatrices()
            self.views[name] = SliceWidget(node)

    def sliceViewNames(self):
        return list(self.views)

    def sliceWidget(self, name):
        return self.views.get(name)


class AppLogic:
    def __init__(self, scene):
        self.scene = scene

    def GetInteractionNode(self):
        return self.scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")

    def GetSelectionNode(self):
        return self.scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent

    def setup(self):
        self.layout = QVBoxLayout()

    def resourcePath(self, relative):
        return str(RADSAM / "Resources" / relative)


def scripted_module():
    m = types.ModuleType("slicer.ScriptedLoadableModule")
    m.ScriptedLoadableModule = type("ScriptedLoadableModule", (), {"__init__": lambda self, parent=None: None})
    m.ScriptedLoadableModuleWidget = ScriptedLoadableModuleWidget
    m.ScriptedLoadableModuleTest = type("ScriptedLoadableModuleTest", (), {})
    return m


def editor_effects_module():
    """``SegmentEditorEffects`` with Slicer's AbstractScriptedSegmentEditorEffect as far as
    RadSAM's effect uses it (Modules/Loadable/Segmentations/EditorEffects/Python/
    SegmentEditorEffects/AbstractScriptedSegmentEditorEffect.py): it stores the adaptor
    and, like Slicer's, defines no ``interactionNodeModified``."""
    m = types.ModuleType("SegmentEditorEffects")

    class AbstractScriptedSegmentEditorEffect:
        def __init__(self, scriptedEffect):
            self.scriptedEffect = scriptedEffect

    m.AbstractScriptedSegmentEditorEffect = AbstractScriptedSegmentEditorEffect
    return m


class ScriptedEffect:
    """The C++ adaptor (qSlicerSegmentEditorScriptedEffect) as RadSAM's effect uses it."""

    def __init__(self, parameter_node):
        self.name, self.perSegment, self.requireSegments = "", False, False
        self.options, self.node, self.undo_states = [], parameter_node, 0

    def addOptionsWidget(self, widget):
        self.options.append(widget)

    def parameterSetNode(self):
        return self.node

    def saveStateForUndo(self):
        self.undo_states += 1


class SegmentEditor:
    """What Slicer's Segment Editor does with the active effect when the interaction node
    changes. ``qMRMLSegmentEditorWidget`` observes the interaction node's ModifiedEvent and
    calls the active effect's ``interactionNodeModified``; the scripted-effect adaptor
    (``qSlicerSegmentEditorScriptedEffect::interactionNodeModified``) calls the Python
    method and, when the effect has none, the default
    (``qSlicerSegmentEditorAbstractEffect::interactionNodeModified``): any mode other than
    ViewTransform deselects the effect (``selectEffect("")``), which deactivates it."""

    def __init__(self, interaction_node):
        self.active = None
        self.deactivations = 0
        interaction_node.AddObserver("ModifiedEvent", self.onInteractionNodeModified)

    def setActiveEffect(self, effect):
        if self.active is not None:
            self.active.deactivate()
            self.deactivations += 1
        self.active = effect
        if effect is not None:
            effect.activate()

    def onInteractionNodeModified(self, node, event):
        if self.active is None:
            return
        method = getattr(self.active, "interactionNodeModified", None)
        if method is not None:
            method(node)
        elif node.GetCurrentInteractionMode() != node.ViewTransform:
            self.setActiveEffect(None)


class App:
    def __init__(self, mrml, layout, main_window):
        import slicer
        self.mrml, self.scene = mrml, mrml.scene
        self.layout = LayoutManager(self.scene) if layout else None
        self.main_window = QWidget() if main_window else None
        self.logic = AppLogic(self.scene)
        self.interaction = self.logic.GetInteractionNode()
        self.selection = self.logic.GetSelectionNode()
        self.app = types.SimpleNamespace(layoutManager=lambda: self.layout, applicationLogic=lambda: self.logic,
                                         connect=lambda *a: None)
        self.modules = types.SimpleNamespace(markups=types.SimpleNamespace(logic=lambda: mrml.markups))
        self.radsam = None
        self.slicer = slicer

    def widget(self):
        """The module's widget after its real ``setup()``."""
        module = load("RadSAM", RADSAM / "RadSAM.py")
        self.module = module
        self.radsam = module.RadSAMWidget()
        self.radsam.setup()
        return self.radsam

    def effect(self):
        """RadSAM's Segment Editor effect on a segment editor node of this scene."""
        node = self.scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        module = load("SegmentEditorRadSAMEffect", RADSAM / "SegmentEditorRadSAMLib" / "SegmentEditorEffect.py")
        effect = module.SegmentEditorEffect(ScriptedEffect(node))
        effect.setupOptionsFrame()
        return effect

    def close(self):
        """Stop the widget observing this scene (the application does it on exit)."""
        if self.radsam is not None:
            self.radsam.removeObservers()

    def process_events(self):
        while QTimer.pending:
            QTimer.pending.pop(0)()


def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start(monkeypatch, layout=True, main_window=True) -> App:
    """Install the stand-ins (undone after the test) on a fresh slicer-core scene."""
    import slicer
    from test_slicer_logic import Mrml

    QTimer.pending.clear()
    QShortcut.made.clear()
    app = App(Mrml(), layout, main_window)
    monkeypatch.setitem(sys.modules, "qt", qt_module())
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", scripted_module())
    monkeypatch.setitem(sys.modules, "SegmentEditorEffects", editor_effects_module())
    monkeypatch.setattr(slicer, "ScriptedLoadableModule", sys.modules["slicer.ScriptedLoadableModule"], raising=False)
    monkeypatch.setattr(slicer, "app", app.app, raising=False)
    monkeypatch.setattr(slicer, "mrmlScene", app.scene, raising=False)
    monkeypatch.setattr(slicer, "modules", app.modules, raising=False)
    util = slicer.util
    monkeypatch.setattr(util, "loadUI", load_ui)
    monkeypatch.setattr(util, "childWidgetVariables", lambda top: types.SimpleNamespace(**top.children))
    monkeypatch.setattr(util, "mainWindow", lambda: app.main_window)
    monkeypatch.setattr(util, "getModuleWidget", lambda name: app.radsam)
    for dialog in ("errorDisplay", "confirmYesNoDisplay", "confirmOkCancelDisplay"):
        monkeypatch.setattr(util, dialog, lambda *a, **k: pytest_fail(f"a dialog was opened: {a}"))
    return app


def pytest_fail(message):
    import pytest
    pytest.fail(message)
