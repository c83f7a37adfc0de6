"""The docs cannot rot: every ``h2a`` command in a fenced block of the README and docs/
(also inside ``$(...)``) parses with today's command line (sub-command, flags and choices)
and, unless ``PARSE_ONLY`` says why not, RUNS, doctest-style, on the demo data; every page
the README links to exists.

How a documented command runs here (``Docs.argv``, ``Docs.run``):

1. Its placeholders are replaced, token by token, by this module's fixtures
   (``SUBSTITUTIONS``; ``{demo}`` etc. are filled in by the ``docs`` fixture):

   ============================================  ==========================================
   in the docs                                   in the test
   ============================================  ==========================================
   /path/to/rsna-bone-age, /data/rsna-bone-age,  the session's demo dataset (``demo_dir``,
   DIR, ../shared/data/rsna-thumbs-100,          synthetic, 240 images)
   workspace/demo/rsna-synthetic-n2000-s0,
   /path/to/site-images
   /tmp/demo, reports/                           folders under the module's tmp dir
   hand.png                                      a PNG of the demo dataset
   scan.dcm, scan1.dcm                           another demo image written as a DICOM (8-bit
                                                 MONOCHROME2 with PatientSex and dates, by
                                                 tests/corpus.py's make_dicom)
   models/NAME                                   <tmp>/models/NAME. my-run and
                                                 rsna-boneage-release are copies of the session's
                                                 small finished run (``tiny_run``), so nothing
                                                 shared is modified (``adapt`` writes into its
                                                 run); demo-tiny, rsna-gpu-512 and h2a-boneage
                                                 are made by the documented train and export
                                                 --ship commands themselves
   ============================================  ==========================================

   A path-like token still relative after this fails the test, naming it: a documented
   command never writes into the repository.
2. Its cost overrides (``RUN``) are appended. argparse keeps the last value of a repeated
   flag, so ``--image-size 256 ... --image-size 64`` runs at 64 px; ``EXPECT`` checks that
   the overrides took effect (the train runs' config.json, the cache's size, demo-data's n).
3. The documented commands it builds on run first, once (``PREREQUISITES``): `export --ship`
   before what uses the shipped run, `adapt` before `--site my-hospital`, `study run` before
   `study show`, `hash-password` (its output exported, ``EXPORTS``) before `serve`.
4. It runs in-process through ``h2a.cli.main`` in ``Docs.env`` (a workspace, models
   folder and study storage of the module's own; see there for how a command without
   --model finds its model) with stdin from ``STDIN`` and output captured. It must exit 0;
   a ``--json`` command's stdout must be one JSON document; ``EXPECT`` may check more.

A command that cannot run in a test is in ``PARSE_ONLY`` with the reason (it is still
parsed). A documented command in neither table fails
``test_every_documented_command_is_run_or_parse_only``, so a new command in the docs
forces that decision; so does a table entry no documented command matches any more.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from h2a.cli import build_parser, main
from tests.conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"```(?:bash|sh|console)?\n(.*?)```", re.S)


def commands(path: Path) -> list[str]:
    """The h2a command lines of the fenced blocks of ``path`` (continuations joined)."""
    out = []
    for block in FENCE.findall(path.read_text()):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split(" # ")[0].strip()
            # a command substitution, e.g. export H2A_PASSWORD_HASH="$(.venv/bin/h2a hash-password)"
            inner = re.findall(r"\$\(([^()]*)\)", line)
            for part in [*re.split(r"\s*(?:&&|\|)\s*", line), *inner]:
                m = re.match(r"^(?:\S*/)?(?:\.venv/bin/)?(?:h2a|python -m h2a)\s+(.*)$", part)
                if m and not part.startswith(("torchrun", "bash")):
                    out.append(m.group(1))
    return out


def norm(command: str) -> str:
    """A command with its whitespace normalised (the docs' continuation lines leave runs of it)."""
    return " ".join(shlex.split(command))


ALL = [(p.relative_to(REPO).as_posix(), c) for p in DOCS for c in commands(p)]

# ---------------------------------------------------------------------------------------------
# The tables. Keys of RUN are exact documented commands (whitespace normalised); keys of
# PARSE_ONLY are exact commands or a command prefix ("study stop" covers every `study stop ...`).

SUBSTITUTIONS = {
    "/path/to/rsna-bone-age": "{demo}",
    "/data/rsna-bone-age": "{demo}",
    "DIR": "{demo}",
    "../shared/data/rsna-thumbs-100": "{demo}",
    "workspace/demo/rsna-synthetic-n2000-s0": "{demo}",
    "/path/to/site-images": "{demo}",
    "/tmp/demo": "{tmp}/demo",
    "reports/": "{tmp}/reports",
    "hand.png": "{png}",
    "scan.dcm": "{dicom}",
    "scan1.dcm": "{dicom}",
    "models/demo-tiny": "{models}/demo-tiny",
    "models/my-run": "{models}/my-run",
    "models/rsna-boneage-release": "{models}/rsna-boneage-release",
    "models/h2a-boneage": "{models}/h2a-boneage",
    "models/rsna-gpu-512": "{models}/rsna-gpu-512",
}

# Documented commands named more than once below.
SHIP = "export --model models/rsna-boneage-release --ship models/h2a-boneage"
TRAIN_DEMO = ("train --data workspace/demo/rsna-synthetic-n2000-s0 --out models/demo-tiny --arch tiny_cnn "
              "--no-pretrained --image-size 96 --epochs 5")
ADAPT = "adapt --model models/h2a-boneage --data /path/to/site-images --name my-hospital"
ONNX = "export --model models/h2a-boneage --onnx --json"
SEX1 = "study run --name sex1 --data ../shared/data/rsna-thumbs-100 --preset sex-input --trial-minutes 10"
GPU_TRAIN = ("train --data /data/rsna-bone-age --out models/rsna-gpu-512 --split dataset --arch efficientnet_lite0 "
             "--image-size 512 --resize pad --contrast clahe --epochs 40 --batch-size 64 --lr 1e-3 "
             "--scheduler cosine --ema 0.999 --workers 8")

# What a training run costs here: tiny_cnn at 64 px, one epoch on 64 images, in-process.
TINY_TRAIN = "--arch tiny_cnn --no-pretrained --image-size 64 --epochs 1 --max-train-images 64 --workers 0 --amp off"

# Documented command -> cost overrides appended to it ("" for none).
RUN = {
    "predict hand.png --sex female --json": "",
    "demo-data --out /tmp/demo --n 2000 --seed 0": "--n 24",
    "stats --data /path/to/rsna-bone-age --json": "",
    "inspect scan1.dcm hand.png --json": "",
    "cache --data /path/to/rsna-bone-age --image-size 256 --resize pad --contrast clahe": "--image-size 64",
    # the GPU recipe's options (--split dataset, pad, CLAHE, cosine, EMA, batch 64) on a CPU-sized model
    GPU_TRAIN: TINY_TRAIN,
    # one trial per arm (with-sex and without-sex, seed 0) of a few seconds each: a real,
    # finished arm study for `study show` and `study report`
    SEX1: "--trial-minutes 0.05 --trials 2",
    "study show sex1 --json": "",
    "study report sex1": "",
    "hash-password": "",
    # prints the streamlit command line it would exec, after every check `serve` makes
    "serve --host 0.0.0.0 --port 8501": "--dry-run",
    TRAIN_DEMO: TINY_TRAIN,
    "evaluate --model models/demo-tiny --json": "",
    "predict --model models/demo-tiny --sex female hand.png --json": "",
    "models": "",
    SHIP: "",
    ONNX: "",
    "predict hand.png --sex female --backend onnx --json": "",
    "predict --model models/my-run --sex female --dob 2014-05-02 --exam-date 2026-01-15 hand.png scan.dcm --json "
    "--report-dir reports/": "",
    # 2 folds x 1 repeat instead of 5 x 3: the same code path, 7x fewer fits
    ADAPT: "--folds 2 --repeats 1",
    "adapt --model models/h2a-boneage --list": "",
    "predict hand.png --sex male --site my-hospital --json": "",
    "evaluate --model models/h2a-boneage --data /path/to/site-images --site my-hospital": "",
}

PARSE_ONLY = {
    "study run --name rs1": "a recipe search with a second worker process (--workers 2): at its smallest two "
                            "EfficientNet-Lite0 trials, one of them in a freshly started Python, about 30 s "
                            "on two cores (tests/test_study_runner.py runs tiny searches and two workers)",
    "study stop": "needs a study running on this machine (a live `study run` coordinator) to stop",
    "study confirm": "needs the finished rs1 search above, then predicts its best and base trials' held-out "
                     "images with 64 views each (tests/test_study_confirm.py confirms a trained search)",
}

# Documented command -> the documented commands it builds on (run first, once).
PREREQUISITES = {
    # the README's "a fresh clone already answers": the shipped run must exist (see Docs.env)
    "predict hand.png --sex female --json": [SHIP],
    "evaluate --model models/demo-tiny --json": [TRAIN_DEMO],
    "predict --model models/demo-tiny --sex female hand.png --json": [TRAIN_DEMO],
    ONNX: [SHIP],
    "predict hand.png --sex female --backend onnx --json": [SHIP, ONNX],
    ADAPT: [SHIP],
    "adapt --model models/h2a-boneage --list": [ADAPT],
    "predict hand.png --sex male --site my-hospital --json": [ADAPT],
    "evaluate --model models/h2a-boneage --data /path/to/site-images --site my-hospital": [ADAPT],
    "study show sex1 --json": [SEX1],
    "study report sex1": [SEX1],
    # export H2A_PASSWORD_HASH="$(h2a hash-password)" first: serve refuses 0.0.0.0 without it
    "serve --host 0.0.0.0 --port 8501": ["hash-password"],
}

# Documented command -> the environment variable the docs' shell sets to its output.
EXPORTS = {"hash-password": "H2A_PASSWORD_HASH"}

# Documented command -> environment of its own, on top of Docs.env. The study's trials are runs
# in the models folder: in <tmp>/models with the others reached by path, not among the runs
# a command without --model chooses from (Docs.env), whatever their validation MAE.
ENV = {SEX1: {"H2A_MODELS_DIR": "{models}"}}

# Documented command -> what it reads on stdin (every other command gets an empty stdin).
STDIN = {"hash-password": "a password for the docs test\n"}


def _check_train(out_name: str):
    def check(result, docs):
        cfg = json.loads((docs.models / out_name / "config.json").read_text())
        # the cost overrides won over the documented values
        assert (cfg["arch"], cfg["epochs"], cfg["preprocess"]["size"]) == ("tiny_cnn", 1, 64), cfg
        assert (docs.models / out_name / "metadata.json").is_file()
    return check


def _check_predict(result, docs, model: str) -> bool:
    records = result.json if isinstance(result.json, list) else [result.json]
    for r in records:
        assert not r.get("error") and r["bone_age_months"] is not None, r
        assert r["model_run"] == model, r["model_run"]
    return True


# Documented command -> a further check of what it did (beyond exit 0 and valid JSON).
EXPECT = {
    "demo-data --out /tmp/demo --n 2000 --seed 0":
        lambda r, d: "(24 images, seed 0)" in r.out and (d.tmp / "demo").is_dir(),
    "stats --data /path/to/rsna-bone-age --json": lambda r, d: r.json["n_images"] > 0 and r.json["synthetic"],
    "inspect scan1.dcm hand.png --json":
        lambda r, d: [x["format"] for x in r.json] == ["DICOM", "PNG"] and all(x["ok"] for x in r.json),
    "cache --data /path/to/rsna-bone-age --image-size 256 --resize pad --contrast clahe":
        lambda r, d: "x 64x64 uint8" in r.out,
    TRAIN_DEMO: _check_train("demo-tiny"),
    GPU_TRAIN: _check_train("rsna-gpu-512"),
    # without --model: the shipped run (Docs.env)
    "predict hand.png --sex female --json": lambda r, d: _check_predict(r, d, "h2a-boneage"),
    "predict --model models/demo-tiny --sex female hand.png --json": lambda r, d: _check_predict(r, d, "demo-tiny"),
    "predict hand.png --sex female --backend onnx --json": lambda r, d: _check_predict(r, d, "h2a-boneage"),
    "predict hand.png --sex male --site my-hospital --json":
        lambda r, d: _check_predict(r, d, "h2a-boneage") and r.json["site"] == "my-hospital",
    "predict --model models/my-run --sex female --dob 2014-05-02 --exam-date 2026-01-15 hand.png scan.dcm --json "
    "--report-dir reports/":
        lambda r, d: _check_predict(r, d, "my-run") and len(list((d.tmp / "reports").glob("*.pdf"))) == 2,
    SHIP: lambda r, d: (d.models / "h2a-boneage" / "model.safetensors").is_file(),
    ONNX: lambda r, d: (d.models / "h2a-boneage" / "model.onnx").is_file(),
    "adapt --model models/h2a-boneage --list": lambda r, d: "my-hospital" in r.out,
    SEX1: lambda r, d: "2 finished" in r.out,
    "study show sex1 --json":
        lambda r, d: (r.json["study"], r.json["n_trials"], len(r.json["comparisons"])) == ("sex1", 2, 1),
    "study report sex1": lambda r, d: Path(r.out.strip()).is_file(),
    "hash-password": lambda r, d: r.out.startswith("scrypt:") and len(r.out.splitlines()) == 1,
    "serve --host 0.0.0.0 --port 8501":
        lambda r, d: "password required" in r.err and "serve_app.py" in r.out and "0.0.0.0" in r.out,
}


def decision(command: str) -> str | None:
    """'run', 'parse-only' or None (undecided) for a documented command."""
    c = norm(command)
    if c in RUN:
        return "run"
    if any(c == k or c.startswith(k + " ") for k in PARSE_ONLY):
        return "parse-only"
    return None


EXECUTED = [(p, c) for p, c in ALL if decision(c) == "run"]

# ---------------------------------------------------------------------------------------------


@dataclass
class Result:
    argv: list[str]
    rc: int
    out: str
    err: str
    seconds: float
    json: object = None

    def why(self) -> str:
        return (f"`h2a {shlex.join(self.argv)}` exit {self.rc} in {self.seconds:.1f} s\n"
                f"stdout:\n{self.out[-3000:]}\nstderr:\n{self.err[-3000:]}")


class Docs:
    """The sandbox the documented commands run in, and their results (each runs once)."""

    def __init__(self, root: Path, demo: Path, png: Path, dicom: Path):
        self.root, self.tmp, self.models = root, root / "tmp", root / "models"
        self.tmp.mkdir()
        self.models.mkdir()
        self.values = {"demo": str(demo), "tmp": str(self.tmp), "models": str(self.models), "png": str(png),
                       "dicom": str(dicom)}
        # The environment every command sees, as a fresh clone with the shipped models:
        # H2A_SHIPPED_DIR is <tmp>/models (the repo's models/, where `export --ship` writes
        # h2a-boneage), H2A_MODELS_DIR an empty folder (no runs of the user's own yet). A
        # command without --model (the README's `predict hand.png ...`) then gets the best
        # run of h2a.run.best_run: the shipped h2a-boneage, the only run it sees (the other
        # folders under <tmp>/models are not shipped, so they are reached only by path).
        # A workspace and study storage of the module's own keep caches, job folders and
        # studies out of the session's; one worker keeps the 2-core box usable.
        self.env = {"H2A_WORKSPACE": str(root / "workspace"), "H2A_MODELS_DIR": str(root / "own-runs"),
                    "H2A_SHIPPED_DIR": str(self.models), "H2A_STUDY_STORAGE": f"sqlite:///{root / 'studies.db'}",
                    "H2A_WORKERS": "1"}
        self.results: dict[str, Result] = {}

    def argv(self, command: str) -> list[str]:
        c = norm(command)
        tokens = [SUBSTITUTIONS.get(t, t).format(**self.values) for t in shlex.split(c)]
        tokens += shlex.split(RUN.get(c, ""))
        left = [t for t in tokens if not t.startswith("-") and not os.path.isabs(t)
                and ("/" in t or re.search(r"\.(png|jpe?g|tiff?|dcm)$", t))]
        assert not left, f"`h2a {c}`: no substitution for {left}; add them to SUBSTITUTIONS"
        return tokens

    def run(self, command: str) -> Result:
        c = norm(command)
        if c in self.results:
            return self.results[c]
        for pre in PREREQUISITES.get(c, []):
            before = self.run(pre)
            assert before.rc == 0, f"`h2a {c}` builds on `h2a {pre}`, which failed:\n{before.why()}"
        argv = self.argv(c)
        out, err = io.StringIO(), io.StringIO()
        start = time.monotonic()
        # the whole environment and the working directory come back afterwards, whatever the
        # command set (`serve` exports H2A_DATA_ROOTS for the server it starts)
        saved_env, saved_cwd = dict(os.environ), os.getcwd()
        os.environ.update(self.env)
        os.environ.update({k: v.format(**self.values) for k, v in ENV.get(c, {}).items()})
        for key in ("H2A_DATA_DIR", "H2A_DATA_ROOTS"):
            os.environ.pop(key, None)
        try:
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr("sys.stdin", io.StringIO(STDIN.get(c, "")))
                with redirect_stdout(out), redirect_stderr(err):
                    try:
                        rc = main(argv)
                    except SystemExit as exc:  # argparse
                        rc = exc.code if isinstance(exc.code, int) else 2
        finally:
            os.environ.clear()
            os.environ.update(saved_env)
            os.chdir(saved_cwd)
        result = Result(argv, rc, out.getvalue(), err.getvalue(), time.monotonic() - start)
        if rc == 0 and c in EXPORTS:
            self.env[EXPORTS[c]] = result.out.strip()
        if rc == 0 and "--json" in argv:
            try:
                result.json = json.loads(result.out)
            except ValueError as exc:
                pytest.fail(f"--json output is not one JSON document ({exc}):\n{result.why()}")
        self.results[c] = result
        return result


@pytest.fixture(scope="module")
def docs(tmp_path_factory, demo_dir, tiny_run, one_torch_thread):
    import numpy as np
    from PIL import Image

    from tests.corpus import make_dicom

    root = tmp_path_factory.mktemp("docs")
    pngs = sorted(demo_dir.rglob("*.png"))
    dicom = make_dicom(root / "scan.dcm", array=np.asarray(Image.open(pngs[1]).convert("L")), bits=8,
                       sex="F", birth_date="20140502", study_date="20260115")
    d = Docs(root, demo_dir, pngs[0], dicom)
    for name in ("my-run", "rsna-boneage-release"):  # as trained: no lock, job, sites or ONNX of other tests
        shutil.copytree(tiny_run, d.models / name,
                        ignore=shutil.ignore_patterns(".*", "job.json", "sites", "model.onnx"))
    yield d
    took = sorted(((r.seconds, c) for c, r in d.results.items()), reverse=True)
    print(f"\ndocumented commands: {sum(s for s, _ in took):.1f} s in all; "
          + "; ".join(f"{c[:40]} {s:.1f} s" for s, c in took[:6]))


# ---------------------------------------------------------------------------------------------


def test_the_docs_show_commands():
    assert len(ALL) >= 15, ALL
    assert {p for p, _ in ALL} >= {"README.md", "docs/training.md"}


def test_every_documented_command_is_run_or_parse_only():
    """A new command in the docs forces a decision: run it (RUN, with its cost overrides)
    or say why not (PARSE_ONLY); an entry no documented command matches any more goes."""
    undecided = sorted({norm(c) for _, c in ALL if decision(c) is None})
    assert not undecided, ("documented commands neither run nor parse-only; add each to RUN (with cost "
                           f"overrides) or PARSE_ONLY (with the reason): {undecided}")
    documented = {norm(c) for _, c in ALL}
    both = [c for c in documented if c in RUN and any(c == k or c.startswith(k + " ") for k in PARSE_ONLY)]
    assert not both, f"in both RUN and PARSE_ONLY: {both}"
    stale = [k for k in RUN if k not in documented]
    stale += [k for k in PARSE_ONLY if not any(c == k or c.startswith(k + " ") for c in documented)]
    for table in (PREREQUISITES, EXPECT, EXPORTS, ENV, STDIN):
        stale += [k for k in table if k not in RUN]
    stale += [p for pres in PREREQUISITES.values() for p in pres if p not in RUN]
    assert not stale, f"entries for commands the docs no longer show: {stale}"
    assert len(EXECUTED) >= 15, EXECUTED


@pytest.mark.parametrize("where, command", ALL, ids=[f"{p}: {c[:40]}" for p, c in ALL])
def test_documented_command_parses(where, command, capsys):
    parser = build_parser()
    try:
        parser.parse_args(shlex.split(command))
    except SystemExit as exc:
        pytest.fail(f"{where}: `h2a {command}` does not parse: {capsys.readouterr().err.strip()} ({exc.code})")


@pytest.mark.parametrize("where, command", EXECUTED, ids=[f"{p}: {c[:40]}" for p, c in EXECUTED])
def test_documented_command_runs(where, command, docs):
    result = docs.run(command)
    assert result.rc == 0, f"{where}:\n{result.why()}"
    check = EXPECT.get(norm(command))
    if check is not None:
        assert check(result, docs) is not False, f"{where}: {command}\n{result.why()}"


def test_readme_links_resolve():
    text = (REPO / "README.md").read_text()
    for target in re.findall(r"\]\(((?:docs|models)/[^)#]+)\)", text):
        assert (REPO / target).exists(), target
    assert len(text.splitlines()) <= 150
