"""``radsam cvpr25``: RadSAM scored by the CVPR 2025 interactive-3D challenge's own evaluator.

The official script (``CVPR25_iter_eval.py``, kept unmodified) runs each team's docker
container once per round: the box round, then 5 rounds that each add one simulated click
per class (the deepest point of the class's largest 3D error), with the case in
``./inputs/<case>.npz`` and the answer read from ``./outputs/<case>.npz['segs']``. Here
the script itself runs, in-process and unchanged, with its ``os.system`` docker calls
answered by :class:`RadSAMPredictor`: the figures are the evaluator's own (its Dice,
NSD, AUCs and click simulation), only the container is replaced.

What RadSAM does with the challenge's prompts, through the same :class:`Session` API users
call:

* box round: per class, volume-level prompting: the box on its ``z_mid`` slice, propagated
  over the given ``z_min..z_max`` (``Session.segment`` with bounds);
* click round: per class, the newest click is a correction click on its slice
  (``Session.edit``, positive for ``fg``, negative for ``bg``) on that class's session,
  which holds the previous rounds. A case without boxes starts each class from its first
  (positive) click: volume-level point prompting without bounds.

Each slice is encoded once per case: the classes' sessions share one engine, and models
with the same image encoder (the fine-tunes keep the base's) share its embeddings. One
voxel carries one label: where classes overlap the smaller mask wins (a large organ that
leaks over a small one is the likelier error). The images come windowed to 0..255, so
the model sees them as they are.

The evaluator runs once per case (each in a temporary working folder), so every case's
output stays and an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import os
import re
import runpy
import shlex
import sys
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import numpy as np

from RadSAMLib.errors import RadSAMError
from RadSAMLib.files import atomic_write

EVALUATOR = "CVPR25_iter_eval.py"
# The challenge ships images already windowed to uint8 0..255: the identity window.
IMAGE_RANGE = (0.0, 255.0)
ROUNDS = 6
NEEDS = {"cc3d": "connected-components-3d", "pandas": "pandas", "scipy": "scipy"}


# -- the predictor: what runs instead of a team's container ------------------------------------
class _EnginePool:
    """The current case's engines: one volume, one embedding cache per image encoder."""

    def __init__(self):
        self.key = None
        self.volume = None
        self.engines = {}

    def engine(self, case: str, imgs: np.ndarray, model, config):
        from RadSAMLib.accel.cache import weights_sha256
        from RadSAMLib.engine import SliceEngine
        from RadSAMLib.preprocess import Window
        key = (case, imgs.shape, zlib.crc32(np.ascontiguousarray(imgs).data))
        if key != self.key:      # a new case: the last one's embeddings go
            self.key, self.volume, self.engines = key, imgs, {}
        eng = SliceEngine(model, self.volume, axis=0, window=Window(*IMAGE_RANGE), config=config)
        first = self.engines.setdefault((weights_sha256(model.image_encoder), str(model.device)), eng)
        if first is not eng:
            eng.share_embeddings(first)
        return eng


class _CaseState:
    def __init__(self, case, engine, n):
        self.case, self.engine = case, engine
        self.sessions = [None] * n
        self.rounds = 0              # click rounds applied


def _box_prompt(b: dict, shape):
    """The challenge's box dict -> (slice, SlicePrompt, bounds). Its boxes are inclusive
    pixel indices, as RadSAM's; a 1-pixel-wide side is widened to a valid box."""
    from RadSAMLib.prompts import SlicePrompt
    from .user import valid_box
    box = valid_box([int(b[k]) for k in ("z_mid_x_min", "z_mid_y_min", "z_mid_x_max", "z_mid_y_max")], shape)
    return int(b["z_mid"]), SlicePrompt(box=box), (int(b["z_min"]), int(b["z_max"]))


