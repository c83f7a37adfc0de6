"""The one place in H2A that decodes image files.

Everything else asks for a 2-D float32 grayscale array in [0, 1] where bright means
dense (bone), whatever the file was: PNG, JPEG, TIFF, BMP or DICOM, 8 to 16 bits,
colour, palette, alpha, MONOCHROME1. Every failure is an ``ImageReadError`` subclass
whose message names the file and says what is wrong in words a clinician can act on;
identifying DICOM tags (name, ID, accession, institution) never reach any output.
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import pydicom
from PIL import Image, UnidentifiedImageError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder, pixel_array
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

Source = str | os.PathLike | bytes | bytearray | memoryview

MAX_PIXELS: int = 80_000_000

_READABLE = "PNG, JPEG, TIFF or DICOM"
_DAMAGED = "the image data is truncated or damaged"
# Formats PIL may open. Restricting the list keeps exotic plugins (EPS runs Ghostscript)
# away from uploaded bytes.
_PIL_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "WEBP")  # "JPEG" also opens MPO
_FORMAT_NAMES = {"MPO": "JPEG"}  # phone/camera JPEGs open as MPO
_IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM")
# What broken files make PIL and its codecs raise; anything else is a bug worth seeing.
_BROKEN = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)
_PIL_PHOTOMETRIC = {
    "1": "MONOCHROME2", "L": "MONOCHROME2", "LA": "MONOCHROME2", "I": "MONOCHROME2",
    "I;16": "MONOCHROME2", "I;16B": "MONOCHROME2", "I;16L": "MONOCHROME2",
    "I;16N": "MONOCHROME2", "F": "MONOCHROME2", "P": "PALETTE COLOR",
    "PA": "PALETTE COLOR", "RGB": "RGB", "RGBA": "RGBA", "CMYK": "CMYK", "YCbCr": "YBR_FULL",
}
_MODE_BITS = {"1": 1, "I": 32, "F": 32, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16}
# EXIF orientation -> how to turn the stored pixels into the displayed picture.
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: a.T,
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).T,
    8: lambda a: np.rot90(a, 1),
}
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, as PIL's convert("L")
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_AGE_UNIT_MONTHS = {"D": 12 / 365.25, "W": 7 * 12 / 365.25, "M": 1.0, "Y": 12.0}


class ImageReadError(Exception):
    """A file H2A cannot turn into an image; ``problem`` is written for the user."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem

    def __reduce__(self):  # keeps the two-argument form picklable across worker processes
        return type(self), (self.name, self.problem)


class EmptyFileError(ImageReadError):
    pass


class NotAnImageError(ImageReadError):
    pass


class CorruptImageError(ImageReadError):
    pass


class ImageTooLargeError(ImageReadError):
    pass


class UnsupportedImageError(ImageReadError):
    pass


class DicomError(ImageReadError):
    pass


class DicomNoPixelDataError(DicomError):
    pass


class DicomCompressedError(DicomError):
    pass


@dataclass
class ImageInfo:
    """Header facts, read without decoding pixels (used to scan whole datasets)."""

    name: str
    format: str
    width: int  # as displayed, i.e. after EXIF orientation
    height: int
    channels: int
    bit_depth: int
    mode: str  # PIL mode, or the photometric interpretation for DICOM
    photometric: str | None
    file_size: int
    frames: int = 1
    dicom: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def read_header(source: Source, name: str | None = None) -> ImageInfo:
    """Describe an image without decoding its pixels.

    Raises ImageTooLargeError only when the claimed size is past PIL's own hard ceiling;
    enforcing H2A's limit is read_image's job.
    """
    return _load(source, name, decode=False, max_pixels=MAX_PIXELS)[0]


