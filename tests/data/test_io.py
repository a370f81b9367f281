import os

import cv2
import numpy as np
import pytest

from detkit.data.io import ImageReadError, read_image_rgb


def _write(path, array, ext=".png"):
    ok, buf = cv2.imencode(ext, array)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def test_colour_png_is_rgb(tmp_path):
    bgr = np.zeros((5, 7, 3), np.uint8)
    bgr[..., 0] = 10  # blue
    bgr[..., 2] = 200  # red
    img = read_image_rgb(_write(tmp_path / "a.png", bgr))
    assert img.shape == (5, 7, 3) and img.dtype == np.uint8
    assert (img[..., 0] == 200).all() and (img[..., 2] == 10).all()


def test_grayscale_becomes_three_channels(tmp_path):
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5)
    img = read_image_rgb(_write(tmp_path / "g.png", gray))
    assert img.shape == (4, 5, 3)
    for c in range(3):
        np.testing.assert_array_equal(img[..., c], gray)


def test_rgba_drops_alpha(tmp_path):
    bgra = np.zeros((3, 3, 4), np.uint8)
    bgra[..., 1] = 77
    bgra[..., 3] = 0  # fully transparent: colour must still come through
    img = read_image_rgb(_write(tmp_path / "a.png", bgra))
    assert img.shape == (3, 3, 3) and (img[..., 1] == 77).all() and (img[..., [0, 2]] == 0).all()


def test_16bit_is_scaled_to_8bit(tmp_path):
    v = np.array([[0, 257, 65535, 32896]], np.uint16)
    img = read_image_rgb(_write(tmp_path / "d.png", v))
    assert img.dtype == np.uint8
    np.testing.assert_array_equal(img[0, :, 0], [0, 1, 255, 128])


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("missing", "not found"),
        ("empty", "empty"),
        ("garbage", "not a decodable"),
        ("png_trunc", "not a decodable"),
        ("jpg_trunc", "truncated"),
    ],
)
def test_bad_files_raise_image_read_error(tmp_path, kind, reason):
    path = tmp_path / f"{kind}.img"
    rng = np.random.default_rng(0)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(b"this is not an image" * 10)
    elif kind == "png_trunc":
        data = _write(tmp_path / "x.png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
    elif kind == "jpg_trunc":
        img = cv2.GaussianBlur(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), (5, 5), 0)
        data = _write(tmp_path / "x.jpg", img, ".jpg").read_bytes()
        path.write_bytes(data[:-2])  # the end-of-image marker is gone
    with pytest.raises(ImageReadError, match=reason) as info:
        read_image_rgb(path)
    assert info.value.path == str(path) and str(path) in str(info.value)


@pytest.mark.parametrize(
    "name, array",
    [
        ("rgb.png", np.random.default_rng(1).integers(0, 255, (9, 7, 3), dtype=np.uint8)),
        ("gray.png", np.random.default_rng(2).integers(0, 255, (9, 7), dtype=np.uint8)),
        ("rgba.png", np.random.default_rng(3).integers(0, 255, (9, 7, 4), dtype=np.uint8)),
        ("gray16.png", np.random.default_rng(4).integers(0, 65535, (9, 7), dtype=np.uint16)),
        (
            "photo.jpg",
            cv2.GaussianBlur(np.random.default_rng(5).integers(0, 255, (48, 64, 3), dtype=np.uint8), (5, 5), 0),
        ),
        ("rgb.bmp", np.random.default_rng(6).integers(0, 255, (9, 7, 3), dtype=np.uint8)),
    ],
)
def test_pillow_decodes_what_opencv_decodes(tmp_path, monkeypatch, name, array):
    """Without OpenCV (`detkit[export]`) Pillow reads the files: the same pixels as OpenCV."""
    import detkit.data.io as image_io

    path = _write(tmp_path / name, array, os.path.splitext(name)[1])
    with_opencv = read_image_rgb(path)
    monkeypatch.setattr(image_io, "_opencv", lambda: None)
    np.testing.assert_array_equal(read_image_rgb(path), with_opencv)
    for kind in ("garbage", "png_trunc"):  # and refuses the same files
        bad = tmp_path / f"{kind}.png"
        data = path.read_bytes()
        bad.write_bytes(b"not an image" * 5 if kind == "garbage" else data[: len(data) * 2 // 3])
        with pytest.raises(ImageReadError, match="not a decodable|truncated JPEG"):
            read_image_rgb(bad)
