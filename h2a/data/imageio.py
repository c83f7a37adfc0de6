"""The one place in H2A that decodes image files.

Everything else asks for a 2-D float32 grayscale array in [0, 1] where bright means
dense (bone), whatever the file was: PNG, JPEG, TIFF, BMP or DICOM, 8 to 16 bits,
colour, palette, alpha, MONOCHROME1. Every failure is an ``ImageReadError`` subclass
whose message names the file and says what is wrong in words a clinician can act on;
identifying DICOM tags (name, ID, accession, institution) never reach any output.
"""

from __future__ import annotations

import io
import math
import os
import re
import stat
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
_BAND_PIXELS = 1 << 18  # pixels converted per band: small temporaries, few numpy calls
_RANGE_SAMPLE = 1 << 18  # values sampled to estimate a robust range
_RANGE_TAIL = 0.001  # fraction left out at each end of a robust range
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


class NotAFileError(ImageReadError):
    """A FIFO, device or socket named like an image: never opened (reading could block)."""


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
        err = _unexpected(name or _default_name(source), exc)
        return {"file": err.name, "ok": False, "error": str(err), "error_type": type(exc).__name__}
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
    try:
        _check_integrity(source, name)
    except (ImageReadError, MemoryError):
        raise
    except Exception as exc:
        raise _unexpected(name or _default_name(source), exc) from exc


def _check_integrity(source: Source, name: str | None) -> None:
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
                # No end marker at the very end: cut off, or bytes after the marker (phones
                # and PACS exports append data). Only a decode can tell, and it is what
                # read_image does, so the scan and every reader agree on this file.
                fp.seek(0)
                _load(fp.read(), shown, decode=True, max_pixels=MAX_PIXELS)
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
        check_regular_file(source, shown)
        # O_NONBLOCK: should a FIFO appear between the check and the open, open() returns
        # at once instead of waiting for a writer; fstat below then refuses it.
        fd = os.open(source, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        raise ImageReadError(shown, "the file does not exist") from exc
    except IsADirectoryError as exc:
        raise ImageReadError(shown, "this is a folder, not an image file") from exc
    except OSError as exc:
        raise ImageReadError(shown, "the file could not be opened (check that it is readable)") from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _not_a_file(shown, st.st_mode)
    with os.fdopen(fd, "rb") as fp:
        yield fp, shown, st.st_size


def check_regular_file(path: str | os.PathLike, name: str | None = None) -> None:
    """Refuse folders, FIFOs, devices and sockets without opening them: reading a FIFO
    waits for a writer forever, and a device may never end. Missing files pass (open()
    says so)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if stat.S_ISDIR(mode):
        raise ImageReadError(name or _default_name(path), "this is a folder, not an image file")
    if not stat.S_ISREG(mode):
        raise _not_a_file(name or _default_name(path), mode)


def special_file_kind(mode: int) -> str:
    """What a non-regular file is, in words ('a named pipe (FIFO)', 'a device', ...)."""
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _not_a_file(name: str, mode: int) -> NotAFileError:
    return NotAFileError(name, f"this is {special_file_kind(mode)}, not an image file; it was "
                               "skipped without being opened")


def _unexpected(name: str, exc: BaseException) -> CorruptImageError:
    """A library raised something no broken-file rule expected: still one named problem.

    Only the exception type is shown: a message could quote a DICOM tag's value.
    """
    return CorruptImageError(name, "the file is damaged or in an unusual form H2A cannot read "
                                   f"({type(exc).__name__} while reading it)")


def _load(source: Source, name: str | None, *, decode: bool,
          max_pixels: int) -> tuple[ImageInfo, np.ndarray | None]:
    """Every reader's entry: any failure that is not a typed ImageReadError (a library
    surprise on a hostile file) becomes one, so no file can stop a scan or a batch."""
    try:
        return _load_typed(source, name, decode=decode, max_pixels=max_pixels)
    except (ImageReadError, MemoryError):
        raise
    except Exception as exc:
        raise _unexpected(name or _default_name(source), exc) from exc


def _load_typed(source: Source, name: str | None, *, decode: bool,
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
    """Contiguous float32 in [0, 1], NaN as black; in place when the array allows it,
    so an 80 MP image does not get two more full-size copies here."""
    if img.dtype != np.float32 or not img.flags.c_contiguous or not img.flags.writeable:
        img = np.ascontiguousarray(img, dtype=np.float32)
    # fmax/fmin drop NaN (nan_to_num would allocate several full-size masks): NaN and
    # -inf become 0, +inf becomes 1.
    np.fmax(img, np.float32(0.0), out=img)
    np.fmin(img, np.float32(1.0), out=img)
    return img


def _sample(a: np.ndarray) -> np.ndarray:
    """At most ~1 M evenly spread values of ``a`` (a small copy), for range estimates."""
    flat = a.reshape(-1) if a.flags.c_contiguous else np.ravel(a)
    step = max(1, -(-flat.size // _RANGE_SAMPLE))
    return np.array(flat[::step])


def robust_range(a: np.ndarray) -> tuple[float, float] | None:
    """(low, high) of the finite values, leaving out the extreme 0.1% at each end.

    WHY: a min-max stretch, or "the bits the brightest pixel needs", lets one hot pixel
    rescale the whole picture. Order statistics of a fixed sample move by at most one
    rank when one pixel changes, so the scale never jumps. None: nothing finite.
    """
    values = _sample(a)
    if values.dtype.kind == "f":
        values = values[np.isfinite(values)]
    n = values.size
    if n == 0:
        return None
    k = math.ceil(n * _RANGE_TAIL)
    if n < 2 * k + 2:
        k = 0
    values.partition((k, n - 1 - k))  # in place: the sample is our own copy
    return float(values[k]), float(values[n - 1 - k])


def _window(a: np.ndarray, lo: float, hi: float, out: np.ndarray | None = None) -> np.ndarray:
    """(a - lo) / (hi - lo) as float32, clipped to [0, 1]; ``out`` may be ``a`` itself."""
    if out is None:
        out = np.empty(a.shape, np.float32)
    if hi <= lo:
        out[...] = 0.0
        return out
    low = np.float32(lo)
    np.subtract(a, low, out=out, dtype=np.float32, casting="unsafe")
    np.divide(out, np.float32(hi) - low, out=out)  # the same float32 steps as a pixel at hi: exactly 1
    return np.clip(out, 0.0, 1.0, out=out)


def _stretch(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Robust window to [0, 1] for data with no stated range (float TIFF, DICOM with
    no VOI); a flat image becomes black rather than NaN."""
    span = robust_range(a)
    if span is None:
        return np.zeros(a.shape, np.float32) if out is None else _fill(out, 0.0)
    return _window(a, *span, out=out)


