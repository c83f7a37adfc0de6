"""A corpus of good, odd and broken image files, written on demand for any test.

Every picture shows the same "radiograph": a bright disc (bone) on a dark, slightly
graded background, in a non-square frame. A decoder that inverts, transposes, drops
alpha or scales wrongly gives a visibly different array, so tests can check meaning,
not just "it did not crash".
"""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import set_pixel_data
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGLSLossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

HEIGHT, WIDTH = 64, 48  # non-square on purpose: catches transposed output
DISC_VALUE = 0.9
PATIENT_NAME = "Doe^Jane"  # must never leak into H2A's output or messages
PATIENT_ID = "PID-123456"


@dataclass
class CorpusCase:
    filename: str
    expect_ok: bool  # read_image and inspect succeed
    error_type: str | None  # class name in h2a.data.imageio when expect_ok is False
    note: str
    header_ok: bool | None = None  # read_header succeeds; defaults to expect_ok

    def __post_init__(self) -> None:
        if self.header_ok is None:
            self.header_ok = self.expect_ok


def read_with_peak(path: Path) -> tuple[np.ndarray, int]:
    """(image, peak bytes Python allocated while ``read_image`` decoded it): the memory
    tests compare the peak with the result's own size."""
    from h2a.data.imageio import read_image

    tracemalloc.start()
    try:
        img = read_image(path)
        return img, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def phantom(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """The float [0, 1] picture every corpus image encodes."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    img = 0.05 + 0.15 * yy / (height - 1)  # dark background, graded top to bottom
    disc = (yy - height / 2) ** 2 + (xx - width / 2) ** 2 <= (min(height, width) * 0.3) ** 2
    img[disc] = DISC_VALUE
    return img


def disc_mask(height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    return phantom(height, width) == DISC_VALUE


def gray8() -> np.ndarray:
    return np.round(phantom() * 255).astype(np.uint8)


def png_bomb_bytes(width: int = 30_000, height: int = 30_000) -> bytes:
    """A well-formed PNG whose header claims a huge 8-bit gray image.

    Only two rows of (zero) data follow: decoding it would allocate width*height bytes
    before noticing, so a reader must refuse it from the header.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1) * 2)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def make_dicom(
    path: str | Path,
    *,
    photometric: str = "MONOCHROME2",
    bits: int = 16,
    bits_stored: int | None = None,
    signed: bool = False,
    sex: str | None = "F",
    birth_date: str | None = "20150302",
    study_date: str | None = "20260115",
    patient_age: str | None = None,
    window: tuple[float, float] | None = None,
    voi_lut: bool | np.ndarray = False,
    pixel_data: bool = True,
    compressed: bool | str = False,
    array: np.ndarray | None = None,
    rescale: tuple[float, float] | None = None,
    patient_name: str = PATIENT_NAME,
    preamble: bool = True,
) -> Path:
    """Write a small DICOM file; identifying tags are filled so leaks can be caught.

    ``array`` (stored values; 2-D, frames x 2-D, or H x W x 3 for RGB) defaults to the
    phantom at full ``bits_stored`` range, stored inverted for MONOCHROME1 so the disc
    still *displays* bright. ``voi_lut`` True adds a square-root VOI LUT over the stored
    range (or pass the LUT itself). ``compressed`` True (JPEG 2000) or a transfer syntax
    UID writes bogus encapsulated data under that syntax. ``preamble=False`` writes a
    bare dataset with no 128-byte preamble, 'DICM' marker or file meta.
    """
    path = Path(path)
    bits_stored = bits_stored or bits
    if array is None:
        top = 2 ** (bits_stored - 1) - 1 if signed else 2**bits_stored - 1
        shown = phantom() if photometric != "MONOCHROME1" else 1.0 - phantom()
        array = np.round(shown * top)
        if photometric == "RGB":
            array = np.stack([array] * 3, axis=-1)
    dtype = f"{'int' if signed else 'uint'}{bits}"
    array = np.asarray(array).astype(dtype)

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "DX"
    ds.BodyPartExamined = "HAND"
    ds.PatientName = patient_name
    ds.PatientID = PATIENT_ID
    ds.AccessionNumber = "ACC-987654"
    ds.InstitutionName = "Children's General Hospital"
    if sex is not None:
        ds.PatientSex = sex
    if birth_date is not None:
        ds.PatientBirthDate = birth_date
    if study_date is not None:
        ds.StudyDate = study_date
        ds.AcquisitionDate = study_date
    if patient_age is not None:
        ds.PatientAge = patient_age

    set_pixel_data(ds, array, photometric, bits_stored)  # also sets the transfer syntax
    if not pixel_data:
        del ds.PixelData
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not False:
        lut = _sqrt_lut(bits_stored) if voi_lut is True else np.asarray(voi_lut)
        item = Dataset()
        item.add_new(0x00283002, "US", [len(lut) % 65536, 0, 16])  # LUT Descriptor
        item.add_new(0x00283006, "US", [int(v) for v in lut])  # LUT Data
        ds.VOILUTSequence = Sequence([item])
    if compressed:
        ds.file_meta.TransferSyntaxUID = JPEG2000Lossless if compressed is True else compressed
        # A real codestream start marker followed by junk: no decoder can make an image of it.
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(range(60))])
        ds["PixelData"].VR = "OB"

    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:
        del ds.file_meta
        ds.save_as(path, implicit_vr=True, little_endian=True)
    return path


