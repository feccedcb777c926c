"""What a served model accepts as a scan, and how it refuses everything else.

A scan reaches a registered model (``mlflow models serve``, or ``model.predict`` in Python) as

- **its bytes** (the default): a NIfTI file (``.nii`` or ``.nii.gz``), one DICOM file, or a zip
  archive of one DICOM series; ``bytes`` in Python, base64 text in a JSON request. Bytes are
  recognised by their content (gzip, NIfTI-1/2, DICOM ``DICM``, zip magic), never by a name;
  they are written to a private temporary folder for the one prediction and deleted after it.
- **a 3D array** in RAS voxel order (param ``spacing``);
- **a path, only where the operator allows it**: under the serving root ``MEDCL_SERVE_ROOT``
  (relative to it, or absolute inside it). The path and every file of a DICOM folder are
  resolved with their links followed and refused when the real location is outside the root,
  so neither ``..`` nor a symbolic link leads out of it. Without a root a served model reads no
  path at all. A process that trusts its caller, such as ``medcl predict`` (whose user already
  reads the files), opts in with :func:`trusted_paths`.

Every refusal is an :class:`InputRefused`: one line that names the input by its position (and
by the text the client sent), never a location on the server and never a stack trace, which
the scoring server answers with HTTP 400. Sizes are bounded before anything is allocated:
``MEDCL_SERVE_MAX_MB`` (default 1024) per request for encoded bytes, decompressed bytes and
arrays alike; the model's ``data.max_voxels`` then bounds each volume.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import contextvars
import gzip
import io
import logging
import os
import re
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

__all__ = ["InputRefused", "RequestBudget", "opened", "serve_root", "trusted_paths"]

ENV_ROOT = "MEDCL_SERVE_ROOT"
ENV_MAX_MB = "MEDCL_SERVE_MAX_MB"
DEFAULT_MAX_MB = 1024
MAX_ZIP_MEMBERS = 10000
MIN_BASE64_CHARS = 256            # shorter text is a path: no scan file is under 192 bytes
_BASE64 = re.compile(rb"[A-Za-z0-9+/]+={0,2}")
_TRUSTED = contextvars.ContextVar("medcl_trusted_paths", default=False)
_log = logging.getLogger(__name__)


class InputRefused(MlflowException, ValueError):
    """A scan the model will not read; ``message`` is one line. MLflow's scoring server
    prefixes the whole request to the message of an error it passes on; a refusal keeps its
    own line, so a client sees the reason and nothing of the request echoed or of the server."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._line

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_line"):
            self._line = " ".join(str(value).split())


@contextlib.contextmanager
def trusted_paths():
    """Within this block (and this thread or task) paths are read wherever they point: for a
    caller that already has the files, such as ``medcl predict``. Never used by a server."""
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def serve_root() -> Path | None:
    """The real location of ``MEDCL_SERVE_ROOT``, or None when paths are not served."""
    value = os.environ.get(ENV_ROOT, "").strip()
    return Path(os.path.realpath(value)) if value else None


def max_bytes() -> int:
    value = os.environ.get(ENV_MAX_MB, "").strip()
    try:
        mb = float(value) if value else DEFAULT_MAX_MB
    except ValueError:
        raise InputRefused(f"the server's {ENV_MAX_MB}={value!r} is not a number") from None
    return int(mb * 2**20)


class RequestBudget:
    """The bytes one request may still use (``MEDCL_SERVE_MAX_MB`` over all its inputs)."""

    def __init__(self, limit: int | None = None):
        self.limit = max_bytes() if limit is None else limit
        self.left = self.limit

    def take(self, n: int, label: str, what: str) -> None:
        if n > self.left:
            raise InputRefused(f"{label}: {what} is {n / 2**20:.1f} MB, more than the request may use "
                               f"({self.limit / 2**20:g} MB, {ENV_MAX_MB})")
        self.left -= n


