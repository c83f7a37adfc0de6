"""Hostile and unlucky files (issue 17): no file can crash or hang a scan, label CSVs in
the encodings spreadsheets write, bounded decode memory, 16-bit scaling that one pixel
cannot move, a full disk, and kill -9 in the middle of a cache build or demo generation.

Anything that could hang on a regression (a FIFO opened for reading) runs in a
subprocess with a timeout, so a regression fails here instead of stalling CI. Command-line runs start
from a scratch folder rather than the repository, so ``PYTHONPATH`` decides which
``h2a`` they import.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
import random
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests import corpus

TIMEOUT = 180  # seconds; generous for a loaded CI box, finite so a hang fails
TRAIN_CSV = "boneage-training-dataset.csv"
TRAIN_DIR = "boneage-training-dataset"


# --------------------------------------------------------------------------- helpers


def _cli(*args: str, cwd: Path, env: dict | None = None, fsize: int | None = None,
         timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """``python -m h2a`` in a subprocess; ``fsize`` caps the bytes any file may grow to
    (RLIMIT_FSIZE, with SIGXFSZ ignored so writes fail with EFBIG like a full disk)."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "h2a", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=_file_size_limit(fsize) if fsize is not None else None)


def _file_size_limit(nbytes: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return apply


def _dataset(root: Path, files: dict[str, bytes | None], csv: str | None = None) -> Path:
    """A Kaggle-layout folder: ``files`` maps image names to bytes (None: a FIFO)."""
    folder = root / TRAIN_DIR
    folder.mkdir(parents=True)
    for name, data in files.items():
        if data is None:
            os.mkfifo(folder / name)
        else:
            (folder / name).write_bytes(data)
    if csv is None:
        ids = [name.rsplit(".", 1)[0] for name in files]
        csv = "id,boneage,male\n" + "".join(f"{i},{100 + k},{k % 2 == 0}\n" for k, i in enumerate(ids))
    (root / TRAIN_CSV).write_text(csv)
    return root


def _png(array: np.ndarray | None = None) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(corpus.gray8() if array is None else array).save(buf, "PNG")
    return buf.getvalue()


def _json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout)


def _problems_about(out: dict, name: str) -> list[str]:
    return [p["problem"] for p in out["problems"] if name in p["item"] or name in p["problem"]]


# --------------------------------------------------------------------------- one odd file


@pytest.fixture
def odd_files(tmp_path: Path) -> Path:
    """A good PNG next to a DICOM with NumberOfFrames 'xy' and a TIFF with a bad page pointer."""
    return _dataset(tmp_path / "odd", {
        "1.png": _png(),
        "2.dcm": corpus.bad_frames_dicom_bytes(tmp_path / "scratch.dcm"),
        "3.tif": corpus.bad_ifd_tiff_bytes(),
    })


def test_header_scan_turns_any_file_exception_into_a_problem_row(odd_files: Path, tmp_path: Path) -> None:
    from h2a.data.datasets import load_dataset, scan_headers

    ds = load_dataset(odd_files)
    headers = scan_headers(ds, db_path=tmp_path / "headers.sqlite")
    errors = dict(zip(ds.meta["id"], headers["error"]))
    assert errors["1"] is None
    for ident, name in (("2", "2.dcm"), ("3", "3.tif")):
        assert errors[ident].startswith(f"{name}: "), errors[ident]
        rows = [p for p in ds.problems if p.item == name]
        assert len(rows) == 1 and "damaged" in rows[0].problem, ds.problems


def test_stats_lists_odd_files_instead_of_dying(odd_files: Path, tmp_path: Path) -> None:
    out = _json(_cli("stats", "--data", str(odd_files), "--json", cwd=tmp_path,
                     env={"H2A_WORKSPACE": str(tmp_path / "ws")}))
    assert (out["n_images"], out["n_unreadable_images"]) == (1, 2)
    assert _problems_about(out, "2.dcm") and _problems_about(out, "3.tif")


def test_inspect_names_the_file_and_the_problem(odd_files: Path, tmp_path: Path) -> None:
    from h2a.data.imageio import inspect

    for name in ("2.dcm", "3.tif"):
        result = inspect(odd_files / TRAIN_DIR / name)
        assert result["ok"] is False and result["error_type"] == "CorruptImageError", result
        assert result["error"].startswith(f"{name}: ") and "unexpected" not in result["error"]


# --------------------------------------------------------------------------- FIFOs


