"""What counts as a usable image file and a usable dataset.

A file is judged by its content, never by its name: the magic bytes say the format.

- JPEG: the header segments are walked by their lengths to the first start-of-scan, then an
  end-of-image marker (FF D9) must follow. Byte stuffing keeps FF D9 out of the entropy-coded data,
  and a progressive JPEG's later scans and tables are skipped by their lengths, so the first FF D9
  found is the image's own end. An EXIF thumbnail (a whole JPEG inside the APP1 header segment) is
  skipped with its segment, so it cannot stand in for a main image that was cut short.
- PNG: the chunks are walked by their lengths to a complete IEND chunk.
- Bytes after the end (vendor trailers, an appended motion-photo video, padding) are fine.
- Every other format OpenCV reads (WebP, BMP, TIFF, ...), and anything unrecognised: a complete
  decode decides.

``cv2.imread`` returns a full-size array for a JPEG cut in half (the missing part comes out
grey), so a decode cannot be the judge for JPEG; JPEG and PNG are judged by their structure,
which also needs no decode when ``verify`` checks every file up front. ``check_bytes`` is the one judgement: every load
runs it on the bytes it has read (and keeps the decoded pixels), ``check_file`` runs it for
``verify=True`` and ``foodlab data info --verify``.

A dataset is unusable when nothing valid is left or when more than ``BAD_FRACTION_LIMIT`` of its
files are bad: training on the rest would hide the real problem.
"""
from __future__ import annotations

import collections
import os
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from foodlab.errors import FoodlabError

if TYPE_CHECKING:
    from foodlab.data.candidates import Index

BAD_FRACTION_LIMIT = 0.5          # more bad than this (of the images found) fails loudly
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}     # markers without a length field (TEM, RST0-7)


class DatasetError(FoodlabError):
    """The dataset is unusable (nothing valid, or mostly bad files); the message summarises why."""


def image_format(data) -> str | None:
    """The format named by the first bytes (jpeg, png, webp, bmp, tiff), or None when unrecognised."""
    head = bytes(data[:12])
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(_PNG_SIGNATURE):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:4] in (b"II*\0", b"MM\0*"):
        return "tiff"
    return None


def jpeg_problem(data: np.ndarray) -> str | None:
    """Why the JPEG in ``data`` (uint8) is incomplete, or None: header walk to the first SOS, then FF D9."""
    buf, n, pos = memoryview(data), len(data), 2
    while True:                                    # header segments, up to and including the first SOS
        if pos >= n:
            return "truncated JPEG (cut inside its header)"
        if buf[pos] != 0xFF:
            return "corrupt JPEG (no marker where a header segment should start)"
        while pos < n and buf[pos] == 0xFF:        # fill bytes may precede a marker
            pos += 1
        if pos >= n:
            return "truncated JPEG (cut inside its header)"
        marker, pos = buf[pos], pos + 1
        if marker == 0xD9:
            return "JPEG without image data (end marker before any scan)"
        if marker in _JPEG_STANDALONE:
            continue
        if pos + 2 > n:
            return "truncated JPEG (cut inside its header)"
        pos += (buf[pos] << 8) | buf[pos + 1]
        if pos > n:
            return "truncated JPEG (cut inside its header)"
        if marker == 0xDA:
            break
    rest = data[pos:]
    ff = np.flatnonzero(rest[:-1] == 0xFF)
    after = rest[ff + 1]
    is_marker = (after != 0x00) & (after != 0xFF) & ((after < 0xD0) | (after > 0xD7))
    skip_to = 0
    for p, marker in zip(ff[is_marker].tolist(), after[is_marker].tolist()):
        if p < skip_to:                            # inside a segment skipped below
            continue
        if marker == 0xD9:
            return None
        if marker in _JPEG_STANDALONE:
            continue
        if p + 4 > len(rest):
            break
        skip_to = p + 2 + (int(rest[p + 2]) << 8 | int(rest[p + 3]))   # tables or the next scan's header
    return "truncated JPEG (no FF D9 end marker after the image data)"


