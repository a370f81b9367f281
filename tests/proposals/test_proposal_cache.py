import gc
import json
import os
import warnings
import zlib

import cv2
import numpy as np
import pytest
import torch

from detkit.proposals import ProposalCache, compute_proposals, selective_search_params
from detkit.proposals import cache as cache_mod

PARAMS = {"method": "selective_search", "mode": "fast", "max_proposals": 100}
REC = cache_mod._REC_HEAD.size


def boxes(n, seed):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 50, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(1, 50, (n, 2))], axis=1).astype(np.float32)


def write(path, items):
    with ProposalCache(path, PARAMS) as c:
        for image_id, b in items:
            c.put(image_id, b)


def record_end(path, params=PARAMS):
    """File offset where each record ends, from a fresh scan."""
    with ProposalCache(path, params, readonly=True) as c:
        return {i: off + n * 16 for i, (off, n) in c._index.items()}


def test_round_trip(tmp_path):
    path = tmp_path / "p.bin"
    data = {7: boxes(5, 0), 3: boxes(0, 1), 2**40: boxes(17, 2)}
    with ProposalCache(path, PARAMS) as c:
        for i, b in data.items():
            c.put(i, b)
        np.testing.assert_array_equal(c.get(7), data[7])  # readable before close
        c.put(np.int64(11), torch.from_numpy(boxes(3, 3)))
    c = ProposalCache(path, PARAMS, readonly=True)
    assert c.keys() == [7, 3, 2**40, 11] and len(c) == 4
    assert 3 in c and 4 not in c
    for i, b in data.items():
        got = c.get(i)
        assert got.dtype == np.float32 and got.shape == (len(b), 4)
        np.testing.assert_array_equal(got, b)
    np.testing.assert_array_equal(c[11], boxes(3, 3))
    with pytest.raises(KeyError, match="image id 4 "):
        c.get(4)
    c.close()
    with ProposalCache(path) as c:  # params=None accepts the file's
        assert c.params == PARAMS
        with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
            c.put(5, np.zeros((2, 3)))
        with pytest.raises(ValueError, match="non-finite"):
            c.put(5, np.full((1, 4), np.nan))
        with pytest.raises(RuntimeError, match="open for writing elsewhere"):
            ProposalCache(path)  # one writer at a time
        assert ProposalCache(path, readonly=True).keys() == c.keys()  # readers are fine
    ProposalCache(path).close()  # lock released by close()


def test_later_put_wins(tmp_path):
    path = tmp_path / "p.bin"
    write(path, [(1, boxes(2, 0)), (1, boxes(4, 1))])
    c = ProposalCache(path, PARAMS)
    assert len(c) == 1
    np.testing.assert_array_equal(c.get(1), boxes(4, 1))


def test_param_mismatch_and_missing_params(tmp_path):
    path = tmp_path / "p.bin"
    write(path, [(1, boxes(2, 0))])
    with pytest.raises(ValueError, match="'mode': file has 'fast', requested 'quality'"):
        ProposalCache(path, {**PARAMS, "mode": "quality"})
    with pytest.raises(ValueError, match="'resize_to'"):
        ProposalCache(path, {**PARAMS, "resize_to": 200})
    with pytest.raises(ValueError, match="params are required"):
        ProposalCache(tmp_path / "new.bin")
    (tmp_path / "junk.bin").write_bytes(b"hello world, not a cache")
    with pytest.raises(ValueError, match="not a detkit proposal cache"):
        ProposalCache(tmp_path / "junk.bin", PARAMS)


def test_truncated_tail_is_dropped(tmp_path):
    path = tmp_path / "p.bin"
    write(path, [(1, boxes(4, 0)), (2, boxes(6, 1)), (3, boxes(8, 2))])
    ends = record_end(path)
    os.truncate(path, ends[3] - 40)  # cut the last record in its payload
    with pytest.warns(RuntimeWarning, match="incomplete record.*ids to recompute: 3"):
        c = ProposalCache(path, PARAMS)
    assert c.keys() == [1, 2]
    np.testing.assert_array_equal(c.get(2), boxes(6, 1))
    assert os.path.getsize(path) == ends[2]  # repaired in place
    c.put(3, boxes(8, 2))
    c.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = ProposalCache(path, PARAMS)
    assert c.keys() == [1, 2, 3]
    np.testing.assert_array_equal(c.get(3), boxes(8, 2))