def _client_text(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _inside(path: str, root: Path) -> bool:
    real = Path(os.path.realpath(path))
    return real == root or root in real.parents


def _path_under_root(text: str, label: str) -> tuple[Path, dict[str, str]]:
    """``text`` as a path the server may read, and the server locations an error must hide
    (with what to say instead)."""
    if _TRUSTED.get():
        return Path(text), {}
    root = serve_root()
    if root is None:
        raise InputRefused(f"{label}: paths are not accepted by this server; send the scan's bytes "
                           f"(base64 of a NIfTI file, a DICOM file or a zip of a DICOM series) or an array")
    if "\x00" in text or not text.strip():
        raise InputRefused(f"{label}: {_client_text(text)} is not a path")
    path = os.path.join(root, text)   # an absolute text stays absolute
    if not _inside(path, root):
        raise InputRefused(f"{label}: {_client_text(text)} is outside the serving root")
    real = Path(os.path.realpath(path))
    if not real.exists():
        raise InputRefused(f"{label}: {_client_text(text)}: no such file or folder under the serving root")
    if real.is_dir():
        for folder, dirs, files in os.walk(real):
            for name in dirs + files:
                if not _inside(os.path.join(folder, name), root):
                    raise InputRefused(f"{label}: {_client_text(text)} holds a link to outside the serving root")
    return real, {str(real): text, os.path.normpath(path): text, str(root): "<serving root>"}


def _as_bytes(value, label: str, budget: RequestBudget) -> bytes | None:
    """The scan bytes in ``value`` (``bytes``, or base64 text of at least 256 characters), or
    None when ``value`` is text meant as a path."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        budget.take(len(data), label, "the scan")
        return data
    raw = "".join(value.split()).encode("ascii", "replace") if len(value) >= MIN_BASE64_CHARS else b""
    if not raw or len(raw) % 4 or not _BASE64.fullmatch(raw):
        return None
    budget.take(len(raw) // 4 * 3, label, "the scan")
    try:
        return base64.b64decode(raw, validate=True)
    except binascii.Error:
        return None


def _read_capped(stream, budget: RequestBudget, label: str, what: str) -> bytes:
    data = stream.read(budget.left + 1)
    budget.take(len(data), label, what)
    return data


def _gunzip(data: bytes, budget: RequestBudget, label: str) -> bytes:
    try:
        return _read_capped(gzip.GzipFile(fileobj=io.BytesIO(data)), budget, label, "the decompressed scan")
    except (OSError, EOFError, zlib.error) as exc:
        raise InputRefused(f"{label}: broken gzip data ({exc})") from None


def _kind(data: bytes) -> str | None:
    if data[:2] == b"\x1f\x8b":
        return "gzip"
    if data[:4] == b"PK\x03\x04":
        return "zip"
    if data[128:132] == b"DICM":
        return "dicom"
    head = data[:4]
    if head in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c") and data[344:347] in (b"n+1", b"ni1"):
        return "nifti"
    if head in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c") and data[4:7] == b"n+2":
        return "nifti"
    return None


def _unzip_series(data: bytes, folder: Path, budget: RequestBudget, label: str) -> Path:
    """Every file of a zip archive into ``folder`` under a name of ours (member names are never
    used as paths), each read only up to what the request may still use."""
    folder.mkdir()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            if len(members) > MAX_ZIP_MEMBERS:
                raise InputRefused(f"{label}: the zip archive holds {len(members)} files (at most {MAX_ZIP_MEMBERS})")
            for n, member in enumerate(members):
                with zf.open(member) as fh:
                    (folder / f"{n:05d}.dcm").write_bytes(_read_capped(fh, budget, label, "the unpacked series"))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, EOFError, zlib.error) as exc:
        raise InputRefused(f"{label}: broken zip archive ({exc})") from None
    return folder


def _write_scan(data: bytes, tmp: Path, budget: RequestBudget, label: str) -> Path:
    """The bytes of one scan as a file (or DICOM folder) under ``tmp`` that ingest's reader opens."""
    kind = _kind(data)
    if kind == "gzip":
        data = _gunzip(data, budget, label)
        if _kind(data) != "nifti":
            raise InputRefused(f"{label}: gzip data that is not a NIfTI file")
        kind = "nifti"
    if kind == "nifti":
        path = tmp / "scan.nii"
        path.write_bytes(data)
        return path
    if kind == "zip":
        return _unzip_series(data, tmp / "series", budget, label)
    if kind == "dicom":
        (tmp / "series").mkdir()
        (tmp / "series" / "00000.dcm").write_bytes(data)
        return tmp / "series"
    raise InputRefused(f"{label}: not a NIfTI file, a DICOM file (with its 128-byte preamble and 'DICM') "
                       f"or a zip of a DICOM series")


def _open(value, label: str, tmp: Path, budget: RequestBudget) -> tuple[Path | np.ndarray, dict[str, str]]:
    if isinstance(value, np.ndarray):
        budget.take(value.nbytes, label, "the array")
        return value, {}
    if isinstance(value, Path):
        value = str(value)
    data = _as_bytes(value, label, budget)
    if data is not None:
        return _write_scan(data, tmp, budget, label), {}
    return _path_under_root(value, label)


def refusal(label: str, exc: BaseException, hide: dict[str, str], tmp: str) -> InputRefused:
    """``exc`` as one line about ``label``, every server location in ``hide`` replaced by what
    the client knows it as; the upload folder is ``upload``, any other temporary path ``<tmp>``."""
    text = str(exc).strip() or type(exc).__name__
    text = next((line for line in text.splitlines() if line.strip()), text)
    hide = {**hide, os.path.realpath(tmp): "upload", tmp: "upload", tempfile.gettempdir(): "<tmp>"}
    for location in sorted(hide, key=len, reverse=True):
        text = text.replace(location, hide[location])
    return InputRefused(f"{label}: {text[:300]}")


@contextlib.contextmanager
def opened(value, index: int, budget: RequestBudget):
    """Input ``index`` of a request as what the reader takes (a path it may read, or an array),
    for the duration of the block; any error inside the block becomes an :class:`InputRefused`
    about this input (the full error goes to the log at DEBUG level, for the operator)."""
    label = f"input {index}"
    with tempfile.TemporaryDirectory(prefix="medcl-scan-") as tmp:
        try:
            scan, hide = _open(value, label, Path(tmp), budget)
        except InputRefused:
            raise
        except Exception as exc:
            raise refusal(label, exc, {}, tmp) from exc
        try:
            yield scan
        except InputRefused:
            raise
        except Exception as exc:
            _log.debug("%s refused", label, exc_info=True)
            raise refusal(label, exc, hide, tmp) from exc