def _sqrt_lut(bits_stored: int) -> np.ndarray:
    n = 2**bits_stored
    return np.round(65535 * np.sqrt(np.arange(n) / (n - 1))).astype(np.uint16)


def make_corpus(dirpath: Path) -> list[CorpusCase]:
    """Write every corpus file into ``dirpath`` and return what reading each should give."""
    d = Path(dirpath)
    d.mkdir(parents=True, exist_ok=True)
    cases: list[CorpusCase] = []

    def add(filename: str, ok: bool, error: str | None, note: str, header_ok: bool | None = None) -> Path:
        cases.append(CorpusCase(filename, ok, error, note, header_ok))
        return d / filename

    g8 = gray8()
    good = Image.fromarray(g8)
    png_bytes = _encode(good, "PNG")

    # --- ordinary raster files ---
    add("gray8.png", True, None, "8-bit grayscale PNG").write_bytes(png_bytes)
    twelve = np.round(phantom() * 4095).astype(np.uint16)  # 12-bit data in a 16-bit PNG
    Image.fromarray(twelve).save(add("gray16_12bit.png", True, None, "12-bit data in 16-bit PNG; must not look dark"))
    rgba = np.zeros((HEIGHT, WIDTH, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere; the picture lives in alpha
    rgba[..., 3] = g8
    Image.fromarray(rgba, "RGBA").save(add("rgba.png", True, None, "picture in alpha over white; composite on black"))
    Image.fromarray(np.stack([g8] * 3, -1)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(
        add("palette.png", True, None, "palette (indexed colour) PNG"))
    Image.fromarray(g8).convert("1").save(add("bilevel.png", True, None, "1-bit PNG"))
    tinted = np.stack([g8, (g8 * 0.95).astype(np.uint8), (g8 * 0.9).astype(np.uint8)], -1)
    Image.fromarray(tinted).save(add("rgb.jpg", True, None, "RGB JPEG"), quality=95)
    good.convert("CMYK").save(add("cmyk.jpg", True, None, "CMYK JPEG"), quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees clockwise to display
    good.save(add("exif_rotated.jpg", True, None, "EXIF orientation 6; displays as 48 x 64 landscape"),
              quality=95, exif=exif)
    good.save(add("gray8.tif", True, None, "8-bit TIFF"))
    Image.fromarray(twelve).save(add("gray16.tif", True, None, "16-bit TIFF (12-bit data)"))
    Image.fromarray((phantom() * 1000 - 300).astype(np.float32)).save(
        add("float.tif", True, None, "32-bit float TIFF; min-max scaled"))
    good.save(add("multipage.tif", True, None, "two-page TIFF; first page is the image"),
              save_all=True, append_images=[Image.new("L", good.size, 255)])
    good.save(add("gray8.bmp", True, None, "8-bit BMP"))

    # --- broken or hostile raster files ---
    add("truncated.png", False, "CorruptImageError", "PNG cut to 60%", header_ok=True).write_bytes(
        png_bytes[: len(png_bytes) * 6 // 10])
    add("header_only.png", False, "CorruptImageError", "PNG signature and a partial header").write_bytes(png_bytes[:20])
    jpg_bytes = _encode(good, "JPEG")
    add("truncated.jpg", False, "CorruptImageError", "JPEG cut to half", header_ok=True).write_bytes(
        jpg_bytes[: len(jpg_bytes) // 2])
    add("empty.png", False, "EmptyFileError", "zero-byte file").write_bytes(b"")
    add("text.png", False, "NotAnImageError", "text renamed .png").write_text("patient list\nnot an image\n")
    add("random.dcm", False, "NotAnImageError", "random bytes named .dcm").write_bytes(
        np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    add("bomb.png", False, "ImageTooLargeError", "header claims 30000 x 30000; must never be decoded").write_bytes(
        png_bomb_bytes())
    add("bomb_90mp.png", False, "ImageTooLargeError",
        "header claims 10000 x 9000: over H2A's 80 MP limit, under PIL's own hard limit", header_ok=True).write_bytes(
        png_bomb_bytes(10_000, 9_000))

    # --- DICOM ---
    make_dicom(add("mono2_16_window.dcm", True, None, "MONOCHROME2 16-bit with a window"),
               window=(0.15 * 65535, 0.2 * 65535))
    make_dicom(add("mono1.dcm", True, None, "MONOCHROME1: stored inverted, disc must display bright"),
               photometric="MONOCHROME1", bits_stored=12)
    make_dicom(add("mono2_12bit.dcm", True, None, "12 bits stored in 16 allocated, no window"), bits_stored=12)
    make_dicom(add("mono2_8bit.dcm", True, None, "8-bit DICOM"), bits=8)
    make_dicom(add("voi_lut.dcm", True, None, "VOI LUT Sequence (square root) plus a window the LUT overrides"),
               bits_stored=12, voi_lut=True, window=(2048, 400))
    make_dicom(add("signed_rescale.dcm", True, None, "signed 16-bit with rescale slope/intercept"),
               signed=True, bits_stored=12, rescale=(2.0, -1024.0))
    make_dicom(add("multiframe.dcm", True, None, "two frames; first is the image"),
               bits_stored=12, array=np.stack([np.round(phantom() * 4095), np.zeros((HEIGHT, WIDTH))]))
    make_dicom(add("rgb.dcm", True, None, "RGB secondary capture"), photometric="RGB", bits=8)
    make_dicom(add("no_preamble.dcm", True, None, "bare dataset: no preamble, no DICM, no file meta"),
               bits_stored=12, preamble=False)
    make_dicom(add("sex_dates.dcm", True, None, "male, dates and PatientAge 010Y"),
               sex="M", birth_date="20160105", study_date="20260110", patient_age="010Y")
    make_dicom(add("no_sex.dcm", True, None, "no PatientSex, no dates"), sex=None, birth_date=None, study_date=None)
    make_dicom(add("no_pixels.dcm", False, "DicomNoPixelDataError", "DICOM with no Pixel Data"), pixel_data=False)
    make_dicom(add("j2k_bogus.dcm", False, "DicomCompressedError", "JPEG 2000 syntax, undecodable data",
                   header_ok=True), compressed=True)
    make_dicom(add("jpegls_no_plugin.dcm", False, "DicomCompressedError", "JPEG-LS: no decoder installed",
                   header_ok=True), compressed=JPEGLSLossless)
    whole = make_dicom(d / "_whole.dcm").read_bytes()
    (d / "_whole.dcm").unlink()
    add("truncated.dcm", False, "CorruptImageError", "DICOM cut inside its pixel data", header_ok=True).write_bytes(
        whole[: len(whole) - 2000])

    # --- odd files a scan met in the field (issue 17) ---
    add("jpeg_trailer.jpg", True, None, "bytes after the JPEG end marker (phones, PACS exports)").write_bytes(
        jpeg_with_trailer_bytes())
    add("bad_frames.dcm", False, "CorruptImageError", "NumberOfFrames 'xy': header reads, pixels cannot",
        header_ok=True).write_bytes(bad_frames_dicom_bytes(d / "_frames.dcm"))
    add("bad_ifd.tif", False, "CorruptImageError", "TIFF whose next-page pointer points past the end").write_bytes(
        bad_ifd_tiff_bytes())
    return cases


def jpeg_with_trailer_bytes(trailer: bytes = b"\x00\x00PHONE-METADATA" * 40) -> bytes:
    """A good JPEG followed by bytes after its end-of-image marker."""
    return _encode(Image.fromarray(gray8()), "JPEG") + trailer


def bad_frames_dicom_bytes(scratch: Path) -> bytes:
    """A DICOM whose NumberOfFrames (an IS, integer string) holds 'xy'."""
    from pydicom.dataelem import DataElement

    path = make_dicom(scratch)
    ds = __import__("pydicom").dcmread(path)
    ds.add(DataElement(0x00280008, "IS", "1"))
    ds.save_as(path)
    raw = path.read_bytes()
    path.unlink()
    at = raw.index(b"\x28\x00\x08\x00IS\x02\x00")  # explicit VR little endian, length 2
    return raw[:at + 8] + b"xy" + raw[at + 10:]


def bad_ifd_tiff_bytes() -> bytes:
    """A one-page TIFF whose pointer to the next page points far past the end of the file."""
    data = bytearray(_encode(Image.fromarray(gray8()), "TIFF"))
    first = struct.unpack("<I", data[4:8])[0]
    entries = struct.unpack("<H", data[first:first + 2])[0]
    nxt = first + 2 + 12 * entries
    data[nxt:nxt + 4] = struct.pack("<I", 0xFFFFFFF0)
    return bytes(data)


def _encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()
