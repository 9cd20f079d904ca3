"""``radsam bench-speed``: how fast each inference path is, on real CT, in one run.

For each device present and each (encoder, decoder) path it measures, on one volume:

* ``encode ms/slice``: the image encoder alone on real slices (min / median of repeats;
  on a GPU, per slice of a batch);
* ``decode ms/slice``: ``SliceEngine.predict`` on a cached slice with a propagation prompt
  (prompt encoder + mask decoder + mapping the masks back to the slice);
* ``prop sl/s``: a volume-level propagation over ``--slices`` slices from cold (nothing
  encoded; the engine's background prefetch encodes in propagation order, so the decoder
  follows the encoder front), and its ratio to the encoder time alone (``N x`` median
  encode time; 1.0 = the decoder is fully hidden);
* ``edit sl/s``: a correction point on the prompt slice re-propagating over the whole
  range with cached embeddings;
* peak memory (process RSS high-water mark reset per path; CUDA max allocated), cold
  start (building the path, graph export included when not cached, + first slice);
* the ratio of each to the eager PyTorch baseline (``torch`` / ``eager``) of the same run.

The CPU is often shared: every time is the min (and median) of ``--repeats`` runs, and
the load average is printed. ``--memory-slices N`` adds a peak-memory check of an
``N``-slice 512x512 session (a real CT resampled to that size; embeddings past the first
``--memory-real`` are copies of real ones, the same bytes an encoder would produce).

``--felt`` measures what a user feels instead (issue 21), on the CPU: the time from a
prompt to the full 3D mask with nothing encoded and after the volume was open
``--open-s`` seconds with background encoding running, and the time of a typical
correction click (the CVPR 2025 challenge's clicks on the propagated result) and of a
forced whole-range edit, per decoder path with and without batched prompts. Every figure
is printed with the CPU's model name and reduced-precision flags.

``--felt-prefetch-cost`` measures what background encoding costs a running job (issue 21:
"never slower by more than 10%"): the same full propagation from the same encoded slices
with no background thread, with the engine's own look-ahead thread encoding a slice when
the prompt comes, and with another engine's look-ahead (which does not yield to the job)
encoding the same volume all through it; repeats interleaved, ratios per repeat.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from RadSAMLib import DEFAULT_MODEL
from RadSAMLib.accel.cpu import cpu_description  # every figure is printed with the CPU's flags
from RadSAMLib.metrics import dice

from .cli import _csv

# The liver of the abdominal example spans 62 coronal slices (axis 1): a 60-slice run of
# real CT slices (30 x 122 pixels each) on an object the base model follows reliably.
DEFAULT_VOLUME = "totalseg_example/ct.nii.gz"
DEFAULT_LABEL = 5
DEFAULT_AXIS = 1


# -- inputs ------------------------------------------------------------------------------
def data_root() -> Path:
    """``$RADSAM_DATA``, else ``../shared/data`` from the current folder (a checkout, as
    in the README's commands); never from where this package is installed."""
    env = os.environ.get("RADSAM_DATA")
    return Path(env) if env else Path.cwd().parent / "shared" / "data"


def load_volume(spec: str | None):
    """``(ct (k,j,i) float32 HU, label (k,j,i) int array or None, name)``.

    ``spec``: ``.npz`` with ``ct`` (and ``label``), a CT file (its label: a ``_ct`` file's
    ``_oar`` sibling, or ``seg.nii.gz`` beside ``ct.nii.gz``), or a path relative to the
    shared data folder (``openkbp/validation/pt_201``).
    """
    spec = spec or DEFAULT_VOLUME
    p = Path(spec)
    if p.suffix == ".npz":
        z = np.load(p)
        return z["ct"].astype(np.float32), (z["label"] if "label" in z else None), p.stem
    if not p.exists():
        base = data_root() / spec
        p = Path(str(base) + "_ct.nii.gz") if not base.exists() else base
    if not p.exists():
        from RadSAMLib.errors import ImageError
        raise ImageError(f"benchmark volume not found: {spec} (give a CT path, an .npz, or set RADSAM_DATA)")
    from RadSAMLib.imageio import image_to_array, read_image
    ct = image_to_array(read_image(p))
    lab_path = Path(str(p).replace("_ct.nii.gz", "_oar.nii.gz"))
    if p.name == "ct.nii.gz":
        lab_path = p.with_name("seg.nii.gz")
    label = None
    if lab_path != p and lab_path.exists():
        import SimpleITK as sitk
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(lab_path)))
    return ct, label, p.name.split(".")[0]


def pick_task(ct, label, label_value: int, n: int):
    """Prompt slice, its box (x0, y0, x1, y1) and inclusive bounds of an ``n``-slice run
    centred in the object's extent along axis 0 (the whole volume if no label)."""
    from RadSAMLib.prompts import box_of_mask
    if label is not None and (label == label_value).any():
        obj = label == label_value
        ks = np.where(obj.any(axis=(1, 2)))[0]
        lo, hi = int(ks.min()), int(ks.max())
    else:  # no label: a body box (HU > -300) on every slice
        obj = ct > -300
        lo, hi = 0, ct.shape[0] - 1
    if hi - lo + 1 > n:
        lo = (lo + hi + 1 - n) // 2
        hi = lo + n - 1
    mid = (lo + hi) // 2
    return mid, box_of_mask(obj[mid]), (lo, hi)


def random_sam(kind: str, device):
    """SAM ViT model with random weights (no checkpoint download: speed does not depend
    on the weights' values)."""
    from RadSAMLib.models.base import ModelInfo, SamFamilyModel
    from RadSAMLib.models.registry import _SAM_MEAN, _SAM_STD
    from RadSAMLib.models.sam_import import sam_model_registry
    torch.manual_seed(0)
    sam = sam_model_registry()[kind.replace("sam_", "")](checkpoint=None)
    info = ModelInfo(kind, 1024, "random", "random", mask_prompt_trained=False, default_strategy="box")
    return SamFamilyModel(sam.image_encoder, sam.prompt_encoder, sam.mask_decoder, info, _SAM_MEAN, _SAM_STD).eval().to(device)