def test_truncated_record_header(tmp_path):
    path = tmp_path / "p.bin"
    write(path, [(1, boxes(4, 0)), (2, boxes(6, 1))])
    ends = record_end(path)
    os.truncate(path, ends[1] + REC // 2)
    with pytest.warns(RuntimeWarning, match="incomplete record"):
        c = ProposalCache(path, PARAMS)
    assert c.keys() == [1]


def flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def test_corrupt_payload_is_detected_and_dropped(tmp_path):
    path = tmp_path / "p.bin"
    write(path, [(1, boxes(4, 0)), (2, boxes(6, 1)), (3, boxes(8, 2))])
    ends = record_end(path)
    flip_byte(path, ends[2] - 10)  # inside the payload of image 2
    with pytest.warns(RuntimeWarning, match="1 damaged region.*ids to recompute: 2"):
        c = ProposalCache(path, PARAMS)
    assert c.keys() == [1, 3]
    np.testing.assert_array_equal(c.get(1), boxes(4, 0))
    np.testing.assert_array_equal(c.get(3), boxes(8, 2))
    c.close()
    with warnings.catch_warnings():  # the file was rewritten without the bad record
        warnings.simplefilter("error")
        assert ProposalCache(path, PARAMS, readonly=True).keys() == [1, 3]


def test_corrupt_record_header_resynchronises(tmp_path):
    path = tmp_path / "p.bin"
    write(path, [(1, boxes(4, 0)), (2, boxes(6, 1)), (3, boxes(8, 2))])
    ends = record_end(path)
    flip_byte(path, ends[1] + 1)  # record magic of image 2
    with pytest.warns(RuntimeWarning, match="damaged"):
        c = ProposalCache(path, PARAMS)
    assert c.keys() == [1, 3]


def test_readonly_never_modifies_and_get_rechecks_crc(tmp_path):
    path = tmp_path / "p.bin"
    write(path, [(1, boxes(4, 0)), (2, boxes(6, 1))])
    ends = record_end(path)
    flip_byte(path, ends[1] - 3)
    before = path.read_bytes()
    with pytest.warns(RuntimeWarning, match="ignored"):
        c = ProposalCache(path, PARAMS, readonly=True)
    assert c.keys() == [2] and path.read_bytes() == before
    with pytest.raises(PermissionError):
        c.put(3, boxes(1, 0))
    # corruption after opening (or with verify=False) is caught by get
    c = ProposalCache(path, PARAMS, readonly=True, verify=False)
    assert c.keys() == [1, 2]
    with pytest.raises(ValueError, match="image id 1 is damaged"):
        c.get(1)


@pytest.fixture
def image_files(tmp_path):
    rng = np.random.default_rng(0)
    items = []
    for i in range(4):
        img = np.full((48, 64, 3), 40, np.uint8)
        x, y = rng.integers(0, 30), rng.integers(0, 20)
        img[y : y + 24, x : x + 30] = rng.integers(100, 256, 3)
        path = tmp_path / f"im{i}.png"
        cv2.imwrite(str(path), img)
        items.append((100 + i, path))
    return items


def test_compute_proposals_resumes_only_missing(tmp_path, image_files, monkeypatch):
    calls = []
    real = cache_mod._proposals_for_file

    def counting(path, **kw):
        calls.append(str(path))
        return real(path, **kw)

    monkeypatch.setattr(cache_mod, "_proposals_for_file", counting)
    out = tmp_path / "cache.bin"
    kw = {"mode": "fast", "max_proposals": 50, "workers": 1, "progress": False}
    cache = compute_proposals(image_files, out, **kw)
    assert len(calls) == 4 and sorted(cache.keys()) == [100, 101, 102, 103]
    first = {i: cache.get(i) for i in cache}
    assert all(0 < len(b) <= 50 for b in first.values())

    last = cache.keys()[-1]
    os.truncate(out, os.path.getsize(out) - 8)  # interrupted mid-record
    calls.clear()
    with pytest.warns(RuntimeWarning, match=f"ids to recompute: {last}"):
        cache = compute_proposals(image_files, out, **kw)
    assert len(calls) == 1 and sorted(cache.keys()) == [100, 101, 102, 103]
    np.testing.assert_array_equal(cache.get(last), first[last])

    calls.clear()
    compute_proposals(image_files, out, **kw)
    assert calls == []
    with pytest.raises(ValueError, match="max_proposals"):
        compute_proposals(image_files, out, **{**kw, "max_proposals": 10})


def test_compute_proposals_pool_matches_in_process(tmp_path, image_files):
    a = compute_proposals(image_files, tmp_path / "a.bin", workers=1, progress=False)
    b = compute_proposals(image_files, tmp_path / "b.bin", workers=2, progress=False)
    assert sorted(a.keys()) == sorted(b.keys()) == [100, 101, 102, 103]
    for i in a:
        np.testing.assert_array_equal(a.get(i), b.get(i))
    assert b.params == selective_search_params()


def test_compute_proposals_reports_unreadable_images(tmp_path, image_files):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    items = image_files[:2] + [(7, bad), (8, tmp_path / "missing.png")]
    with pytest.raises(RuntimeError, match=r"failed for 2 image\(s\).*id 7: OSError: cannot decode"):
        compute_proposals(items, tmp_path / "c.bin", workers=1, progress=False)
    assert sorted(ProposalCache(tmp_path / "c.bin").keys()) == [100, 101]


def load_script():
    from detkit.cli import proposals

    return proposals


def test_precompute_script(tmp_path, image_files, capsys):
    import json

    main = load_script().main
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": i, "file_name": p.name} for i, p in image_files]}))
    out = tmp_path / "out" / "props.bin"
    base = ["--annotations", str(ann), "--image-root", str(tmp_path), "--output", str(out)]

    assert main(base + ["--max-proposals", "30", "--workers", "1", "--quiet"]) == 0
    cache = ProposalCache(out, readonly=True)
    assert sorted(cache.keys()) == [100, 101, 102, 103] and cache.params["max_proposals"] == 30
    assert "4 images" in capsys.readouterr().out

    assert main(base + ["--max-proposals", "40", "--quiet"]) == 2  # params differ
    assert "'max_proposals': file has 30, requested 40" in capsys.readouterr().err
    ann.write_text(json.dumps({"images": [{"id": i, "file_name": p.name} for i, p in image_files[:2]]}))
    assert main(base + ["--max-proposals", "30", "--quiet"]) == 2  # other images
    err = capsys.readouterr().err
    assert "made for other images" in err and len(err.strip().splitlines()) == 1
    assert main(["--annotations", str(tmp_path / "nope.json")] + base[2:]) == 2
    assert "annotations file not found" in capsys.readouterr().err
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "gone.png"}]}))
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "image file not found" in err and "gone.png" in err and "Traceback" not in err