def newest_clicks(clicks, clicks_order) -> list:
    """Per class (label ``i + 1`` at index ``i``): the click the evaluator added in its
    latest round, ``((z, y, x), positive)``, or ``None`` (the class was already perfect:
    its order entry is ``None``). The lists are cumulative, so the newest click of a kind
    is the last of that kind's list."""
    out = []
    for c, order in enumerate(clicks_order):
        kind = order[-1] if len(order) else None
        if kind is None or str(kind) not in ("fg", "bg"):
            out.append(None)
            continue
        z, y, x = (int(v) for v in clicks[c][str(kind)][-1])
        out.append(((z, y, x), str(kind) == "fg"))
    return out


class RadSAMPredictor:
    """A team's container, in-process: ``predictor(inputs_dir, outputs_dir)`` reads the one
    ``.npz`` in ``inputs_dir`` and writes ``segs`` to the same name in ``outputs_dir``.

    ``model``: a loaded RadSAM model; ``clicks``: the sessions' click inference (a
    ``RadSAMLib.clicks`` preset or ``None``); ``strategy``: propagation (``None``: the
    model's own); ``pool``: shared with the other predictors of a run, so models with one
    image encoder encode each slice once per case. Per-class problems (a prompt the model
    cannot take) are logged in :attr:`warnings` and leave that class as it was.
    """

    def __init__(self, model, clicks=None, strategy=None, pool: _EnginePool | None = None, log=None):
        from RadSAMLib.config import RadSAMConfig
        self.model = model
        self.config = RadSAMConfig(strategy=strategy, clicks=clicks)
        self.pool = pool or _EnginePool()
        self.log = log or (lambda msg: None)
        self.state: _CaseState | None = None
        self.warnings: list = []

    def __call__(self, inputs, outputs) -> None:
        files = sorted(Path(inputs).glob("*.npz"))
        if len(files) != 1:
            raise RadSAMError(f"expected one .npz in {inputs}, found {len(files)}")
        path = files[0]
        with np.load(path, allow_pickle=True) as f:
            data = {k: f[k] for k in f.files}
        imgs = data.get("imgs")
        if imgs is None or imgs.ndim != 3:
            raise RadSAMError(f"{path.name}: no (D, H, W) 'imgs' array")
        case = path.name
        if "clicks" not in data:
            if "boxes" not in data:
                raise RadSAMError(f"{case}: neither boxes nor clicks to segment from")
            boxes = list(data["boxes"])
            self._start(case, imgs, len(boxes))
            for c, b in enumerate(boxes):
                k, prompt, bounds = _box_prompt(b, imgs.shape[1:])
                self._run(c, "box", lambda s: s.segment(k, prompt, bounds=bounds))
        else:
            order = list(data["clicks_order"])
            rounds = max(len(o) for o in order)
            st = self.state
            if st is None or st.case != case or st.rounds != rounds - 1:
                if "boxes" in data or rounds != 1:
                    raise RadSAMError(f"{case}: click round {rounds} arrived without the rounds before it")
                self._start(case, imgs, len(order))      # a box-free case: the first click starts each class
            for c, click in enumerate(newest_clicks(list(data["clicks"]), order)):
                if click is not None:
                    self._click(c, *click)
            self.state.rounds = rounds
        np.savez_compressed(Path(outputs) / case, segs=self.labels())

    def _start(self, case, imgs, n):
        if n > 255:
            raise RadSAMError(f"{case}: {n} classes do not fit the uint8 label map the challenge asks for")
        self.state = _CaseState(case, self.pool.engine(case, imgs, self.model, self.config), n)

    def _click(self, c, zyx, positive):
        from RadSAMLib.prompts import SlicePrompt
        z, y, x = zyx
        st = self.state
        if st.sessions[c] is None:
            if positive:
                self._run(c, "click", lambda s: s.segment(z, SlicePrompt(points=[(x, y)], labels=[1])))
            return       # a negative click on nothing: there is nothing to remove
        self._run(c, "click", lambda s: s.edit(z, (x, y), positive=positive))

    def _run(self, c, what, act):
        from RadSAMLib.session import Session
        st = self.state
        if st.sessions[c] is None:
            st.sessions[c] = Session(st.engine, self.config)
        try:
            act(st.sessions[c])
        except RadSAMError as e:
            msg = f"{st.case} label {c + 1} round {st.rounds + (what != 'box') + 1}: {what}: {e}"
            self.warnings.append(msg)
            self.log("warning: " + msg)

    def labels(self) -> np.ndarray:
        """The classes' masks as one uint8 label map; where they overlap the smaller wins."""
        st = self.state
        out = np.zeros(st.engine.volume.shape, np.uint8)
        masks = [(int(s.mask.sum()), c, s.mask) for c, s in enumerate(st.sessions) if s is not None]
        for _, c, m in sorted(masks, key=lambda t: (-t[0], t[1])):
            out[m != 0] = c + 1
        return out