# -- measurement helpers ---------------------------------------------------------------------
def reset_peak_rss() -> None:
    try:  # Linux: "5" resets the VmHWM high-water mark of this process
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, repeats: int, device) -> list[float]:
    out = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def loadavg() -> str:
    try:
        return "%.1f %.1f %.1f" % os.getloadavg()
    except OSError:
        return "n/a"


# -- one path ---------------------------------------------------------------------------------
def bench_path(base_model, enc_name, dec_name, ct, task, args, device, load_s):
    """One (encoder, decoder) path on one volume: a row of the table (see the module doc)."""
    start, box, (lo, hi) = task
    row = {"device": device.type, "encoder": enc_name, "decoder": dec_name, "slices": hi - lo + 1}
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    reset_peak_rss()
    model, eng = _cold_start(base_model, enc_name, dec_name, ct, task, args, device, load_s, row)
    _time_encoder(model, eng, ct, task, args, device, row)
    _time_decoder(eng, task, args, device, row)
    _time_propagation_and_edits(model, ct, task, args, device, row)
    row["peak_rss_mb"] = peak_rss_mb()
    if device.type == "cuda":
        row["cuda_max_alloc_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return row


def _cold_start(base_model, enc_name, dec_name, ct, task, args, device, load_s, row):
    """Build the paths (export included when the graph is not cached) + the first slice."""
    from RadSAMLib.accel import accelerate
    from RadSAMLib.engine import SliceEngine
    from RadSAMLib.prompts import SlicePrompt
    start, box, _ = task
    t0 = time.perf_counter()
    model = accelerate(base_model, enc_name, dec_name, threads=args.threads)
    eng = SliceEngine(model, ct, axis=0)
    eng.predict(start, SlicePrompt(box=box))
    sync(device)
    row["cold_start_s"] = load_s + time.perf_counter() - t0
    row["export_s"] = getattr(model.encode, "export_seconds", 0.0) + getattr(model.decode, "export_seconds", 0.0)
    row["encoder_backend"], row["decoder_backend"] = model.backends["encoder"], model.backends["decoder"]
    return model, eng


def _time_encoder(model, eng, ct, task, args, device, row):
    """The encoder alone, on real slices of the run (not the prompt slice: it is cached)."""
    start, _, (lo, hi) = task
    frame, win = eng.frame, eng.window
    ks = [k for k in range(lo, hi + 1) if k != start]
    if device.type == "cuda":
        B = min(args.batch, len(ks))
        batch = torch.stack([frame.image_to_model(win.apply(ct[ks[i % len(ks)]])) for i in range(B)])
        batch = batch.to(device).contiguous()
        model.encode(batch)  # warm-up at this batch size (cuDNN autotune, allocator)
        per = [t / B for t in timed(lambda: model.encode(batch), args.repeats, device)]
        row["encode_batch"] = B
    else:
        imgs = [frame.image_to_model(win.apply(ct[k]))[None] for k in ks[:args.repeats]]
        it = iter(imgs * 2)
        per = timed(lambda: model.encode(next(it)), args.repeats, device)
    row["encode_ms_min"], row["encode_ms_med"] = 1e3 * min(per), 1e3 * statistics.median(per)


def _time_decoder(eng, task, args, device, row):
    """A full predict on the cached prompt slice with a propagation-style prompt."""
    from RadSAMLib.prompts import SlicePrompt
    from RadSAMLib.session import Session
    start, box, _ = task
    strat = Session(eng).strategy
    first = eng.predict(start, SlicePrompt(box=box)).mask
    prompt = strat.prompt_from_mask(first, eng.frame.scale) if first.any() else SlicePrompt(box=box)
    eng.predict(start, prompt)
    dec = timed(lambda: eng.predict(start, prompt), max(5, 3 * args.repeats), device)
    row["decode_ms_min"], row["decode_ms_med"] = 1e3 * min(dec), 1e3 * statistics.median(dec)


def _time_propagation_and_edits(model, ct, task, args, device, row):
    """Volume-level propagation from cold (a fresh engine, empty cache, on the same model),
    then two correction clicks on the prompt slice, ``--prop-repeats`` times."""
    from RadSAMLib.engine import SliceEngine
    from RadSAMLib.prompts import SlicePrompt
    from RadSAMLib.session import Session
    start, box, (lo, hi) = task
    n = hi - lo + 1
    props, edits = [], []
    for r in range(args.prop_repeats):
        eng = SliceEngine(model, ct, axis=0)
        sess = Session(eng)
        order = [start] + list(range(start + 1, hi + 1)) + list(range(start - 1, lo - 1, -1))
        sync(device)
        t0 = time.perf_counter()
        if device.type == "cuda":  # batched half-precision encoding ahead of the propagation
            eng.encode_slices(order, batch_size=args.batch)
        ch = sess.segment(start, SlicePrompt(box=box), bounds=(lo, hi))
        sync(device)
        props.append(time.perf_counter() - t0)
        # The encoder's own time inside that run (prefetch thread + any slice the loop had
        # to encode itself): the same load conditions as the wall time, unlike the
        # separate encode timing, so their ratio shows the decoder's unhidden cost.
        row["prop_encode_s"] = eng.encode_seconds
        row["propagated"] = len(ch.slices)
        row["_masks"] = sess.mask[lo:hi + 1].astype(bool)
        if r == 0:  # the same box on every slice: encoder/decoder error without propagation's feedback
            row["_same"] = np.stack([eng.predict(k, SlicePrompt(box=box)).mask for k in range(lo, hi + 1)])
        row["nonempty"] = int(sum(sess.slice_mask(k).any() for k in range(lo, hi + 1)))
        edits.append(_time_edits(sess, task, device, row))
    row["prop_s_min"], row["prop_s_med"] = min(props), statistics.median(props)
    row["prop_slices_per_s"] = n / min(props)
    row["prop_over_encode"] = min(props) / (n * row["encode_ms_med"] / 1e3)
    row["prop_over_encode_in_run"] = props[-1] / max(row["prop_encode_s"], 1e-9)
    row["edit_s_min"], row["edit_s_med"] = min(edits), statistics.median(edits)
    row["edit_slices_per_s"] = row["edited"] / min(edits)


def _time_edits(sess, task, device, row) -> float:
    """A positive point at the centre of the prompt slice's mask. As a user makes it,
    re-propagation stops where the new masks agree with the old (``edit_conv``); the
    returned time is the worst case: a second click re-propagating over the whole range
    (the session's convergence stop disabled), all from cached embeddings."""
    start, box, _ = task
    m = sess.slice_mask(start)
    ys, xs = np.nonzero(m) if m.any() else (np.array([box[1], box[3]]), np.array([box[0], box[2]]))
    pt = (float(np.median(xs)), float(np.median(ys)))
    sync(device)
    t0 = time.perf_counter()
    # Slices re-run, not slices changed: a click where the mask already agrees changes no
    # voxel (an empty Change) but costs its whole re-propagation.
    n = sum(1 for _ in sess.edit_iter(start, pt, positive=True))
    sync(device)
    row["edit_conv_s"], row["edit_conv_slices"] = time.perf_counter() - t0, n
    sess.config = replace(sess.config, converge_dice=2.0)  # never "converged": every slice to both bounds
    sync(device)
    t0 = time.perf_counter()
    n = sum(1 for _ in sess.edit_iter(start, (pt[0] + 1, pt[1]), positive=True))
    sync(device)
    row["edited"] = n
    return time.perf_counter() - t0


def memory_check(base_model, ct, task, args, device):
    """Peak RSS of a ``--memory-slices`` session at 512x512 (auto paths)."""
    from RadSAMLib.accel import accelerate
    from RadSAMLib.engine import SliceEngine
    from RadSAMLib.prompts import SlicePrompt
    from RadSAMLib.session import Session
    import torch.nn.functional as F

    n = args.memory_slices
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    reset_peak_rss()
    base_rss = peak_rss_mb()
    vol = torch.from_numpy(np.ascontiguousarray(ct))[None, None]
    # int16 HU, as a CT comes from its file or from a Slicer volume node (not a float copy).
    vol = F.interpolate(vol.float(), size=(n, 512, 512), mode="trilinear", align_corners=False)[0, 0]
    vol = vol.round_().to(torch.int16).numpy()
    model = accelerate(base_model, "auto", "auto", threads=args.threads)
    eng = SliceEngine(model, vol, axis=0)
    sess = Session(eng)
    start, box, _ = task
    k0 = int(round((start + 0.5) * n / ct.shape[0] - 0.5))
    real = list(range(max(0, k0 - args.memory_real // 2), min(n, k0 + (args.memory_real + 1) // 2)))
    t0 = time.perf_counter()
    eng.encode_slices(real, batch_size=args.batch if device.type == "cuda" else 1)
    encode_s = time.perf_counter() - t0
    src = [eng.embedding(k) for k in real]
    copies = {k: src[k % len(src)].clone() for k in sorted(set(range(n)) - set(eng.cached_slices()))}
    eng.set_embeddings(copies)
    filled = len(copies)
    sx, sy = 512 / ct.shape[2], 512 / ct.shape[1]
    box = (box[0] * sx, box[1] * sy, min(511.0, box[2] * sx), min(511.0, box[3] * sy))
    t0 = time.perf_counter()
    sess.segment(k0, SlicePrompt(box=box), bounds=(0, n - 1))
    sess.edit(k0, ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2))
    cuda_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"slices": n, "shape": list(vol.shape), "cuda_max_alloc_mb": cuda_mb, "really_encoded": len(real), "copied_embeddings": filled,
            "encode_s": encode_s, "propagate_and_edit_s": time.perf_counter() - t0,
            "cache_mb": eng.cache_bytes() / 2**20, "volume_mb": vol.nbytes / 2**20,
            "peak_rss_mb": peak_rss_mb(), "rss_before_mb": base_rss,
            "undo_steps": len(sess._undo)}


def cold_start(args) -> int:
    """Model load + building the auto paths + the first slice, in this (fresh) process."""
    from RadSAMLib.accel import accelerate
    from RadSAMLib.engine import SliceEngine
    from RadSAMLib.models import load_model
    from RadSAMLib.prompts import SlicePrompt
    ct, label, name = load_volume(args.volume)
    start, box, _ = pick_task(ct, label, args.label, args.slices)
    dev = "cuda" if args.devices == "auto" and torch.cuda.is_available() else args.devices.split(",")[0].replace("auto", "cpu")
    t0 = time.perf_counter()
    model = random_sam(args.model, torch.device(dev)) if args.random_weights else load_model(args.model, args.checkpoint, device=dev)
    sync(model.device)
    t1 = time.perf_counter()
    fast = accelerate(model, "auto", "auto", threads=args.threads)
    t2 = time.perf_counter()
    r = SliceEngine(fast, ct, axis=0).predict(start, SlicePrompt(box=box))
    t3 = time.perf_counter()
    print(f"cold start on {dev} ({fast.backends['encoder']} / {fast.backends['decoder']}): model load {t1 - t0:.2f} s, "
          f"paths {t2 - t1:.2f} s (export {getattr(fast.encode, 'export_seconds', 0) + getattr(fast.decode, 'export_seconds', 0):.2f} s), "
          f"first slice {t3 - t2:.2f} s, total {t3 - t0:.2f} s (mask {int(r.mask.sum())} px)")
    return 0


# -- felt latency ------------------------------------------------------------------------------
def felt_latency(base_model, ct, label, task, args) -> list:
    """What a user feels (see ``--felt``). Returns one row per measured path.

    (a) prompt -> full 3D mask of the task's object: cold (nothing encoded; the path before
    issue 21), and after the volume has been open ``--open-s`` seconds with background
    encoding (``SliceEngine.prefetch_around``) from the prompt slice;
    (b) correction clicks with cached embeddings, per decoder path: ``--clicks`` clicks of
    the CVPR 2025 challenge's click model on the propagated result (median and max time
    from click to the last re-propagated slice, convergence stop on, as a user gets
    them), then a forced edit re-propagating the whole range (convergence stop off)."""
    from RadSAMLib.accel import accelerate
    from RadSAMLib.config import RadSAMConfig
    from RadSAMLib.engine import SliceEngine
    from RadSAMLib.prompts import SlicePrompt
    from RadSAMLib.session import Session

    from .user import challenge_click
    start, box, (lo, hi) = task
    fast = accelerate(base_model, "auto", "auto", threads=args.threads)
    prompt = SlicePrompt(box=box)
    rows = []

    def prompt_to_mask(eng):
        sess = Session(eng)
        t0 = time.perf_counter()
        sess.segment(start, prompt, bounds=(lo, hi))
        return time.perf_counter() - t0, sess

    eng = SliceEngine(fast, ct, axis=0)
    eng.predict(start, prompt)          # paths built and warm; the prompt slice itself is encoded
    eng = SliceEngine(fast, ct, axis=0)
    cold_s, _ = prompt_to_mask(eng)
    row = {"what": "prompt -> 3D mask, cold", "slices": hi - lo + 1, "s": cold_s, "encoded_before": 0,
           "encode_s_per_slice": eng.encode_seconds / max(1, eng.encode_count), "load": loadavg()}
    rows.append(row)
    print("# felt " + json.dumps(_rounded(row)), flush=True)

    eng = SliceEngine(fast, ct, axis=0)
    eng.prefetch_around(start)
    time.sleep(args.open_s)
    ready = len(eng.cached_slices())
    warm_s, _ = prompt_to_mask(eng)
    eng.stop_background()
    row = {"what": f"prompt -> 3D mask, volume open {args.open_s:g} s", "slices": hi - lo + 1, "s": warm_s,
           "encoded_before": ready, "x_cold": cold_s / warm_s, "load": loadavg()}
    rows.append(row)
    print("# felt " + json.dumps(_rounded(row)), flush=True)

    gt = None if label is None else (label[lo:hi + 1] == args.label)
    eng.encode_slices(range(lo, hi + 1))
    for dec in args.felt_decoders.split(","):
        for batched in (True, False):
            cfg = RadSAMConfig(decoder_batch=batched)
            e = SliceEngine(base_model, ct, axis=0, config=cfg, encode_fn=fast.encode, decoder_backend=dec)
            if batched and e.decode_batch_fn is None:
                continue                  # this decoder path takes no batches: its one row is below
            e.set_embeddings({k: eng.embedding(k) for k in range(lo, hi + 1)})   # the same encoder's
            s = Session(e, cfg)
            s.segment(start, prompt, bounds=(lo, hi))
            times, slices = [], []
            for _ in range(args.clicks if gt is not None else 0):
                ed = challenge_click(s.mask[lo:hi + 1], gt)
                if ed is None:
                    break
                k, xy, positive = ed
                t0 = time.perf_counter()
                slices.append(sum(1 for _ in s.edit_iter(k + lo, xy, positive)))
                times.append(time.perf_counter() - t0)
            s.config = replace(s.config, converge_dice=2.0)
            m = s.slice_mask(start)
            ys, xs = np.nonzero(m) if m.any() else ([box[1]], [box[0]])
            t0 = time.perf_counter()
            forced_n = sum(1 for _ in s.edit_iter(start, (float(np.median(xs)), float(np.median(ys))), True))
            forced = time.perf_counter() - t0
            row = {"what": "correction clicks", "decoder": getattr(e.decode_fn, "backend", dec),
                   "batched": e.decode_batch_fn is not None, "clicks": len(times),
                   "click_s_median": statistics.median(times) if times else float("nan"),
                   "click_s_max": max(times) if times else float("nan"),
                   "click_slices": slices, "forced_edit_s": forced, "forced_edit_slices": forced_n, "load": loadavg()}
            rows.append(row)
            print("# felt " + json.dumps(_rounded(row)), flush=True)
    return rows


# -- encoders side by side -----------------------------------------------------------------------
def compare_encoders(base_model, ct, task, args) -> list:
    """``--encoders A,B,...`` on the CPU: each encoder on the same real slices of the task
    (up to ``--slices`` of them, spread over its range), interleaved slice by slice and
    repeated ``--repeats`` times, so a shared machine's load falls on all of them alike.
    Per encoder: ms per slice (min, median), the ratio of the first encoder's median to
    its own (> 1: faster), and the relative embedding error ``|e - e_ref| / |e_ref|`` per
    slice (mean, max) against the first encoder."""
    from RadSAMLib.accel import make_encoder
    from RadSAMLib.engine import SliceEngine
    _, _, (lo, hi) = task
    names = _csv(args.encoders)
    encs = {n: make_encoder(base_model, n, threads=args.threads) for n in names}
    eng = SliceEngine(base_model, ct, axis=0, encode_fn=lambda x: x)
    ks = sorted({int(k) for k in np.linspace(lo, hi, min(args.slices, hi - lo + 1)).round()})
    images = [eng.frame.image_to_model(eng.window.apply(eng.slice(k)))[None] for k in ks]
    times = {n: [] for n in names}
    embs = {n: [encs[n](images[0])] for n in names}   # warm-up; slice 0's embedding kept
    for r in range(args.repeats):
        for i, img in enumerate(images):
            for n in names:
                t0 = time.perf_counter()
                e = encs[n](img)
                times[n].append(time.perf_counter() - t0)
                if r == 0 and i > 0:
                    embs[n].append(e)
    ref = names[0]
    rows = []
    for n in names:
        err = [float((a - b).norm() / b.norm()) for a, b in zip(embs[n], embs[ref])]
        rows.append({"encoder": n, "backend": encs[n].backend, "slices": len(ks), "repeats": args.repeats,
                     "export_s": getattr(encs[n], "export_seconds", 0.0),
                     "ms_min": 1e3 * min(times[n]), "ms_med": 1e3 * statistics.median(times[n]),
                     "speedup_vs_first": statistics.median(times[ref]) / statistics.median(times[n]),
                     "rel_err_mean": float(np.mean(err)), "rel_err_max": float(np.max(err))})
    return rows


def format_encoders(rows, cpu: str, load: str) -> str:
    lines = [f"CPU: {cpu}; load average at the end {load}",
             "| encoder | slices x repeats | ms/slice min (median) | speed-up vs first (medians) | embedding rel. error vs first: mean (max) |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['encoder']} | {r['slices']} x {r['repeats']} | {r['ms_min']:.0f} ({r['ms_med']:.0f}) | "
                     f"{r['speedup_vs_first']:.2f} | {r['rel_err_mean']:.4f} ({r['rel_err_max']:.4f}) |")
    return "\n".join(lines)


# -- what background encoding costs a running job ---------------------------------------------
LOOK_AHEAD_THREAD = "radsam-look-ahead"     # the name _background_loop's thread gets


def outward_order(centre: int, n: int) -> list:
    """Slices in the order ``SliceEngine.prefetch_around(centre)`` encodes them on an empty
    cache: ``centre``, ``+1``, ``-1``, ``+2``..."""
    out = [centre]
    for d in range(1, n):
        out += [k for k in (centre + d, centre - d) if 0 <= k < n]
    return out


def _traced_engine(model, ct):
    """A ``SliceEngine`` that records the slices its look-ahead thread encodes
    (``bg_log``, each as it begins), those other threads encode (``fg_log``: the job's),
    and says when the look-ahead begins its first one (``bg_started``)."""
    from RadSAMLib.engine import SliceEngine

    class Traced(SliceEngine):
        def _encode(self, indices):
            if threading.current_thread().name == LOOK_AHEAD_THREAD:
                self.bg_log.extend(indices)
                self.bg_started.set()
            else:
                self.fg_log.extend(indices)
            super()._encode(indices)

    eng = Traced(model, ct, axis=0)
    eng.bg_log, eng.fg_log, eng.bg_started = [], [], threading.Event()
    return eng


def prefetch_cost(base_model, ct, task, args) -> list:
    """What background encoding costs a running job (see ``--felt-prefetch-cost``).

    The job: the task's object propagated over its range (``Session.segment``, the
    encoder included) on a fresh engine whose only encoded slices are the first
    ``--cost-ready`` + 1 of the look-ahead's order (outward from the prompt slice). Per
    repeat, in turn (the order alternates between repeats):

    * ``none``: no background thread;
    * ``same engine``: the engine's own look-ahead (``prefetch_around(prompt slice)``)
      started with the first ``--cost-ready`` slices encoded; the prompt comes
      ``--cost-prompt-at`` of one slice's encoder time after it began the next one (0:
      as it began, so the job waits for the whole slice). That slice is the one the
      ``none`` engine has as its last ready slice: both jobs start from the same slices,
      and the difference is the thread's overhead (the wait for the slice in flight, its
      polling, the priority it runs at);
    * ``other engine``: the job's engine as for ``none``, while another engine over the
      same volume (its own cache: another volume's or other settings' look-ahead in
      Slicer) encodes from the prompt slice all through the job, prompted in the same way.
      Nothing makes it yield to this job: only its lowered priority protects the job.

    One row per job (``x_none``: its time over that repeat's ``none`` time), then one
    summary row per background with the ratios."""
    from RadSAMLib.accel import accelerate
    from RadSAMLib.engine import SliceEngine
    from RadSAMLib.prompts import SlicePrompt
    from RadSAMLib.session import Session

    start, box, (lo, hi) = task
    fast = accelerate(base_model, "auto", "auto", threads=args.threads)
    prompt = SlicePrompt(box=box)
    order = outward_order(start, ct.shape[0])
    m = max(0, min(args.cost_ready, len(order) - 1))
    ref = SliceEngine(fast, ct, axis=0)
    ref.predict(start, prompt)          # paths built and warm; the prompt slice is encoded
    ref.encode_slices(order[:m + 1])
    img = ref.frame.image_to_model(ref.window.apply(ref.slice(order[-1])))[None]
    t = time.perf_counter()
    fast.encode(img)                    # one warm slice: the encoder time the prompt delay is a share of
    enc_s = time.perf_counter() - t
    ready = {k: ref.embedding(k) for k in order[:m + 1]}
    delay = args.cost_prompt_at * enc_s
    scenarios = _csv(args.cost_backgrounds)
    names = {"none": "none", "same": "same engine's look-ahead", "other": "other engine's look-ahead"}
    print(f"# felt-prefetch: job = slices {lo}..{hi} from slice {start}, {m + 1} slice(s) ready "
          f"({order[:m + 1]}); encoder {enc_s:.3f} s/slice warm; prompt {delay:.3f} s after the "
          f"look-ahead began a slice", flush=True)

    def job(eng):
        sess = Session(eng)
        t = time.perf_counter()
        ch = sess.segment(start, prompt, bounds=(lo, hi))
        return time.perf_counter() - t, len(ch.slices), int(sess.mask.sum())

    def wait_started(bg):
        bg.bg_started.wait(timeout=600)
        time.sleep(delay)

    def one(kind, r):
        gc.collect()
        eng = _traced_engine(fast, ct)
        row = {"what": "prefetch cost", "background": names[kind], "repeat": r, "ready": m + 1}
        if kind == "same":
            eng.set_embeddings({k: ready[k] for k in order[:m]})
            eng.prefetch_around(start)
            wait_started(eng)
            bg = eng
            before = len(bg.bg_log)
        else:
            eng.set_embeddings(ready)
            bg = None
            if kind == "other":
                bg = _traced_engine(fast, ct)
                bg.prefetch_around(start)
                wait_started(bg)
                before = len(bg.bg_log)
            else:
                time.sleep(delay)
        row["load_before"] = loadavg()
        row["s"], row["slices"], row["mask_voxels"] = job(eng)   # the same job: the same voxels
        if bg is not None:
            bg.stop_background()
            # Begun by the prompt (the first one in flight), and by the end of the job.
            row["background_slices_at_prompt"], row["background_slices"] = before, len(bg.bg_log)
        row["job_encoded"] = len(eng.fg_log)
        row["load"] = loadavg()
        eng.close()
        return row

    rows = []
    kinds = ["none"] + scenarios
    for r in range(args.cost_repeats):
        per = {}
        for kind in (kinds if r % 2 == 0 else kinds[1:] + kinds[:1]):
            per[kind] = row = one(kind, r)
            rows.append(row)
        for kind, row in per.items():
            if kind != "none":
                row["x_none"] = row["s"] / per["none"]["s"]
        for row in per.values():
            print("# felt-prefetch " + json.dumps(_rounded(row)), flush=True)
    for kind in kinds:
        mine = [x for x in rows if x["background"] == names[kind] and x["what"] == "prefetch cost"]
        summ = {"what": "prefetch cost summary", "background": names[kind], "repeats": len(mine),
                "ready": m + 1, "slices": mine[0]["slices"] if mine else 0,
                "s_min": min(x["s"] for x in mine), "s_median": statistics.median(x["s"] for x in mine),
                "encode_s_per_slice": enc_s, "prompt_delay_s": delay}
        if kind != "none":
            ratios = [x["x_none"] for x in mine]
            base = [x for x in rows if x["background"] == "none" and x["what"] == "prefetch cost"]
            summ.update(x_none=ratios, x_none_median=statistics.median(ratios),
                        x_none_of_mins=summ["s_min"] / min(x["s"] for x in base),
                        background_slices=[x.get("background_slices", 0) for x in mine])
        rows.append(summ)
        print("# felt-prefetch " + json.dumps(_rounded(summ)), flush=True)
    return rows


def format_prefetch_cost(rows, cpu: str, load: str = "") -> str:
    summ = [r for r in rows if r["what"] == "prefetch cost summary"]
    first = summ[0] if summ else {}
    lines = [f"CPU: {cpu}" + (f"; load average {load}" if load else ""),
             f"job: {first.get('slices', 0)} slices propagated, {first.get('ready', 0)} encoded before the prompt; "
             f"encoder {first.get('encode_s_per_slice', float('nan')):.2f} s/slice; prompt "
             f"{first.get('prompt_delay_s', float('nan')):.2f} s after the look-ahead began a slice", "",
             "| background during the job | repeats | job s min (median) | x none per repeat | x none median "
             "(of mins) | slices the background began (by the job's end) |", "|---|---|---|---|---|---|"]
    for r in summ:
        if "x_none" in r:
            ratios = ", ".join("%.3f" % x for x in r["x_none"])
            lines.append("| %s | %d | %.2f (%.2f) | %s | %.3f (%.3f) | %s |" % (
                r["background"], r["repeats"], r["s_min"], r["s_median"], ratios, r["x_none_median"],
                r["x_none_of_mins"], ", ".join(map(str, r["background_slices"]))))
        else:
            lines.append("| %s | %d | %.2f (%.2f) | - | - | - |" % (r["background"], r["repeats"], r["s_min"],
                                                                    r["s_median"]))
    return "\n".join(lines)


def _rounded(row: dict) -> dict:
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}


def format_felt(rows, cpu: str) -> str:
    lines = [f"CPU: {cpu}", "", "| what | slices | seconds | slices encoded before the prompt | x cold |", "|---|---|---|---|---|"]
    for r in rows:
        if r["what"].startswith("prompt"):
            lines.append("| %s | %d | %.1f | %d | %s |" % (r["what"], r["slices"], r["s"], r["encoded_before"],
                                                         "%.2f" % r["x_cold"] if "x_cold" in r else "-"))
    lines += ["", "| decoder | batched prompts | challenge clicks | click s median (max) | slices re-run per click | "
                  "forced edit s (slices) |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["what"] == "correction clicks":
            lines.append("| %s | %s | %d | %.2f (%.2f) | %s | %.2f (%d) |" % (
                r["decoder"], "yes" if r["batched"] else "no", r["clicks"], r["click_s_median"], r["click_s_max"],
                ",".join(map(str, r["click_slices"])), r["forced_edit_s"], r["forced_edit_slices"]))
    return "\n".join(lines)


# -- table -----------------------------------------------------------------------------------
def format_table(rows) -> str:
    base = {r["device"]: r for r in rows if r["encoder"] == "torch" and r["decoder"] == "eager"}
    hdr = ("| device | encoder | decoder | encode ms/slice min (med) | decode ms/slice min (med) | "
           "propagation sl/s (N) | prop / encode-alone (in-run) | full edit re-prop sl/s (s, slices) | peak RSS MB | CUDA max MB | "
           "cold start s (export s) | x eager: encode / decode / prop / edit | propagated slice Dice vs eager min (mean) | same-box slice Dice min |")
    lines = [hdr, "|" + "---|" * (hdr.count("|") - 1)]
    for r in rows:
        b = base.get(r["device"])
        if b:
            ratio = "%.2f / %.2f / %.2f / %.2f" % (b["encode_ms_med"] / r["encode_ms_med"], b["decode_ms_med"] / r["decode_ms_med"],
                                                   r["prop_slices_per_s"] / b["prop_slices_per_s"],
                                                   r["edit_slices_per_s"] / b["edit_slices_per_s"])
        else:
            ratio = "n/a"
        enc = "%.1f (%.1f)" % (r["encode_ms_min"], r["encode_ms_med"])
        if "encode_batch" in r:
            enc += " b%d" % r["encode_batch"]
        dice_cell = "%.4f (%.4f) | %.4f" % (r["dice_vs_eager_min"], r["dice_vs_eager_mean"], r["same_box_dice_min"]) if "dice_vs_eager_min" in r else "- | -"
        lines.append("| %s | %s | %s | %s | %.1f (%.1f) | %.1f (%d) | %.2f (%s) | %.1f (%.2f, %d) | %.0f | %s | %.2f (%.1f) | %s | %s |" % (
            r["device"], r["encoder_backend"], r["decoder_backend"], enc, r["decode_ms_min"], r["decode_ms_med"],
            r["prop_slices_per_s"], r["slices"], r["prop_over_encode"], "%.2f" % r["prop_over_encode_in_run"] if "prop_over_encode_in_run" in r else "-", r["edit_slices_per_s"], r["edit_s_min"], r["edited"],
            r["peak_rss_mb"], "%.0f" % r["cuda_max_alloc_mb"] if "cuda_max_alloc_mb" in r else "-",
            r["cold_start_s"], r["export_s"], ratio, dice_cell))
    return "\n".join(lines)


# -- CLI -------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help="radsam (default), litemedsam, sam_vit_b/l/h")
    p.add_argument("--checkpoint", help="weights for sam_vit_* (or use --random-weights)")
    p.add_argument("--random-weights", action="store_true", help="SAM ViT with random weights (speed only)")
    p.add_argument("--devices", default="auto", help="comma list: cpu,cuda (auto: cpu, plus cuda if present)")
    p.add_argument("--paths", default="auto",
                   help="comma list of ENCODER:DECODER paths (auto: torch:eager baseline, then every faster one available; none: no path rows)")
    p.add_argument("--volume", help=f"CT (.nii.gz/.nrrd/.npz or shared-data relative; default {DEFAULT_VOLUME})")
    p.add_argument("--label", type=int, default=DEFAULT_LABEL, help="label value of the propagated object")
    p.add_argument("--axis", type=int, default=DEFAULT_AXIS, choices=(0, 1, 2),
                   help=f"propagation axis of the (k, j, i) volume (default {DEFAULT_AXIS})")
    p.add_argument("--slices", type=int, default=60, help="slices in the propagation / edit run")
    p.add_argument("--repeats", type=int, default=3, help="repeats of each encode/decode timing (min and median)")
    p.add_argument("--prop-repeats", type=int, default=1, help="repeats of the propagation + edit run")
    p.add_argument("--batch", type=int, default=64, help="GPU encoder batch size")
    p.add_argument("--threads", type=int, help="CPU threads (default: all usable cores)")
    p.add_argument("--memory-slices", type=int, default=0, help="also measure peak RSS of an N-slice 512x512 session")
    p.add_argument("--memory-real", type=int, default=8, help="slices really encoded in the memory check (the rest are copies)")
    p.add_argument("--cold-only", action="store_true", help="only time model load + auto paths + first slice (run in a fresh process)")
    p.add_argument("--felt", action="store_true",
                   help="felt latency instead of the path table: prompt -> 3D mask cold and after the volume was open "
                        "--open-s seconds with background encoding; challenge-click and forced-edit times per decoder")
    p.add_argument("--open-s", type=float, default=60.0, help="--felt: seconds the volume is open before the prompt")
    p.add_argument("--clicks", type=int, default=5, help="--felt: challenge clicks timed")
    p.add_argument("--felt-decoders", default="auto,eager",
                   help="--felt: decoder paths whose clicks are timed, each with and without batched prompts where it "
                        "takes batches (default auto,eager)")
    p.add_argument("--encoders", default=None, metavar="A,B,...",
                   help="instead of the path table: these CPU encoder backends timed side by side, interleaved slice "
                        "by slice on --slices real slices x --repeats (e.g. onnx,onnx-int8), with each one's "
                        "embedding error against the first")
    p.add_argument("--felt-prefetch-cost", action="store_true",
                   help="what background encoding costs a running job: the same full propagation from the same "
                        "encoded slices with no background thread, with the engine's own look-ahead running when "
                        "the prompt comes, and with another engine's look-ahead encoding the volume all through it "
                        "(repeats interleaved; with --felt, after its figures)")
    p.add_argument("--cost-repeats", type=int, default=3, help="--felt-prefetch-cost: repeats of each job (interleaved)")
    p.add_argument("--cost-ready", type=int, default=0,
                   help="--felt-prefetch-cost: slices the look-ahead has encoded before the one in flight at the prompt "
                        "(default 0: the job starts from cold but for that one)")
    p.add_argument("--cost-prompt-at", type=float, default=0.0,
                   help="--felt-prefetch-cost: when the prompt comes, as a share of one slice's encoder time after the "
                        "look-ahead began a slice (default 0: the job waits for the whole slice)")
    p.add_argument("--cost-backgrounds", default="same,other",
                   help="--felt-prefetch-cost: backgrounds compared with none: same (the engine's own look-ahead), "
                        "other (another engine's over the same volume)")
    p.add_argument("--json", help="write all figures to this JSON file")


def check_options(args) -> None:
    """Refuse bad ``--encoders`` / ``--felt-prefetch-cost`` options by name, before the
    volume is read or a model loads."""
    from RadSAMLib.accel.select import check_encoder_option
    from RadSAMLib.errors import RadSAMError
    if args.encoders is not None:
        if not _csv(args.encoders):
            raise RadSAMError("--encoders needs at least one encoder backend (e.g. onnx,onnx-int8)")
        for n in _csv(args.encoders):
            check_encoder_option("--encoders", n)
    if args.felt_prefetch_cost:
        if not 0 <= args.cost_prompt_at < 1:
            raise RadSAMError("--cost-prompt-at is a share of one slice's encoder time: 0 <= it < 1")
        for b in _csv(args.cost_backgrounds):
            if b not in ("same", "other"):
                raise RadSAMError(f"--cost-backgrounds: unknown background '{b}' (choose same, other)")


def default_paths(model, device) -> list[tuple[str, str]]:
    from RadSAMLib.accel import available_decoders, available_encoders
    enc, dec = available_encoders(model, device), available_decoders(model, device)
    paths = [("torch", "eager")]
    if device.type == "cpu":
        for e in ("onnx", "openvino"):   # (onnx-int8: not faster here; --encoders or --paths)
            if e in enc:
                paths.append((e, "onnx" if "onnx" in dec else "torch"))
    elif device.type == "cuda":
        paths += [("torch-fp16", "torch"), ("torch-fp16", "cuda-graph")]
    return paths


def run(args) -> int:
    from RadSAMLib.models import load_model
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cold_only:
        return cold_start(args)
    check_options(args)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) if args.devices == "auto" else args.devices.split(",")
    ct, label, name = load_volume(args.volume)
    axial = (ct, label)  # the memory check resamples the volume as read (axial slices)
    if args.axis:  # the propagation axis first: slice k of the result is the engine's slice k on that axis
        ct = np.ascontiguousarray(np.moveaxis(ct, args.axis, 0))
        label = None if label is None else np.ascontiguousarray(np.moveaxis(label, args.axis, 0))
        name += f" axis {args.axis}"
    task = pick_task(ct, label, args.label, args.slices)
    cpu = cpu_description()
    print(f"# radsam bench-speed: {args.model} on {name} {tuple(ct.shape)}, slices {task[2][0]}..{task[2][1]} "
          f"(prompt {task[0]}), torch {torch.__version__}, {cpu}, {os.cpu_count()} cpus, load {loadavg()}", flush=True)
    if args.encoders:
        model = load_model(args.model, checkpoint=args.checkpoint, device="cpu")
        rows = compare_encoders(model, ct, task, args)
        print(format_encoders(rows, cpu, loadavg()))
        if args.json:
            Path(args.json).write_text(json.dumps({"encoders": rows, "cpu": cpu, "volume": name, "model": args.model,
                                                   "torch": torch.__version__}, indent=1))
        return 0
    if args.felt or args.felt_prefetch_cost:
        model = random_sam(args.model, torch.device("cpu")) if args.random_weights else \
            load_model(args.model, checkpoint=args.checkpoint, device="cpu")
        out = {"cpu": cpu, "volume": name, "model": args.model, "torch": torch.__version__}
        if args.felt:
            out["felt"] = rows = felt_latency(model, ct, label, task, args)
            print(format_felt(rows, cpu))
        if args.felt_prefetch_cost:
            out["prefetch_cost"] = rows = prefetch_cost(model, ct, task, args)
            print(format_prefetch_cost(rows, cpu, loadavg()))
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1))
        return 0
    rows, mem = [], []
    for dev_name in devices:
        device = torch.device(dev_name)
        t0 = time.perf_counter()
        if args.random_weights:
            model = random_sam(args.model, device)
        else:
            model = load_model(args.model, checkpoint=args.checkpoint, device=dev_name)
        sync(device)
        load_s = time.perf_counter() - t0
        if device.type == "cuda":
            print(f"# {torch.cuda.get_device_name(device)}, model load {load_s:.2f} s", flush=True)
        ref_masks = ref_same = None
        if args.paths == "none":  # e.g. only the memory check
            paths = []
        elif args.paths == "auto":
            paths = default_paths(model, device)
        else:
            paths = [tuple(p.split(":")) for p in args.paths.split(",")]
        for enc, dec in paths:
            t0 = time.perf_counter()
            try:
                r = bench_path(model, enc, dec, ct, task, args, device, load_s)
            except Exception as e:  # noqa: BLE001 - one failing path must not hide the others
                print(f"# {dev_name} {enc}:{dec} failed: {type(e).__name__}: {e}", flush=True)
                continue
            r["load"] = loadavg()
            masks, same = r.pop("_masks"), r.pop("_same")
            if (enc, dec) == ("torch", "eager"):
                ref_masks, ref_same = masks, same
            elif ref_masks is not None:  # agreement with eager fp32 after the whole propagation
                d = [dice(a, b) for a, b in zip(masks, ref_masks)]
                r["dice_vs_eager_min"], r["dice_vs_eager_mean"] = float(min(d)), float(np.mean(d))
                d = [dice(a, b) for a, b in zip(same, ref_same) if a.sum() + b.sum() >= 20]
                r["same_box_dice_min"] = float(min(d)) if d else float("nan")
            rows.append(r)
            print(f"# {dev_name} {enc}:{dec} done in {time.perf_counter() - t0:.0f} s (load {r['load']}): "
                  + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
        if args.memory_slices:
            try:
                m = memory_check(model, axial[0], pick_task(axial[0], axial[1], args.label, 10**6), args, device)
                m["device"] = dev_name
                mem.append(m)
                print(f"# memory ({dev_name}): " + json.dumps({k: (round(v, 1) if isinstance(v, float) else v) for k, v in m.items()}), flush=True)
            except Exception as e:  # noqa: BLE001
                print(f"# memory check failed: {type(e).__name__}: {e}", flush=True)
        del model
    print(format_table(rows))
    for m in mem:
        print(f"peak RSS of a {m['slices']}-slice {m['shape'][1]}x{m['shape'][2]} session ({m['device']}, auto paths): "
              f"{m['peak_rss_mb']:.0f} MB (embedding cache {m['cache_mb']:.0f} MB, volume {m['volume_mb']:.0f} MB)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "memory": mem, "volume": name,
                                               "model": args.model, "torch": torch.__version__}, indent=1))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="radsam bench-speed", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