def _fill(out: np.ndarray, value: float) -> np.ndarray:
    out[...] = value
    return out


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
            frames=_frame_count(im, name),
        )
        if not decode:
            return info, None
        _check_size(name, width, height, max_pixels)
        try:
            gray = _cv2_gray(fp, im, prefix, info)
            if gray is None:  # not a file the fast path takes: PIL decodes it
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


def _frame_count(im: Image.Image, name: str) -> int:
    """Pages in the file; counting walks a TIFF's page list, whose pointers may be bad."""
    try:
        return int(getattr(im, "n_frames", 1))
    except Exception as exc:  # PIL raises TypeError, SyntaxError, ... on a bad IFD chain
        raise CorruptImageError(name, "the file's list of pages is damaged (a bad page pointer), "
                                      "so it cannot be read safely") from exc


# --------------------------------------------------------------------------- fast path (OpenCV)
#
# WHY: a full-resolution radiograph is a 2-4 MP PNG; PIL's band-by-band crop/asarray
# loop costs a third of the decode. cv2.imdecode (libpng, libjpeg-turbo) hands back one
# numpy array that converts with a single ufunc. PIL still reads the header (size limit,
# mode, EXIF orientation, frames), errors keep PIL's wording, and the result is bit for
# bit what the PIL path gives: the same converters run on the same bands. Anything the
# fast path does not take, or that cv2 cannot decode, goes through PIL as before.
#
# Taken: PNG gray 1-16 bit, gray JPEG, and PNGs that cv2 returns with four 8-bit
# channels (RGBA, gray+alpha, palette or RGB with transparency), whose bytes are exactly
# the float32 result's size, so they are converted in place. Left to PIL: three-channel
# results (RGB, palette without transparency, colour JPEG) and 16-bit colour, because a
# uint8 colour copy plus the float32 result would break the issue-17 memory bound (at
# most 1.75x the result in numpy memory), CMYK/YCbCr, animations and other formats.

_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # a marker after entropy-coded data
# fast-path plan -> (channels cv2 returns, dtype) it must return, else PIL decodes
_CV2_EXPECT = {"L": (1, np.uint8), "I16": (1, np.uint16), "RGBA": (4, np.uint8),
               "LA": (4, np.uint8), "RGB": (4, np.uint8)}