@pytest.fixture
def fifo_dataset(tmp_path: Path) -> Path:
    """Two good images and a FIFO named 3.png, all listed in the label CSV."""
    return _dataset(tmp_path / "fifo", {"1.png": _png(), "2.png": _png(), "3.png": None})


def _py(code: str, cwd: Path, timeout: float = TIMEOUT) -> Any:
    """Run ``code`` in a fresh interpreter and return the JSON it prints last. A worker
    thread blocked in open() on a FIFO cannot be interrupted, so hang-prone calls run
    out of process, where a timeout can end them."""
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_fifo_is_a_problem_row_in_dataset_and_header_scan(fifo_dataset: Path, tmp_path: Path) -> None:
    out = _py(
        "import json; from pathlib import Path\n"
        "from h2a.data.datasets import load_dataset, scan_headers\n"
        f"ds = load_dataset({str(fifo_dataset)!r})\n"
        f"headers = scan_headers(ds, db_path=Path({str(tmp_path / 'h.sqlite')!r}))\n"
        "print(json.dumps({'path3': ds.path_of('3'), 'errors': int(headers['error'].notna().sum()),\n"
        "                  'problems': [p.to_dict() for p in ds.problems]}))", tmp_path)
    assert out["path3"] is None and out["errors"] == 0
    rows = [p["problem"] for p in out["problems"] if p["item"] == f"{TRAIN_DIR}/3.png"]
    assert rows and "FIFO" in rows[0] and "without opening" in rows[0], out["problems"]


def test_fifo_is_never_opened_by_the_decoder(fifo_dataset: Path, tmp_path: Path) -> None:
    out = _py(
        "import json\n"
        "from h2a.data import imageio\n"
        f"fifo = {str(fifo_dataset / TRAIN_DIR / '3.png')!r}\n"
        "found = []\n"
        "for read in (imageio.read_header, imageio.read_image, imageio.scan_file, imageio.check_integrity):\n"
        "    try:\n"
        "        read(fifo, '3.png')\n"
        "        found.append(['no error', ''])\n"
        "    except imageio.ImageReadError as exc:\n"
        "        found.append([type(exc).__name__, str(exc)])\n"
        "found.append([imageio.inspect(fifo)['error_type'], ''])\n"
        "print(json.dumps(found))", tmp_path, timeout=60)
    assert [kind for kind, _ in out] == ["NotAFileError"] * 5
    assert all(text.startswith("3.png: this is a named pipe (FIFO)") for _, text in out[:4]), out