# -- running the official script with its docker calls answered in-process ---------------------
class _PredictorFailed(BaseException):
    """Carries a predictor's exception through the evaluator's ``except Exception`` (which
    would otherwise skip the team and carry on with a broken run)."""


def check_evaluator(evaluator) -> Path:
    """The evaluator script, and its packages present; a clear error otherwise."""
    import importlib.util
    path = Path(evaluator)
    if path.is_dir():
        path = path / EVALUATOR
    if not path.is_file():
        raise RadSAMError(f"no CVPR 2025 evaluator at {path} (the challenge's {EVALUATOR})")
    if not (path.parent / "SurfaceDice.py").is_file():
        raise RadSAMError(f"{path.parent} lacks SurfaceDice.py, which {EVALUATOR} imports")
    missing = [pkg for mod, pkg in NEEDS.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise RadSAMError(f"the CVPR 2025 evaluator needs {', '.join(missing)}: pip install {' '.join(missing)} "
                          "(or bash scripts/setup.sh)")
    return path.resolve()


@contextlib.contextmanager
def _patched(evaluator: Path, teams: dict):
    """While the evaluator runs: its docker commands call ``teams[name](inputs, outputs)``;
    numpy 2 gets back the ``np.Inf`` its SurfaceDice.py uses; and on a CUDA machine without
    cupy/cucim the evaluator (only it) sees no GPU, so it takes its CPU EDT, whose clicks are
    the same (the exact EDT either way)."""
    import torch
    real_system, real_cuda = os.system, torch.cuda.is_available
    had_inf = "Inf" in np.__dict__
    src = str(evaluator)

    def system(cmd):
        if cmd.startswith("docker container run"):
            name = re.search(r"--name (\S+)", cmd).group(1)
            cwd = Path.cwd()
            try:
                teams[name](cwd / "inputs", cwd / "outputs")
            except Exception as e:   # noqa: BLE001  (re-raised as _PredictorFailed, outside the script)
                raise _PredictorFailed(e) from e
            return 0
        if cmd.startswith(("docker image load", "docker rmi", "chmod -R 777 ./*")):
            return 0     # no image to load or remove; the working folder is ours
        raise RuntimeError(f"unexpected command from the evaluator: {cmd}")

    def cuda_available():
        if sys._getframe(1).f_code.co_filename == src:
            return False
        return real_cuda()

    import importlib.util
    os.system = system
    if importlib.util.find_spec("cupy") is None:
        torch.cuda.is_available = cuda_available
    if not had_inf:
        np.Inf = np.inf
    try:
        yield
    finally:
        os.system, torch.cuda.is_available = real_system, real_cuda
        if not had_inf:
            del np.Inf


def run_evaluator(evaluator, case_file, save_path, teams: dict, gts_dir=None, verbose=False) -> dict:
    """Run the official evaluator on one case, for each of ``teams`` (``{name: predictor}``,
    names of ``[a-z0-9-]`` only), writing its own outputs under ``save_path/<name>/``
    (``<case>.npz`` with ``segs`` and ``all_segs``, ``<name>_metrics.csv``).
    ``gts_dir``: the folder of ground-truth npz files (``None``: the case holds ``gts``).
    Returns ``{name: the metrics row (str values) or None}``; the evaluator's own
    printout goes to ``save_path/evaluator.log`` (and to stdout with ``verbose``)."""
    evaluator = check_evaluator(evaluator)
    case_file = Path(case_file).resolve()
    save_path = Path(save_path).resolve()
    save_path.mkdir(parents=True, exist_ok=True)
    for name in teams:
        if not re.fullmatch(r"[a-z0-9-]+", name):
            raise RadSAMError(f"team name '{name}' must be lower-case letters, digits and '-'")
    with tempfile.TemporaryDirectory(prefix="radsam-cvpr25-") as tmp:
        tmp = Path(tmp)
        (tmp / "imgs").mkdir()
        (tmp / "teams").mkdir()
        os.symlink(case_file, tmp / "imgs" / case_file.name)
        for name in teams:
            (tmp / "teams" / f"{name}.tar.gz").touch()
        gts = str(Path(gts_dir).resolve()) if gts_dir else str(tmp / "no-gts")
        argv = [str(evaluator), "-i", str(tmp / "imgs"), "-o", str(save_path), "-d", str(tmp / "teams"),
                "-val_gts", gts] + (["--verbose"] if verbose else [])
        old = (sys.argv, list(sys.path), os.getcwd(), sys.modules.get("SurfaceDice"))
        logf = open(save_path / "evaluator.log", "w")
        out = _Tee(logf, sys.stdout) if verbose else logf
        try:
            os.chdir(tmp)
            sys.argv = argv
            sys.path.insert(0, str(evaluator.parent))
            sys.modules.pop("SurfaceDice", None)
            with _patched(evaluator, teams), contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), \
                    warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)     # SurfaceDice.py's scipy imports
                runpy.run_path(str(evaluator), run_name="__main__")
        except _PredictorFailed as e:
            err = e.args[0]
            raise RadSAMError(f"{case_file.name}: the predictor failed: {type(err).__name__}: {err}") from err
        finally:
            sys.argv, sys.path[:] = old[0], old[1]
            os.chdir(old[2])
            sys.modules.pop("SurfaceDice", None)
            if old[3] is not None:
                sys.modules["SurfaceDice"] = old[3]
            logf.close()
    rows = {}
    for name in teams:
        f = save_path / name / f"{name}_metrics.csv"
        got = list(csv.DictReader(open(f))) if f.is_file() else []
        rows[name] = next((r for r in got if r["CaseName"] == case_file.name), None)
    return rows


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, s):
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self):
        for st in self.streams:
            st.flush()


