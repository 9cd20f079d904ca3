"""One volume, one model: slice access, the embedding cache, and single-slice prediction.

``SliceEngine`` is the "set an image once, predict many times" object of RadSAM: each
slice across the propagation axis is encoded at most once (lazily, or ahead of time in a
background thread) and the embedding is kept, so re-propagation after an edit only runs
the light mask decoder. Engines over the same volume whose models share the image
encoder's weights can share their embeddings (:meth:`SliceEngine.share_embeddings`), and
embeddings computed elsewhere can be given to an engine (:meth:`SliceEngine.set_embeddings`).
"""
from __future__ import annotations

import os
import threading
import time
import weakref
from dataclasses import dataclass

import numpy as np
import torch

from .config import RadSAMConfig
from .errors import BoundsError, ImageError, RadSAMError
from .preprocess import SliceFrame, Window
from .prompts import SlicePrompt
from .request import check_slice_index
from .slices import slice_index

__all__ = ["SliceEngine", "SliceResult", "check_slice_index", "slice_index"]


@dataclass
class SliceResult:
    """Masks for one slice: ``masks`` bool ``(4, rows, cols)`` (0 = primary, 1..3 the
    alternatives), ``scores`` float ``(4,)`` predicted IoU, ``logits`` float32
    ``(rows, cols)`` of the primary mask."""

    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        return self.masks[0]

    @property
    def score(self) -> float:
        return float(self.scores[0])


