"""Image validity judged by content (validity.py): every case built byte by byte.

Each case is judged three ways that must agree: ``check_bytes`` on the bytes, ``check_file`` (what
``verify=True`` and ``foodlab data info --verify`` run) and a dataset load (``read_image``/``read_mask``).
"""
from __future__ import annotations

import io
import struct

import cv2
import numpy as np
import pytest
from PIL import Image

from foodlab.data.dataset import BadSample, FoodSegDataset, read_image, read_mask
from foodlab.data.validity import check_bytes, check_file, image_format


def _picture(h: int = 40, w: int = 48, seed: int = 0) -> np.ndarray:
    """A small BGR picture with structure and noise, so the entropy-coded data is not trivial."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([xx * 5, yy * 6, (xx + yy) * 3], -1) % 256
    return np.clip(base + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)


def _encode(ext: str, img: np.ndarray | None = None, params: tuple = ()) -> bytes:
    ok, buf = cv2.imencode(ext, _picture() if img is None else img, list(params))
    assert ok
    return buf.tobytes()


def _with_exif_thumbnail(jpeg: bytes, thumbnail: bytes) -> bytes:
    """``jpeg`` with an APP1 EXIF segment right after SOI whose IFD1 holds ``thumbnail`` (a whole JPEG)."""
    ifd0 = struct.pack("<H", 0) + struct.pack("<I", 14)                 # no entries; IFD1 at offset 14
    ifd1 = (struct.pack("<H", 2)
            + struct.pack("<HHII", 0x0201, 4, 1, 44)                      # JPEGInterchangeFormat: offset
            + struct.pack("<HHII", 0x0202, 4, 1, len(thumbnail))          # JPEGInterchangeFormatLength
            + struct.pack("<I", 0))
    tiff = b"II*\0" + struct.pack("<I", 8) + ifd0 + ifd1
    assert len(tiff) == 44
    payload = b"Exif\0\0" + tiff + thumbnail
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def _cmyk_jpeg() -> bytes:
    out = io.BytesIO()
    Image.fromarray(_picture()[..., ::-1].copy()).convert("CMYK").save(out, "JPEG", quality=90)
    return out.getvalue()


def _fake_mp4(n: int = 3000) -> bytes:
    """Bytes like a motion photo's appended video: an ftyp box, then data holding JPEG-like markers."""
    rng = np.random.default_rng(1)
    body = bytearray(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
    body[100:104] = b"\xff\xd8\xff\xe0"
    body[500:502] = b"\xff\xd9"
    return struct.pack(">I", 24) + b"ftypmp42" + b"\0" * 12 + bytes(body)


def _cut_in_entropy_data(jpeg: bytes, fraction: float = 0.6) -> bytes:
    """``jpeg`` cut after ``fraction`` of the bytes that follow its first start-of-scan."""
    sos = jpeg.index(b"\xff\xda")
    return jpeg[: sos + int((len(jpeg) - sos) * fraction)]


JPG, PNG = _encode(".jpg"), _encode(".png")
PROGRESSIVE = _encode(".jpg", params=(cv2.IMWRITE_JPEG_PROGRESSIVE, 1))
THUMB = _encode(".jpg", _picture(8, 10, seed=3))
WITH_THUMB = _with_exif_thumbnail(JPG, THUMB)

VALID = {
    "baseline.jpg": JPG,
    "progressive.jpg": PROGRESSIVE,
    "cmyk.jpg": _cmyk_jpeg(),
    "exif_thumbnail.jpg": WITH_THUMB,
    "vendor_trailer.jpg": JPG + b"SEFH\x01\x00\x00\x00vendor metadata\xff\xd8 not an image\x00" * 3,
    "motion_photo.jpg": JPG + _fake_mp4(),
    "zero_padding.jpg": JPG + b"\0" * 4096,
    "whitespace_padding.jpg": JPG + b" \r\n\t" * 9,
    "png_behind.jpg": PNG,
    "webp_behind.jpg": _encode(".webp"),
    "UPPER.JPG": JPG,
    "UPPER.PNG": PNG,
    "trailer.png": PNG + b"trailing bytes after IEND",
    "picture.bmp": _encode(".bmp"),
    "picture.tiff": _encode(".tiff"),
    "picture.webp": _encode(".webp"),
}

CAUGHT = {
    "half.jpg": (JPG[: len(JPG) // 2], "no FF D9"),
    "header_cut.jpg": (JPG[:30], "cut inside its header"),
    "half_with_thumbnail.jpg": (_cut_in_entropy_data(WITH_THUMB), "no FF D9"),
    "thumbnail_cut.jpg": (WITH_THUMB[: WITH_THUMB.index(THUMB) + len(THUMB) // 2], "cut inside its header"),
    "progressive_cut.jpg": (_cut_in_entropy_data(PROGRESSIVE, 0.7), "no FF D9"),
    "half_padded.jpg": (JPG[: len(JPG) // 2] + b"\0" * 64, "no FF D9"),
    "half.png": (PNG[: len(PNG) // 2], "no IEND"),
    "iend_crc_cut.png": (PNG[:-2], "no IEND"),
    "zero.jpg": (b"", "empty"),
    "text.jpg": (b"hello, not an image\n", "not an image"),
    "half.webp": (_encode(".webp")[:60], "corrupt WEBP"),
}


def test_format_comes_from_the_bytes_not_the_name():
    assert image_format(JPG) == "jpeg" and image_format(PNG) == "png"
    assert image_format(_encode(".webp")) == "webp" and image_format(_encode(".bmp")) == "bmp"
    assert image_format(_encode(".tiff")) == "tiff" and image_format(b"GIF89a") is None


def test_why_a_decode_alone_proves_nothing(tmp_path):
    """``cv2.imread`` returns a full-size array for a JPEG cut short, also with a complete thumbnail in front."""
    for name in ("half.jpg", "half_with_thumbnail.jpg"):
        (tmp_path / name).write_bytes(CAUGHT[name][0])
        assert cv2.imread(str(tmp_path / name)).shape == (40, 48, 3)
    assert THUMB in CAUGHT["half_with_thumbnail.jpg"][0]      # the thumbnail's own FF D8 ... FF D9 is there


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_files_load_as_good_samples(tmp_path, name):
    data = VALID[name]
    assert check_bytes(np.frombuffer(data, np.uint8)).problem is None
    path = tmp_path / name
    path.write_bytes(data)
    assert check_file(str(path)) == (len(data), path.stat().st_mtime_ns, None)
    image = read_image(path)
    assert image.shape == (40, 48, 3) and image.dtype == np.uint8 and image.std() > 10


@pytest.mark.parametrize("name", sorted(CAUGHT))
def test_broken_files_are_caught_with_a_reason(tmp_path, name):
    data, reason = CAUGHT[name]
    assert reason in check_bytes(np.frombuffer(data, np.uint8)).problem
    path = tmp_path / name
    path.write_bytes(data)
    assert reason in check_file(str(path))[2]
    with pytest.raises(BadSample, match=reason):
        read_image(path)


def test_masks_use_the_same_check(tmp_path):
    mask = np.zeros((40, 48), np.uint8)
    mask[10:20] = 3
    good = _encode(".png", mask)
    (tmp_path / "good.png").write_bytes(good)
    assert np.array_equal(read_mask(str(tmp_path / "good.png")), mask)
    cases = {"cut.png": (good[:-12], "mask truncated PNG"), "text.png": (b"not a mask", "mask not an image"),
             "zero.png": (b"", "mask empty file")}
    # complete chunk structure, corrupt pixel data: only the decode at load time can tell
    idat = good.index(b"IDAT") + 4
    cases["undecodable.png"] = (good[:idat] + b"\x00" * (len(good) - idat - 12) + good[-12:], "mask corrupt PNG")
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(BadSample, match=reason):
            read_mask(str(tmp_path / name))
    with pytest.raises(BadSample, match="missing mask"):
        read_mask(str(tmp_path / "absent.png"))


def test_real_world_files_make_a_dataset_that_trains(tmp_path):
    """A folder of every valid variant opens, verifies and loads with nothing skipped; the broken ones
    beside them are caught by verify and by loading alike."""
    root = tmp_path / "photos"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    mask = _encode(".png", np.ones((40, 48), np.uint8))
    def unique(name):     # half.jpg and half.png need different stems to pair with a mask each
        stem, ext = name.rsplit(".", 1)
        return f"{stem}_{ext.lower()}.{ext}"

    for name, data in {**VALID, **{n: d for n, (d, _) in CAUGHT.items()}}.items():
        (root / "images" / unique(name)).write_bytes(data)
        (root / "masks" / (unique(name).rsplit(".", 1)[0] + ".png")).write_bytes(mask)
    loaded = FoodSegDataset(root, image_size=32, rescan=True)
    assert len(loaded) == len(VALID) + len(CAUGHT)
    for i in range(len(loaded)):
        loaded[i]
    found_at_load = {p.rsplit("/", 1)[1] for p, _ in loaded.bad_files()}
    verified = FoodSegDataset(root, image_size=32, rescan=True, verify=True, on_bad="raise")
    assert len(verified) == len(VALID)
    assert {p.rsplit("/", 1)[1] for p, _ in verified.skipped} == found_at_load == {unique(n) for n in CAUGHT}
    assert all(verified[i][0].std() > 0 for i in range(len(verified)))
