"""A fast path for the common DICOM file: uncompressed little endian, single frame, ASCII.

pydicom parses every element of a file through its general machinery (about 1 ms a file);
a series of several hundred slices then takes several times as long as dcm2niix. For the
files most archives hold (PS3.5 A.1 Implicit VR Little Endian or A.2 Explicit VR Little
Endian, native pixel data, one frame, ASCII strings), this module reads only the element
headers (PS3.5 7.1), keeps the few values :mod:`medcl.data.dicom` needs and the offset of the
pixel data, and skips everything else. Any other file (compressed, big endian, enhanced
multi-frame, Siemens mosaic, non-ASCII values, an odd structure) returns ``None`` and is read by
pydicom instead, so both paths give the same :class:`~medcl.data.dicom_geometry.Frame` for a file.
"""

from __future__ import annotations

import struct

IMPLICIT_LE, EXPLICIT_LE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
WANTED = {
    0x00080016: "SOPClassUID", 0x00080008: "ImageType", 0x00080060: "Modality", 0x0008103E: "SeriesDescription",
    0x00100020: "PatientID", 0x0020000E: "SeriesInstanceUID", 0x00200012: "AcquisitionNumber",
    0x00200100: "TemporalPositionIdentifier", 0x00180081: "EchoTime", 0x00180086: "EchoNumbers",
    0x00200032: "ImagePositionPatient", 0x00200037: "ImageOrientationPatient", 0x00280030: "PixelSpacing",
    0x00280010: "Rows", 0x00280011: "Columns", 0x00280008: "NumberOfFrames", 0x00280002: "SamplesPerPixel",
    0x00280100: "BitsAllocated", 0x00280101: "BitsStored", 0x00280103: "PixelRepresentation",
    0x00281053: "RescaleSlope", 0x00281052: "RescaleIntercept",
}
US_TAGS = {0x00280010, 0x00280011, 0x00280002, 0x00280100, 0x00280101, 0x00280103}
FALLBACK_TAGS = {0x52009230, 0x52009229}   # per-frame / shared functional groups: enhanced multi-frame
_U16, _U32, _TAG = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<HH")


class _Fallback(Exception):
    pass


def _element(buf: bytes, pos: int, explicit: bool) -> tuple[int, bytes, int, int]:
    """(tag, VR, value length, value offset) of the element header at ``pos``."""
    g, e = _TAG.unpack_from(buf, pos)
    tag = (g << 16) | e
    if tag in (ITEM, ITEM_END, SEQ_END) or not explicit:
        return tag, b"", _U32.unpack_from(buf, pos + 4)[0], pos + 8
    vr = buf[pos + 4:pos + 6]
    if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        raise _Fallback                              # not explicit VR after all: pydicom copes
    if vr in LONG_VRS:
        return tag, vr, _U32.unpack_from(buf, pos + 8)[0], pos + 12
    return tag, vr, _U16.unpack_from(buf, pos + 6)[0], pos + 8


def _skip_undefined(buf: bytes, pos: int, explicit: bool, depth: int = 0) -> int:
    """Position after an undefined-length sequence whose items start at ``pos`` (PS3.5 7.5)."""
    if depth > 16:
        raise _Fallback
    while True:
        tag, _, length, pos = _element(buf, pos, explicit)
        if tag == SEQ_END:
            return pos
        if tag != ITEM:
            raise _Fallback
        if length != UNDEFINED:
            pos += length
            continue
        while True:                                  # elements of an undefined-length item
            tag, vr, length, pos = _element(buf, pos, explicit)
            if tag == ITEM_END:
                break
            if length == UNDEFINED and vr == b"UN":
                raise _Fallback                      # PS3.5 6.2.2: its items are implicit VR
            pos = _skip_undefined(buf, pos, explicit, depth + 1) if length == UNDEFINED else pos + length


def parse(buf: bytes) -> dict | None:
    """The wanted values (ASCII text or ints) and ``_pixel_offset``/``_pixel_length``, or None."""
    try:
        return _parse(buf)
    except (_Fallback, struct.error, UnicodeDecodeError, IndexError):
        return None


def _parse(buf: bytes) -> dict | None:
    if len(buf) < 144 or buf[128:132] != b"DICM":
        return None
    pos, ts = 132, None
    while pos + 8 <= len(buf) and _TAG.unpack_from(buf, pos)[0] == 0x0002:   # file meta: explicit LE
        tag, _, length, pos = _element(buf, pos, True)
        if tag == 0x00020010:
            ts = buf[pos:pos + length].rstrip(b"\0 ").decode("ascii")
        pos += length
    if ts not in (IMPLICIT_LE, EXPLICIT_LE):
        return None
    explicit = ts == EXPLICIT_LE
    out: dict = {"_transfer_syntax": ts}
    n = len(buf)
    while pos + 8 <= n:
        tag, vr, length, pos = _element(buf, pos, explicit)
        if tag == PIXEL_DATA:
            if length == UNDEFINED:
                return None
            out["_pixel_offset"], out["_pixel_length"] = pos, length
            return out
        if tag in FALLBACK_TAGS:
            return None
        if length == UNDEFINED:
            if vr == b"UN":
                return None                          # PS3.5 6.2.2: its items are implicit VR
            pos = _skip_undefined(buf, pos, explicit)
            continue
        if tag in WANTED:
            raw = buf[pos:pos + length]
            if tag in US_TAGS:
                out[WANTED[tag]] = _U16.unpack_from(raw, 0)[0] if length >= 2 else None
            else:
                if any(b >= 0x80 for b in raw):
                    return None                      # non-ASCII: let pydicom apply the character set
                out[WANTED[tag]] = raw.decode("ascii").rstrip("\0 ").strip()
        pos += length
    return out if "Rows" not in out else None       # an image without PixelData: pydicom explains
