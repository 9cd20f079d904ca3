"""Faster inference paths for SAM-family models, chosen automatically, overridable.

* ``make_encoder(model, backend="auto")`` -> ``encode_fn`` for ``SliceEngine``.
* ``make_decoder(model, backend="auto")`` -> a drop-in for ``model.decode``.
* ``accelerate(model)`` -> the model with both replaced (pass it to ``SliceEngine`` or
  ``Session``).

Every path is checked against eager fp32 PyTorch (mask Dice >= 0.99 per slice on real CT,
Testing/Python/test_speed_paths.py), except ``onnx-int8`` (static int8, by name only), judged
by benchmark Dice against the truth instead (docs/benchmark/speed.md). Exported ONNX graphs are cached under
``~/.cache/radsam`` (``cache.py``).
"""
from .cache import cache_dir
from .select import (DECODER_BACKENDS, ENCODER_BACKENDS, AcceleratedModel, accelerate, available_decoders,
                     available_encoders, make_decoder, make_encoder)

__all__ = ["cache_dir", "make_encoder", "make_decoder", "accelerate", "AcceleratedModel",
           "available_encoders", "available_decoders", "ENCODER_BACKENDS", "DECODER_BACKENDS"]