def test_fifo_does_not_hang_stats_inspect_or_cache(fifo_dataset: Path, tmp_path: Path) -> None:
    env = {"H2A_WORKSPACE": str(tmp_path / "ws")}
    out = _json(_cli("stats", "--data", str(fifo_dataset), "--json", cwd=tmp_path, env=env))
    assert out["n_images"] == 2 and any("FIFO" in p for p in _problems_about(out, "3.png"))

    proc = _cli("inspect", str(fifo_dataset / TRAIN_DIR / "3.png"), cwd=tmp_path, env=env)
    assert proc.returncode == 1 and "named pipe (FIFO)" in proc.stdout, proc.stdout + proc.stderr

    proc = _cli("cache", "--data", str(fifo_dataset), "--image-size", "32", "--workers", "1", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "2 images x 32x32" in proc.stdout and "; 0 failed" in proc.stdout


def test_fifo_does_not_hang_predict(tiny_run: Path, fifo_dataset: Path, tmp_path: Path) -> None:
    fifo = fifo_dataset / TRAIN_DIR / "3.png"
    proc = _cli("predict", "--model", str(tiny_run), str(fifo), "--json", "--age-months", "100",
                cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "named pipe (FIFO)" in json.loads(proc.stdout)["error"]


# --------------------------------------------------------------------------- JPEG trailer


def test_jpeg_with_bytes_after_its_end_is_read_everywhere(tmp_path: Path) -> None:
    from h2a.data.datasets import load_dataset, scan_headers
    from h2a.data.imageio import read_image, scan_file

    root = _dataset(tmp_path / "jpg", {"1.jpg": corpus.jpeg_with_trailer_bytes(), "2.png": _png()})
    path = root / TRAIN_DIR / "1.jpg"
    assert scan_file(path).format == "JPEG"
    assert read_image(path).shape == (corpus.HEIGHT, corpus.WIDTH)
    ds = load_dataset(root)
    assert scan_headers(ds, db_path=tmp_path / "h.sqlite")["error"].isna().all()
    out = _json(_cli("stats", "--data", str(root), "--json", cwd=tmp_path,
                     env={"H2A_WORKSPACE": str(tmp_path / "ws")}))
    assert (out["n_images"], out["n_unreadable_images"], out["problems"]) == (2, 0, [])


# --------------------------------------------------------------------------- label CSV encodings

_ROWS = "id,boneage,male,note\n1,120,True,12\u201314 y \u2013 Jos\u00e9\n2,96,False,ok\n"


@pytest.mark.parametrize("data, encoding, noted", [
    (_ROWS.encode("utf-8"), "UTF-8", False),
    (codecs.BOM_UTF8 + _ROWS.encode("utf-8"), "UTF-8 with BOM", False),
    (_ROWS.encode("utf-16"), "UTF-16", False),  # Python writes the BOM, as Excel does
    (codecs.BOM_UTF16_BE + _ROWS.encode("utf-16-be"), "UTF-16", False),
    (_ROWS.encode("cp1252"), "Windows-1252", True),  # one spreadsheet dash
    ("id,boneage,male,note\n1,120,True,Jos\u00e9 \x81\n2,96,False,ok\n".encode("latin-1"),
     "Latin-1", True),  # 0x81 is not Windows-1252
], ids=["utf8", "utf8-bom", "utf16-le-bom", "utf16-be-bom", "cp1252", "latin1"])
def test_label_csv_encodings_are_read_and_reported(tmp_path: Path, data: bytes, encoding: str,
                                                   noted: bool) -> None:
    from h2a.data.datasets import load_dataset

    root = _dataset(tmp_path / "enc", {"1.png": _png(), "2.png": _png()}, csv="")
    (root / TRAIN_CSV).write_bytes(data)
    ds = load_dataset(root)
    assert ds.meta["id"].tolist() == ["1", "2"] and ds.meta["boneage"].tolist() == [120.0, 96.0]
    assert ds.encodings == {TRAIN_CSV: encoding}
    notes = [p.problem for p in ds.problems if p.item == TRAIN_CSV]
    if noted:
        assert len(notes) == 1 and f"read as {encoding}" in notes[0] and "line 2" in notes[0], notes
    else:
        assert ds.problems == []


def test_cp1252_labels_work_in_stats_and_say_so(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "enc", {"1.png": _png(), "2.png": _png()}, csv="")
    (root / TRAIN_CSV).write_bytes(_ROWS.encode("cp1252"))
    out = _json(_cli("stats", "--data", str(root), "--json", cwd=tmp_path,
                     env={"H2A_WORKSPACE": str(tmp_path / "ws")}))
    assert out["n_images"] == 2 and out["label_encodings"] == {TRAIN_CSV: "Windows-1252"}
    assert any("0x96" in p and "line 2" in p for p in _problems_about(out, TRAIN_CSV))


def test_undecodable_csv_names_the_file_line_and_byte(tmp_path: Path) -> None:
    from h2a.data.datasets import DatasetError, load_dataset

    root = _dataset(tmp_path / "bad", {"1.png": _png()}, csv="")
    (root / TRAIN_CSV).write_bytes(codecs.BOM_UTF8 + b"id,boneage,male\n1,12,True\n2,1\xff3,True\n")
    with pytest.raises(DatasetError) as err:
        load_dataset(root)
    message = str(err.value)
    assert f"{TRAIN_CSV}: cannot be read as text at line 3" in message and "(0xFF)" in message, message
    proc = _cli("stats", "--data", str(root), cwd=tmp_path, env={"H2A_WORKSPACE": str(tmp_path / "ws")})
    assert proc.returncode == 2 and "line 3" in proc.stderr and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- memory and scaling


def _ramp(height: int = 1500, width: int = 2000) -> np.ndarray:
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    return x * np.linspace(0.2, 1.0, height, dtype=np.float32)[:, None]


@pytest.mark.parametrize("kind, limit", [("rgb.png", 1.75), ("float.tif", 1.75), ("gray16.png", 1.75),
                                         ("window.dcm", 2.5), ("plain.dcm", 2.5)])
def test_decoding_allocates_no_float64_or_full_size_copies(tmp_path: Path, kind: str, limit: float) -> None:
    """numpy's allocations during one decode (tracemalloc sees them), relative to the
    float32 result: a float64 copy alone would be 2x, a float32 copy of RGB 3x."""
    ramp = _ramp()
    path = tmp_path / kind
    if kind == "rgb.png":
        Image.fromarray((np.stack([ramp] * 3, -1) * 255).astype(np.uint8)).save(path, compress_level=1)
    elif kind == "float.tif":
        Image.fromarray(ramp, "F").save(path)
    elif kind == "gray16.png":
        Image.fromarray((ramp * 4095).astype(np.uint16)).save(path, compress_level=1)
    else:
        corpus.make_dicom(path, array=(ramp * 4095).astype(np.uint16), bits_stored=12,
                          window=(2000, 3000) if kind == "window.dcm" else None,
                          rescale=(1.0, -10.0) if kind == "window.dcm" else None)
    img, peak = corpus.read_with_peak(path)
    assert img.dtype == np.float32 and img.shape == ramp.shape
    assert peak / img.nbytes <= limit, f"{kind}: peak {peak / img.nbytes:.2f} x the result"


def test_one_pixel_cannot_halve_16bit_brightness(tmp_path: Path) -> None:
    from h2a.data.imageio import read_image

    stored = np.round(corpus.phantom() * 255).astype(np.uint16)  # 8-bit values in a 16-bit PNG
    bumped = stored.copy()
    bumped[0, 0] = 256  # one pixel goes from 255 to 256
    Image.fromarray(stored).save(tmp_path / "a.png")
    Image.fromarray(bumped).save(tmp_path / "b.png")
    a, b = read_image(tmp_path / "a.png"), read_image(tmp_path / "b.png")
    np.testing.assert_allclose(a, stored / 255, atol=1e-6)
    rest = np.ones(a.shape, bool)
    rest[0, 0] = False
    np.testing.assert_array_equal(a[rest], b[rest])
    assert b[0, 0] == 1.0


@pytest.mark.parametrize("kind", ["dicom", "float_tiff"])
def test_one_hot_pixel_does_not_rescale_unwindowed_images(tmp_path: Path, kind: str) -> None:
    """No stated display range (DICOM without VOI, float TIFF): a robust window, not
    min-max, so a single dead-bright pixel cannot turn the picture dark."""
    from h2a.data.imageio import read_image

    stored = np.round(corpus.phantom() * 2000).astype(np.uint16)
    hot = stored.copy()
    hot[3, 3] = 4095
    images = []
    for name, arr in (("plain", stored), ("hot", hot)):
        path = tmp_path / f"{name}.{'dcm' if kind == 'dicom' else 'tif'}"
        if kind == "dicom":
            corpus.make_dicom(path, array=arr, bits_stored=12)
        else:
            Image.fromarray(arr.astype(np.float32), "F").save(path)
        images.append(read_image(path))
    plain, with_hot = images
    mask = np.ones(plain.shape, bool)
    mask[3, 3] = False
    np.testing.assert_allclose(with_hot[mask], plain[mask], atol=1e-6)
    assert plain[corpus.disc_mask()].min() == 1.0  # the disc is still white


# --------------------------------------------------------------------------- full disk


def test_stats_survives_a_full_disk_for_its_header_cache(odd_files: Path, tmp_path: Path) -> None:
    proc = _cli("stats", "--data", str(odd_files), "--json", cwd=tmp_path, fsize=2048,
                env={"H2A_WORKSPACE": str(tmp_path / "ws")})
    out = _json(proc)
    assert (out["n_images"], out["n_unreadable_images"]) == (1, 2)
    assert "header cache" in proc.stderr and "without it" in proc.stderr, proc.stderr


def test_header_cache_that_cannot_write_degrades_to_no_cache(odd_files: Path, tmp_path: Path,
                                                            monkeypatch, caplog) -> None:
    from h2a.data import datasets

    real_connect = sqlite3.connect

    class FullDisk:
        def __init__(self, con: sqlite3.Connection) -> None:
            self._con = con

        def __getattr__(self, name: str):
            return getattr(self._con, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self._con.__exit__(*exc)

        def executemany(self, *args):
            raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(datasets.sqlite3, "connect", lambda *a, **k: FullDisk(real_connect(*a, **k)))
    ds = datasets.load_dataset(odd_files)
    with caplog.at_level(logging.WARNING, logger="h2a.data.datasets"):
        headers = datasets.scan_headers(ds, db_path=tmp_path / "h.sqlite")
    assert headers["error"].notna().sum() == 2 and headers.loc[0, "width"] == corpus.WIDTH
    assert "the disk is full" in caplog.text


def test_cache_build_on_a_full_disk_says_so(demo_dir: Path, tmp_path: Path) -> None:
    proc = _cli("cache", "--data", str(demo_dir), "--image-size", "64", "--workers", "1", cwd=tmp_path,
                fsize=64 << 10, env={"H2A_WORKSPACE": str(tmp_path / "ws")})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "The disk is full" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    tensors = tmp_path / "ws" / "cache" / "tensors"
    assert not tensors.exists() or not any(p.name.startswith(".tmp-") for p in tensors.iterdir())


def test_worker_killed_by_sigbus_is_reported_as_a_full_disk(demo_dir: Path, tmp_path: Path,
                                                           monkeypatch) -> None:
    """A write through a memmap on a full disk kills the worker with SIGBUS."""
    from h2a.data import cache as cache_mod
    from h2a.data.datasets import load_dataset
    from h2a.data.preprocess import PreprocessConfig

    monkeypatch.setattr(cache_mod, "_WORKER_CMD", "import os, signal; os.kill(os.getpid(), signal.SIGBUS)")
    with pytest.raises(cache_mod.CacheError, match="The disk is full"):
        cache_mod.build_cache(load_dataset(demo_dir), PreprocessConfig(size=32), root=tmp_path, workers=2)


# --------------------------------------------------------------------------- kill -9


def _start(code: str, tmp_path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, start_new_session=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_when(proc: subprocess.Popen, ready, delay: float) -> None:
    """SIGKILL ``proc`` (the parent only: its workers are orphaned, as after a real
    kill -9) ``delay`` seconds after ``ready()`` first holds, or when it ends."""
    stop = time.monotonic() + TIMEOUT
    while not ready() and proc.poll() is None:
        assert time.monotonic() < stop, "the build never started"
        time.sleep(0.02)
    time.sleep(delay)
    proc.kill()
    proc.wait()


def _reap_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # orphaned workers, if any are left
    except ProcessLookupError:
        pass


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cache_build_killed_at_a_random_point_recovers(demo_dir: Path, tmp_path: Path, seed: int) -> None:
    from h2a.data.cache import _open_dir, build_cache, cache_dir_for
    from h2a.data.datasets import load_dataset
    from h2a.data.preprocess import PreprocessConfig

    ds, cfg, root = load_dataset(demo_dir), PreprocessConfig(size=48), tmp_path / "tensors"
    root.mkdir()
    proc = _start(
        "from h2a.data.datasets import load_dataset; from h2a.data.preprocess import PreprocessConfig; "
        "from h2a.data.cache import build_cache; from pathlib import Path; "
        f"build_cache(load_dataset({str(demo_dir)!r}), PreprocessConfig(size=48), root=Path({str(root)!r}), "
        "workers=2)", tmp_path)
    try:
        _kill_when(proc, lambda: any(p.name.startswith(".tmp-") for p in root.iterdir()),
                   random.Random(seed).uniform(0.0, 1.5))
        final = cache_dir_for(ds, cfg, root)
        if final.exists():  # published before the kill: then it must be whole
            assert _open_dir(final, cfg, ds.fingerprint) is not None
        again = build_cache(ds, cfg, root=root, workers=1)
    finally:
        _reap_group(proc)
    reference = build_cache(ds, cfg, root=tmp_path / "reference", workers=1)
    assert again.ok.all() and again.ids == reference.ids
    np.testing.assert_array_equal(np.asarray(again.images), np.asarray(reference.images))
    assert [p.name for p in root.iterdir() if p.name.startswith((".tmp-", ".trash-"))] == []


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("seed", [1, 2])
def test_demo_generation_killed_at_a_random_point_recovers(tmp_path: Path, seed: int) -> None:
    from h2a.data.datasets import load_dataset
    from h2a.data.demo import generate_demo

    n, out = 60, tmp_path / "parent" / "demo"
    out.parent.mkdir()
    proc = _start(f"from h2a.data.demo import generate_demo; generate_demo({str(out)!r}, n={n}, seed=3, "
                  "workers=2)", tmp_path)
    wanted = random.Random(seed).randint(1, n - 10)  # images rendered before the kill

    def rendered() -> bool:
        return sum(len(list(p.rglob("*.png"))) for p in out.parent.glob(".demo.tmp-*")) >= wanted

    try:
        _kill_when(proc, rendered, 0.0)
        if out.exists():  # finished before the kill: then it must be whole
            assert (out / "SYNTHETIC.txt").is_file()
        generate_demo(out, n=n, seed=3, workers=1)
    finally:
        _reap_group(proc)
    reference = generate_demo(tmp_path / "reference" / "demo", n=n, seed=3, workers=1)
    assert _tree_digest(out) == _tree_digest(reference)
    assert len(load_dataset(out)) == n
    assert sorted(p.name for p in out.parent.iterdir()) == ["demo"]  # no partial copies left