_BGRA_PICK = {"RGBA": [2, 1, 0, 3], "LA": [0, 3], "RGB": [2, 1, 0]}  # cv2 BGRA -> PIL's bands


def _cv2_plan(im: Image.Image, prefix: bytes, info: ImageInfo) -> str | None:
    """How the fast path converts this file (a key of _CV2_EXPECT), or None for PIL."""
    if info.frames != 1:
        return None  # APNG/MPO: PIL's frame rules stay the only ones
    if im.format == "JPEG":
        return "L" if im.mode == "L" else None
    if im.format != "PNG" or prefix[12:16] != b"IHDR":
        return None
    depth, colour = prefix[24], prefix[25]
    alpha = "transparency" in im.info
    if colour == 0:
        if depth == 16:
            return "I16" if im.mode.startswith("I") else None
        return "L" if im.mode in ("L", "1") else None
    if depth != 8 and colour != 3:
        return None
    plans = {(4, "LA"): "LA", (6, "RGBA"): "RGBA"}
    if alpha:
        plans.update({(3, "P"): "RGBA", (2, "RGB"): "RGB"})  # PIL: P -> RGBA; RGB ignores tRNS
    return plans.get((colour, im.mode))


def _png_complete(data: bytes) -> bool:
    """The chunks run to IEND inside the file (what check_integrity asks of a scan)."""
    pos, n = 8, len(data)
    while pos + 8 <= n:
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        pos += 12 + length
        if pos > n:
            return False
        if kind == b"IEND":
            return True
    return False


def _jpeg_complete(data: bytes) -> bool:
    """The markers run from SOI to an EOI; bytes after it (phone trailers) are fine.

    libjpeg fills a cut-off JPEG with gray and only warns, where PIL says "truncated":
    such files go to PIL, so both paths fail alike. An EOI inside an EXIF thumbnail does
    not count, because segments are skipped by their lengths.
    """
    pos, n = 2, len(data)
    while pos + 2 <= n:
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xD9:
            return True
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length
            pos += 2
            continue
        if pos + 4 > n:
            return False
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next marker
            found = _JPEG_MARKER.search(data, pos)
            if found is None:
                return False
            pos = found.start()
    return False


def _cv2_decode(fp: BinaryIO, fmt: str) -> np.ndarray | None:
    """The pixels as cv2.IMREAD_UNCHANGED gives them (BGR order, 16 bits kept, no EXIF
    rotation), or None when the file is incomplete or cv2 cannot read it."""
    try:
        import cv2
    except ImportError:  # pragma: no cover - opencv is a dependency; PIL still works
        return None
    pos = fp.tell()
    fp.seek(0)
    data = fp.read()
    fp.seek(pos)
    if not (_png_complete(data) if fmt == "PNG" else _jpeg_complete(data)):
        return None
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None


def _cv2_gray(fp: BinaryIO, im: Image.Image, prefix: bytes, info: ImageInfo) -> np.ndarray | None:
    """float32 gray through cv2, equal to _pil_gray's; None sends the file to PIL."""
    plan = _cv2_plan(im, prefix, info)
    if plan is None:
        return None
    arr = _cv2_decode(fp, im.format)
    channels, dtype = _CV2_EXPECT[plan]
    if arr is None or arr.dtype != dtype or arr.shape[:2] != im.size[::-1] \
            or (arr.shape[2] if arr.ndim == 3 else 1) != channels or not arr.flags.c_contiguous:
        return None
    if plan == "L":
        out = np.empty(arr.shape, np.float32)
        return np.multiply(arr, np.float32(1 / 255), out=out, dtype=np.float32)
    if plan == "I16":
        out = np.empty(arr.shape, np.float32)
        out[...] = arr
        del arr
        return _scale_integer(out, out=out)
    return _bgra_in_place(arr, _BGRA_PICK[plan], _BAND_CONVERTERS[plan])