IMAGES = [[i, f"{i:06d}.jpg", 1000 + i] for i in range(1, 11)]


def _full_cache(path):
    with ProposalCache(path, PARAMS, images=IMAGES) as c:
        for i, *_ in IMAGES:
            c.put(i, boxes(3, i))


def test_damage_warning_names_exactly_the_lost_ids(tmp_path):
    path = tmp_path / "p.bin"
    _full_cache(path)
    ends = record_end(path)
    with open(path, "r+b") as f:  # zero from inside record 3 to inside record 9: 7 records lost
        f.seek(ends[2] + 30)
        f.write(bytes(ends[9] - 20 - (ends[2] + 30)))
    with pytest.warns(RuntimeWarning, match=r"ids to recompute: 3, 4, 5, 6, 7, 8, 9 \("):
        c = ProposalCache(path, PARAMS)
    assert c.keys() == [1, 2, 10]
    c.close()

    _full_cache(path := tmp_path / "q.bin")
    ends = record_end(path)
    flip_byte(path, ends[4] + 4)  # the id field of record 5: the record reads as a bogus id
    with pytest.warns(RuntimeWarning, match=r"ids to recompute: 5 \(") as record:
        c = ProposalCache(path, PARAMS)
    assert sorted(c.keys()) == [1, 2, 3, 4, 6, 7, 8, 9, 10] and len(record) == 1


