"""Retrain LiteMedSAM's prompt encoder + mask decoder with RadSAM's noisy-mask prompts.

See ``training/README.md``. Modules: ``config`` (the run settings), ``pack`` (3D volumes ->
compact 2D sample shards), ``noise`` (prompt generation), ``data`` (shards, embeddings,
batches), ``train`` (the loop), ``validate`` (volume-level protocol), ``export``
(safetensors delta), ``evaluate`` (base vs fine-tuned table).
"""