# -- figures ---------------------------------------------------------------------------------
FIGURES = ["DSC_AUC", "NSD_AUC", "DSC_Final", "NSD_Final"] + [f"DSC_{r}" for r in range(1, ROUNDS + 1)] \
    + [f"NSD_{r}" for r in range(1, ROUNDS + 1)] + ["TotalRunningTime"]


def class_curves(save_path, case: str, team: str, gts_dir=None, case_file=None) -> dict:
    """``{label: [Dice after each round]}`` of one case, from the evaluator's saved
    ``all_segs`` (the per-class view its case means hide)."""
    from RadSAMLib.metrics import dice
    seg_file = Path(save_path) / team / case
    if not seg_file.is_file():
        return {}
    with np.load(seg_file, allow_pickle=True) as f:
        all_segs = f["all_segs"]
    src = Path(gts_dir) / case if gts_dir else Path(case_file)
    with np.load(src, allow_pickle=True) as f:
        gts = f["gts"]
    return {int(c): [round(dice(s == c, gts == c), 5) for s in all_segs] for c in np.unique(gts) if c != 0}


def class_names(case_file) -> dict:
    """``{label: name}`` from the case's ``text_prompts`` (validation files), else empty."""
    with np.load(case_file, allow_pickle=True) as f:
        if "text_prompts" not in f.files:
            return {}
        tp = f["text_prompts"].item()
    return {int(k): str(v) for k, v in tp.items() if str(k).isdigit()}