def read_image(source: Source, name: str | None = None, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode to a 2-D float32 array in [0, 1], bright = dense.

    ``source`` is a path or the raw bytes of an upload (then ``name`` is what messages
    show). The size is checked against ``max_pixels`` from the header, before decoding.
    """
    return _load(source, name, decode=True, max_pixels=max_pixels)[1]


def inspect(source: Source, name: str | None = None) -> dict:
    """Header facts plus whether the pixels really decode; never raises for a bad file."""
    try:
        info, _ = _load(source, name, decode=True, max_pixels=MAX_PIXELS)
    except ImageReadError as exc:
        return {"file": exc.name, "ok": False, "error": str(exc), "error_type": type(exc).__name__}
    except Exception as exc:  # a library surprise must not stop a scan of 12,000 files
        shown = name or _default_name(source)
        return {"file": shown, "ok": False, "error_type": type(exc).__name__,
                "error": f"{shown}: could not be read because of an unexpected problem"}
    return {"file": info.name, "ok": True, **info.to_dict()}


def scan_file(source: Source, name: str | None = None, *, max_pixels: int = MAX_PIXELS) -> ImageInfo:
    """Header facts plus the checks a dataset scan can afford: the size limit and
    structural integrity. Raises the same typed errors a full decode would for those."""
    info = read_header(source, name)
    _check_size(info.name, info.width, info.height, max_pixels)
    check_integrity(source, name)
    return info


def check_integrity(source: Source, name: str | None = None) -> None:
    """Cheap structural check that catches truncated files without decoding pixels.

    A header scan of 12,000 files cannot afford full decodes, but a cut-off download is
    the most common damage: PNG chunks are walked to IEND (seeking over the data), a
    JPEG must end with its EOI marker, a DICOM's pixel data must be complete.
    """
    with _opened(source, name) as (fp, shown, size):
        if size == 0:
            raise EmptyFileError(shown, "the file is empty (0 bytes)")
        prefix = fp.read(132)
        if prefix.startswith(b"\x89PNG\r\n\x1a\n"):
            pos = 8
            while True:
                fp.seek(pos)
                head = fp.read(8)
                if len(head) < 8:
                    raise CorruptImageError(shown, _DAMAGED)
                length = int.from_bytes(head[:4], "big")
                pos += 12 + length
                if pos > size:
                    raise CorruptImageError(shown, _DAMAGED)
                if head[4:8] == b"IEND":
                    return
        elif prefix.startswith(b"\xff\xd8"):
            fp.seek(max(0, size - 4096))
            tail = fp.read().rstrip(b"\x00")
            if b"\xff\xd9" not in tail[-16:]:
                raise CorruptImageError(shown, _DAMAGED)
        elif prefix[128:132] == b"DICM" or _maybe_bare_dicom(prefix):
            fp.seek(0)
            _load(fp.read(), shown, decode=True, max_pixels=MAX_PIXELS)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 for display and caching (NaN becomes black)."""
    return np.round(np.clip(np.nan_to_num(img), 0.0, 1.0) * 255).astype(np.uint8)


# --------------------------------------------------------------------------- plumbing


def _default_name(source: object) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "upload"
    try:
        return Path(os.fspath(source)).name  # type: ignore[arg-type]
    except TypeError:
        return str(source)


@contextmanager
def _opened(source: Source, name: str | None) -> Iterator[tuple[BinaryIO, str, int]]:
    """Yield (binary file, display name, size) for a path or in-memory bytes."""
    shown = name or _default_name(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        yield io.BytesIO(data), shown, len(data)
        return
    try:
        fp = open(source, "rb")
    except FileNotFoundError as exc:
        raise ImageReadError(shown, "the file does not exist") from exc
    except IsADirectoryError as exc:
        raise ImageReadError(shown, "this is a folder, not an image file") from exc
    except OSError as exc:
        raise ImageReadError(shown, "the file could not be opened (check that it is readable)") from exc
    with fp:
        yield fp, shown, os.fstat(fp.fileno()).st_size


def _load(source: Source, name: str | None, *, decode: bool,
          max_pixels: int) -> tuple[ImageInfo, np.ndarray | None]:
    with _opened(source, name) as (fp, shown, size):
        if size == 0:
            raise EmptyFileError(shown, "the file is empty (0 bytes)")
        prefix = fp.read(132)
        fp.seek(0)
        if prefix[128:132] == b"DICM":
            return _load_dicom(fp, shown, size, decode, max_pixels, guessed=False)
        if not prefix.startswith(_IMAGE_SIGNATURES) and _maybe_bare_dicom(prefix):
            return _load_dicom(fp, shown, size, decode, max_pixels, guessed=True)
        return _load_pil(fp, shown, size, prefix, decode, max_pixels)


def _check_size(name: str, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise _too_large(name, width, height, max_pixels)


def _too_large(name: str, width: int, height: int, limit: int) -> ImageTooLargeError:
    return ImageTooLargeError(
        name, f"the image claims {width} x {height} pixels ({_mp(width * height)}), above the "
              f"{_mp(limit)} limit, so it was not opened (a damaged or hostile file, or a scan "
              "far larger than a hand radiograph needs)")


def _mp(pixels: int) -> str:
    return f"{pixels / 1e6:.3g} MP"


def _finish(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.clip(np.nan_to_num(img), 0.0, 1.0), dtype=np.float32)


def _minmax(a: np.ndarray) -> np.ndarray:
    """Stretch to [0, 1]; a flat image becomes black rather than NaN."""
    a = np.asarray(a, np.float64)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return np.zeros(a.shape, np.float32)
    lo, hi = finite.min(), finite.max()
    if hi <= lo:
        return np.zeros(a.shape, np.float32)
    return ((a - lo) / (hi - lo)).astype(np.float32)


# --------------------------------------------------------------------------- PIL formats


def _load_pil(fp: BinaryIO, name: str, size: int, prefix: bytes, decode: bool,
              max_pixels: int) -> tuple[ImageInfo, np.ndarray | None]:
    try:
        with warnings.catch_warnings():
            # H2A checks its own, lower limit below; PIL's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(fp, formats=_PIL_FORMATS)
    except Image.DecompressionBombError as exc:
        raise _pil_bomb(name, prefix, str(exc), max_pixels) from exc
    except UnidentifiedImageError as exc:
        if prefix.startswith(_IMAGE_SIGNATURES):
            raise CorruptImageError(name, _DAMAGED) from exc
        raise NotAnImageError(name, f"this is not an image H2A can read ({_READABLE})") from exc
    except _BROKEN as exc:
        raise CorruptImageError(name, _DAMAGED) from exc

    with im:
        orientation = _orientation(im)
        width, height = im.size
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        info = ImageInfo(
            name=name, format=_FORMAT_NAMES.get(im.format, im.format or "unknown"),
            width=width, height=height, channels=len(im.getbands()),
            bit_depth=_pil_bit_depth(im, prefix), mode=im.mode,
            photometric=_PIL_PHOTOMETRIC.get(im.mode, im.mode), file_size=size,
            frames=int(getattr(im, "n_frames", 1)),
        )
        if not decode:
            return info, None
        _check_size(name, width, height, max_pixels)
        try:
            im.seek(0)  # n_frames may have moved a multi-page TIFF
            gray = _pil_gray(im, name)
        except _BROKEN as exc:
            if "not available" in str(exc):  # e.g. "decoder jpeg2k not available"
                raise UnsupportedImageError(
                    name, "the image uses a compression this installation cannot decode; "
                          "save it again as an ordinary PNG or JPEG") from exc
            raise CorruptImageError(name, _DAMAGED) from exc
    if orientation in _ORIENT:
        gray = _ORIENT[orientation](gray)
    return info, _finish(gray)


def _pil_bomb(name: str, prefix: bytes, message: str, max_pixels: int) -> ImageTooLargeError:
    """PIL refused at open; report the claimed size as precisely as the header allows."""
    if prefix.startswith(b"\x89PNG\r\n\x1a\n") and prefix[12:16] == b"IHDR":
        width, height = struct.unpack(">II", prefix[16:24])
        return _too_large(name, width, height, max_pixels)
    claimed = re.search(r"\((\d+) pixels\)", message)
    size = _mp(int(claimed.group(1))) if claimed else "more pixels than is safe"
    return ImageTooLargeError(
        name, f"the image claims {size}, above the {_mp(max_pixels)} limit, so it was not opened")


def _orientation(im: Image.Image) -> int:
    """EXIF orientation (1-8), read without decoding pixels."""
    if im.format == "PNG" and "exif" not in im.info:
        return 1  # PIL would decode the whole PNG looking for a trailing eXIf chunk
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception:  # a malformed EXIF block should not cost the image
        return 1
    return value if value in _ORIENT else 1


def _pil_bit_depth(im: Image.Image, prefix: bytes) -> int:
    if im.format == "PNG" and prefix[12:16] == b"IHDR":
        return prefix[24]  # the stored depth: PIL shows 16-bit colour PNGs as 8-bit RGB
    if im.format == "TIFF":
        bits = im.tag_v2.get(258)  # BitsPerSample
        if bits:
            return int(bits[0] if isinstance(bits, tuple) else bits)
    return _MODE_BITS.get(im.mode, 8)


def _pil_gray(im: Image.Image, name: str) -> np.ndarray:
    """Decode a PIL image to float grayscale in [0, 1]."""
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")  # keeps palette transparency
    elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")  # PIL undoes Adobe's inverted CMYK on the way
    elif im.mode == "1":
        im = im.convert("L")
    a = np.asarray(im)
    mode = im.mode
    if mode == "L":
        return a.astype(np.float32) / 255
    if mode == "LA":  # composite onto black: the radiograph background is dark
        return a[..., 0].astype(np.float32) * a[..., 1] / 255**2
    if mode == "RGB":
        return a.astype(np.float32) @ _LUMA / 255
    if mode == "RGBA":
        return (a[..., :3].astype(np.float32) @ _LUMA) * a[..., 3] / 255**2
    if mode == "F":
        return _minmax(a)
    if mode.startswith("I"):
        return _scale_integer(a)
    raise UnsupportedImageError(name, f"the image uses the pixel format {mode}, which H2A does not read; "
                                      "save it again as an ordinary grayscale PNG")


def _scale_integer(a: np.ndarray) -> np.ndarray:
    """Scale by the bits really used, so 12-bit data in a 16-bit file is not dark."""
    if a.size == 0:
        return a.astype(np.float32)
    lo, hi = int(a.min()), int(a.max())
    if lo < 0:
        return _minmax(a)
    bits = max(8, hi.bit_length())  # = ceil(log2(hi + 1))
    return a.astype(np.float32) / (2**bits - 1)


# --------------------------------------------------------------------------- DICOM


def _maybe_bare_dicom(prefix: bytes) -> bool:
    """Could this be a DICOM dataset written without preamble? (first tag's group)."""
    if len(prefix) < 8:
        return False
    group = struct.unpack("<H", prefix[:2])[0]
    return group % 2 == 0 and 0x0002 <= group <= 0x0028


def _load_dicom(fp: BinaryIO, name: str, size: int, decode: bool, max_pixels: int,
                *, guessed: bool) -> tuple[ImageInfo, np.ndarray | None]:
    not_image = NotAnImageError(name, f"this is not an image H2A can read ({_READABLE})")
    try:
        # For a header, large values (the pixels) are skipped over, not read.
        ds = pydicom.dcmread(fp, force=guessed, defer_size=None if decode else 65536)
    except Exception as exc:  # pydicom raises almost anything on damaged input
        if guessed:
            raise not_image from exc
        raise CorruptImageError(name, "the DICOM file is damaged and could not be read") from exc
    if not any(tag in ds for tag in _PIXEL_TAGS):
        if guessed:
            raise not_image
        raise DicomNoPixelDataError(
            name, "this DICOM file contains no image (no pixel data); it may be a report or "
                  "study record rather than the radiograph itself")
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if not rows or not cols:
        raise DicomError(name, "this DICOM file does not state its image size, so it cannot be shown")
    syntax = _transfer_syntax(ds)
    photometric = str(ds.get("PhotometricInterpretation") or "MONOCHROME2").strip().upper()
    info = ImageInfo(
        name=name, format="DICOM", width=cols, height=rows,
        channels=int(ds.get("SamplesPerPixel") or 1),
        bit_depth=int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0),
        mode=photometric, photometric=photometric, file_size=size,
        frames=int(ds.get("NumberOfFrames") or 1), dicom=_dicom_facts(ds, syntax),
    )
    if not decode:
        return info, None
    _check_size(name, cols, rows, max_pixels)
    try:
        arr = pixel_array(ds, index=0)  # first frame only
    except Exception as exc:
        if syntax.is_compressed:
            raise _compressed_error(name, syntax) from exc
        raise CorruptImageError(name, _DAMAGED) from exc
    return info, _finish(_dicom_gray(arr, ds, photometric, name))


def _transfer_syntax(ds: pydicom.Dataset) -> UID:
    """The dataset's transfer syntax, filled in for bare datasets so decoding works."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if not syntax:
        implicit, _little = ds.original_encoding
        syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        ds.ensure_file_meta()
        ds.file_meta.TransferSyntaxUID = syntax
    return UID(syntax)


def _compressed_error(name: str, syntax: UID) -> DicomCompressedError:
    try:
        installed = get_decoder(syntax).is_available
    except NotImplementedError:
        installed = False
    if installed:
        return DicomCompressedError(
            name, f"the image is compressed as {syntax.name} and that data could not be "
                  "decoded; the file may be damaged. Converting it to an uncompressed DICOM "
                  "or a PNG may help")
    return DicomCompressedError(
        name, f"the image is compressed as {syntax.name}, and no decoder for it is installed. "
              "Installing pylibjpeg with pylibjpeg-openjpeg and pylibjpeg-libjpeg, or converting "
              "the file to an uncompressed DICOM or a PNG, will let H2A read it")


def _dicom_gray(arr: np.ndarray, ds: pydicom.Dataset, photometric: str, name: str) -> np.ndarray:
    """Stored values -> displayed brightness: modality LUT, VOI, then MONOCHROME1 flip."""
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        values = apply_modality_lut(arr, ds)
        img = _apply_voi(values, ds)
        if img is None:
            img = _minmax(values)
        return 1.0 - img if photometric == "MONOCHROME1" else img
    if arr.ndim == 3 and arr.shape[-1] == 3:  # RGB, or YBR already converted by pydicom
        top = 2 ** int(ds.get("BitsStored") or 8) - 1
        return arr.astype(np.float32) @ _LUMA / top
    raise UnsupportedImageError(
        name, f"the DICOM image uses the colour model {photometric}, which H2A does not read; "
              "export it as a grayscale (MONOCHROME2) DICOM or a PNG")


def _apply_voi(values: np.ndarray, ds: pydicom.Dataset) -> np.ndarray | None:
    """The file's VOI LUT or window, scaled so [0, 1] spans that transform's output.

    The output range is found by passing the transform its own extremes (the whole LUT
    domain, or values far outside any window), so it matches pydicom exactly. None means
    "no usable VOI": the caller falls back to min-max, since broken VOI tags should not
    cost the image.
    """
    seq = ds.get("VOILUTSequence")
    has_lut = bool(seq) and "LUTDescriptor" in seq[0] and "LUTData" in seq[0]
    has_window = "WindowCenter" in ds and "WindowWidth" in ds
    if not (has_lut or has_window):
        return None
    try:
        if has_lut:  # LUTs index by integer; rescaled values arrive as float
            first, count = int(seq[0].LUTDescriptor[1]), int(seq[0].LUTDescriptor[0]) or 65536
            values = np.rint(values).astype(np.int64)
            probe = np.arange(first, first + count)
        else:
            probe = np.array([-1e12, 1e12])
        with np.errstate(over="ignore"):
            out = apply_voi_lut(values, ds)
            ends = apply_voi_lut(probe, ds)
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, NotImplementedError):
        return None
    lo, hi = float(np.min(ends)), float(np.max(ends))
    if hi <= lo:
        return None
    return ((np.asarray(out, np.float64) - lo) / (hi - lo)).astype(np.float32)


def _dicom_facts(ds: pydicom.Dataset, syntax: UID) -> dict:
    """Non-identifying tags the app uses (sex, dates, age, display settings)."""
    sex = str(ds.get("PatientSex") or "").strip().upper()
    age = str(ds.get("PatientAge") or "").strip().upper() or None
    acquired = ds.get("AcquisitionDate") or str(ds.get("AcquisitionDateTime") or "")[:8]
    return {
        "patient_sex": sex if sex in ("M", "F", "O") else None,
        "birth_date": _iso_date(ds.get("PatientBirthDate")),
        "study_date": _iso_date(ds.get("StudyDate")),
        "acquisition_date": _iso_date(acquired),
        "patient_age": age,
        "age_months": _age_months(age),
        "transfer_syntax": syntax.name,
        "modality": str(ds.get("Modality") or "") or None,
        "body_part": str(ds.get("BodyPartExamined") or "") or None,
        "window_center": _first_float(ds.get("WindowCenter")),
        "window_width": _first_float(ds.get("WindowWidth")),
        "has_voi_lut": bool(ds.get("VOILUTSequence")),
    }


def _iso_date(value: object) -> str | None:
    text = str(value or "").strip().replace(".", "")[:8]  # 'YYYY.MM.DD' is an old variant
    try:
        return datetime.strptime(text, "%Y%m%d").date().isoformat()
    except ValueError:
        return None


def _age_months(age: str | None) -> float | None:
    match = re.fullmatch(r"(\d{1,3})([DWMY])", age or "")
    return float(match.group(1)) * _AGE_UNIT_MONTHS[match.group(2)] if match else None


def _first_float(value: object) -> float | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, (list, tuple, MultiValue)):
            value = value[0]
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None