def _bgra_in_place(arr: np.ndarray, pick: list[int], convert) -> np.ndarray:
    """Convert a (h, w, 4) uint8 BGRA array to float32 gray in its own bytes.

    Row r of the result occupies exactly the bytes of row r of the input, and each band
    is copied out (in PIL's channel order) before its rows are overwritten, so no second
    full-size buffer exists. Bands are PIL's, so the converters give the same numbers.
    """
    height, width = arr.shape[:2]
    out = arr.view(np.float32).reshape(height, width)
    step = max(1, _BAND_PIXELS // max(width, 1))
    for top in range(0, height, step):
        band = arr[top:top + step].take(pick, axis=2)  # C order, as PIL's bands (the layout steers BLAS)
        out[top:top + band.shape[0]] = convert(band)
    return out


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
    """Decode a PIL image to float32 grayscale in [0, 1].

    Rows are converted a band at a time into one float32 result, so the only full-size
    buffers are PIL's own and that result: an 80 MP RGB PNG no longer passes through a
    float copy of all three channels.
    """
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")  # keeps palette transparency
    elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")  # PIL undoes Adobe's inverted CMYK on the way
    elif im.mode == "1":
        im = im.convert("L")
    mode = im.mode
    convert = _BAND_CONVERTERS.get(mode)
    if convert is None and not mode.startswith(("I", "F")):
        raise UnsupportedImageError(name, f"the image uses the pixel format {mode}, which H2A does not read; "
                                          "save it again as an ordinary grayscale PNG")
    im.load()
    width, height = im.size
    out = np.empty((height, width), np.float32)
    step = max(1, _BAND_PIXELS // max(width, 1))
    for top in range(0, height, step):
        band = np.asarray(im.crop((0, top, width, min(height, top + step))))
        if convert is not None:
            out[top:top + band.shape[0]] = convert(band)
        else:  # raw values; scaled below once the range is known
            out[top:top + band.shape[0]] = band
    if mode == "F":
        return _stretch(out, out=out)
    if convert is None:
        return _scale_integer(out, out=out)
    return out


def _band_rgb(band: np.ndarray) -> np.ndarray:
    return band.astype(np.float32) @ (_LUMA / 255)


def _band_rgba(band: np.ndarray) -> np.ndarray:
    rgb = band[..., :3].astype(np.float32) @ (_LUMA / 255**2)
    return np.multiply(rgb, band[..., 3], out=rgb)


def _band_la(band: np.ndarray) -> np.ndarray:  # composite onto black: the background is dark
    gray = band[..., 0].astype(np.float32) * np.float32(1 / 255**2)
    return np.multiply(gray, band[..., 1], out=gray)


_BAND_CONVERTERS = {
    "L": lambda band: band.astype(np.float32) * np.float32(1 / 255),
    "LA": _band_la, "RGB": _band_rgb, "RGBA": _band_rgba,
}


def _scale_integer(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Scale by the bits really used, so 12-bit data in a 16-bit file is not dark.

    The bits come from the robust high end (all but the brightest 0.1%), not the single
    brightest pixel: one pixel going from 255 to 256 must not halve the brightness.
    Values above that depth clip to white.
    """
    span = robust_range(a)
    if span is None:
        return np.zeros(a.shape, np.float32) if out is None else _fill(out, 0.0)
    lo, hi = span
    if lo < 0:
        return _window(a, lo, hi, out=out)
    bits = max(8, int(hi).bit_length())  # = ceil(log2(hi + 1))
    return _window(a, 0.0, float(2**bits - 1), out=out)


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
    rows, cols = _int_tag(ds, "Rows", 0), _int_tag(ds, "Columns", 0)
    if not rows or not cols:
        raise DicomError(name, "this DICOM file does not state its image size, so it cannot be shown")
    syntax = _transfer_syntax(ds)
    photometric = str(ds.get("PhotometricInterpretation") or "MONOCHROME2").strip().upper()
    info = ImageInfo(
        name=name, format="DICOM", width=cols, height=rows,
        channels=_int_tag(ds, "SamplesPerPixel", 1),
        bit_depth=_int_tag(ds, "BitsStored", 0) or _int_tag(ds, "BitsAllocated", 0),
        mode=photometric, photometric=photometric, file_size=size,
        frames=_int_tag(ds, "NumberOfFrames", 1), dicom=_dicom_facts(ds, syntax),
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


def _int_tag(ds: pydicom.Dataset, keyword: str, default: int) -> int:
    """An integer tag, or ``default`` when absent or not a number (NumberOfFrames 'xy')."""
    try:
        value = ds.get(keyword)
        if isinstance(value, (list, tuple, MultiValue)):
            value = value[0] if len(value) else None
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError, OverflowError):
        return default


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
    """Stored values -> displayed brightness: modality LUT, VOI, then MONOCHROME1 flip.

    Everything runs in float32 on one full-size buffer (pydicom's own helpers work in
    float64, which doubles the memory of a large radiograph).
    """
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        values = _modality(arr, ds)
        img = _apply_voi(values, ds)
        if img is None:
            # No stated display range: a robust window, so one hot pixel cannot rescale it.
            img = _stretch(values, out=values if values.dtype == np.float32 else None)
        if photometric == "MONOCHROME1":
            np.subtract(np.float32(1.0), img, out=img)
        return img
    if arr.ndim == 3 and arr.shape[-1] == 3:  # RGB, or YBR already converted by pydicom
        top = 2 ** (_int_tag(ds, "BitsStored", 8) or 8) - 1
        out = np.empty(arr.shape[:2], np.float32)
        step = max(1, _BAND_PIXELS // max(arr.shape[1], 1))
        for r in range(0, arr.shape[0], step):
            out[r:r + step] = arr[r:r + step].astype(np.float32) @ (_LUMA / top)
        return out
    raise UnsupportedImageError(
        name, f"the DICOM image uses the colour model {photometric}, which H2A does not read; "
              "export it as a grayscale (MONOCHROME2) DICOM or a PNG")


def _modality(arr: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Stored values -> modality values; stays integer when there is nothing to apply."""
    if "ModalityLUTSequence" in ds:  # rare; pydicom's LUT output is integer-typed
        return np.asarray(apply_modality_lut(arr, ds))
    slope = _first_float(ds.get("RescaleSlope"))
    intercept = _first_float(ds.get("RescaleIntercept"))
    if slope in (None, 1.0) and intercept in (None, 0.0):
        return arr
    out = arr.astype(np.float32)
    if slope not in (None, 1.0):
        out *= np.float32(slope)
    if intercept not in (None, 0.0):
        out += np.float32(intercept)
    return out


def _apply_voi(values: np.ndarray, ds: pydicom.Dataset) -> np.ndarray | None:
    """The file's VOI LUT or window, scaled so [0, 1] spans that transform's output.

    A VOI LUT Sequence wins over a window (pydicom's rule); the LUT goes through pydicom
    (its output has the LUT's integer type), windows are computed here in float32 per
    PS3.3 C.11.2.1.2. None means "no usable VOI": the caller falls back to a robust
    window, since broken VOI tags should not cost the image.
    """
    seq = ds.get("VOILUTSequence")
    has_lut = bool(seq) and "LUTDescriptor" in seq[0] and "LUTData" in seq[0]
    if has_lut:
        return _apply_voi_lut(values, ds, seq[0])
    center, width = _first_float(ds.get("WindowCenter")), _first_float(ds.get("WindowWidth"))
    if center is None or width is None:
        return None
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    out = np.empty(values.shape, np.float32) if values.dtype != np.float32 else values
    if function == "SIGMOID" and width > 0:
        np.subtract(values, np.float32(center), out=out, dtype=np.float32, casting="unsafe")
        np.multiply(out, np.float32(-4.0 / width), out=out)
        with np.errstate(over="ignore"):
            np.exp(out, out=out)
        out += np.float32(1.0)
        return np.reciprocal(out, out=out)
    if function == "LINEAR_EXACT" and width > 0:
        return _window(values, center - width / 2, center + width / 2, out=out)
    if function == "LINEAR" and width >= 1:
        if width == 1:  # a threshold at the centre
            out[...] = values >= center - 0.5
            return out
        # y = ((x - (c - 0.5)) / (w - 1) + 0.5) clipped to [0, 1]
        lo = center - 0.5 - (width - 1) / 2
        return _window(values, lo, lo + (width - 1), out=out)
    return None


def _apply_voi_lut(values: np.ndarray, ds: pydicom.Dataset, item: pydicom.Dataset) -> np.ndarray | None:
    try:
        first, count = int(item.LUTDescriptor[1]), int(item.LUTDescriptor[0]) or 65536
        if values.dtype.kind == "f":  # LUTs index by integer; rescaled values arrive as float
            values = np.rint(values).astype(np.int32)
        probe = np.arange(first, first + count)
        with np.errstate(over="ignore"):
            out = apply_voi_lut(values, ds)
            ends = apply_voi_lut(probe, ds)
    except (ValueError, TypeError, AttributeError, IndexError, KeyError, NotImplementedError):
        return None
    lo, hi = float(np.min(ends)), float(np.max(ends))
    if hi <= lo:
        return None
    return _window(out, lo, hi)


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