def _old_format(path, params):
    """A cache as detkit wrote it before image lists: the header has no "images"."""
    body = json.dumps({"params": params, "info": {}}, sort_keys=True).encode()
    path.write_bytes(cache_mod._FILE_HEAD.pack(cache_mod._FILE_MAGIC, len(body), zlib.crc32(body)) + body)


def test_image_list_is_recorded_and_must_match(tmp_path):
    path = tmp_path / "p.bin"
    _full_cache(path)
    assert ProposalCache(path, readonly=True).images[3] == ("000003.jpg", 1003)
    ProposalCache(path, PARAMS, images=IMAGES).close()  # same list: fine
    changed = [r if r[0] != 4 else [4, "000004.jpg", 999] for r in IMAGES]
    with pytest.raises(ValueError, match=r"made for other images.*image id 4: cache 000004.jpg \(1004 bytes\), now "):
        ProposalCache(path, PARAMS, images=changed)
    _old_format(old := tmp_path / "old.bin", PARAMS)
    assert ProposalCache(old, readonly=True).images is None
    with pytest.raises(ValueError, match="records no image list.*delete it"):
        ProposalCache(old, PARAMS, images=IMAGES)


def test_check_images(tmp_path):
    files = []
    for i in (1, 2, 3):
        (tmp_path / f"{i}.jpg").write_bytes(b"x" * (10 + i))
        files.append((i, tmp_path / f"{i}.jpg"))
    with ProposalCache(tmp_path / "p.bin", PARAMS, images=cache_mod.image_records(files)) as c:
        c.put(1, boxes(2, 0))
        c.put(3, boxes(2, 0))
        c.check_images(files[:1])  # a subset with proposals: fine
        with pytest.raises(ValueError, match=r"no proposals for 1 of 3 images \(image ids 2\); rebuild"):
            c.check_images(files, hint="; rebuild")
        (tmp_path / "3.jpg").write_bytes(b"regenerated")
        with pytest.raises(ValueError, match="made for other images.*1 of 3 images differ.*image id 3"):
            c.check_images(files)
    _old_format(old := tmp_path / "old.bin", PARAMS)
    with ProposalCache(old, PARAMS) as c, pytest.warns(RuntimeWarning, match="records no image list"):
        with pytest.raises(ValueError, match=r"no proposals for 3 of 3 images \(image ids 1, 2, 3\)"):
            c.check_images(files)


def test_compute_proposals_refuses_a_cache_of_other_images(tmp_path, image_files):
    out = tmp_path / "c.bin"
    compute_proposals(image_files[:2], out, workers=1, progress=False, max_proposals=20)
    with pytest.raises(ValueError, match="made for other images"):
        compute_proposals(image_files, out, workers=1, progress=False, max_proposals=20)


def test_a_cache_dropped_without_close_closes_its_files(tmp_path):
    """A reader or writer nobody closes (a data set's cache) releases its file handles when it is
    collected, without a ResourceWarning."""
    path = tmp_path / "p.bin"
    writer = ProposalCache(path, PARAMS)
    writer.put(1, torch.tensor([[0.0, 0.0, 4.0, 4.0]]))
    reader = ProposalCache(path, readonly=True)
    assert reader.get(1).shape == (1, 4)
    handles = [writer._writer, reader._reader]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del writer, reader
        gc.collect()
    assert [w.message for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert all(f.closed for f in handles)
    assert ProposalCache(path, readonly=True).get(1).shape == (1, 4)  # the writer's record was flushed
