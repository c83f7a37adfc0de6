"""Find, validate and describe a dataset directory in the RSNA Bone Age layouts.

A dataset is one directory holding one or more label CSVs plus their images:

* Kaggle training layout: ``boneage-training-dataset.csv`` (``id,boneage,male``) and a
  folder of ``<id>.png``;
* the official validation list (``Image ID,male,Bone Age (months)``);
* the label-free test list (``Case ID,Sex``).

Several CSVs in one directory become splits side by side. Loading never stops at a bad
row: the good rows load and every problem is recorded with the row or file it concerns,
so a page can show them next to the statistics.
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import io
import json
import logging
import os
import sqlite3
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from h2a.progress import ProgressFn, report
from h2a.data import imageio
from h2a.data.imageio import special_file_kind
from h2a.settings import enforced_data_roots, get_settings

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom", ".bmp")
BONEAGE_RANGE = (0.0, 240.0)
SYNTHETIC_MARKER = "SYNTHETIC.txt"  # written by h2a.data.demo; the UI labels such data synthetic
_MALE_WORDS = {"true", "t", "1", "m", "male", "yes", "y"}
_FEMALE_WORDS = {"false", "f", "0", "female", "no", "n"}
_SPLIT_ORDER = {"train": 0, "validation": 1, "test": 2}
_log = logging.getLogger(__name__)
# Byte-order marks, longest first (UTF-32's LE mark starts with UTF-16's).
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le", "UTF-32"), (codecs.BOM_UTF32_BE, "utf-32-be", "UTF-32"),
    (codecs.BOM_UTF8, "utf-8", "UTF-8 with BOM"),
    (codecs.BOM_UTF16_LE, "utf-16-le", "UTF-16"), (codecs.BOM_UTF16_BE, "utf-16-be", "UTF-16"),
)


class DatasetError(ValueError):
    """The directory cannot be used at all (no label CSV, unknown columns, unreadable)."""


@dataclass(frozen=True)
class Problem:
    item: str  # where: "file.csv line 12 (id 1234)" or an image file name
    problem: str  # what, in plain words

    def to_dict(self) -> dict[str, str]:
        return {"item": self.item, "problem": self.problem}


@dataclass(frozen=True)
class LabelFormat:
    name: str
    split: str
    id_col: str
    sex_col: str
    age_col: str | None


# Column names are matched case- and whitespace-insensitively.
LABEL_FORMATS = (
    LabelFormat("kaggle", "train", "id", "male", "boneage"),
    LabelFormat("validation", "validation", "Image ID", "male", "Bone Age (months)"),
    LabelFormat("test", "test", "Case ID", "Sex", None),
)


@dataclass
class Dataset:
    """Label metadata aligned with image files.

    ``meta`` columns: ``id`` (str), ``split`` ('train' | 'validation' | 'test'),
    ``boneage`` (float months, NaN when unlabelled), ``male`` (nullable boolean),
    ``path`` (absolute image path, or None when the image is missing), ``source``
    (label CSV file name), ``line`` (1-based line in that CSV).
    """

    root: Path
    meta: pd.DataFrame
    problems: list[Problem] = field(default_factory=list)
    synthetic: bool = False
    sources: dict[str, str] = field(default_factory=dict)  # csv file -> format name
    encodings: dict[str, str] = field(default_factory=dict)  # csv file -> text encoding used
    _fingerprint: str | None = field(default=None, repr=False)
    _paths: pd.Series | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def splits(self) -> list[str]:
        return sorted(self.meta["split"].unique(), key=lambda s: _SPLIT_ORDER.get(s, 9))

    def __len__(self) -> int:
        return len(self.meta)

    @property
    def fingerprint(self) -> str:
        """Hash of ids, labels and image file sizes/mtimes: changes when the data does."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for row in self.meta[["id", "split", "boneage", "male", "path"]].itertuples(index=False):
                stat = ""
                if row.path:
                    try:
                        st = os.stat(row.path)
                        stat = f"{st.st_size}:{st.st_mtime_ns}"
                    except OSError:
                        stat = "gone"
                h.update(f"{row.id}|{row.split}|{row.boneage}|{row.male}|{stat}\n".encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def with_images(self) -> pd.DataFrame:
        """Rows whose image file exists (the ones that can be decoded, trained on, shown)."""
        return self.meta[self.meta["path"].notna()]

    def labelled(self) -> pd.DataFrame:
        """Rows with an image and both labels, as training and evaluation need."""
        m = self.with_images()
        return m[m["boneage"].notna() & m["male"].notna()]

    def paths_by_id(self) -> pd.Series:
        """Image path (str or None) indexed by id (str), one entry per id; built once.

        Pages, the engine and the predictor all look images up by id. The same id may sit
        in two splits (a train and a validation CSV), so the row with an image wins, then
        the first listed; the index is unique, so ``.get(id)`` is a scalar, never a Series.
        """
        if self._paths is None:
            m = self.meta
            order = m["path"].isna().to_numpy().argsort(kind="stable")  # rows with an image first
            first = m.iloc[order].drop_duplicates("id", keep="first")
            paths = pd.Series(first["path"].to_numpy(dtype=object), index=first["id"].astype(str).to_numpy(),
                              name="path", dtype=object)
            paths.index.name = "id"
            self._paths = paths.loc[m["id"].astype(str).drop_duplicates().to_numpy()]  # CSV order
        return self._paths

    def path_of(self, image_id: object) -> str | None:
        """Image path of one id, or None when the id is unknown or its image is missing."""
        path = self.paths_by_id().get(str(image_id))
        return path if isinstance(path, str) else None

    def problem_frame(self) -> pd.DataFrame:
        return pd.DataFrame([p.to_dict() for p in self.problems], columns=["item", "problem"])


def _norm(col: str) -> str:
    return " ".join(str(col).strip().lower().split())


def _match_format(columns: list[str]) -> LabelFormat | None:
    have = {_norm(c) for c in columns}
    for fmt in LABEL_FORMATS:
        need = {_norm(fmt.id_col), _norm(fmt.sex_col)} | ({_norm(fmt.age_col)} if fmt.age_col else set())
        if need <= have:
            return fmt
    return None


def _split_for(csv_path: Path, fmt: LabelFormat) -> str:
    """The Kaggle-format CSV is used for both train and validation copies; read the name."""
    stem = csv_path.stem.lower()
    if fmt.name == "kaggle":
        if "valid" in stem:
            return "validation"
        if "test" in stem:
            return "test"
    return fmt.split


def _parse_sex(raw: str) -> bool | None:
    word = str(raw).strip().lower()
    if word in _MALE_WORDS:
        return True
    if word in _FEMALE_WORDS:
        return False
    return None


_FROM_ENV = object()  # roots argument default: h2a.settings.enforced_data_roots()
OUTSIDE_ROOTS = "links outside the folders this server shares: skipped without opening it"


def _allowed_roots(roots: object) -> tuple[str, ...] | None:
    """``roots`` (or, by default, the enforced roots of this process) resolved, as strings."""
    if roots is _FROM_ENV:
        roots = enforced_data_roots()
    if roots is None:
        return None
    return tuple(str(Path(r).expanduser().resolve()) for r in roots)  # type: ignore[union-attr]


def _inside(real: str, roots: tuple[str, ...] | None) -> bool:
    if roots is None:
        return True
    return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def resolve_link(path: str, roots: tuple[str, ...] | None) -> tuple[str | None, str | None]:
    """(the real path, None) when ``path`` may be opened, else (None, why not): a symbolic
    link loop, a link to nothing, or (with ``roots``) a target outside every root.
    WHY: a scan must never follow a link out of the folders a server shares, and a loop
    (``90004.png -> 90004.png``) used to end a scan in a traceback."""
    try:
        real = os.path.realpath(path, strict=True)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, "a symbolic link loop: skipped without opening it"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return None, "a link to nothing: skipped"
        return None, f"cannot be resolved ({exc.strerror or exc}): skipped"
    if not _inside(real, roots):
        return None, OUTSIDE_ROOTS
    return real, None


def _index_images(root: Path, max_depth: int = 3, roots: object = _FROM_ENV
                  ) -> tuple[dict[str, list[Path]], list[Problem]]:
    """Map image file stem -> paths, walking a few levels (the official download nests).

    FIFOs, devices and sockets named like images are left out with a problem each and
    are never opened: reading a FIFO waits for a writer forever. So are symbolic links
    that loop, lead nowhere or (with ``roots``, by default ``H2A_DATA_ROOTS`` when set)
    leave the allowed roots: each is a problem naming the file, never a read. A linked
    image is indexed by its real path, the one that was checked.
    """
    allowed = _allowed_roots(roots)
    index: dict[str, list[Path]] = {}
    skipped: list[Problem] = []
    root_real = os.path.realpath(root)
    if not _inside(root_real, allowed):
        return index, [Problem(str(root), OUTSIDE_ROOTS)]

    def rel(entry: os.DirEntry) -> str:
        return str(Path(entry.path).relative_to(root))

    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            name = entry.name.lower()
            if entry.name.startswith(".") or name.endswith(".csv"):  # label CSVs: find_label_csvs
                continue
            is_image = name.endswith(IMAGE_EXTENSIONS)
            try:
                if entry.is_symlink():
                    real, problem = resolve_link(entry.path, allowed)
                    if problem is not None:
                        if is_image or problem != "a link to nothing: skipped":
                            skipped.append(Problem(rel(entry), problem))
                        continue
                    mode = os.stat(real).st_mode
                    path = Path(real) if stat.S_ISREG(mode) else Path(entry.path)  # walk a folder by its name
                else:
                    mode = entry.stat(follow_symlinks=False).st_mode
                    path = Path(entry.path)
            except OSError as exc:  # vanished or unreadable between listing and stat
                if is_image:
                    skipped.append(Problem(rel(entry), f"cannot be read ({exc.strerror or exc}): skipped"))
                continue
            if stat.S_ISDIR(mode):
                if depth < max_depth:
                    stack.append((path, depth + 1))
            elif is_image:
                if not stat.S_ISREG(mode):
                    skipped.append(Problem(rel(entry), _not_a_file(mode)))
                    continue
                stem = entry.name.rsplit(".", 1)[0]
                index.setdefault(stem, []).append(path)
    return index, skipped


def _not_a_file(mode: int) -> str:
    return f"{special_file_kind(mode)}, not an image file: skipped without opening it"


def _pick_image(candidates: list[Path], csv_path: Path, split: str) -> Path:
    if len(candidates) == 1:
        return candidates[0]
    stem = csv_path.stem.lower()
    for cand in candidates:
        if any(stem in part.lower() for part in cand.parent.parts):
            return cand
    key = {"train": "train", "validation": "valid", "test": "test"}[split]
    for cand in candidates:
        if key in str(cand.parent).lower():
            return cand
    return sorted(candidates)[0]


def find_label_csvs(root: Path) -> list[Path]:
    csvs = sorted(root.glob("*.csv")) + sorted(root.glob("*/*.csv"))
    return [p for p in csvs if p.is_file()]


def _label_csvs(root: Path, roots: object = _FROM_ENV) -> tuple[list[tuple[Path, Path]], list[Problem]]:
    """(CSV as found, real path to read) for each label CSV, and a problem for each one
    that must not be opened: a link loop, a link to nothing, a link out of the roots, a
    FIFO or device named .csv (reading a FIFO would wait forever)."""
    allowed = _allowed_roots(roots)
    found: list[tuple[Path, Path]] = []
    problems: list[Problem] = []
    for path in sorted(root.glob("*.csv")) + sorted(root.glob("*/*.csv")):
        where = str(path.relative_to(root))
        real, problem = resolve_link(str(path), allowed)
        if problem is not None:
            problems.append(Problem(where, problem.replace("skipped", "label file skipped")))
            continue
        try:
            mode = os.stat(real).st_mode
        except OSError as exc:
            problems.append(Problem(where, f"could not be read ({exc.strerror or exc})"))
            continue
        if stat.S_ISDIR(mode):
            continue
        if not stat.S_ISREG(mode):
            problems.append(Problem(where, f"{special_file_kind(mode)}, not a label file: skipped without opening it"))
            continue
        found.append((path, Path(real)))  # type: ignore[arg-type]
    return found, problems


class CsvText:
    """A label CSV decoded to text, with the encoding used and why (for the problem list)."""

    def __init__(self, text: str, encoding: str, note: str | None = None) -> None:
        self.text, self.encoding, self.note = text, encoding, note


def decode_csv_bytes(data: bytes, name: str) -> CsvText:
    """Text of a label CSV: UTF-8 (with or without BOM), UTF-16/32 by their BOM, else
    Windows-1252, else Latin-1.

    WHY: spreadsheets save "CSV" as cp1252 or UTF-16; one en dash must not make the
    whole dataset unusable. A file that cannot be decoded at all (a BOM that lies, NUL
    bytes in a file with no BOM) raises DatasetError naming the line and the byte.
    """
    for bom, codec, label in _BOMS:
        if data.startswith(bom):
            try:
                return CsvText(data[len(bom):].decode(codec), label)
            except UnicodeDecodeError as exc:
                raise _undecodable(name, data, len(bom) + exc.start, f"it starts with a {label} "
                                   f"byte-order mark but is not valid {label.split()[0]}") from exc
    try:
        return CsvText(data.decode("utf-8"), "UTF-8")
    except UnicodeDecodeError as exc:
        first_bad = exc.start
    if b"\x00" in data:
        raise _undecodable(name, data, data.index(b"\x00"), "it contains NUL bytes, so it is not a "
                           "text file in any encoding H2A reads (save it as UTF-8 CSV)")
    where = _line_and_byte(data, first_bad)
    for codec, label in (("cp1252", "Windows-1252"), ("latin-1", "Latin-1")):
        try:
            text = data.decode(codec)
        except UnicodeDecodeError:
            continue
        return CsvText(text, label, f"not UTF-8 ({where}), so it was read as {label} text; "
                                    "check accented names, or save it again as UTF-8 CSV")
    raise _undecodable(name, data, first_bad, "it is not text")  # pragma: no cover - latin-1 reads all


def _line_and_byte(data: bytes, pos: int) -> str:
    line = data.count(b"\n", 0, pos) + 1
    return f"line {line}, byte {pos} (0x{data[pos]:02X})"


def _undecodable(name: str, data: bytes, pos: int, why: str) -> DatasetError:
    return DatasetError(f"{name}: cannot be read as text at {_line_and_byte(data, pos)}: {why}")


def _read_csv(path: Path, name: str | None = None) -> tuple[pd.DataFrame, CsvText]:
    name = name or path.name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{name}: could not be read ({exc.strerror or exc})") from exc
    decoded = decode_csv_bytes(data, name)
    try:
        frame = pd.read_csv(io.StringIO(decoded.text), dtype=str, keep_default_na=False,
                            skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DatasetError(f"{name}: not a readable CSV ({str(exc).splitlines()[0]})") from exc
    return frame, decoded


def _rows_from_csv(
    csv_path: Path, fmt: LabelFormat, frame: pd.DataFrame, index: dict[str, list[Path]], root: Path,
    refused: frozenset[str] = frozenset(),
) -> tuple[list[dict], list[Problem]]:
    cols = {_norm(c): c for c in frame.columns}
    id_col, sex_col = cols[_norm(fmt.id_col)], cols[_norm(fmt.sex_col)]
    age_col = cols[_norm(fmt.age_col)] if fmt.age_col else None
    split = _split_for(csv_path, fmt)
    rel = str(csv_path.relative_to(root))
    rows: list[dict] = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    lo, hi = BONEAGE_RANGE
    for i, rec in enumerate(frame.to_dict("records")):
        line = i + 2  # header is line 1
        raw_id = str(rec[id_col]).strip()
        where = f"{rel} line {line} (id {raw_id or '?'})"
        if not raw_id:
            problems.append(Problem(where, "empty id: row skipped"))
            continue
        if raw_id.endswith(".0") and raw_id[:-2].isdigit():
            raw_id = raw_id[:-2]
        if raw_id in seen:
            problems.append(Problem(where, f"duplicate id {raw_id} (first on line {seen[raw_id]}): row skipped"))
            continue
        seen[raw_id] = line
        male = _parse_sex(rec[sex_col])
        if male is None:
            problems.append(Problem(where, f"unknown sex value {rec[sex_col]!r} (expected male True/False or M/F): row skipped"))
            continue
        boneage = np.nan
        if age_col is not None:
            raw_age = str(rec[age_col]).strip()
            try:
                boneage = float(raw_age)
            except ValueError:
                problems.append(Problem(where, f"bone age {raw_age!r} is not a number: row skipped"))
                continue
            if not np.isfinite(boneage) or not lo <= boneage <= hi:
                problems.append(Problem(where, f"bone age {raw_age} months is outside {lo:.0f}-{hi:.0f} months: row skipped"))
                continue
        path = None
        cands = index.get(raw_id)
        if cands:
            path = str(_pick_image(cands, csv_path, split).resolve())
        elif raw_id in refused:
            problems.append(Problem(where, f"image {raw_id} skipped (its file has its own problem row): "
                                           "labels kept, no image"))
        else:
            problems.append(Problem(where, f"image {raw_id}.png not found: labels kept, no image"))
        rows.append({"id": raw_id, "split": split, "boneage": boneage, "male": male,
                     "path": path, "source": rel, "line": line})
    return rows, problems


def load_dataset(root: str | Path, roots: object = _FROM_ENV) -> Dataset:
    """Load every label CSV in ``root`` (and one level below) with their images.

    ``roots``: the folders every file read must resolve into (a link out of them is a
    problem row, never a read); by default ``H2A_DATA_ROOTS`` when set (``h2a serve``
    sets it), else None: any link is followed (plain CLI use). Raises DatasetError only
    when nothing usable is there; everything else becomes a Problem on the returned
    dataset.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"{root}: folder does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder (point H2A at the folder holding the label CSV)")
    allowed = _allowed_roots(roots)
    if not _inside(os.path.realpath(root), allowed):
        raise DatasetError(f"{root}: outside the folders this server shares")
    csvs, csv_problems = _label_csvs(root, allowed)
    if not csvs:
        why = "; ".join(f"{p.item}: {p.problem}" for p in csv_problems)
        raise DatasetError(
            f"{root}: no label CSV found (expected e.g. boneage-training-dataset.csv with "
            "columns id,boneage,male)" + (f"; {why}" if why else "")
        )
    index, skipped = _index_images(root, roots=allowed)
    refused = frozenset(Path(p.item).name.rsplit(".", 1)[0] for p in skipped)
    rows: list[dict] = []
    problems: list[Problem] = csv_problems + list(skipped)
    sources: dict[str, str] = {}
    encodings: dict[str, str] = {}
    unknown: list[str] = []
    unreadable: list[str] = []
    for csv_path, real_csv in csvs:
        rel = str(csv_path.relative_to(root))
        try:
            frame, decoded = _read_csv(real_csv, rel)
        except DatasetError as exc:
            problems.append(Problem(rel, str(exc)))
            unreadable.append(str(exc))
            continue
        fmt = _match_format(list(frame.columns))
        if fmt is None:
            unknown.append(f"{rel} (columns: {', '.join(map(str, frame.columns)) or 'none'})")
            continue
        sources[rel] = fmt.name
        encodings[rel] = decoded.encoding
        if decoded.note:
            problems.append(Problem(rel, decoded.note))
        new_rows, new_problems = _rows_from_csv(csv_path, fmt, frame, index, root, refused)
        rows.extend(new_rows)
        problems.extend(new_problems)
    if not sources:
        if unreadable and not unknown:
            raise DatasetError(f"{root}: no label CSV could be read: {'; '.join(unreadable)}")
        raise DatasetError(
            f"{root}: no label CSV with known columns: {'; '.join(unknown + unreadable)}. Expected "
            "'id,boneage,male', 'Image ID,male,Bone Age (months)' or 'Case ID,Sex'"
        )
    for item in unknown:
        problems.append(Problem(item.split(" (")[0], f"unknown columns, file ignored: {item}"))
    meta = pd.DataFrame(rows, columns=["id", "split", "boneage", "male", "path", "source", "line"])
    meta["id"] = meta["id"].astype(object)
    meta["boneage"] = meta["boneage"].astype(float)
    meta["male"] = meta["male"].astype("boolean")
    meta["path"] = meta["path"].astype(object).where(meta["path"].notna(), None)
    dup = meta.duplicated(["split", "id"], keep="first")
    for row in meta[dup].itertuples():
        problems.append(Problem(f"{row.source} line {row.line} (id {row.id})", f"id {row.id} already listed in another {row.split} CSV: row skipped"))
    meta = meta[~dup].reset_index(drop=True)
    synthetic = (root / SYNTHETIC_MARKER).exists()
    return Dataset(root=root, meta=meta, problems=problems, synthetic=synthetic, sources=sources,
                   encodings=encodings)


# ---------------------------------------------------------------- header facts (cached)

HEADER_COLUMNS = ["format", "width", "height", "channels", "bit_depth", "mode", "photometric", "file_size", "error"]


class HeaderCache:
    """Header facts on disk keyed by (path, size, mtime): a 12,611-image folder is read once.

    Only an optimisation, so it never stops a scan: when the database cannot be created,
    read or written (disk full, read-only workspace, a damaged file) it logs one note and
    carries on as no cache (``disabled`` says so).
    """

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.disabled: str | None = None
        try:
            db_path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as con:
                con.execute(
                    "CREATE TABLE IF NOT EXISTS headers (path TEXT PRIMARY KEY, size INTEGER, "
                    "mtime INTEGER, facts TEXT)"
                )
        except (sqlite3.Error, OSError) as exc:
            self._disable(exc)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.db_path, timeout=30)

    def _disable(self, exc: BaseException) -> None:
        if self.disabled is None:
            self.disabled = _cache_failure(exc)
            _log.warning("header cache %s unusable (%s): reading headers without it",
                         self.db_path, self.disabled)

    def get_many(self, keys: list[tuple[str, int, int]]) -> dict[str, dict]:
        found: dict[str, dict] = {}
        if self.disabled:
            return found
        wanted = {k[0]: k for k in keys}
        try:
            with self._connect() as con:
                paths = list(wanted)
                for start in range(0, len(paths), 500):
                    chunk = paths[start:start + 500]
                    q = f"SELECT path, size, mtime, facts FROM headers WHERE path IN ({','.join('?' * len(chunk))})"
                    for path, size, mtime, facts in con.execute(q, chunk):
                        if wanted[path][1:] == (size, mtime):
                            found[path] = json.loads(facts)
        except (sqlite3.Error, OSError, ValueError) as exc:
            self._disable(exc)
            return {}
        return found

    def put_many(self, items: list[tuple[tuple[str, int, int], dict]]) -> None:
        if self.disabled:
            return
        try:
            con = self._connect()
            try:
                with con:
                    con.executemany(
                        "INSERT OR REPLACE INTO headers VALUES (?, ?, ?, ?)",
                        [(k[0], k[1], k[2], json.dumps(v)) for k, v in items],
                    )
            finally:
                con.close()
        except (sqlite3.Error, OSError) as exc:
            self._disable(exc)


def _cache_failure(exc: BaseException) -> str:
    text = str(exc)
    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) or "full" in text.lower():
        return "the disk is full"
    return text or type(exc).__name__


def _header_facts(path: str) -> dict:
    """Header facts of one file, or its error; no exception leaves here (a scan of
    12,000 files must not stop at one odd file)."""
    try:
        info = imageio.scan_file(path)
    except imageio.ImageReadError as exc:
        return {"error": str(exc)}
    except Exception as exc:  # imageio types its errors; this is the last guard
        return {"error": f"{Path(path).name}: could not be read ({type(exc).__name__})"}
    return {
        "format": info.format, "width": info.width, "height": info.height,
        "channels": info.channels, "bit_depth": info.bit_depth, "mode": info.mode,
        "photometric": info.photometric, "file_size": info.file_size, "error": None,
    }


def _header_frame(index: pd.Index, records: dict[int, dict]) -> pd.DataFrame:
    """HEADER_COLUMNS (object dtype) per index label from one dict per row: a fact a header
    lacked is None, a column a record does not name (no image, an error only) is NaN."""
    rows = [records.get(idx) or {} for idx in index]
    data = {col: pd.Series([r.get(col, np.nan) for r in rows], index=index, dtype=object) for col in HEADER_COLUMNS}
    return pd.DataFrame(data, index=index, columns=HEADER_COLUMNS)


def scan_headers(
    ds: Dataset,
    *,
    db_path: Path | None = None,
    progress: ProgressFn | None = None,
    workers: int = 8,
) -> pd.DataFrame:
    """Header facts (size, mode, bit depth) for every image, read from headers only.

    Returns a frame aligned with ``ds.meta`` (same index). Unreadable files get an
    ``error`` text and are added to ``ds.problems`` once.
    """
    cache = HeaderCache(db_path or get_settings().header_db)
    with_path = ds.meta["path"].notna()
    keys: dict[int, tuple[str, int, int]] = {}
    # One record per row, turned into a frame at the end: ~113k single-cell ``.at``
    # writes took seconds at 12,611 images.
    records: dict[int, dict] = {}
    for idx, path in ds.meta.loc[with_path, "path"].items():
        try:
            st = os.stat(path)
        except OSError:
            records[idx] = {"error": f"{Path(path).name}: file disappeared"}
            continue
        if not stat.S_ISREG(st.st_mode):  # replaced by a FIFO or device since indexing
            records[idx] = {"error": f"{Path(path).name}: not a regular file; skipped without opening it"}
            continue
        keys[idx] = (path, st.st_size, st.st_mtime_ns)
    known = cache.get_many(list(keys.values()))
    todo = [(idx, key) for idx, key in keys.items() if key[0] not in known]
    total = len(keys)
    done = total - len(todo)
    report(progress, done, total, "reading image headers")
    fresh: list[tuple[tuple[str, int, int], dict]] = []
    if todo:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for n, ((idx, key), facts) in enumerate(zip(todo, pool.map(lambda t: _header_facts(t[1][0]), todo)), 1):
                known[key[0]] = facts
                fresh.append((key, facts))
                if n % 200 == 0 or n == len(todo):
                    report(progress, done + n, total, "reading image headers")
        cache.put_many(fresh)
    for idx, key in keys.items():
        facts = known[key[0]]
        records[idx] = {col: facts.get(col) for col in HEADER_COLUMNS}
    out = _header_frame(ds.meta.index, records)
    seen = {p.item for p in ds.problems}
    for idx in out.index[out["error"].notna()]:
        name = Path(ds.meta.at[idx, "path"] or ds.meta.at[idx, "id"]).name
        if name not in seen:
            ds.problems.append(Problem(name, f"unreadable image: {out.at[idx, 'error']}"))
    for col in ("width", "height", "channels", "bit_depth", "file_size"):
        out[col] = pd.to_numeric(out[col], errors="coerce")
    return out


# ---------------------------------------------------------------- splits

def age_bins(boneage: pd.Series | np.ndarray, width: float = 24.0) -> np.ndarray:
    """Bin index per bone age (default 2-year bins), used for stratification and reports."""
    return np.floor(np.asarray(boneage, dtype=float) / width).astype(int)


def stratified_split(
    meta: pd.DataFrame, val_fraction: float = 0.2, seed: int = 0, n_bins: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Split row positions into train/validation, stratified by sex x bone-age quantile bin.

    Deterministic for a seed; strata too small to split go to training, so every
    stratum with at least two rows is represented in validation.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    age = meta["boneage"].to_numpy(dtype=float)
    male = meta["male"].astype("boolean").fillna(False).to_numpy(dtype=bool)
    ranks = pd.Series(age).rank(method="first").to_numpy()
    qbin = np.minimum((ranks - 1) * n_bins // max(len(age), 1), n_bins - 1).astype(int)
    strata = qbin * 2 + male.astype(int)
    rng = np.random.default_rng(seed)
    val: list[int] = []
    for s in np.unique(strata):
        members = np.flatnonzero(strata == s)
        if len(members) < 2:
            continue
        rng.shuffle(members)
        k = max(1, int(round(len(members) * val_fraction)))
        val.extend(members[:k].tolist())
    val_arr = np.array(sorted(val), dtype=int)
    train_arr = np.setdiff1d(np.arange(len(meta)), val_arr)
    return train_arr, val_arr
