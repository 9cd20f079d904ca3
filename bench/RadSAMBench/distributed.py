"""``radsam benchmark`` under ``torchrun``: the cases split across ranks, one results.json.

``torchrun --nproc_per_node N -m RadSAMLib.cli benchmark DATASET ...`` (or ``radsam`` run by
torchrun) starts N ranks. Every rank reads the same finished results, so they agree on
the (case, model) runs still to do; the runs are dealt round robin by case (a case's
models stay on one rank), each rank reads and encodes only its cases, and rank 0
gathers every rank's records into ``results.json``, ordered as a one-process run writes
them. A record depends only on the seed, the case and the object (``protocol._rng``), so
the file equals a one-process run's up to the timing fields.

While running, rank r > 0 saves its progress to ``results.rank<r>.json`` beside
``results.json`` (rank 0 to ``results.json`` itself); a run interrupted and started
again, with any number of ranks or none, merges those files first, so finished cases
are skipped as in one process. The final gather removes them.

A failure on one rank ends every rank: the failing rank posts its message in the
process group's key-value store (:meth:`Ranks.fail`), every rank looks there after each
object (:meth:`Ranks.check`), and each exits non-zero with that message. A rank done
with its share waits for the others there too, not in a collective: a share may take
hours, while a rank that died without a word (killed, a lost node) stops beating and
ends the wait after ``timeout_min`` (``--dist-timeout``), the collective timeout too.

``gloo`` on CPUs, ``nccl`` on GPUs (each rank on GPU ``LOCAL_RANK``). Without torchrun
(``WORLD_SIZE`` unset) nothing here starts a process group.
"""
from __future__ import annotations

import datetime
import json
import os
import socket
import threading
import time
from pathlib import Path

from RadSAMLib.errors import RadSAMError

TIMEOUT_MIN = 30.0
BEAT_S = 10.0           # a rank's sign of life, from a thread (its work may hold a case for long)


class RankFailed(RadSAMError):
    """Another rank failed: its message (every rank exits with it)."""


