"""RadSAM's tunables, in one frozen, documented place.

A :class:`RadSAMConfig` is given to :class:`~RadSAMLib.engine.SliceEngine` (the encoder
fields) and to :class:`~RadSAMLib.session.Session` (the propagation fields). Spec strings
(``--strategy hybrid:5``, a prompts file, the Slicer module's setting) are parsed once,
when the config is made. Measured effects of the defaults are in docs/benchmark/.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from .clicks import ClickConfig
from .errors import RadSAMError
from .propagation import Strategy

# The fields SliceEngine reads; a Session's config must agree with its engine's on these.
ENGINE_FIELDS = ("prefetch_batch", "encoder_batch", "decoder_batch", "prefetch_memory_mb", "background_yield_s")


@dataclass(frozen=True)
class RadSAMConfig:
    """How RadSAM propagates, stops and encodes.

    Arguments:
      strategy (Strategy, str or None): how a slice's mask becomes the prompt of the next
        slice: ``mask``, ``box[:margin]``, ``mask+box[:margin[:grow]]`` or
        ``hybrid[:margin[:grow]]`` (see :mod:`RadSAMLib.propagation`); a spec string is
        parsed here. ``None`` (or ``"auto"``): the model's own default, named by its weights (the base
        LiteMedSAM's ``box``; the bundled RadSAM fine-tune's ``hybrid:5``).
      clicks (ClickConfig, str or None): how point-only prompts and correction clicks are
        answered (:mod:`RadSAMLib.clicks`): a preset name (``default``; ``unbounded``,
        clicks without the reach bound; ``legacy``, the rules before issue 12; both kept to
        be measured against) or a ``ClickConfig``.
        ``None``: ``default``.
      converge_dice (float): re-propagation after a correction click stops at the first
        slice whose new mask has at least this Dice with its old one: from there on the old
        result is what the new one would be, and rewriting it would only cost time.
      min_score (float): without bounds, propagation stops at the first slice whose
        predicted IoU is below this (the object has ended; the slice is cleared).
      min_pixels (int): ... or whose mask has fewer pixels. With bounds, a neighbour mask
        below this size makes the rest of the run empty instead (the object was lost).
      prefetch_batch (int or None): slices per encoder call when the engine encodes ahead
        of propagation in its background thread. ``None``: 16 on a CUDA device (one slice
        per call is launch-bound there), 1 elsewhere (the first slice is ready soonest).
      encoder_batch (int or None): the most slices the PyTorch encoder runs in one forward
        pass (bounds activation memory; larger calls are split). ``None``: 32 on a GPU, 1
        on the CPU. The ONNX Runtime path runs one slice at a time regardless.
      decoder_batch (bool): give the decoder a slice's prompts that have the same number of
        tokens in one call (hybrid's two prompts), where the decoder path takes batches;
        the answers are those of one call per prompt. False: one call per prompt.
      prefetch_memory_mb (float): background encoding
        (:meth:`~RadSAMLib.engine.SliceEngine.prefetch_around`) stops when the engine's
        embeddings reach this many MiB (about 2 MiB a slice in half precision). An
        interaction still encodes every slice it needs.
      background_yield_s (float): background encoding waits until no prediction has
        been asked for this many seconds (a running interaction comes first).
    """

    strategy: Strategy | None = None
    clicks: ClickConfig | None = None
    converge_dice: float = 0.99
    min_score: float = 0.5
    min_pixels: int = 1
    prefetch_batch: int | None = None
    encoder_batch: int | None = None
    decoder_batch: bool = True
    prefetch_memory_mb: float = 1024.0
    background_yield_s: float = 0.5

    def __post_init__(self):
        if self.strategy in ("", "auto"):
            object.__setattr__(self, "strategy", None)
        if self.strategy is not None and not isinstance(self.strategy, Strategy):
            object.__setattr__(self, "strategy", Strategy.parse(self.strategy))
        object.__setattr__(self, "clicks", ClickConfig.parse(self.clicks))
        if not 0.0 <= self.converge_dice <= 2.0:   # above 1: never converge (every slice rewritten)
            raise RadSAMError(f"converge_dice must be in 0..2, got {self.converge_dice}")
        for name in ("min_pixels", "prefetch_batch", "encoder_batch"):
            v = getattr(self, name)
            if v is not None and (int(v) != v or v < (0 if name == "min_pixels" else 1)):
                raise RadSAMError(f"{name} must be a {'non-negative' if name == 'min_pixels' else 'positive'} "
                                  f"integer, got {v}")

        for name in ("prefetch_memory_mb", "background_yield_s"):
            v = getattr(self, name)
            if not 0 <= v < float("inf"):   # NaN fails this too
                raise RadSAMError(f"{name} must be a finite number, not negative; got {v}")

    def engine_fields(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in ENGINE_FIELDS}

    def strategy_for(self, model) -> Strategy:
        """The configured strategy, or ``model``'s default."""
        return self.strategy or Strategy.parse(model.info.default_strategy)
