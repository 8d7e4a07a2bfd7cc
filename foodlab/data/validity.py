"""What counts as a usable file and a usable dataset.

A file is checked cheaply but properly: size > 0 and the format's end marker (a JPEG ends with
FF D9, a PNG with its IEND chunk). A JPEG cut in half still decodes with OpenCV, so a decode
alone proves nothing. A dataset is unusable when nothing valid is left or when more than
``BAD_FRACTION_LIMIT`` of its files are bad: training on the rest would hide the real problem.
"""
from __future__ import annotations

import collections
import os
from typing import TYPE_CHECKING

from foodlab.errors import FoodlabError

if TYPE_CHECKING:
    from foodlab.data.candidates import Index

BAD_FRACTION_LIMIT = 0.5          # more bad than this (of the images found) fails loudly
_PNG_END = b"IEND\xaeB`\x82"


class DatasetError(FoodlabError):
    """The dataset is unusable (nothing valid, or mostly bad files); the message summarises why."""


def end_marker_problem(path: str, tail: bytes) -> str | None:
    """Why a JPEG/PNG whose last bytes are ``tail`` is truncated, or None (other formats: None)."""
    ext = path[path.rfind("."):].lower()
    if ext in (".jpg", ".jpeg") and not tail.rstrip(b"\0\r\n ").endswith(b"\xff\xd9"):   # writers may pad
        return "truncated or not a JPEG (no FF D9 end marker)"
    if ext == ".png" and not tail.endswith(_PNG_END):
        return "truncated or not a PNG (no IEND chunk)"
    return None


def check_file(path: str, dir_fd: int | None = None) -> tuple[int, int, str | None]:
    """(size, mtime_ns, reason or None): size > 0 and the JPEG/PNG end marker, reading only the last bytes.

    ``dir_fd`` opens ``path`` relative to an open folder, which skips the full path walk per file.
    """
    try:
        fd = os.open(path, os.O_RDONLY, dir_fd=dir_fd)
    except OSError as e:
        return 0, 0, f"unreadable: {e.strerror}"
    try:
        st = os.fstat(fd)
        if st.st_size == 0:
            return 0, st.st_mtime_ns, "empty file (0 bytes)"
        return st.st_size, st.st_mtime_ns, end_marker_problem(path, os.pread(fd, 32, max(0, st.st_size - 32)))
    except OSError as e:
        return 0, 0, f"unreadable: {e.strerror}"
    finally:
        os.close(fd)


def summarize_reasons(skipped: list[tuple[str, str]], examples: int = 3) -> str:
    """The reasons on one line, most common first, each with a few example file names."""
    counts = collections.Counter(r for _, r in skipped)
    parts = []
    for reason, n in counts.most_common():
        files = [os.path.basename(p) for p, r in skipped if r == reason][:examples]
        parts.append(f"{n} x {reason} (e.g. {', '.join(files)})")
    return "; ".join(parts)


def check_bad_fraction(index: "Index", root) -> None:
    """Raise DatasetError when ``index`` kept nothing, or skipped more than BAD_FRACTION_LIMIT of the images."""
    n_bad = index.n_found - len(index.samples)
    if len(index.samples) == 0:
        raise DatasetError(f"{root}: no valid image/mask pairs ({index.n_found} images found)"
                           + (f"; skipped: {summarize_reasons(index.skipped)}" if index.skipped else ""))
    if n_bad > BAD_FRACTION_LIMIT * index.n_found:
        raise DatasetError(f"{root}: {n_bad} of {index.n_found} images are bad (more than "
                           f"{BAD_FRACTION_LIMIT:.0%}); refusing to train on the rest. Reasons: "
                           f"{summarize_reasons(index.skipped)}")