def summarize(results: dict) -> dict:
    """``{team: {figure: mean over cases, "cases": n, "lowered": share of clicks that
    lowered their class's Dice, "clicks": n}}`` from ``results["cases"]``."""
    from .stats import click_summary
    out = {}
    for team in results["teams"]:
        rows = [c["teams"][team] for c in results["cases"].values() if c["teams"].get(team, {}).get("row")]
        if not rows:
            continue
        fig = {k: float(np.mean([float(r["row"][k]) for r in rows])) for k in FIGURES}
        # A click was made in each round while the class was not yet perfect.
        recs = [{"model": team, "setting": "cvpr25", "challenge": curve,
                 "challenge_clicks": [None] * next((i for i, d in enumerate(curve[:-1]) if d >= 1.0), len(curve) - 1)}
                for r in rows for curve in r.get("classes", {}).values()]
        cs = click_summary(recs).get((team, "cvpr25")) if recs else None
        fig.update(cases=len(rows), lowered=cs["lowered"] if cs else None, clicks=cs["clicks"] if cs else 0)
        out[team] = fig
    return out


def markdown(results: dict) -> str:
    s = summarize(results)
    cfg = results["config"]
    lines = ["# CVPR 2025 interactive-3D challenge: the official evaluator's figures", "",
             f"`{cfg['command']}`", "",
             f"Evaluator `{cfg['evaluator']}` (sha256 `{cfg['evaluator_sha256'][:16]}`), "
             f"{len(results['cases'])} case(s): {', '.join(results['cases'])}. Means over cases; DSC_AUC and "
             "NSD_AUC are the evaluator's trapezoid over the 5 click rounds (0..4); round 1 is the box.", "",
             "| model | cases | DSC_AUC | NSD_AUC | DSC_Final | NSD_Final | box DSC | clicks gain | clicks lowering Dice "
             "| time per case (s) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for team, f in s.items():
        low = "n/a" if f["lowered"] is None else f"{100 * f['lowered']:.0f}% of {f['clicks']}"
        lines.append(f"| {results['teams'][team]} | {f['cases']} | {f['DSC_AUC']:.4f} | {f['NSD_AUC']:.4f} | "
                     f"{f['DSC_Final']:.4f} | {f['NSD_Final']:.4f} | {f['DSC_1']:.4f} | "
                     f"{f['DSC_Final'] - f['DSC_1']:+.4f} | {low} | {f['TotalRunningTime']:.1f} |")
    for metric in ("DSC", "NSD"):
        lines += ["", f"## {metric} after each round (1: box, 2-6: clicks 1-5)", "",
                  "| model | " + " | ".join(str(r) for r in range(1, ROUNDS + 1)) + " |",
                  "| --- |" + " ---: |" * ROUNDS]
        for team, f in s.items():
            lines.append(f"| {results['teams'][team]} | "
                         + " | ".join(f"{f[f'{metric}_{r}']:.4f}" for r in range(1, ROUNDS + 1)) + " |")
    for case, c in results["cases"].items():
        teams = [t for t in results["teams"] if c["teams"].get(t, {}).get("classes")]
        if not teams:
            continue
        names = c.get("names", {})
        lines += ["", f"## {case}: Dice per class, box round -> after 5 clicks", "",
                  "| label | " + " | ".join(results["teams"][t] for t in teams) + " |",
                  "| --- |" + " ---: |" * len(teams)]
        for lab in sorted({int(k) for t in teams for k in c["teams"][t]["classes"]}):
            cells = []
            for t in teams:
                cv = c["teams"][t]["classes"].get(str(lab))
                cells.append("" if cv is None else f"{cv[0]:.3f} -> {cv[-1]:.3f}")
            lines.append(f"| {lab} {names.get(str(lab), '')} | " + " | ".join(cells) + " |")
    warns = [w for c in results["cases"].values() for t in c["teams"].values() for w in t.get("warnings", [])]
    if warns:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in warns]
    return "\n".join(lines) + "\n"


