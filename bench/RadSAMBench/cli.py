"""``radsam benchmark``: the simulated-user 3D Dice benchmark from the command line.

The lead's ``RadSAMLib/cli.py`` mounts :func:`add_arguments` / :func:`run` as the
``benchmark`` subcommand; ``python -m RadSAMBench.cli ...`` runs it directly.
Kept import-light (no torch at import): every ``radsam`` invocation imports this module.

Results go to ``--out`` (``results.json``, ``report.md``, PNG plots). The JSON is
rewritten after every case; an interrupted run started again with the same arguments
resumes from it without recomputing the finished cases.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from RadSAMLib import DEFAULT_MODEL
from RadSAMLib.errors import RadSAMError
from RadSAMLib.files import atomic_write

RESULTS_VERSION = 1


def _csv(s):
    return [x.strip() for x in str(s).split(",") if x.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Simulated-user benchmark: volume-level (one prompt + true bounds, propagation) and "
                     "slice-level prompting with box/point prompts and correction clicks; 3D Dice per object, "
                     "means with 95% bootstrap intervals over cases, Markdown tables and PNG plots.")
    p.add_argument("dataset", help="dataset folder: npz pack, nnU-Net/AMOS, TotalSegmentator, or image/label "
                                   "pairs with a labels.json (see docs/benchmark/README.md)")
    p.add_argument("--labels", default=None, help="labels by name or value, comma-separated (default: all)")
    p.add_argument("--cases", default=None, help="case names, comma-separated, or N for the first N (default: all)")
    p.add_argument("--model", action="append", default=None, metavar="NAME[=CHECKPOINT][@CLICKS]",
                   help="model to benchmark, repeatable: radsam (default), litemedsam, a RadSAM .safetensors "
                        "path, or sam_vit_b=/path/to/checkpoint.pth; @legacy answers point prompts and clicks "
                        "the way RadSAM did before issue 12, @unbounded clicks as before session 9's "
                        "reach bound (RadSAMLib/clicks.py presets)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto)")
    p.add_argument("--strategies", default="box,mask,mask+box",
                   help="propagation strategies, comma-separated (box, box:MARGIN, mask, mask+box)")
    p.add_argument("--levels", default="volume,slice", help="volume and/or slice (default both)")
    p.add_argument("--prompts", default="box,point", help="prompt kinds: box and/or point (default both)")
    p.add_argument("--slice-strategies", default=None,
                   help="strategies for slice level (they only change how a corrected slice is re-run; "
                        "default: the same as --strategies)")
    p.add_argument("--edits", type=int, default=20, help="volume-level correction clicks (default 20; Dice "
                                                         "reported after 0,1,2,5,10,20)")
    p.add_argument("--slice-edits", type=int, default=2, help="slice-level clicks per slice (default 2; up to 10)")
    p.add_argument("--challenge-edits", type=int, default=5,
                   help="volume level: CVPR 2025 challenge clicks from the same first result (default 5; Dice "
                        "after each, and the AUC over clicks 1..5)")
    p.add_argument("--box-jitter", type=int, default=None, metavar="PX",
                   help="box prompts as the CVPR 2025 challenge draws them: the tight box, every side widened by "
                        "the same seeded 0..PX pixels per 256 of the slice's side (the challenge: 5); default: "
                        "each side moved by up to +-5%% of the box, at most 5 px")
    p.add_argument("--prompt-slice", default="middle", choices=("middle", "largest", "random"),
                   help="volume-level prompt slice (default: the middle of the object's extent)")
    p.add_argument("--min-voxels", type=int, default=50, help="skip smaller objects (default 50)")
    p.add_argument("--min-slices", type=int, default=2, help="skip objects on fewer slices (default 2)")
    p.add_argument("--min-body-fraction", type=float, default=0.01,
                   help="a slice has body content when this fraction of it is above -500 HU (default 0.01)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 is fastest on a CPU shared with other jobs)")
    p.add_argument("--encoder-backend", default="auto", metavar="BACKEND",
                   help="image encoder path (RadSAMLib.accel: auto, torch, onnx, onnx-int8, openvino...; "
                        "default auto), as radsam segment --encoder-backend")
    p.add_argument("--seed", type=int, default=0, help="random seed of the simulated user (default 0)")
    p.add_argument("--out", default="runs/benchmark", help="output folder (default runs/benchmark)")
    p.add_argument("--fresh", action="store_true", help="discard an existing results.json in --out")
    p.add_argument("--dist-timeout", type=float, default=30.0, metavar="MIN",
                   help="under torchrun: minutes before a silent rank (killed, a lost node) ends every rank "
                        "(default 30; docs/scaling_out.md)")
    p.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    p.add_argument("--pack", metavar="DST", default=None,
                   help="instead of benchmarking, write the selected cases/labels as an npz pack to DST")


def _command_line() -> str:
    argv = sys.argv[1:]
    if argv[:1] == ["benchmark"]:
        argv = argv[1:]
    return "radsam benchmark " + shlex.join(argv)


def _model_specs(specs):
    """``[(label, name, checkpoint, clicks)]`` from ``NAME[=CHECKPOINT][@CLICKS]`` specs."""
    from RadSAMLib.clicks import PRESETS
    out = []
    for s in specs or [DEFAULT_MODEL]:
        base, at, clicks = s.rpartition("@")
        if not at or clicks not in PRESETS:
            base, clicks = s, None
        name, _, ckpt = base.partition("=")
        label = Path(name).stem if name.endswith(".safetensors") else name
        out.append((label + (f"@{clicks}" if clicks else ""), name, ckpt or None, clicks))
    labels = [o[0] for o in out]
    if len(set(labels)) != len(labels):
        raise RadSAMError(f"the same model is listed twice: {', '.join(labels)}")
    return out


def _settings(args):
    from .protocol import make_settings
    levels, prompts, strategies = _csv(args.levels), _csv(args.prompts), _csv(args.strategies)
    slice_strats = _csv(args.slice_strategies) if args.slice_strategies else strategies
    for lv in levels:
        if lv not in ("volume", "slice"):
            raise RadSAMError(f"unknown level '{lv}' (choose volume, slice)")
    settings = []
    if "volume" in levels:
        settings += make_settings(["volume"], prompts, strategies)
    if "slice" in levels:
        settings += make_settings(["slice"], prompts, slice_strats)
    if not settings:
        raise RadSAMError("no benchmark settings selected (check --levels, --prompts, --strategies)")
    return settings


def _write_json(path: Path, data: dict) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, separators=(",", ":"))   # compact: clicks make big files
    atomic_write(path, write, suffix=".json")


def _same_config(a: dict, b: dict) -> bool:
    skip = {"command", "started"}
    return {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}


def run(args) -> int:
    from .datasets import open_dataset, pack_dataset
    from .distributed import Ranks
    from .protocol import Protocol

    if args.pack:
        dst = pack_dataset(args.dataset, args.pack, cases=args.cases, labels=args.labels)
        print(f"packed into {dst}")
        return 0

    ds = open_dataset(args.dataset)
    objects = ds.select_labels(args.labels)
    cases = ds.select_cases(args.cases)
    if not cases:
        raise RadSAMError(f"no cases selected in {ds.root}")
    settings = _settings(args)
    from RadSAMLib.accel.select import check_encoder_option
    check_encoder_option("--encoder-backend", args.encoder_backend)
    models = _model_specs(args.model)
    protocol = Protocol(edits=args.edits, slice_edits=args.slice_edits, challenge_edits=args.challenge_edits,
                        prompt_slice=args.prompt_slice, box_jitter=args.box_jitter,
                        min_voxels=args.min_voxels, min_slices=args.min_slices,
                        min_body_fraction=args.min_body_fraction)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    config = {"dataset": str(ds.root), "layout": ds.layout, "labels": {str(v): n for v, n in objects.items()},
              "cases": [c.name for c in cases], "models": [list(m) for m in models],
              "settings": [s.name for s in settings], "protocol": protocol.to_dict(), "seed": args.seed,
              "command": getattr(args, "command_line", None) or _command_line()}
    if args.encoder_backend != "auto":  # (absent for auto: older results files stay resumable)
        config["encoder_backend"] = args.encoder_backend
    results = {"version": RESULTS_VERSION, "config": config, "cases": {}}
    if path.exists() and not args.fresh:
        try:
            old = json.loads(path.read_text())
        except ValueError as e:
            raise RadSAMError(f"{path} is not a readable results file ({e}); use --fresh to start over") from e
        if old.get("version") != RESULTS_VERSION or not _same_config(old.get("config", {}), config):
            raise RadSAMError(f"{path} was made with other settings; use --fresh to start over or another --out")
        results["cases"] = old.get("cases", {})
        if results["cases"]:
            print(f"resuming: {len(results['cases'])} finished case run(s) in {path}", file=sys.stderr)

    ranks = Ranks(path, args.device, args.fresh, args.dist_timeout)   # under torchrun: this rank's share
    ranks.resume(results, _same_config)
    todo = ranks.share([(c, m) for c in cases for m in models
                        if results["cases"].get(f"{m[0]}|{c.name}", {}).get("partial", True)])
    try:
        if todo:
            _run_todo(todo, objects, settings, protocol, args, results, ranks.own_path, ranks.check)
    except Exception as e:  # noqa: BLE001 (any failure must reach the other ranks)
        ranks.fail(e)
    if not ranks.gather(results, _write_json):
        return 0
    recs = [r for c in results["cases"].values() for r in c["records"] if "skipped" not in r]
    if not recs:
        raise RadSAMError("no object passed the selection (labels absent, or smaller than --min-voxels/"
                          "--min-slices): nothing to report")
    from .report import markdown, write_report
    paths = write_report(results, out, plots=not args.no_plots)
    print(markdown(results).split("## Oracle")[0].rstrip())
    print("\nwrote " + ", ".join(str(p) for p in [path] + paths))
    return 0


def _run_todo(todo, objects, settings, protocol, args, results, path, check=lambda: None):
    from tqdm import tqdm

    from RadSAMLib.accel.cache import weights_sha256
    from RadSAMLib.engine import SliceEngine
    from RadSAMLib.models import load_model
    from .protocol import run_case
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    loaded, encoders = {}, {}
    bar = tqdm(total=len(todo), desc="benchmark", unit="case", file=sys.stderr, dynamic_ncols=True)
    current = None
    for case, (label, name, ckpt, clicks) in todo:
        if (name, ckpt) not in loaded:
            m = load_model(name, checkpoint=ckpt, device=args.device)
            loaded[(name, ckpt)] = m
            encoders[id(m)] = weights_sha256(m.image_encoder)
        model = loaded[(name, ckpt)]
        if current is None or current[0] != case.name:
            bar.set_postfix_str(f"{case.name}: reading")
            current = (case.name, case.load(list(objects)), {})
        image, lab, spacing = current[1]
        # Models with the same image encoder (the fine-tunes keep the base's) share the
        # case's embeddings: each slice is encoded once per case, not once per model.
        engine = SliceEngine(model, image, axis=0, encoder_backend=getattr(args, "encoder_backend", "auto"))
        first = current[2].setdefault((encoders[id(model)], str(model.device)), engine)
        if first is not engine:
            engine.share_embeddings(first)
        key = f"{label}|{case.name}"
        # A case interrupted mid-way keeps its finished objects (saved after each one).
        entry = results["cases"].get(key) or {"model": label, "case": case.name, "partial": True,
                                               "records": [], "timing": {}, "wall_s": 0.0}
        entry.update(spacing=[float(s) for s in spacing], shape=list(image.shape))
        results["cases"][key] = entry
        done = {r["object"] for r in entry["records"]}

        def save(recs, entry=entry):
            entry["records"].extend(recs)
            _write_json(path, results)
            check()         # another rank failed: stop here too (distributed.py)
        timing = {}
        t0 = time.time()
        run_case(engine, image, lab, objects, settings, seed=args.seed, protocol=protocol,
                 case=case.name, model_name=label, progress=lambda msg: bar.set_postfix_str(msg[-60:]),
                 timing=timing, skip=done, on_object=save, clicks=clicks)
        old = entry["timing"]
        for k, v in timing.items():
            old[k] = round(old.get(k, 0) + v, 4) if isinstance(v, (int, float)) else v
        entry.update(partial=False, finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
                     wall_s=round(entry["wall_s"] + time.time() - t0, 2))
        _write_json(path, results)
        bar.update(1)
    bar.close()


def tool_main(prog: str, add_args, run_args, argv=None) -> int:
    """``main`` of a development tool run as ``python -m``: parse, record the command
    line, run; a :class:`RadSAMError` is one line and exit code 2, as in ``radsam``."""
    p = argparse.ArgumentParser(prog=prog)
    add_args(p)
    args = p.parse_args(argv)
    args.command_line = f"{prog} " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    try:
        return int(run_args(args) or 0)
    except RadSAMError as e:
        print(f"radsam: error: {e}", file=sys.stderr)
        return 2


def main(argv=None) -> int:
    return tool_main("radsam benchmark", add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
