"""The ``radsam`` command line.

    radsam segment IMAGE -o MASK --slice K --box X0 Y0 X1 Y1 [--bounds KMIN KMAX] ...
    radsam info
    radsam benchmark ...      (RadSAMBench.cli, the development tools in bench/)
    radsam bench-speed ...    (RadSAMBench.speedbench)
    radsam cvpr25 ...         (RadSAMBench.cvpr25: the CVPR 2025 challenge's own evaluator)

Prompts are voxel indices: ``--slice`` indexes the propagation axis (default: the
volume's slice axis, k), ``x``/``y`` are the column/row of that slice (i/j for axis k).
A problem with the input prints one line ``radsam: error: ...`` and exits with code 2.
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from . import __version__
from .catalog import DEFAULT_MODEL, MODELS
from .errors import RadSAMError
from .propagation import STRATEGIES

EXIT_USAGE = 2

STRATEGY_HELP = (f"propagation, one of {', '.join(STRATEGIES)}: kind[:margin[:grow]] in model-frame pixels, e.g. "
                 "box:5, mask+box:5:4, hybrid:5 (hybrid asks with mask+box and with box, the higher predicted IoU wins); "
                 "default: the model's own (" + ", ".join(f"{m.name} {m.default_strategy}" for m in MODELS) + ")")
MODEL_HELP = ("; ".join(f"{m.name}{' (default)' if m.name == DEFAULT_MODEL else ''}: {m.description}" for m in MODELS)
              + "; or a .safetensors RadSAM checkpoint")


# -- checks (all before the model loads) -------------------------------------------------
def _check_output(args) -> Path:
    from .imageio import check_output
    inputs = (args.image, args.reference, args.mask_prompt, args.prompts, args.checkpoint)
    return check_output(args.output, args.force, inputs=[p for p in inputs if p])


def _check_options(args):
    """Model, device, strategy and backends, checked by name: a typo is found in a second,
    not after the image is read. Returns the parsed strategy (``None``: the model's)."""
    from .accel.select import DECODER_BACKENDS, check_encoder_option
    from .models import pick_device
    from .models.registry import MODEL_NAMES
    from .propagation import Strategy

    if str(args.model).endswith(".safetensors"):
        if not Path(args.model).is_file():
            raise RadSAMError(f"--model {args.model}: RadSAM checkpoint not found")
    elif args.model not in MODEL_NAMES:
        raise RadSAMError(f"--model '{args.model}' is unknown (choose one of {', '.join(MODEL_NAMES)}, "
                          "or a .safetensors RadSAM checkpoint)")
    if args.model.startswith("sam_vit_") and not args.checkpoint:
        raise RadSAMError(f"model {args.model} needs a checkpoint file: pass --checkpoint PATH (e.g. sam_vit_b_01ec64.pth)")
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise RadSAMError(f"--checkpoint {args.checkpoint}: file not found")
    pick_device(args.device)
    check_encoder_option("--encoder-backend", args.encoder_backend)
    if args.decoder_backend not in DECODER_BACKENDS:
        raise RadSAMError(f"--decoder-backend '{args.decoder_backend}' is unknown (choose {', '.join(DECODER_BACKENDS)})")
    if args.label is not None and not args.reference:
        raise RadSAMError(f"--label {args.label} needs --reference GT (the label volume to compare with)")
    if args.reference and args.label is None:
        raise RadSAMError("--reference needs --label N (the label value of the object)")
    if args.label is not None and args.label <= 0:
        raise RadSAMError(f"--label {args.label}: give the object's label value (0 is the background)")
    if args.window != "auto":
        _window(args.window, None, args.axis, {})      # a bad --window is named before any work
    return Strategy.parse(args.strategy) if args.strategy not in (None, "", "auto") else None


def _prompt_spec(args) -> dict:
    """The request as data: a ``--prompts`` JSON file merged with the flags (flags win)."""
    from .request import parse_prompts

    spec = parse_prompts(args.prompts) if args.prompts else {}
    flags = {"--slice": args.slice, "--box": args.box, "--point": args.point,
             "--negative-point": args.negative_point, "--bounds": args.bounds}
    if "slices" in spec:
        given = [name for name, v in flags.items() if v is not None]
        if given:
            raise RadSAMError(f"{given[0]} cannot be combined with the slice-level prompts (\"slices\") of {args.prompts}")
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
    from .request import as_int, as_number

    k, x, y, sign = e
    if sign not in ("+", "-"):
        raise RadSAMError(f"--edit takes K X Y +|-, got sign '{sign}' in --edit {' '.join(e)}")
    try:
        return {"slice": as_int(int(k), "--edit K"),
                "point": (as_number(float(x), "--edit X"), as_number(float(y), "--edit Y")),
                "positive": sign == "+"}
    except ValueError:
        raise RadSAMError(f"--edit takes K X Y +|- with an integer K and numbers X Y, got {' '.join(e)}") from None


def _read_inputs(args, spec):
    """Image, reference and mask prompt, read and checked; the request checked against
    the image. Returns ``(image, volume, reference, request)``."""
    from .imageio import image_to_array, read_image, read_label
    from .request import check_request

    image = read_image(args.image)
    volume = image_to_array(image)
    mask = None
    if args.mask_prompt:
        mask = read_label(args.mask_prompt, image, "mask prompt") > 0
    request = check_request(spec, volume.shape, args.axis, mask_volume=mask)
    reference = None
    if args.reference:
        reference = read_label(args.reference, image, "reference")
        if not (reference == args.label).any():
            present = [int(v) for v in np.unique(reference) if v != 0]
            shown = ", ".join(map(str, present[:20])) + (" ..." if len(present) > 20 else "")
            raise RadSAMError(f"--label {args.label} is not in --reference {args.reference} "
                              f"(labels present: {shown or 'none'})")
    return image, volume, reference, request


# -- interrupts ---------------------------------------------------------------------------
class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM during a run; ``signum`` says which."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


class _Signals:
    """SIGTERM stops a run like Ctrl-C does (progress bar closed, no partial file, one
    line); a signal while the finished mask is being written waits for the write."""

    def __init__(self):
        self.holding = False
        self.deferred = None

    def _handle(self, signum, frame):
        if self.holding:
            self.deferred = signum
            return
        raise Interrupted(signum)

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be set from the main thread
            return
        old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    @contextlib.contextmanager
    def hold(self):
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
            if self.deferred is not None:
                raise Interrupted(self.deferred)


# -- commands ----------------------------------------------------------------------------
def _window(text, volume, axis, prompts):
    """The intensity window ``--window`` names; ``auto``: spanning the prompt regions."""
    from .preprocess import Window, prompt_region
    from .slices import slice_index
    if text != "auto":
        try:
            return Window.parse(text)
        except ValueError as e:
            raise RadSAMError(str(e)) from None
    regions = [prompt_region(volume[slice_index(axis, k)], p.box, p.points, p.mask).ravel() for k, p in prompts.items()]
    return Window.from_region(np.concatenate(regions))


def cmd_segment(args) -> int:
    signals = _Signals()
    written = None
    try:
        with signals.installed():
            out = _check_output(args)
            strategy = _check_options(args)
            spec = _prompt_spec(args)
            image, volume, reference, request = _read_inputs(args, spec)
            session, t_load, t_seg = _segment(args, volume, request, strategy)
            with signals.hold():
                from .imageio import write_mask
                written = write_mask(session.mask, image, out, force=args.force)
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        name = signal.Signals(signum).name
        what = f"{written} was written" if written else "no output written"
        print(f"radsam: interrupted ({name}); {what}", file=sys.stderr)
        return 128 + int(signum)
    _report(args, session, out, reference, t_load, t_seg)
    return 0


def _segment(args, volume, request, strategy):
    """Load the model and run the checked request -> ``(session, load s, segmentation s)``."""
    from .config import RadSAMConfig
    from .models import load_model
    from .session import Session

    config = RadSAMConfig(strategy=strategy)
    prompts = request.slices if request.slices is not None else {request.slice: request.prompt}
    window = _window(args.window, volume, args.axis, prompts)
    t0 = time.perf_counter()
    model = load_model(args.model, checkpoint=args.checkpoint, device=args.device)
    t_load = time.perf_counter() - t0
    bar = _ProgressBar(enabled=not args.quiet)
    session = Session.from_volume(model, volume, axis=args.axis, window=window, config=config,
                                  encoder_backend=args.encoder_backend, decoder_backend=args.decoder_backend)
    t1 = time.perf_counter()
    try:
        for label, interaction in request.interactions(session):
            bar.label = label
            if not bar.follow(interaction) and label.startswith("edit"):
                print(f"radsam: note: the {label} changed nothing (the mask already agreed with it)",
                      file=sys.stderr)
    finally:
        bar.close()
    return session, t_load, time.perf_counter() - t1


def _report(args, session, out, reference, t_load, t_seg):
    eng = session.engine
    axis = session.axis
    per_slice = eng.encode_seconds / max(1, eng.encode_count)
    other = tuple(a for a in range(3) if a != axis)
    voxels = int(np.count_nonzero(session.mask))
    print(f"wrote {out}  ({voxels} voxels on {int(np.count_nonzero(session.mask.any(axis=other)))} slices)")
    if voxels == 0:
        print("radsam: warning: the mask is empty: the model found nothing at the prompt", file=sys.stderr)
    print(f"model {session.model.info.name} on {session.model.device}, strategy {session.strategy.spec()}; "
          f"load {t_load:.1f} s, segmentation {t_seg:.1f} s, encoder ({getattr(eng.encode_fn, 'backend', 'torch')}) "
          f"{per_slice:.2f} s/slice over {eng.encode_count} slices")
    if reference is not None:
        from .metrics import dice
        print(f"3D Dice vs {args.reference} label {args.label}: {dice(session.mask, reference == args.label):.4f}")


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
    delta = i.extra.get("delta_sha256")
    if delta:  # a fine-tune: its own file and the base it was applied to
        print(f"weights check: OK (fine-tune sha256 {delta}; base {i.extra.get('base_model')} sha256 {i.sha256})")
    else:
        print(f"weights check: OK (sha256 {i.sha256})")
    return 0


class _ProgressBar:
    """A tqdm bar on stderr that follows a session's interaction (slices/s shown)."""

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

    def follow(self, interaction):
        """Run ``interaction`` to the end, showing its progress; returns its ``Change``."""
        for u in interaction:
            self.update(u.done, u.total)
        return interaction.change

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# -- parser ------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag like every other input error: one line, exit 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"radsam: error: {message} (see {self.prog} -h)\n")


def _finite_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: '{text}'") from None
    if not np.isfinite(v):
        raise argparse.ArgumentTypeError(f"not a finite number: '{text}'")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="radsam", description="Segment a whole 3D organ in CT from one prompt.",
        epilog=f"models: {', '.join(m.name for m in MODELS)} (default {DEFAULT_MODEL}); propagation strategies "
               f"(--strategy): {', '.join(STRATEGIES)}, each kind[:margin[:grow]] (radsam segment -h)")
    p.add_argument("--version", action="version", version=f"radsam {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def model_args(sp):
        sp.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
        sp.add_argument("--checkpoint", help="weights file for sam_vit_* (or another LiteMedSAM .pth)")
        sp.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")

    s = sub.add_parser("segment", help="segment one object in a CT volume from one prompt")
    s.add_argument("image", help="CT volume: .nii/.nii.gz/.nrrd/.mha or a DICOM series folder")
    s.add_argument("-o", "--output", required=True, help="output mask file (same grid as the image)")
    s.add_argument("--slice", type=int, help="index of the prompt slice along the propagation axis")
    s.add_argument("--box", type=_finite_float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"), help="box prompt (voxel indices)")
    s.add_argument("--point", type=_finite_float, nargs=2, action="append", metavar=("X", "Y"), help="positive point (repeatable)")
    s.add_argument("--negative-point", type=_finite_float, nargs=2, action="append", metavar=("X", "Y"), help="negative point (repeatable)")
    s.add_argument("--mask-prompt", help="mask volume on the image grid; its slice --slice (default: its largest) is the prompt")
    s.add_argument("--bounds", type=int, nargs=2, metavar=("KMIN", "KMAX"), help="bottom and top slice of the object (inclusive)")
    s.add_argument("--edit", nargs=4, action="append", metavar=("K", "X", "Y", "SIGN"),
                   help="correction point on slice K, SIGN + or - (repeatable, applied in order)")
    s.add_argument("--prompts", help="JSON file with slice/box/points/labels/bounds/edits, or slices: {k: prompt} for slice-level")
    s.add_argument("--strategy", default=None, help=STRATEGY_HELP)
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
    "benchmark": ("RadSAMBench.cli", "simulated-user 3D Dice benchmark (radsam benchmark -h)"),
    "bench-speed": ("RadSAMBench.speedbench", "speed benchmark: ms/slice, slices/s, peak memory (radsam bench-speed -h)"),
    "cvpr25": ("RadSAMBench.cvpr25", "the CVPR 2025 challenge's official evaluator, run on RadSAM (radsam cvpr25 -h)"),
}


def _run_plugin(name, argv) -> int:
    import importlib
    import importlib.util
    if importlib.util.find_spec("RadSAMBench") is None:
        raise RadSAMError(f"radsam {name} needs RadSAM's development tools, which are not installed "
                          "(from a checkout: pip install -e bench, or bash scripts/setup.sh)")
    try:
        module = importlib.import_module(PLUGINS[name][0])
    except ImportError as e:
        raise RadSAMError(f"radsam {name} cannot start: {e}") from e
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