# -- the command line --------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Score RadSAM with the CVPR 2025 interactive-3D challenge's official evaluator "
                     "(CVPR25_iter_eval.py, unmodified; its docker runs answered in-process): box round, 5 click "
                     "rounds, its DSC/NSD per round and AUCs.")
    p.add_argument("data", help="the challenge folder (eval/CVPR25_iter_eval.py, data/3D_val_npz, "
                                "data/3D_val_gt_interactive_seg), or a folder of case .npz files")
    p.add_argument("--gts", default=None, help="folder of ground-truth .npz files (default: the challenge folder's "
                                               "3D_val_gt_interactive_seg; none: the cases hold 'gts')")
    p.add_argument("--evaluator", default=None, help=f"the evaluator's {EVALUATOR} or its folder "
                                                     "(default: the challenge folder's eval/)")
    p.add_argument("--model", action="append", default=None, metavar="NAME[=CHECKPOINT][@CLICKS]",
                   help="model, repeatable (as radsam benchmark): radsam (default), litemedsam, a .safetensors path")
    p.add_argument("--strategy", default=None, help="propagation strategy (default: each model's own)")
    p.add_argument("--cases", default=None, help="case file names, comma-separated, or N for the first N")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default="runs/cvpr25", help="output folder (default runs/cvpr25)")
    p.add_argument("--fresh", action="store_true", help="redo the cases already in --out")
    p.add_argument("--verbose", action="store_true", help="show the evaluator's own printout (always in "
                                                          "OUT/cases/<case>/evaluator.log)")


def _layout(args):
    root = Path(args.data)
    if not root.is_dir():
        raise RadSAMError(f"{root} is not a folder")
    shipped = root / "data" / "3D_val_npz"
    imgs = shipped if shipped.is_dir() else root
    gts = args.gts or (root / "data" / "3D_val_gt_interactive_seg" if shipped.is_dir() else None)
    if gts is not None and not Path(gts).is_dir():
        raise RadSAMError(f"no ground-truth folder {gts}")
    evaluator = check_evaluator(args.evaluator or root / "eval")
    cases = sorted(imgs.glob("*.npz"))
    if not cases:
        raise RadSAMError(f"no case .npz files in {imgs}")
    if args.cases:
        if str(args.cases).isdigit():
            cases = cases[:int(args.cases)]
        else:
            want = [c.strip() for c in str(args.cases).split(",") if c.strip()]
            by = {c.name: c for c in cases} | {c.stem: c for c in cases}
            unknown = [w for w in want if w not in by]
            if unknown:
                raise RadSAMError(f"unknown case(s) {', '.join(unknown)} in {imgs}")
            cases = [by[w] for w in want]
    if gts is not None:
        missing = [c.name for c in cases if not (Path(gts) / c.name).is_file()]
        if missing:
            raise RadSAMError(f"no ground truth in {gts} for {', '.join(missing)}")
    return cases, gts, evaluator


def _team_names(models) -> dict:
    """``{team name the evaluator sees: model label}``: lower-case, ``[a-z0-9-]`` (the
    evaluator cuts names at '.' and docker image names at '_')."""
    out = {}
    for label, *_ in models:
        name = re.sub(r"[^a-z0-9-]+", "-", label.lower()).strip("-") or "model"
        base, n = name, 2
        while name in out:
            name, n = f"{base}-{n}", n + 1
        out[name] = label
    return out