class SliceEngine:
    """Slices of a ``(k, j, i)`` HU volume across ``axis``, encoded once each.

    A slice across axis 0 is ``(rows=j, cols=i)``; across axis 1 ``(k, i)``; across
    axis 2 ``(k, j)``. Prompts use ``(x=col, y=row)`` of that slice. ``config`` supplies
    the encoder batching (:class:`RadSAMConfig`); ``encoder_backend`` / ``decoder_backend``
    pick an inference path by name (``"torch"``: eager PyTorch; see ``RadSAMLib.accel``),
    ``encode_fn`` / ``decode_fn`` replace them outright.
    """

    def __init__(self, model, volume: np.ndarray, axis: int = 0, window: Window = Window(),
                 config: RadSAMConfig | None = None, *, cache_dtype=torch.float16, encode_fn=None,
                 decode_fn=None, encoder_backend: str = "auto", decoder_backend: str = "auto"):
        if volume.ndim != 3:
            raise ImageError(f"volume is {volume.ndim}D; RadSAM segments 3D volumes")
        if config is not None and not isinstance(config, RadSAMConfig):
            raise TypeError(f"SliceEngine config must be a RadSAMConfig, got {type(config).__name__}")
        if axis not in (0, 1, 2):
            raise BoundsError(f"propagation axis must be 0, 1 or 2, got {axis}")
        self.model = model
        self.volume = volume
        self.axis = axis
        self.window = window
        self.config = config or RadSAMConfig()
        self.num_slices = volume.shape[axis]
        self.slice_shape = tuple(s for a, s in enumerate(volume.shape) if a != axis)
        self.frame = SliceFrame(self.slice_shape, model.input_size)
        # Embeddings are kept in half precision on the CPU side (4 MB -> 2 MB per slice),
        # enough for a 300-slice session in well under 1 GB; decode casts back to fp32.
        self.cache_dtype = cache_dtype
        # The fastest path that matches eager fp32 (RadSAMLib.accel; ONNX Runtime on CPU,
        # CUDA graphs on GPU), built once per model; "torch"/"eager" force plain PyTorch.
        from .accel import make_decoder, make_encoder
        self.encode_fn = encode_fn or make_encoder(model, backend=encoder_backend, batch_size=self.config.encoder_batch)
        self.decode_fn = decode_fn or make_decoder(model, backend=decoder_backend)
        # Several prompts of one slice in one decoder call, where the path can take them
        # (the eager model; a decode_fn with a ``decode_batch`` method); else one by one.
        self.decode_batch_fn = None
        if self.config.decoder_batch:
            own = self.decode_fn == getattr(model, "decode", None)
            self.decode_batch_fn = getattr(model if own else self.decode_fn, "decode_batch", None)
        self.prefetch_batch = self.config.prefetch_batch or (16 if model.device.type == "cuda" else 1)
        self._cache: dict[int, torch.Tensor] = {}
        self._cache_lock = threading.Lock()
        self._encode_lock = threading.Lock()
        self._prefetch_thread = None
        self._prefetch_stop = threading.Event()
        self.encode_count = 0       # slices encoded (tests check "encode once")
        self.encode_seconds = 0.0
        self._decode_hook = None
        # Background encoding (look-ahead, :meth:`prefetch_around`): its thread, stop flag
        # and centre; ``_foreground_at`` is when a caller last asked for a prediction or an
        # embedding (the background yields to it).
        self._bg_thread = None
        self._bg_stop = threading.Event()
        self._bg_centre = 0
        self._bg_state = "off"
        self._foreground_at = float("-inf")

    # -- slices ------------------------------------------------------------------------
    def check_index(self, idx: int, what: str = "slice") -> int:
        return check_slice_index(idx, self.num_slices, self.axis, what)

    def slice(self, idx: int) -> np.ndarray:
        return self.volume[slice_index(self.axis, idx)]

    # -- embeddings --------------------------------------------------------------------
    def is_cached(self, idx: int) -> bool:
        return idx in self._cache

    def embedding(self, idx: int) -> torch.Tensor:
        """The slice's image embedding ``(1, 256, 64, 64)``, encoding it if needed."""
        emb = self._cache.get(idx)
        if emb is not None:
            return emb
        self._foreground_at = time.monotonic()   # before the lock: the background sees it and stays off
        with self._encode_lock:  # one encoder run at a time; a prefetch may have just done it
            emb = self._cache.get(idx)
            if emb is None:
                self._encode([idx])
                emb = self._cache[idx]
        return emb

    def encode_slices(self, indices, batch_size: int = 1, should_stop=None) -> None:
        """Encode (and cache) the given slices not cached yet, ``batch_size`` at a time."""
        todo = [i for i in indices if i not in self._cache]
        for b in range(0, len(todo), batch_size):
            if should_stop is not None and should_stop():
                return
            with self._encode_lock:
                batch = [i for i in todo[b:b + batch_size] if i not in self._cache]
                if batch:
                    self._encode(batch)

    def _encode(self, indices) -> None:
        t0 = time.perf_counter()
        images = torch.stack([self.frame.image_to_model(self.window.apply(self.slice(i))) for i in indices])
        emb = self.encode_fn(images)
        emb = emb.to("cpu" if self.model.device.type == "cpu" else self.model.device, self.cache_dtype)
        with self._cache_lock:
            for n, i in enumerate(indices):
                self._cache[i] = emb[n:n + 1].clone()
        self.encode_count += len(indices)
        self.encode_seconds += time.perf_counter() - t0

    def prefetch(self, indices, batch_size: int | None = None) -> None:
        """Encode ``indices`` in a background thread, in order (latency hiding).

        Callers still call :meth:`embedding`; it returns at once for slices already done
        and otherwise encodes the slice itself (never twice: both paths share a lock).
        """
        self.stop_prefetch()
        self._prefetch_stop = stop = threading.Event()
        order = [i for i in indices if 0 <= i < self.num_slices]
        t = threading.Thread(target=self.encode_slices, args=(order, batch_size or self.prefetch_batch, stop.is_set),
                             name="radsam-prefetch", daemon=True)
        self._prefetch_thread = t
        t.start()

    def stop_prefetch(self) -> None:
        if self._prefetch_thread is not None:
            self._prefetch_stop.set()
            self._prefetch_thread.join()
            self._prefetch_thread = None

    # -- background encoding ----------------------------------------------------------
    def prefetch_around(self, centre: int) -> None:
        """Encode slices outward from ``centre`` (``centre``, ``+1``, ``-1``, ``+2``...) in
        one low-priority background thread, while the user looks at the volume, so that a
        prompt starts on slices already encoded.

        The thread yields to any running work: it encodes nothing while an interaction's
        own prefetch (:meth:`prefetch`) runs or within ``background_yield_s`` of a caller's
        last prediction, so it delays a job by at most the one slice it is encoding. It
        stops when every slice is encoded, when the embeddings reach the config's
        ``prefetch_memory_mb``, on :meth:`stop_background` / :meth:`close`, or when the
        engine is dropped (it holds the engine only weakly). :meth:`recentre` moves the
        centre (the user scrolled); :meth:`prefetch_status` says how far it got."""
        centre = self.check_index(centre, "prefetch centre")
        self._bg_centre = centre
        if self._bg_thread is not None and self._bg_thread.is_alive():
            return
        self._bg_stop = stop = threading.Event()
        self._bg_state = "encoding"
        t = threading.Thread(target=_background_loop, args=(weakref.ref(self), stop),
                             name="radsam-look-ahead", daemon=True)
        self._bg_thread = t
        t.start()

    def recentre(self, centre: int) -> None:
        """Encode outward from ``centre`` from now on (restarting a finished background
        run if slices are left; a stopped or never started one only keeps the centre for
        :meth:`prefetch_around`); a no-op for an index outside the volume."""
        if 0 <= centre < self.num_slices:
            if self._bg_thread is None:
                self._bg_centre = int(centre)
            else:
                self.prefetch_around(int(centre))

    def stop_background(self, wait: bool = True) -> None:
        """Stop background encoding; ``wait``: until the slice being encoded is done
        (``False``: return at once, e.g. on a UI thread)."""
        if self._bg_thread is not None:
            self._bg_stop.set()
            if wait and self._bg_thread is not threading.current_thread():
                self._bg_thread.join()
            self._bg_thread = None
            if self._bg_state == "encoding":
                self._bg_state = "stopped"

    def close(self) -> None:
        """Stop all encoding (background and an interaction's prefetch); the embeddings
        already made stay usable."""
        self.stop_background()
        self.stop_prefetch()

    def prefetch_status(self) -> tuple:
        """``(slices encoded, slices in the volume, state)``; state: ``off`` (never
        started), ``encoding``, ``done`` (every slice), ``memory`` (the memory budget is
        full), ``stopped``."""
        return len(self._cache), self.num_slices, self._bg_state

    def _next_background_slice(self):
        """The uncached slice nearest the centre (``+d`` before ``-d``), or ``None``."""
        c = self._bg_centre
        for d in range(self.num_slices):
            for k in ((c,) if d == 0 else (c + d, c - d)):
                if 0 <= k < self.num_slices and k not in self._cache:
                    return k
        return None

    def _job_running(self) -> bool:
        t = self._prefetch_thread
        return (t is not None and t.is_alive()) or \
            time.monotonic() - self._foreground_at < self.config.background_yield_s

    def cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in list(self._cache.values()))

    def cached_slices(self) -> list:
        """Indices of the slices whose embeddings are held, sorted."""
        return sorted(self._cache)

    def set_embeddings(self, embeddings) -> None:
        """Give the engine embeddings computed elsewhere (e.g. a training store): a mapping
        ``{slice index: (1, 256, E, E) tensor}`` or one ``(num_slices, 256, E, E)`` tensor
        for every slice. They must come from this model's image encoder on this volume's
        slices, windowed and framed as :meth:`embedding` would; they are stored as the
        engine's own (``cache_dtype``) and replace any held for the same slices."""
        if isinstance(embeddings, torch.Tensor):
            if len(embeddings) != self.num_slices:
                raise RadSAMError(f"{len(embeddings)} embeddings for a volume of {self.num_slices} slices")
            embeddings = {k: embeddings[k:k + 1] for k in range(self.num_slices)}
        dev = "cpu" if self.model.device.type == "cpu" else self.model.device
        items = {}
        for k, emb in embeddings.items():
            k = self.check_index(k)
            if emb.dim() == 3:
                emb = emb[None]
            if emb.dim() != 4 or len(emb) != 1:
                raise RadSAMError(f"embedding of slice {k} has shape {tuple(emb.shape)}; expected (1, C, E, E)")
            items[k] = emb.to(dev, self.cache_dtype)
        with self._cache_lock:
            self._cache.update(items)

    def share_embeddings(self, other: "SliceEngine") -> None:
        """Use ``other``'s embeddings (and let it use the ones this engine computes): one
        cache for both. Allowed only when an embedding of one is an embedding of the other:
        the same volume, axis, window and input size, and image encoders with the same
        weights (e.g. a fine-tune that kept its base model's encoder)."""
        from .accel.cache import weights_sha256
        same = (other.volume is self.volume or (other.volume.shape == self.volume.shape
                                                and np.array_equal(other.volume, self.volume)))
        same = (same and other.axis == self.axis and other.window == self.window
                and other.model.input_size == self.model.input_size and other.cache_dtype == self.cache_dtype)
        if not same:
            raise RadSAMError("cannot share embeddings between engines over different volumes, axes, windows or input sizes")
        if other.model is not self.model:
            encoders = [getattr(m, "image_encoder", None) for m in (self.model, other.model)]
            if None in encoders or weights_sha256(encoders[0]) != weights_sha256(encoders[1]):
                raise RadSAMError("cannot share embeddings: the two models' image encoders differ")
        self._cache, self._cache_lock, self._encode_lock = other._cache, other._cache_lock, other._encode_lock

    # -- decode hook -----------------------------------------------------------------------
    def set_decode_hook(self, hook) -> None:
        """Route every prediction through ``hook(idx, prompts, decode) -> SliceResult``,
        where ``decode(idx, prompts)`` is the engine's own :meth:`predict_best` (so a hook
        may time it, memoise it or pass it through); ``None`` removes the hook. Used by the
        benchmark to reuse identical decoder calls across settings."""
        self._decode_hook = hook

    # -- prediction --------------------------------------------------------------------
    def predict(self, idx: int, prompt: SlicePrompt) -> SliceResult:
        """Run the model on slice ``idx`` with ``prompt`` (slice pixel coordinates)."""
        return self.predict_best(idx, [prompt])

    @torch.no_grad()
    def predict_best(self, idx: int, prompts) -> SliceResult:
        """Ask slice ``idx`` with each of ``prompts``; the answer whose primary mask has the
        highest predicted IoU wins (the first on a tie). Only the winner is mapped back to
        the slice: that resampling costs about as much as the decoder itself."""
        if self._decode_hook is not None:
            return self._decode_hook(idx, prompts, self._predict_best)
        return self._predict_best(idx, prompts)

    def predict_many(self, idx: int, prompts) -> list:
        """Every answer: one :class:`SliceResult` per prompt, in order (prompts that can
        share a decoder call share it)."""
        if self._decode_hook is not None:
            return [self._decode_hook(idx, [p], self._predict_best) for p in prompts]
        self._foreground_at = time.monotonic()
        with torch.no_grad():
            return [self._to_slice(*a) for a in self._decode_all(idx, prompts)]

    @torch.no_grad()
    def _predict_best(self, idx: int, prompts) -> SliceResult:
        self._foreground_at = time.monotonic()
        best = None
        for logits, scores in self._decode_all(idx, prompts):
            if best is None or scores[0] > best[1][0]:
                best = (logits, scores)
        return self._to_slice(*best)

    def _to_slice(self, logits, scores) -> SliceResult:
        on_slice = self.frame.logits_to_slice(logits).cpu()
        return SliceResult(masks=(on_slice > 0).numpy(), scores=scores, logits=on_slice[0].numpy())

    def _model_prompt(self, prompt: SlicePrompt) -> dict:
        """``prompt`` (slice pixels) as the decoder's keyword arguments (model frame)."""
        f = self.frame
        box = None if prompt.box is None else f.box_to_model(prompt.box)
        pts = labs = None
        if prompt.points:
            pts = f.slice_to_model(np.asarray(prompt.points, dtype=np.float64).reshape(-1, 2))
            labs = np.asarray(prompt.labels, dtype=np.float32)
        mask = None
        if prompt.mask is not None and prompt.mask.any():
            mask = f.mask_to_model(prompt.mask, size=self.model.mask_input_size)
        return dict(box=box, points=pts, labels=labs, mask=mask)

    def _decode_all(self, idx: int, prompts) -> list:
        """``[(logits (4, S', S') model frame, scores (4,) numpy)]`` per prompt. Prompts
        with the same number of tokens go to the decoder together (hybrid's mask+box and
        box: a box-only prompt is given the "no mask" dense embedding it would get alone)."""
        from .models.base import prompt_tokens
        args = [self._model_prompt(p) for p in prompts]
        emb = self.embedding(idx)
        out = [None] * len(args)
        groups: dict = {}
        for n, a in enumerate(args):
            key = prompt_tokens(a["box"], a["points"]) if self.decode_batch_fn is not None else n
            groups.setdefault(key, []).append(n)
        for members in groups.values():
            if len(members) == 1:
                logits, scores = self.decode_fn(emb, **args[members[0]])
                out[members[0]] = (logits, scores.float().cpu().numpy())
                continue
            logits, scores = self.decode_batch_fn(emb, [args[n] for n in members])
            scores = scores.float().cpu().numpy()
            for b, n in enumerate(members):
                out[n] = (logits[b], scores[b])
        return out


def _background_loop(engine_ref, stop: threading.Event) -> None:
    """The body of :meth:`SliceEngine.prefetch_around`'s thread (holds the engine weakly)."""
    _lower_thread_priority()
    while not stop.is_set():
        eng = engine_ref()
        if eng is None:
            return
        if eng._job_running():
            del eng
            stop.wait(0.05)
            continue
        if eng.cache_bytes() >= eng.config.prefetch_memory_mb * 2 ** 20:
            eng._bg_state = "memory"
            return
        with eng._encode_lock:
            k = eng._next_background_slice()
            if k is None:
                eng._bg_state = "done"
                return
            if not eng._job_running():   # re-checked under the lock: a job may have just started
                eng._encode([k])
        del eng


def _lower_thread_priority() -> None:
    """Nice this thread (Linux: threads have their own nice value) so the UI and a job
    get the CPU first; elsewhere a no-op."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass
