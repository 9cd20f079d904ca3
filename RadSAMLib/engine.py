"""One volume, one model: slice access, the embedding cache, and single-slice prediction.

``SliceEngine`` is the "set an image once, predict many times" object of RadSAM: each
slice across the propagation axis is encoded at most once (lazily, or ahead of time in a
background thread) and the embedding is kept, so re-propagation after an edit only runs
the light mask decoder.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from .errors import BoundsError, ImageError
from .preprocess import SliceFrame, Window
from .prompts import SlicePrompt
from .request import check_slice_index


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


def slice_index(axis: int, idx: int) -> tuple:
    """Numpy index of slice ``idx`` across ``axis`` of a ``(k, j, i)`` array."""
    key = [slice(None)] * 3
    key[axis] = idx
    return tuple(key)


class SliceEngine:
    """Slices of a ``(k, j, i)`` HU volume across ``axis``, encoded once each.

    A slice across axis 0 is ``(rows=j, cols=i)``; across axis 1 ``(k, i)``; across
    axis 2 ``(k, j)``. Prompts use ``(x=col, y=row)`` of that slice.
    """

    def __init__(self, model, volume: np.ndarray, axis: int = 0, window: Window = Window(),
                 cache_dtype=torch.float16, encode_fn=None, decode_fn=None,
                 encoder_backend: str = "auto", decoder_backend: str = "auto"):
        if volume.ndim != 3:
            raise ImageError(f"volume is {volume.ndim}D; RadSAM segments 3D volumes")
        if axis not in (0, 1, 2):
            raise BoundsError(f"propagation axis must be 0, 1 or 2, got {axis}")
        self.model = model
        self.volume = volume
        self.axis = axis
        self.window = window
        self.num_slices = volume.shape[axis]
        self.slice_shape = tuple(s for a, s in enumerate(volume.shape) if a != axis)
        self.frame = SliceFrame(self.slice_shape, model.input_size)
        # Embeddings are kept in half precision on the CPU side (4 MB -> 2 MB per slice),
        # enough for a 300-slice session in well under 1 GB; decode casts back to fp32.
        self.cache_dtype = cache_dtype
        # The fastest path that matches eager fp32 (RadSAMLib.accel; ONNX Runtime on CPU,
        # CUDA graphs on GPU), built once per model; "torch"/"eager" force plain PyTorch.
        from .accel import make_decoder, make_encoder
        self.encode_fn = encode_fn or make_encoder(model, backend=encoder_backend)
        self.decode_fn = decode_fn or make_decoder(model, backend=decoder_backend)
        # On a GPU one slice per encoder call is launch-bound: prefetch in batches there.
        self.prefetch_batch = 16 if model.device.type == "cuda" else 1
        self._cache: dict[int, torch.Tensor] = {}
        self._cache_lock = threading.Lock()
        self._encode_lock = threading.Lock()
        self._prefetch_thread = None
        self._prefetch_stop = threading.Event()
        self.encode_count = 0       # slices encoded (tests check "encode once")
        self.encode_seconds = 0.0

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
        import time
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

    def cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._cache.values())

    # -- prediction --------------------------------------------------------------------
    def predict(self, idx: int, prompt: SlicePrompt) -> SliceResult:
        """Run the model on slice ``idx`` with ``prompt`` (slice pixel coordinates)."""
        return self.predict_best(idx, [prompt])

    @torch.no_grad()
    def predict_best(self, idx: int, prompts) -> SliceResult:
        """Ask slice ``idx`` with each of ``prompts``; the answer whose primary mask has the
        highest predicted IoU wins (the first on a tie). Only the winner is mapped back to
        the slice: that resampling costs about as much as the decoder itself."""
        f = self.frame
        best = None
        for prompt in prompts:
            box = None if prompt.box is None else f.box_to_model(prompt.box)
            pts = labs = None
            if prompt.points:
                pts = f.slice_to_model(np.asarray(prompt.points, dtype=np.float64).reshape(-1, 2))
                labs = np.asarray(prompt.labels, dtype=np.float32)
            mask = None
            if prompt.mask is not None and prompt.mask.any():
                mask = f.mask_to_model(prompt.mask, size=self.model.mask_input_size)
            logits, scores = self.decode_fn(self.embedding(idx), box=box, points=pts, labels=labs, mask=mask)
            scores = scores.float().cpu().numpy()
            if best is None or scores[0] > best[1][0]:
                best = (logits, scores)
        logits, scores = best
        on_slice = f.logits_to_slice(logits).cpu()
        return SliceResult(masks=(on_slice > 0).numpy(), scores=scores, logits=on_slice[0].numpy())