def run(args) -> int:
    from .cli import _model_specs, _write_json
    cases, gts, evaluator = _layout(args)
    models = _model_specs(args.model)
    teams = _team_names(models)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    argv = sys.argv[1:]
    command = getattr(args, "command_line", None) or \
        "radsam cvpr25 " + shlex.join(argv[1:] if argv[:1] == ["cvpr25"] else argv)
    config = {"data": str(Path(args.data)), "gts": None if gts is None else str(gts), "evaluator": str(evaluator),
              "evaluator_sha256": hashlib.sha256(evaluator.read_bytes()).hexdigest(),
              "models": [list(m) for m in models], "strategy": args.strategy, "command": command}
    results = {"config": config, "teams": teams, "cases": {}}
    if path.exists() and not args.fresh:
        old = json.loads(path.read_text())
        if {k: v for k, v in old.get("config", {}).items() if k != "command"} != \
                {k: v for k, v in config.items() if k != "command"}:
            raise RadSAMError(f"{path} was made with other settings; use --fresh or another --out")
        results["cases"] = old.get("cases", {})
    todo = [c for c in cases if not all(results["cases"].get(c.name, {}).get("teams", {}).get(t, {}).get("row")
                                        for t in teams)]
    if len(todo) < len(cases):
        print(f"resuming: {len(cases) - len(todo)} case(s) already scored in {path}", file=sys.stderr)
    if todo:
        _score(todo, gts, evaluator, models, teams, args, out, results, path, _write_json)
    md = markdown(results)
    atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(md), suffix=".md")
    print(md.split("\n## ")[0].rstrip())
    print(f"\nwrote {path}, {out / 'report.md'}")
    return 0


def _score(todo, gts, evaluator, models, teams, args, out, results, path, write_json):
    from RadSAMLib.models import load_model
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    err = sys.stderr

    def log(msg):
        print(msg, file=err, flush=True)

    pool = _EnginePool()
    labels = {label: name for name, label in teams.items()}
    predictors = {}
    for label, name, ckpt, clicks in models:
        log(f"loading {label}")
        predictors[labels[label]] = _Timed(RadSAMPredictor(load_model(name, checkpoint=ckpt, device=args.device),
                                                           clicks=clicks, strategy=args.strategy, pool=pool, log=log),
                                           labels[label], log)
    for n, case in enumerate(todo, 1):
        log(f"case {n}/{len(todo)}: {case.name}")
        entry = results["cases"].setdefault(case.name, {"teams": {}})
        entry["names"] = {str(k): v for k, v in class_names(case).items()}
        want = {t: p for t, p in predictors.items() if not entry["teams"].get(t, {}).get("row")}
        for p in want.values():
            p.predictor.warnings = []
        save = out / "cases" / case.stem
        t0 = time.time()
        rows = run_evaluator(evaluator, case, save, want, gts_dir=gts, verbose=args.verbose)
        for t, row in rows.items():
            entry["teams"][t] = {"row": row, "warnings": want[t].predictor.warnings,
                                 "classes": {str(k): v for k, v in class_curves(save, case.name, t, gts, case).items()}}
            if row is None:
                log(f"warning: the evaluator wrote no metrics for {teams[t]} on {case.name} (see {save}/evaluator.log)")
            else:
                log(f"  {teams[t]}: box DSC {float(row['DSC_1']):.4f}, final DSC {float(row['DSC_Final']):.4f}, "
                    f"DSC_AUC {float(row['DSC_AUC']):.4f}")
        entry["wall_s"] = round(time.time() - t0, 1)
        write_json(path, results)


class _Timed:
    """A predictor that reports each round as it ends (the evaluator prints only to its log)."""

    def __init__(self, predictor, name, log):
        self.predictor, self.name, self.log = predictor, name, log

    def __call__(self, inputs, outputs):
        t = time.time()
        self.predictor(inputs, outputs)
        st = self.predictor.state
        self.log(f"  {self.name} {st.case}: round {st.rounds + 1}/{ROUNDS} in {time.time() - t:.1f} s")


def main(argv=None) -> int:
    from .cli import tool_main
    return tool_main("radsam cvpr25", add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
