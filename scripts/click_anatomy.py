"""Where correction clicks gain and lose Dice: on the clicked slice, or on the slices
re-propagated after it. A diagnostic, not a benchmark.

    python3 scripts/click_anatomy.py ../shared/data/amos_ct --model radsam --clicks unbounded,default

Replays the benchmark's volume-level box start (``volume/box/auto``, the same seeded
prompts as ``radsam benchmark``) and its 5 challenge clicks per organ, once per click
inference preset (RadSAMLib/clicks.py), and splits each click's change of the organ's 3D
Dice into the clicked slice's part and the rest's. ``--verbose`` prints, for every click
that lowers Dice, what it did to its slice (pixels added or removed, how many of them
in the organ, the click's distance to the mask's edge). Docs: clicks.md, session 9.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from RadSAMBench.protocol import Protocol, Setting, _rng, body_slices, object_target  # noqa: E402
from RadSAMBench.user import challenge_click, choose_prompt_slice, make_prompt  # noqa: E402
from RadSAMLib.clicks import PRESETS  # noqa: E402
from RadSAMLib.config import RadSAMConfig  # noqa: E402
from RadSAMLib.engine import SliceEngine  # noqa: E402
from RadSAMLib.imageio import image_to_array, read_image, read_label  # noqa: E402
from RadSAMLib.models import load_model  # noqa: E402
from RadSAMLib.session import Session  # noqa: E402


def case_files(case: Path):
    """``(ct, seg, labels.json)`` of a case folder: ``ct.nii.gz``/``seg.nii.gz`` or one
    ``*_ct.nii.gz``/``*_seg.nii.gz`` pair."""
    cts = [case / "ct.nii.gz"] if (case / "ct.nii.gz").is_file() else sorted(case.glob("*_ct.nii.gz"))
    if len(cts) != 1 or not (case / "labels.json").is_file():
        sys.exit(f"click_anatomy: error: {case} must hold one CT (ct.nii.gz or *_ct.nii.gz), its *seg.nii.gz "
                 "and labels.json")
    seg = cts[0].with_name(cts[0].name.replace("ct.nii.gz", "seg.nii.gz"))
    if not seg.is_file():
        sys.exit(f"click_anatomy: error: {seg} not found")
    return cts[0], seg, case / "labels.json"


def dice3(m, g):
    return 2.0 * (m & g).sum() / max(1, m.sum() + g.sum())


def replay(engine, gt, bounds, case_name, name, preset, clicks=5):
    """The benchmark's box start and challenge clicks on one object; one dict per click."""
    protocol, setting = Protocol(), Setting.parse("volume/box/auto")
    lo, hi = bounds
    g = gt[lo:hi + 1].astype(bool)
    sess = Session(engine, RadSAMConfig(strategy=setting.strategy, clicks=preset))
    slab = sess.mask[lo:hi + 1]
    rng = _rng(0, case_name, name, setting.level, setting.prompt, "prompt")
    k0 = choose_prompt_slice(g, protocol.prompt_slice, rng) + lo
    sess.segment(k0, make_prompt(setting.prompt, gt[k0], rng, protocol.box_frac, protocol.box_max_px,
                                 protocol.point_inner, protocol.box_jitter), bounds=bounds)
    rows = []
    for n in range(clicks):
        ed = challenge_click(slab, g)
        if ed is None:
            break
        kk, (x, y), positive = ed
        before = slab.astype(bool)
        sess.edit(kk + lo, (x, y), positive=positive)
        after = slab.astype(bool)
        only_slice = before.copy()
        only_slice[kk] = after[kk]
        b2, a2, g2 = before[kk], after[kk], g[kk]
        rows.append({"organ": name, "click": n, "positive": bool(positive), "slice": kk + lo,
                     "total": dice3(after, g) - dice3(before, g),
                     "on_slice": dice3(only_slice, g) - dice3(before, g),
                     "elsewhere": dice3(after, g) - dice3(only_slice, g),
                     "added": int((a2 & ~b2).sum()), "added_in": int((a2 & ~b2 & g2).sum()),
                     "removed": int((b2 & ~a2).sum()), "removed_in": int((b2 & ~a2 & g2).sum()),
                     "edge_px": float(ndi.distance_transform_edt(~b2 if positive else b2)[int(y), int(x)])})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", help="a case folder: ct.nii.gz, seg.nii.gz and labels.json (or one *_ct/*_seg pair)")
    ap.add_argument("--model", default="radsam")
    ap.add_argument("--clicks", default="default", help=f"click presets, comma-separated ({', '.join(PRESETS)})")
    ap.add_argument("--labels", default=None, help="organ names, comma-separated (default: all)")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args(argv)
    presets = a.clicks.split(",")
    bad = [p for p in presets if p not in PRESETS]
    if bad:
        sys.exit(f"click_anatomy: error: unknown click preset(s) {bad} (choose {', '.join(PRESETS)})")
    case = Path(a.case)
    ct_file, seg_file, labels_file = case_files(case)
    names = {int(k): v for k, v in json.loads(labels_file.read_text()).items()}
    only = a.labels.split(",") if a.labels else list(names.values())
    unknown = [o for o in only if o not in names.values()]
    if unknown:
        sys.exit(f"click_anatomy: error: organ(s) {unknown} not in {labels_file}")
    img = read_image(ct_file)
    ct = image_to_array(img).astype(np.float32)
    lab = read_label(seg_file, img)
    engine = SliceEngine(load_model(a.model, device="cpu"), ct, axis=0)
    protocol = Protocol()
    body = body_slices(ct, protocol.body_hu, protocol.min_body_fraction)
    for preset in presets:
        rows, organs = [], 0
        for v, name in names.items():
            if name not in only:
                continue
            gt, bounds = object_target(lab, v, body)
            if bounds is None or not gt.any():
                continue
            organs += 1
            rows += replay(engine, gt, bounds, case.name, name, preset)
        lower = [r for r in rows if r["total"] < -1e-4]
        print(f"{preset}: {len(rows)} clicks on {organs} organs, mean gain per organ "
              f"{sum(r['total'] for r in rows) / max(1, organs):+.4f}; {len(lower)} lower Dice "
              f"(the clicked slice's part in {sum(r['on_slice'] < -1e-4 for r in lower)}, the re-propagated "
              f"slices' in {sum(r['elsewhere'] < -1e-4 for r in lower)}); gains / losses on the clicked slice "
              f"{sum(max(r['on_slice'], 0) for r in rows):+.4f} / {sum(min(r['on_slice'], 0) for r in rows):+.4f}, "
              f"elsewhere {sum(max(r['elsewhere'], 0) for r in rows):+.4f} / "
              f"{sum(min(r['elsewhere'], 0) for r in rows):+.4f}", flush=True)
        if a.verbose:
            for r in lower:
                print(f"  {r['organ']} click {r['click']} ({'+' if r['positive'] else '-'}, slice {r['slice']}, "
                      f"{r['edge_px']:.1f} px from the edge): {r['total']:+.4f} (slice {r['on_slice']:+.4f}, "
                      f"elsewhere {r['elsewhere']:+.4f}); added {r['added']} px ({r['added_in']} in the organ), "
                      f"removed {r['removed']} ({r['removed_in']} in the organ)")
    return 0


if __name__ == "__main__":
    from RadSAMLib.errors import RadSAMError
    try:
        sys.exit(main())
    except RadSAMError as e:  # an unknown model or a missing checkpoint: one line
        sys.exit(f"click_anatomy: error: {e}")
