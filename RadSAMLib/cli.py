"""The ``radsam`` command line.

    radsam segment IMAGE -o MASK --slice K --box X0 Y0 X1 Y1 [--bounds KMIN KMAX] ...
    radsam info
    radsam benchmark ...      (RadSAMLib.benchmark)
    radsam bench-speed ...    (RadSAMLib.speedbench)

Prompts are voxel indices: ``--slice`` indexes the propagation axis (default: the
volume's slice axis, k), ``x``/``y`` are the column/row of that slice (i/j for axis k).
A problem with the input prints one line ``radsam: error: ...`` and exits with code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from . import DEFAULT_MODEL, __version__
from .errors import PromptError, RadSAMError
from .prompts import SlicePrompt

EXIT_USAGE = 2


# -- prompt assembly ---------------------------------------------------------------------
def _prompt_spec(args) -> dict:
    """Merge a ``--prompts`` JSON file with the flags (flags win)."""
    spec: dict = {}
    if args.prompts:
        try:
            spec = json.loads(Path(args.prompts).read_text())
        except FileNotFoundError:
            raise RadSAMError(f"prompts file not found: {args.prompts}")
        except json.JSONDecodeError as e:
            raise RadSAMError(f"prompts file {args.prompts} is not valid JSON (line {e.lineno}: {e.msg})")
        if not isinstance(spec, dict):
            raise RadSAMError(f"prompts file {args.prompts} must hold a JSON object")
    if args.slice is not None:
        spec["slice"] = args.slice
    if args.box is not None:
        spec["box"] = args.box
    pts = [(p, 1) for p in (args.point or [])] + [(p, 0) for p in (args.negative_point or [])]
    if pts:
        spec["points"] = [p for p, _ in pts]
        spec["labels"] = [lab for _, lab in pts]
    if args.bounds is not None:
        spec["bounds"] = args.bounds
    if args.edit:
        spec["edits"] = [_parse_edit(e) for e in args.edit]
    return spec


def _parse_edit(e) -> dict:
    k, x, y, sign = e
    if sign not in ("+", "-"):
        raise RadSAMError(f"--edit takes K X Y +|-, got sign '{sign}'")
    try:
        return {"slice": int(k), "point": [float(x), float(y)], "positive": sign == "+"}
    except ValueError:
        raise RadSAMError(f"--edit takes K X Y +|- with numbers, got {' '.join(e)}")


def _slice_prompt(d: dict, mask=None) -> SlicePrompt:
    pts = [tuple(float(v) for v in p) for p in d.get("points", [])]
    labels = [int(v) for v in d.get("labels", [1] * len(pts))]
    box = tuple(float(v) for v in d["box"]) if d.get("box") is not None else None
    return SlicePrompt(box=box, points=pts, labels=labels, mask=mask)


# -- commands ----------------------------------------------------------------------------
def _window(text, volume, axis, prompts):
    """The intensity window ``--window`` names; ``auto``: spanning the prompt regions."""
    from .engine import slice_index
    from .preprocess import Window, prompt_region
    if text != "auto":
        try:
            return Window.parse(text)
        except ValueError as e:
            raise RadSAMError(str(e)) from None
    regions = [prompt_region(volume[slice_index(axis, k)], p.box, p.points, p.mask).ravel() for k, p in prompts.items()]
    return Window.from_region(np.concatenate(regions))


def cmd_segment(args) -> int:
    from .engine import check_slice_index, slice_index
    from .imageio import image_to_array, read_image, read_label, write_mask
    from .models import load_model
    from .session import Session, check_bounds

    out = Path(args.output)
    if out.exists() and not args.force:
        raise RadSAMError(f"output {out} exists; use --force to overwrite it")
    if not out.parent.is_dir():
        raise RadSAMError(f"output folder {out.parent} does not exist")
    spec = _prompt_spec(args)

    image = read_image(args.image)
    volume = image_to_array(image)
    reference = read_label(args.reference, image) if args.reference else None
    if reference is not None and args.label is None:
        raise RadSAMError("--reference needs --label N (the label value of the object)")
    axis = args.axis
    n = volume.shape[axis]

    mask_prompt = None
    if args.mask_prompt:
        mp = read_label(args.mask_prompt, image) > 0
        if not mp.any():
            raise PromptError(f"mask prompt {args.mask_prompt} is empty")
        if "slice" not in spec:  # the mask's largest slice is the natural prompt slice
            areas = mp.sum(axis=tuple(a for a in range(3) if a != axis))
            spec["slice"] = int(np.argmax(areas))
        mask_prompt = mp[slice_index(axis, int(spec["slice"]))]

    slices = spec.get("slices")  # slice-level prompting: {"k": {box/points}}
    if slices is None and "slice" not in spec:
        raise PromptError("give the prompt slice: --slice K (or \"slice\" in the prompts file)")

    # Check every prompt against the image before the model is loaded: errors come fast.
    shape = tuple(s for a, s in enumerate(volume.shape) if a != axis)
    bounds = None
    if slices is not None:
        prompts = {}
        for key, v in slices.items():
            k = check_slice_index(key, n, axis, "prompt slice")
            prompts[k] = _slice_prompt(v).validate(shape, f"slice {k}")
    else:
        k = check_slice_index(spec["slice"], n, axis, "prompt slice")
        prompt = _slice_prompt(spec, mask_prompt).validate(shape, f"slice {k}")
        bounds = check_bounds(spec.get("bounds"), n, k)
    for e in spec.get("edits", []):
        ek = int(e["slice"])
        lo, hi = bounds or (0, n - 1)
        if not lo <= ek <= hi:
            raise PromptError(f"edit slice {ek} is outside {'the bounds' if bounds else 'the volume'} ({lo}..{hi})")
        SlicePrompt(points=[tuple(e["point"])], labels=[1]).validate(shape, f"edit slice {ek}")

    window = _window(args.window, volume, axis, prompts if slices is not None else {k: prompt})

    t0 = time.perf_counter()
    model = load_model(args.model, checkpoint=args.checkpoint, device=args.device)
    t_load = time.perf_counter() - t0

    bar = _ProgressBar(enabled=not args.quiet)
    session = Session(model, volume, axis=axis, strategy=args.strategy, progress=bar.update, window=window,
                      encoder_backend=args.encoder_backend, decoder_backend=args.decoder_backend)
    t1 = time.perf_counter()
    try:
        if slices is not None:
            session.segment_slices(prompts)
        else:
            session.segment(k, prompt, bounds=bounds)
        for e in spec.get("edits", []):
            bar.label = f"edit slice {e['slice']}"
            session.edit(int(e["slice"]), tuple(e["point"]), bool(e.get("positive", True)))
    finally:
        bar.close()
    t_seg = time.perf_counter() - t1

    write_mask(session.mask, image, out, force=args.force)
    eng = session.engine
    per_slice = eng.encode_seconds / max(1, eng.encode_count)
    print(f"wrote {out}  ({int(session.mask.sum())} voxels on {int(np.count_nonzero(session.mask.any(axis=tuple(a for a in range(3) if a != axis))))} slices)")
    print(f"model {model.info.name} on {model.device}, strategy {session.strategy.spec()}; "
          f"load {t_load:.1f} s, segmentation {t_seg:.1f} s, encoder ({getattr(eng.encode_fn, 'backend', 'torch')}) "
          f"{per_slice:.2f} s/slice over {eng.encode_count} slices")
    if reference is not None:
        from .metrics import dice
        print(f"3D Dice vs {args.reference} label {args.label}: {dice(session.mask, reference == args.label):.4f}")
    return 0


def cmd_info(args) -> int:
    import platform

    import torch

    from .models import load_model, pick_device

    print(f"radsam {__version__}  (python {platform.python_version()}, torch {torch.__version__})")
    dev = pick_device(args.device)
    extra = f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""
    print(f"device: {dev}{extra}; CPU threads: {torch.get_num_threads()}")
    model = load_model(args.model, checkpoint=args.checkpoint, device=args.device)
    i = model.info
    print(f"model: {i.name}, input {i.input_size}x{i.input_size}, default strategy {i.default_strategy}, "
          f"mask prompt trained: {'yes' if i.mask_prompt_trained else 'no'}")
    print(f"weights: {i.weights}")
    print(f"weights check: OK (sha256 {i.sha256})")
    return 0


class _ProgressBar:
    """A tqdm bar on stderr fed by the session's progress callback (slices/s shown)."""

    def __init__(self, enabled=True):
        self.enabled = enabled and sys.stderr is not None
        self.bar = None
        self.label = "propagation"

    def update(self, done, total):
        if not self.enabled:
            return
        if self.bar is None or self.bar.total != total or done < self.bar.n:
            from tqdm import tqdm
            if self.bar is not None:
                self.bar.close()
            self.bar = tqdm(total=total, desc=self.label, unit="slice", file=sys.stderr, leave=False)
        self.bar.update(done - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# -- parser ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="radsam", description="Segment a whole 3D organ in CT from one prompt.")
    p.add_argument("--version", action="version", version=f"radsam {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def model_args(sp):
        sp.add_argument("--model", default=DEFAULT_MODEL,
                        help="radsam (default: LiteMedSAM fine-tuned for mask prompts, bundled), litemedsam (the base, "
                             "bundled), sam_vit_b/l/h, or a .safetensors RadSAM checkpoint")
        sp.add_argument("--checkpoint", help="weights file for sam_vit_* (or another LiteMedSAM .pth)")
        sp.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")

    s = sub.add_parser("segment", help="segment one object in a CT volume from one prompt")
    s.add_argument("image", help="CT volume: .nii/.nii.gz/.nrrd/.mha or a DICOM series folder")
    s.add_argument("-o", "--output", required=True, help="output mask file (same grid as the image)")
    s.add_argument("--slice", type=int, help="index of the prompt slice along the propagation axis")
    s.add_argument("--box", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"), help="box prompt (voxel indices)")
    s.add_argument("--point", type=float, nargs=2, action="append", metavar=("X", "Y"), help="positive point (repeatable)")
    s.add_argument("--negative-point", type=float, nargs=2, action="append", metavar=("X", "Y"), help="negative point (repeatable)")
    s.add_argument("--mask-prompt", help="mask volume on the image grid; its slice --slice (default: its largest) is the prompt")
    s.add_argument("--bounds", type=int, nargs=2, metavar=("KMIN", "KMAX"), help="bottom and top slice of the object (inclusive)")
    s.add_argument("--edit", nargs=4, action="append", metavar=("K", "X", "Y", "SIGN"),
                   help="correction point on slice K, SIGN + or - (repeatable, applied in order)")
    s.add_argument("--prompts", help="JSON file with slice/box/points/labels/bounds/edits, or slices: {k: prompt} for slice-level")
    s.add_argument("--strategy", default=None, help="propagation: mask, box[:margin], mask+box[:margin[:grow]] (model-frame px; default: the model's)")
    s.add_argument("--window", default="soft-tissue",
                   help="intensity window the model sees: soft-tissue (default), lung, bone, LO:HI in HU, "
                        "or auto (spanning the prompt's region)")
    s.add_argument("--axis", type=int, default=0, choices=(0, 1, 2), help="propagation axis of the (k, j, i) array (default 0 = k)")
    s.add_argument("--reference", help="reference label volume: prints the 3D Dice")
    s.add_argument("--label", type=int, help="label value of the object in --reference")
    s.add_argument("--encoder-backend", default="auto",
                   help="auto (fastest path equal to eager fp32: ONNX Runtime on CPU), torch, onnx, openvino, torch-fp16")
    s.add_argument("--decoder-backend", default="auto", help="auto, onnx, torch, eager, cuda-graph")
    s.add_argument("--force", action="store_true", help="overwrite an existing output file")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    model_args(s)
    s.set_defaults(func=cmd_segment)

    i = sub.add_parser("info", help="print version, device, model and weights check")
    model_args(i)
    i.set_defaults(func=cmd_info)

    for name, (_, help_text) in PLUGINS.items():  # listed in --help; run by main() directly
        sub.add_parser(name, help=help_text, add_help=False)
    return p


# Subcommands with their own parser, imported only when asked for: the speed benchmark
# imports torch at import time, which would add ~1-2 s to every ``radsam --help``.
PLUGINS = {
    "benchmark": ("RadSAMLib.benchmark.cli", "simulated-user 3D Dice benchmark (radsam benchmark -h)"),
    "bench-speed": ("RadSAMLib.speedbench", "speed benchmark: ms/slice, slices/s, peak memory (radsam bench-speed -h)"),
}


def _run_plugin(name, argv) -> int:
    import importlib
    try:
        module = importlib.import_module(PLUGINS[name][0])
    except ImportError as e:
        raise RadSAMError(f"radsam {name} cannot start: {e} (pip install 'radsam[bench]')") from e
    p = argparse.ArgumentParser(prog=f"radsam {name}", description=PLUGINS[name][1])
    module.add_arguments(p)
    return int(module.run(p.parse_args(argv)) or 0)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in PLUGINS:
        run = lambda: _run_plugin(argv[0], argv[1:])  # noqa: E731
    else:
        args = build_parser().parse_args(argv)
        run = lambda: args.func(args)  # noqa: E731
    try:
        return int(run() or 0)
    except RadSAMError as e:
        print(f"radsam: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("radsam: interrupted; no output written", file=sys.stderr)
        return 130
    except MemoryError:
        print("radsam: error: out of memory; try --device cpu or a smaller volume", file=sys.stderr)
        return 1
    except RuntimeError as e:
        if "out of memory" in str(e).lower():
            print("radsam: error: GPU out of memory; retry with --device cpu", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