def png_problem(data: np.ndarray) -> str | None:
    """Why the PNG in ``data`` (uint8) is incomplete, or None: the chunks, walked by length, reach IEND."""
    buf, n, pos = memoryview(data), len(data), len(_PNG_SIGNATURE)
    while pos + 12 <= n:
        if buf[pos + 4:pos + 8] == b"IEND":
            return None
        pos += 12 + int.from_bytes(buf[pos:pos + 4], "big")
    return "truncated PNG (no IEND chunk)"


class Checked(NamedTuple):
    problem: str | None            # why the bytes are not a usable image; None when they are
    image: np.ndarray | None       # the decoded pixels, when a decode ran and succeeded


def check_bytes(data: np.ndarray, decode_flags: int | None = None) -> Checked:
    """The content check of one file's bytes (uint8 array): the format from its magic bytes, JPEG and
    PNG structure, then a decode with ``decode_flags``. Without flags (``verify``) only formats that
    have no structural check are decoded, with ``cv2.IMREAD_UNCHANGED``."""
    if data.size == 0:
        return Checked("empty file (0 bytes)", None)
    fmt = image_format(data)
    problem = jpeg_problem(data) if fmt == "jpeg" else png_problem(data) if fmt == "png" else None
    if problem is not None or (decode_flags is None and fmt in ("jpeg", "png")):
        return Checked(problem, None)
    import cv2

    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED if decode_flags is None else decode_flags)
    if image is None:
        return Checked(f"corrupt {fmt.upper()} (OpenCV cannot decode it)" if fmt else
                       "not an image (unknown format, OpenCV cannot decode it)", None)
    return Checked(None, image)


def read_problem(path: str, error: OSError, dir_fd: int | None = None) -> str:
    """Why ``path`` could not be read, in words: a broken symbolic link is named as one."""
    if isinstance(error, FileNotFoundError):
        try:
            os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
            return "broken symbolic link (its target does not exist)"
        except OSError:
            return "missing file"
    return f"unreadable: {error.strerror or error}"


def check_file(path: str, dir_fd: int | None = None) -> tuple[int, int, str | None]:
    """(size, mtime_ns, problem or None) of one file: ``check_bytes`` on its whole content.

    ``dir_fd`` opens ``path`` relative to an open folder, which skips the full path walk per file.
    The stamp of a file that cannot be opened is its own ``lstat`` (a broken link's), or zeros.
    """
    try:
        fd = os.open(path, os.O_RDONLY, dir_fd=dir_fd)
    except OSError as e:
        try:
            st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
            return st.st_size, st.st_mtime_ns, read_problem(path, e, dir_fd)
        except OSError:
            return 0, 0, read_problem(path, e, dir_fd)
    try:
        st = os.fstat(fd)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = np.frombuffer(f.read(), np.uint8)
    except OSError as e:
        return 0, 0, read_problem(path, e, dir_fd)
    finally:
        os.close(fd)
    return st.st_size, st.st_mtime_ns, check_bytes(data).problem


def summarize_reasons(skipped: list[tuple[str, str]], examples: int = 3) -> str:
    """The reasons on one line, most common first, each with a few example file names."""
    counts = collections.Counter(r for _, r in skipped)
    parts = []
    for reason, n in counts.most_common():
        files = [os.path.basename(p) for p, r in skipped if r == reason][:examples]
        parts.append(f"{n} x {reason} (e.g. {', '.join(files)})")
    return "; ".join(parts)


def check_bad_fraction(index: Index, root) -> None:
    """Raise DatasetError when ``index`` kept nothing, or skipped more than BAD_FRACTION_LIMIT of the images."""
    n_bad = index.n_found - len(index.samples)
    if len(index.samples) == 0:
        raise DatasetError(f"{root}: no valid image/mask pairs ({index.n_found} images found)"
                           + (f"; skipped: {summarize_reasons(index.skipped)}" if index.skipped else ""))
    if n_bad > BAD_FRACTION_LIMIT * index.n_found:
        raise DatasetError(f"{root}: {n_bad} of {index.n_found} images are bad (more than "
                           f"{BAD_FRACTION_LIMIT:.0%}); refusing to train on the rest. Reasons: "
                           f"{summarize_reasons(index.skipped)}")