class Ranks:
    """This process's place among torchrun's ranks, and the results files they share."""

    def __init__(self, path: Path, device: str = "auto", fresh: bool = False, timeout_min: float = TIMEOUT_MIN):
        if not timeout_min > 0:
            raise RadSAMError(f"--dist-timeout must be a positive number of minutes, not {timeout_min}")
        self.path = Path(path)                       # results.json
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.dist, self.fresh, self.timeout_s = None, fresh, 60.0 * timeout_min
        self.store = None
        if self.world > 1:
            import torch
            import torch.distributed as dist
            cuda = str(device).startswith("cuda") or (device == "auto" and torch.cuda.is_available())
            if cuda:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # "cuda" = this rank's GPU
            else:
                share_cores()
            if not dist.is_initialized():
                dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=self.timeout_s))
            self.dist = dist
            # The process group's own store (torchrun's rendezvous store): no extra port.
            self.store = dist.distributed_c10d._get_default_store()
            threading.Thread(target=self._beat, daemon=True).start()
        if fresh and self.rank == 0:
            self._remove_partials()

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def own_path(self) -> Path:
        """Where this rank saves its progress."""
        return self.path if self.main else self.path.with_name(f"results.rank{self.rank}.json")

    def _partials(self):
        return sorted(self.path.parent.glob("results.rank*.json"))

    def _remove_partials(self):
        for p in self._partials():
            p.unlink(missing_ok=True)

    def resume(self, results: dict, same_config) -> None:
        """Merge the progress saved by the ranks of an interrupted run into ``results``."""
        for p in [] if self.fresh else self._partials():
            try:
                part = json.loads(p.read_text())
            except ValueError:
                continue        # written by atomic rename: only a foreign file is unreadable
            if part.get("version") == results["version"] and same_config(part.get("config", {}), results["config"]):
                merge(results["cases"], part.get("cases", {}))

    def share(self, todo: list) -> list:
        """This rank's (case, model) runs: every rank's ``todo`` is the same list, dealt
        round robin by case. The barrier first: no rank saves progress (which would change
        another's ``todo``) before all have read the results files."""
        if self.dist is None:
            return todo
        self.dist.barrier()
        names = list(dict.fromkeys(c.name for c, _ in todo))
        mine = set(names[self.rank::self.world])
        return [t for t in todo if t[0].name in mine]

    def _beat(self):
        key = f"radsam/beat/{self.rank}"
        try:
            while True:
                self.store.add(key, 1)
                time.sleep(BEAT_S)
        except Exception:  # noqa: BLE001 (the store is gone: the run is over)
            return

    def fail(self, error: BaseException):
        """Post this rank's failure for the others, then re-raise it."""
        if self.store is not None and not isinstance(error, RankFailed):
            try:
                self.store.set(f"radsam/error/{self.rank}", f"{type(error).__name__}: {error} "
                                                            f"(on {socket.gethostname()})")
                self.store.add("radsam/failed", 1)
            except Exception:  # noqa: BLE001 (the store is gone: the others learn it from that)
                pass
        raise error

    def check(self) -> None:
        """Raise :class:`RankFailed` with the message of any rank that failed."""
        if self.store is None or self.store.add("radsam/failed", 0) == 0:
            return
        keys = [f"radsam/error/{r}" for r in range(self.world)]
        msgs = [(r, self.store.get(k).decode()) for r, k in enumerate(keys) if self.store.check([k])]
        raise RankFailed("; ".join(f"rank {r} failed: {m}" for r, m in msgs))

    def _wait_for_all(self):
        """Until every rank has finished its share (or one failed, or one went silent for
        the timeout)."""
        self.store.set(f"radsam/done/{self.rank}", "1")
        done = [f"radsam/done/{r}" for r in range(self.world)]
        beats, heard = {}, {}
        while True:
            self.check()
            if self.store.check(done):
                return
            now = time.monotonic()
            for r in range(self.world):
                b = self.store.add(f"radsam/beat/{r}", 0)
                if beats.get(r) != b:
                    beats[r], heard[r] = b, now
                elif now - heard[r] > self.timeout_s and not self.store.check([done[r]]):
                    raise RankFailed(f"rank {r} gave no sign of life for {self.timeout_s / 60:g} min "
                                     "(killed, or its node lost?): stopping every rank")
            time.sleep(min(2.0, BEAT_S / 2))

    def gather(self, results: dict, write) -> bool:
        """Rank 0 collects every rank's cases into ``results``, in a one-process run's order,
        and writes it with ``write(path, results)``; True on rank 0, False elsewhere."""
        if self.dist is not None:
            self._wait_for_all()
            parts = [None] * self.world
            self.dist.all_gather_object(parts, results["cases"])
            self.dist.destroy_process_group()     # the last collective
            if not self.main:
                return False
            for part in parts:
                merge(results["cases"], part)
        cfg = results["config"]
        order = [f"{m[0]}|{c}" for c in cfg["cases"] for m in cfg["models"]]
        cases = results["cases"]
        results["cases"] = {k: cases[k] for k in order if k in cases} | {k: v for k, v in cases.items() if k not in order}
        if self.dist is not None or self._partials():
            write(self.path, results)
            self._remove_partials()
        return True


def share_cores() -> None:
    """CPU ranks on one node take disjoint cores: the encoder's ONNX Runtime session and
    torch size their thread pools by the usable cores, and N ranks each sizing theirs to
    every core would oversubscribe them N times."""
    n, r = int(os.environ.get("LOCAL_WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:      # macOS, Windows: no affinity; use --threads
        return
    if n > 1 and len(cores) >= n:
        os.sched_setaffinity(0, cores[r::n])
        import torch
        torch.set_num_threads(len(cores[r::n]))


def merge(into: dict, cases: dict) -> None:
    """Add ``cases`` to ``into``: a finished case, or one with more finished objects, wins."""
    for key, entry in cases.items():
        old = into.get(key)
        if old is None or (old.get("partial", True) and (not entry.get("partial", True)
                                                         or len(entry["records"]) > len(old["records"]))):
            into[key] = entry
