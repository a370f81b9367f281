"""Image reading for the data sets and `detkit predict` (RGB uint8 out).

OpenCV decodes where it is installed (`detkit-rcnn[train]`); without it (`detkit-rcnn[export]`) Pillow,
which torchvision installs, decodes the same files to the same pixels (PNG, JPEG, BMP, TIFF,
WebP). `_decode` makes that choice; a test compares the two on the same files.
"""

from __future__ import annotations

import functools
import io
import os

import numpy as np

__all__ = ["ImageReadError", "read_image_rgb"]


class ImageReadError(OSError):
    """An image file is missing, unreadable, truncated or of an unsupported kind."""

    def __init__(self, path: str | os.PathLike, reason: str | None = None) -> None:
        if reason is None:  # one argument: a whole message, as DataLoader re-raises worker errors
            message = _worker_error_line(str(path))
            self.path, self.reason = "", message
            super().__init__(message)
            return
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path!r}: {reason}")

    def __reduce__(self):  # keep picklable across DataLoader worker processes
        return (type(self), (self.path, self.reason) if self.path else (self.reason,))


def _worker_error_line(message: str) -> str:
    """The original one-line error inside a DataLoader "Caught X in DataLoader worker" message."""
    if "Original Traceback" not in message:
        return message
    last = [line for line in message.strip().splitlines() if line.strip()][-1]
    head, sep, tail = last.partition(": ")
    return tail if sep and "Error" in head else last


def _jpeg_is_truncated(data: bytes) -> bool:
    """True when a JPEG stream has no end-of-image marker after its last scan.

    Older OpenCV builds decode truncated JPEGs with a warning and a grey fill; entropy-coded
    data never contains 0xFFD9 or 0xFFDA (byte stuffing), so this structural check is exact
    enough without decoding twice.
    """
    last_scan = data.rfind(b"\xff\xda")
    return last_scan < 0 or data.find(b"\xff\xd9", last_scan) < 0


def _to_uint8(img: np.ndarray, path: str) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        # 0..65535 -> 0..255, rounded (65535 / 257 == 255).
        return ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if img.dtype in (np.float32, np.float64, np.float16):
        if not np.isfinite(img).all():
            raise ImageReadError(path, "floating-point image contains NaN or inf")
        return np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise ImageReadError(path, f"unsupported pixel type {img.dtype}")


def read_image_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an RGB array.

    Grayscale is replicated to 3 channels, an alpha channel is dropped, 16-bit images are
    scaled to 8 bits, float images are taken as 0..1. A JPEG's EXIF orientation is applied
    (the image is returned as viewers show it, before any size check).

    Returns:
        ``np.ndarray[H, W, 3]`` uint8, RGB, C-contiguous.

    Raises:
        ImageReadError: the file is missing, empty, truncated, not an image, or of an
            unsupported pixel type.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageReadError(path, "file not found")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageReadError(path, f"cannot open file ({e.strerror or e})") from e
    if not data:
        raise ImageReadError(path, "empty file")
    if data[:2] == b"\xff\xd8" and _jpeg_is_truncated(data):
        raise ImageReadError(path, "truncated JPEG (no end-of-image marker)")
    img = _decode(data, path)
    if img is None or img.size == 0:
        raise ImageReadError(path, "not a decodable image (corrupt, truncated or unknown format)")

    img = _to_uint8(img, path)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.ndim == 3 and img.shape[2] in (1, 2):  # gray or gray+alpha
        img = np.repeat(img[:, :, :1], 3, axis=2)
    elif img.ndim == 3 and img.shape[2] == 4:  # RGBA
        img = img[:, :, :3]
    elif img.ndim != 3 or img.shape[2] != 3:
        raise ImageReadError(path, f"unsupported image shape {img.shape}")
    return np.ascontiguousarray(img)


@functools.cache
def _opencv():
    """The `cv2` module, or None where OpenCV is not installed."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def _decode(data: bytes, path: str, *, use_opencv: bool | None = None) -> np.ndarray | None:
    """The pixels of an encoded image, channels in RGB(A) order (gray: `[H, W]`), in their own
    type (uint8, uint16, float); None when the data does not decode. OpenCV where installed
    (`use_opencv=None`), else Pillow."""
    cv2 = _opencv() if use_opencv in (None, True) else None
    if use_opencv and cv2 is None:
        raise ModuleNotFoundError("OpenCV is not installed", name="cv2")
    if cv2 is None:
        return _decode_pillow(data, path)
    # JPEGs (8-bit, no alpha): IMREAD_COLOR applies the EXIF orientation; other formats unchanged
    flags = cv2.IMREAD_COLOR if data[:2] == b"\xff\xd8" else cv2.IMREAD_UNCHANGED
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if img is None or img.ndim != 3 or img.shape[2] < 3:
        return img
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB if img.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)


def _decode_pillow(data: bytes, path: str) -> np.ndarray | None:
    """`_decode` with Pillow: a JPEG's EXIF orientation applied, 16-bit and float gray kept as such."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if data[:2] == b"\xff\xd8":
                im = ImageOps.exif_transpose(im)
            if im.mode.startswith("I;16") or im.mode == "F":
                return np.array(im, dtype=np.float32 if im.mode == "F" else np.uint16)
            if im.mode == "I":  # 32-bit integer gray: 16-bit data as Pillow widens it (else refused as int32)
                arr = np.asarray(im)
                in_range = arr.size and arr.min() >= 0 and arr.max() <= 65535
                return arr.astype(np.uint16) if in_range else arr
            if im.mode in ("L", "LA", "1"):
                return np.array(im.convert("L"))
            return np.array(im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
