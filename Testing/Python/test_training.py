"""training/: prompt generation, the batched decode, the CPU smoke run, the shipped delta.

Real-slice runs use 4 abdominal slices (non-evaluation structures) with embeddings reused
from the session's ``abdomen_engine`` (no extra encoding). The default suite runs a few
training steps with correction rounds (the weights move, the delta loads); the longer
smoke runs (the loss on a fixed batch falls, distillation, full fine-tuning) are ``slow``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, dice

SMOKE = ROOT / "training" / "configs" / "smoke.json"
Z = (14, 18)   # smoke slices of the abdominal example


def test_noisy_mask_is_a_bounded_perturbation():
    from training.noise import NoiseSpec, noisy_mask
    rng = np.random.default_rng(0)
    gt = np.zeros((128, 128), bool)
    gt[40:70, 50:90] = True
    zero = NoiseSpec(0, 0, 0, 0)
    assert (noisy_mask(gt, rng, zero) == gt).all()
    d = [dice(noisy_mask(gt, rng), gt) for _ in range(50)]
    assert min(d) > 0.4 and max(d) < 1.0 and 0.6 < np.mean(d) < 0.95
    # a 3-pixel structure (a spinal cord at 4 mm) is never eroded away
    cord = np.zeros((64, 64), bool)
    cord[30:33, 30:33] = True
    assert all(noisy_mask(cord, rng).any() for _ in range(50))


def test_correction_point_lands_in_the_error():
    from training.noise import correction_point
    rng = np.random.default_rng(1)
    gt = np.zeros((64, 64), bool)
    gt[10:40, 10:40] = True
    prev = gt.copy()
    prev[10:40, 25:40] = False            # missed the right half
    (x, y), lab = correction_point(prev, gt, rng)
    assert lab == 1 and gt[int(y), int(x)] and not prev[int(y), int(x)]
    prev = gt.copy()
    prev[40:60, 10:40] = True             # leaked downward
    (x, y), lab = correction_point(prev, gt, rng)
    assert lab == 0 and prev[int(y), int(x)] and not gt[int(y), int(x)]


def test_error_click_is_the_deepest_point_of_the_largest_error():
    from training.noise import error_click
    rng = np.random.default_rng(0)
    gt = np.zeros((64, 64), bool)
    gt[10:50, 10:50] = True
    pred = gt.copy()
    pred[10:50, 30:50] = False            # missed a 40 x 20 strip (the largest error) ...
    pred[55:60, 55:60] = True             # ... and leaked a 5 x 5 blob
    for _ in range(10):
        (x, y), lab = error_click(pred, gt, rng, deepest_prob=1.0)
        assert lab == 1 and 39 <= x <= 40 and 19 <= y <= 40   # the strip's medial axis, away from its ends
    for _ in range(20):                   # the inner half of the same component
        (x, y), lab = error_click(pred, gt, rng, deepest_prob=0.0)
        assert lab == 1 and 34 <= x <= 45 and gt[int(y), int(x)] and not pred[int(y), int(x)]
    pred = gt.copy()
    pred[50:64, 10:50] = True             # a leak downward, touching the frame edge
    (x, y), lab = error_click(pred, gt, rng)
    assert lab == 0 and 55 <= y <= 58     # the frame edge is a border too
    valid = np.ones_like(gt)
    valid[50:] = False                    # ... unless it lies in the padding: then no error is left
    (x, y), lab = error_click(pred, gt, rng, valid=valid)
    assert lab == 1 and 29 <= x <= 30 and 29 <= y <= 30   # the object's own deepest point
    assert error_click(np.zeros_like(gt), np.zeros_like(gt), rng) is None


def test_point_start_prompt_is_inside_the_object():
    from training.validate import start_prompt
    gt = np.zeros((40, 60), bool)
    gt[5:35, 5:15] = True
    gt[10:30, 20:55] = True               # the wider part is the deeper one
    p = start_prompt(gt, "point")
    (x, y), = p.points
    assert p.labels == (1,) and p.box is None and 29 <= x <= 45 and 19 <= y <= 20
    assert start_prompt(gt, "point").points == p.points   # deterministic
    assert start_prompt(gt, "box").box == (5, 5, 54, 34)
    with pytest.raises(ValueError, match="start"):
        start_prompt(gt, "scribble")


def test_lone_point_loss_follows_the_multimask_rule():
    """A lone point is ambiguous: the best of the 3 alternatives is the answer and only it
    learns among them; otherwise the primary output is the answer."""
    from training.objective import chosen_output, loss_fn
    target = torch.zeros(1, 16, 16)
    target[0, 4:12, 4:12] = 1
    good, bad = target * 20 - 10, torch.full((1, 16, 16), -10.0)
    logits = torch.stack([bad, bad, good, bad], 1).requires_grad_(True)
    iou = torch.tensor([[0.0, 0.1, 0.9, 0.2]])
    amb, _ = loss_fn(logits, iou, target, alt_weight=0.5, iou_weight=0.0, ambiguous=True)
    plain, _ = loss_fn(logits, iou, target, alt_weight=0.5, iou_weight=0.0)
    assert amb < plain
    amb.backward()
    g = logits.grad.abs().flatten(2).sum(-1)[0]
    assert g[1] == 0 and g[3] == 0 and g[0] > 0     # the losing alternatives get no gradient
    assert torch.equal(chosen_output(logits, iou, True), logits[:, 2])
    assert torch.equal(chosen_output(logits, iou, False), logits[:, 0])


def test_rank_term_trains_the_score_head_to_put_the_best_mask_first():
    """The case clicks4 failed (a point in the gallbladder answered with the liver around
    it): the small organ's mask is there but scored last. The rank term is zero once the
    truly best output leads every other by their IoU gap, and its gradient alone moves
    the scores until that order holds; the masks' loss is not touched by it."""
    from training.objective import loss_fn, rank_loss, true_iou
    target = torch.zeros(1, 32, 32)
    target[0, 12:18, 12:18] = 1                            # the small organ
    enclosing = torch.zeros(1, 32, 32)
    enclosing[0, 4:28, 4:28] = 1                           # the large organ around it
    middle = torch.zeros(1, 32, 32)
    middle[0, 9:21, 9:21] = 1
    logits = torch.stack([enclosing, enclosing, middle, target], 1) * 20 - 10
    truth = true_iou(logits, target)
    assert truth.argmax().item() == 3
    ordered = torch.tensor([[0.05, 0.05, 0.2, 1.0]])
    assert rank_loss(ordered, truth) == 0
    scores = torch.tensor([[0.8, 0.7, 0.4, 0.2]], requires_grad=True)   # the enclosing organ first
    opt = torch.optim.SGD([scores], lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        loss = rank_loss(scores, truth)
        loss.backward()
        opt.step()
    assert scores.argmax().item() == 3 and rank_loss(scores, truth) == 0
    base, p0 = loss_fn(logits, ordered, target, iou_weight=0.0, ambiguous=True)
    ranked, p1 = loss_fn(logits, torch.tensor([[0.8, 0.7, 0.4, 0.2]]), target, iou_weight=0.0, ambiguous=True,
                         rank_weight=1.0)
    assert "rank" not in p0 and p1["rank"] > 0 and ranked > base and p1["alt"] == p0["alt"]


def test_uint8_pack_roundtrips_through_the_inference_window():
    from RadSAMLib.preprocess import Window
    from training.pack import u8_to_hu, window_u8
    hu = np.random.default_rng(0).uniform(-1000, 1000, (3, 8, 8)).astype(np.float32)
    u8 = window_u8(hu)
    assert np.allclose(Window().apply(u8_to_hu(u8)), u8 / 255.0, atol=1e-6)


@pytest.fixture(scope="module")
def smoke_data(abdomen, abdomen_engine, tmp_path_factory):
    """Tiny shards (train: non-evaluation structures; val: 2 evaluation organs) + an
    EmbeddingStore filled from the session's abdominal embeddings."""
    from training.data import EmbeddingStore, Shard
    from training.pack import ABDOMEN_EVAL_LABELS, pack_volume
    _, hu, lab, names = abdomen
    out = tmp_path_factory.mktemp("smoke")
    lo, hi = Z
    train = {v: n for v, n in names.items() if v not in ABDOMEN_EVAL_LABELS}
    pack_volume(hu[lo:hi], lab[lo:hi], train, out / "abdomen_train.npz", "smoke", pad=0)
    pack_volume(hu[lo:hi], lab[lo:hi], {2: "kidney_right", 52: "aorta"}, out / "abdomen_eval.npz", "smoke", pad=0)
    store = EmbeddingStore()
    emb = torch.cat([abdomen_engine.embedding(z) for z in range(lo, hi)])
    for name in ("abdomen_train", "abdomen_eval"):
        assert len(Shard.load(out / f"{name}.npz").ct) == hi - lo
        store.emb[name] = emb
    return out, store


def test_decode_batch_matches_single_decode(model, smoke_data):
    from training.config import Config
    from training.data import BatchStream, SampleIndex, batch_embeddings, load_shards
    from training.objective import decode_batch
    out, store = smoke_data
    shards = load_shards([out / "abdomen_train.npz"])
    cfg = Config(batch_size=2)
    stream = BatchStream(shards, SampleIndex(shards), cfg, seed=0, mask_size=model.mask_input_size)
    rng = np.random.default_rng(3)
    for _ in range(3):
        b = stream.batch(rng)
        emb = batch_embeddings(store, shards, b)
        with torch.no_grad():
            logits, iou = decode_batch(model, emb, b.get("box"), b.get("points"), b.get("labels"), b.get("mask"))
            for n in range(2):
                one = {k: b[k][n] for k in ("box", "points", "labels", "mask") if k in b}
                ref_l, ref_s = model.decode(emb[n:n + 1], **one)
                assert torch.allclose(logits[n], ref_l, atol=1e-3), b["kind"]
                assert torch.allclose(iou[n], ref_s, atol=1e-4)


@pytest.mark.slow
def test_smoke_training_loss_falls_and_export_loads(model, smoke_data, tmp_path, abdomen):
    from RadSAMLib.models import load_model
    from training.config import Config
    from training.data import load_shards
    from training.train import run
    out, store = smoke_data
    cfg = Config.load(SMOKE, shards=[str(out / "abdomen_train.npz")], val_shards=[str(out / "abdomen_eval.npz")],
                      out_dir=str(tmp_path / "run"), embed_cache="", steps=10, batch_size=2, lr=3e-4,
                      max_val_objects=1, val_every=10, prompt_mix={"mask": 1.0})
    fixed_loss = fixed_batch_loss(store, load_shards(cfg.shards), model.mask_input_size)
    before = fixed_loss(model)
    res = run(cfg, log=lambda *a: None, store=store)
    assert res["step"] == 10 and (tmp_path / "run" / "log.csv").is_file() and (tmp_path / "run" / "last.pt").is_file()
    path = Path(res["export"])
    assert path.stat().st_size < 10e6
    ft = load_model(str(path), device="cpu")
    assert ft.info.name == "radsam" and ft.info.mask_prompt_trained
    assert ft.info.extra["base_sha256"] == model.info.sha256
    after = fixed_loss(ft)
    assert after < 0.9 * before, (before, after)
    # ... and it predicts through the inference engine: a mask prompt on a real slice.
    assert_delta_predicts(ft, abdomen, store)


def fixed_batch_loss(store, shards, mask_size):
    """``loss(model)`` on one fixed batch of mask prompts from ``shards`` (the smoke
    trainings check that it falls)."""
    from training.config import Config
    from training.data import BatchStream, SampleIndex, batch_embeddings
    from training.objective import decode_batch, loss_fn
    fixed = BatchStream(shards, SampleIndex(shards), Config(batch_size=8, prompt_mix={"mask": 1.0}), seed=0,
                        mask_size=mask_size).batch(np.random.default_rng(7))

    def loss(m):
        with torch.no_grad():
            lg, iou = decode_batch(m, batch_embeddings(store, shards, fixed), mask=fixed["mask"])
            return loss_fn(lg, iou, fixed["target"])[0].item()
    return loss


def assert_delta_predicts(ft, abdomen, store, z=16):
    """A trained delta answers a mask prompt on a real slice of the smoke data (slice ``z``
    of the abdominal example, right kidney) through the inference engine, with the slice's
    embedding from the training store."""
    from RadSAMLib.engine import SliceEngine
    from RadSAMLib.prompts import SlicePrompt, box_of_mask
    _, hu, lab, _ = abdomen
    eng = SliceEngine(ft, hu, axis=0)
    eng.set_embeddings({z: store["abdomen_train"][z - Z[0]:z - Z[0] + 1]})
    gt = lab[z] == 2
    r = eng.predict(z, SlicePrompt(box=box_of_mask(gt, margin=2), mask=gt))
    assert r.masks.shape == (4,) + gt.shape and dice(r.mask, gt) > 0.7


WEIGHTS = ROOT / "RadSAMLib" / "weights" / "radsam_litemedsam.safetensors"


def test_correction_rounds_click_in_the_models_own_error(model, smoke_data):
    """Each round decodes the current prompt, then clicks in the error of that prediction
    and feeds the prediction back as the mask prompt (binary, empty in the padding)."""
    from training.config import Config
    from training.data import BatchStream, SampleIndex, batch_embeddings, load_shards
    from training.objective import chosen_output, correction_rounds, decode_batch
    out, store = smoke_data
    shards = load_shards([out / "abdomen_train.npz"])
    cfg = Config(batch_size=4, prompt_mix={"points": 1.0})
    b = BatchStream(shards, SampleIndex(shards), cfg, seed=0, mask_size=model.mask_input_size).batch(
        np.random.default_rng(5))
    emb = batch_embeddings(store, shards, b)
    n0 = b["points"].shape[1]
    p1 = correction_rounds(model, emb, b, 1, np.random.default_rng(0))
    p2 = correction_rounds(model, emb, b, 2, np.random.default_rng(0))
    assert p2["points"].shape == (4, n0 + 2, 2) and p2["labels"].shape == (4, n0 + 2)
    assert torch.equal(p2["points"][:, :n0 + 1], p1["points"])       # clicks accumulate
    with torch.no_grad():
        lg, iou = decode_batch(model, emb, None, p1["points"], p1["labels"], p1["mask"])
    pred = chosen_output(lg, iou) > 0
    assert torch.equal(p2["mask"].bool(), pred & b["valid"])       # round 2's mask = round 1's answer
    assert not p2["mask"][~b["valid"]].any()
    t = b["target"].bool()
    for n in range(4):
        x, y = (int(v) for v in p2["points"][n, -1])
        lab = bool(p2["labels"][n, -1])
        assert lab == bool(t[n, y, x])                      # positive inside the object, negative outside
        if (pred[n] ^ t[n])[b["valid"][n]].any():
            assert pred[n, y, x] != t[n, y, x]              # in the error of the model's own prediction


def test_training_step_with_click_rounds_moves_weights_and_exports(model, smoke_data, tmp_path):
    """A few real training steps (every batch with correction rounds, lone points among
    them): finite losses, the decoder moves, and the exported delta loads and records it."""
    from RadSAMLib.models import load_model
    from RadSAMLib.models.registry import read_delta
    from training.config import Config
    from training.train import run
    out, store = smoke_data
    cfg = Config.load(SMOKE, shards=[str(out / "abdomen_train.npz")], val_shards=[], out_dir=str(tmp_path / "run"),
                      embed_cache="", steps=3, batch_size=2, lr=1e-3, prompt_mix={"points": 0.5, "mask+box": 0.5},
                      click_rounds=2, click_prob=1.0, export_from="last", seed=1)
    res = run(cfg, log=lambda *a: None, store=store)
    assert res["step"] == 3 and all(np.isfinite(res["losses"]))
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert rows[0].split(",")[-1] == "rounds" and all(int(r.split(",")[-1]) >= 1 for r in rows[1:])
    tensors, record = read_delta(res["export"])
    own = dict(model.named_parameters())
    moved = [k for k, v in tensors.items() if not torch.allclose(v.float(), own[k].detach().float(), atol=1e-3)]
    assert any(k.startswith("mask_decoder.") for k in moved)
    assert record["config"]["click_rounds"] == 2
    ft = load_model(res["export"], device="cpu")
    assert ft.info.name == "radsam"
    with pytest.raises(ValueError, match="click_prob"):
        run(Config(click_prob=1.5, out_dir=str(tmp_path / "none")), log=lambda *a: None)
    assert not (tmp_path / "none").exists()


def test_bundled_delta_is_small_and_names_its_base():
    if not WEIGHTS.is_file():
        pytest.skip("no bundled RadSAM delta")
    from RadSAMLib.models.registry import read_delta
    tensors, record = read_delta(WEIGHTS)
    assert WEIGHTS.stat().st_size <= 10 * 2**20
    assert record["base_model"] == "litemedsam" and len(record["base_sha256"]) == 64
    from RadSAMLib.propagation import Strategy
    assert Strategy.parse(record["default_strategy"]).uses_mask   # a mask-prompt model propagates with masks
    assert record["ships_as_default"] and record["evaluation"]["file"]
    assert all(k.split(".")[0] in ("prompt_encoder", "mask_decoder") for k in tensors)
    assert all(t.dtype == torch.float16 for t in tensors.values())
    side = json.loads(WEIGHTS.with_suffix(".json").read_text())
    assert side["base_sha256"] == record["base_sha256"]


def test_bundled_delta_segments_a_real_organ(abdomen, default_model, default_engine):
    if not WEIGHTS.is_file():
        pytest.skip("no bundled RadSAM delta")
    from RadSAMLib.prompts import SlicePrompt, box_of_mask
    assert default_model.info.name == "radsam"   # the default is the bundled delta
    eng = default_engine
    lab = abdomen[2]
    gt = lab == 3                        # left kidney: the neighbour's mask prompts the next slice
    zs = np.nonzero(gt.reshape(len(gt), -1).any(1))[0]
    z = int(zs[len(zs) // 2])
    r = eng.predict(z, SlicePrompt(box=box_of_mask(gt[z - 1], margin=2), mask=gt[z - 1]))
    assert dice(r.mask, gt[z]) > 0.8


@pytest.mark.slow
def test_grown_mask_prompts_distillation_and_init_from(model, smoke_data, tmp_path):
    """``mask_prompt_grow`` grows every training mask prompt (and the shipped strategy says
    so); ``random_box`` batches (boxes of every size, anywhere) train toward the frozen base
    with ``distill_weight``; ``init_from`` starts from a delta."""
    from RadSAMLib.models import load_model
    from RadSAMLib.models.registry import read_delta
    from training.config import Config
    from training.data import load_shards, make_prompt
    from training.train import init_weights, run
    out, store = smoke_data
    sh = load_shards([out / "abdomen_train.npz"])[0]
    v = next(iter(sh.objects))
    z = int(sh.slices_of(v)[0])
    plain = make_prompt(sh, z, v, "mask+box", Config(), np.random.default_rng(3))
    grown = make_prompt(sh, z, v, "mask+box", Config(mask_prompt_grow=6.0), np.random.default_rng(3))
    assert plain["box"] == grown["box"]
    assert grown["mask"][plain["mask"]].all() and grown["mask"].sum() > plain["mask"].sum()
    rows, cols = sh.slice_shape
    boxes = [make_prompt(sh, z, v, "random_box", Config(), np.random.default_rng(i))["box"] for i in range(50)]
    assert all(0 <= x0 < x1 <= cols - 1 and 0 <= y0 < y1 <= rows - 1 for x0, y0, x1, y1 in boxes)
    widths = [x1 - x0 for x0, _, x1, _ in boxes]
    assert min(widths) < 0.2 * cols and max(widths) > 0.5 * cols  # every object size

    tensors, _ = read_delta(WEIGHTS)
    fresh = load_model("litemedsam", device="cpu")
    init_weights(fresh, Config(init_from=str(WEIGHTS)))
    own = fresh.state_dict()
    assert all(torch.equal(own[k], t.float()) for k, t in tensors.items())

    cfg = Config.load(SMOKE, shards=[str(out / "abdomen_train.npz")], val_shards=[str(out / "abdomen_eval.npz")],
                      out_dir=str(tmp_path / "run"), embed_cache="", steps=5, batch_size=2, max_val_objects=1,
                      val_every=5, prompt_mix={"mask+box": 0.5, "random_box": 0.5}, mask_prompt_grow=6.0, distill_weight=0.5,
                      init_from=str(WEIGHTS))
    res = run(cfg, log=lambda *a: None, store=store)
    with pytest.raises(ValueError, match="distill_weight"):  # refused before any work, not mid-run
        run(Config(prompt_mix={"random_box": 1.0}, out_dir=str(tmp_path / "none")), log=lambda *a: None)
    assert not (tmp_path / "none").exists()
    kinds = [line.split(",")[1] for line in (tmp_path / "run" / "log.csv").read_text().splitlines()[1:]]
    assert "random_box" in kinds and "mask+box" in kinds, kinds
    ft = load_model(res["export"], device="cpu")
    assert ft.info.default_strategy == "mask+box:5:6"
    assert ft.info.extra["config"]["init_from"] == str(WEIGHTS) and ft.info.extra["config"]["distill_weight"] == 0.5
    from training.export import export_checkpoint
    last = load_model(str(export_checkpoint(tmp_path / "run" / "last.pt", tmp_path / "last.safetensors")), device="cpu")
    assert last.info.extra["steps"] == 5 and last.info.default_strategy == "mask+box:5:6"


@pytest.mark.slow
def test_full_fine_tuning_trains_the_encoder_and_exports_it(model, smoke_data, tmp_path):
    """``train_parts`` with ``image_encoder`` (the GPU path's full fine-tune; here 2 CPU
    steps on real slices): the encoder's weights move, its BatchNorm statistics do not,
    and the exported delta carries the encoder and loads."""
    from RadSAMLib.accel.cache import weights_sha256
    from RadSAMLib.models import load_model
    from training.config import Config
    from training.train import run
    out, store = smoke_data
    cfg = Config.load(SMOKE, shards=[str(out / "abdomen_train.npz")], val_shards=[str(out / "abdomen_eval.npz")],
                      out_dir=str(tmp_path / "full"), embed_cache="", steps=2, batch_size=1, lr=1e-4,
                      max_val_objects=1, val_every=2, prompt_mix={"box": 1.0}, export_from="last",
                      train_parts=["image_encoder", "prompt_encoder", "mask_decoder"])
    res = run(cfg, log=lambda *a: None, store=store)
    ft = load_model(res["export"], device="cpu")
    assert weights_sha256(ft.image_encoder) != weights_sha256(model.image_encoder)
    # The trained state (with buffers) as saved for resuming: BatchNorm statistics unchanged.
    saved = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    base = model.state_dict()
    stats = [k for k in saved if k.startswith("image_encoder.") and "running_" in k]
    assert stats and all(torch.equal(saved[k], base[k]) for k in stats)
    from safetensors import safe_open
    with safe_open(res["export"], "pt") as f:
        assert any(k.startswith("image_encoder.") for k in f.keys())


def test_validation_during_training_decodes_with_the_live_weights(model, smoke_data):
    """A fast decoder (an exported graph) is built once per model object and keeps the
    weights it was built with: validation of a model in training must decode eagerly."""
    from training.data import load_shards
    from training.validate import engine_for
    out, store = smoke_data
    sh = load_shards([out / "abdomen_eval.npz"])[0]
    eng = engine_for(model, sh, store[sh.name], fast=False)
    assert eng.decode_fn == model.decode


def test_interpolated_delta_lies_between_base_and_delta(model, tmp_path):
    if not WEIGHTS.is_file():
        pytest.skip("no bundled RadSAM delta")
    from RadSAMLib.models import load_model
    from RadSAMLib.models.registry import read_delta
    from training.export import interpolate
    delta, _ = read_delta(WEIGHTS)
    base = {k: v.detach().to(torch.float16) for k, v in model.named_parameters() if k in delta}
    moved = [k for k in delta if not torch.equal(delta[k], base[k])]
    assert moved, "the bundled delta equals its base"
    out = {a: read_delta(interpolate(WEIGHTS, a, tmp_path / f"a{a}.safetensors", "mask+box:5")) for a in (0.0, 0.5, 1.0)}
    for k in moved[:20]:
        assert torch.equal(out[0.0][0][k], base[k])
        assert torch.equal(out[1.0][0][k], delta[k])
        mid = (base[k].float() + delta[k].float()) / 2
        assert torch.allclose(out[0.5][0][k].float(), mid, atol=2e-3, rtol=2e-3)
    rec = out[0.5][1]
    assert rec["interpolation"]["alpha"] == 0.5 and rec["default_strategy"] == "mask+box:5"
    assert len(rec["interpolation"]["delta_sha256"]) == 64
    m = load_model(str(tmp_path / "a0.5.safetensors"), device="cpu")
    assert m.info.default_strategy == "mask+box:5"
    with pytest.raises(ValueError, match="alpha"):
        interpolate(WEIGHTS, 1.5, tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()


def test_point_choice_primary_matches_the_slice_level_point_evaluation(model, smoke_data):
    """The diagnostic's "primary" reading is what the evaluator's slice-level point start
    gives (the inference engine keeps the primary output)."""
    from training.data import load_shards
    from training.point_choice import point_choice_dice
    from training.validate import object_dice
    out, store = smoke_data
    sh = load_shards([out / "abdomen_eval.npz"])[0]
    got = point_choice_dice(model, sh, store[sh.name])
    ref = np.mean([object_dice(model, sh, store[sh.name], v, "slice", fast=False, start="point") for v in sh.objects])
    assert abs(got["primary"] - ref) < 1e-6 and set(got) == {"primary", "alt_by_iou", "all_by_iou"}
