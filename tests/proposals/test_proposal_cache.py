import gc
import importlib.util
import inspect
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detkit.proposals import ProposalCache, compute_proposals, selective_search_params
from detkit.proposals import cache as cache_mod

PARAMS = {"method": "selective_search", "mode": "fast", "max_proposals": 100}
IMAGES = [[i, f"{i:06d}.jpg", 1000 + i] for i in range(1, 11)]
ROOT = Path(__file__).resolve().parents[2]


def boxes(n, seed):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 50, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(1, 50, (n, 2))], axis=1).astype(np.float32)


def listing(*ids):
    return [[i, f"{i}.jpg", None] for i in ids]


def write(path, items):
    with ProposalCache(path, PARAMS, images=listing(*{i for i, _ in items})) as c:
        for image_id, b in items:
            c.put(image_id, b)


def test_round_trip(tmp_path):
    path = tmp_path / "p.bin"
    data = {7: boxes(5, 0), 3: boxes(0, 1), 2**40: boxes(17, 2)}
    with ProposalCache(path, PARAMS, images=listing(7, 3, 2**40, 11, 5)) as c:
        for i, b in data.items():
            c.put(i, b)
        np.testing.assert_array_equal(c.get(7), data[7])  # readable before close
        c.put(np.int64(11), torch.from_numpy(boxes(3, 3)))
    c = ProposalCache(path, PARAMS, readonly=True)
    assert c.keys() == [3, 7, 11, 2**40] and len(c) == 4
    assert 3 in c and 4 not in c and 5 not in c
    for i, b in data.items():
        got = c.get(i)
        assert got.dtype == np.float32 and got.shape == (len(b), 4) and got.flags.writeable
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
        with pytest.raises(ValueError, match="image id 6 is not in the image list"):
            c.put(6, boxes(1, 0))
        with pytest.raises(TypeError, match="image_id must be an int"):
            c.put(True, boxes(1, 0))


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
    with pytest.raises(ValueError, match="images are required to create the proposal cache"):
        ProposalCache(tmp_path / "new.bin", PARAMS)
    assert not (tmp_path / "new.bin").exists()
    with pytest.raises(FileNotFoundError, match="proposal cache not found"):
        ProposalCache(tmp_path / "new.bin", readonly=True)
    (tmp_path / "empty.bin").touch()
    with pytest.raises(ValueError, match="is empty"):
        ProposalCache(tmp_path / "empty.bin", readonly=True)
    ProposalCache(tmp_path / "empty.bin", PARAMS, images=IMAGES).close()  # an empty file is a new cache
    assert ProposalCache(tmp_path / "empty.bin", readonly=True).images[1] == ("000001.jpg", 1001)


def one_error_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_other_files_are_refused_in_one_line(tmp_path):
    old = tmp_path / "old.bin"  # the header of detkit's former binary format
    old.write_bytes(b"DKPROPS1" + bytes(8) + b'{"params": {}}')
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello world, not a cache")
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    for path in (old, junk, other):
        for kwargs in ({"readonly": True}, {"params": PARAMS, "images": IMAGES}):
            before = path.read_bytes()
            with pytest.raises(ValueError) as excinfo:
                ProposalCache(path, **kwargs)
            assert one_error_line(excinfo) == (
                f"{path} is not a detkit proposal cache (SQLite); recompute it with `detkit proposals ...`"
            )
            assert path.read_bytes() == before
    with pytest.raises(ValueError, match=r"old\.bin is not a detkit proposal cache \(SQLite\)"):
        cache_mod.cache_settings(old)


def test_a_truncated_file_is_a_one_line_error(tmp_path):
    """Damage SQLite detects (here: the second half of the file gone) is named, not a traceback."""
    path = tmp_path / "p.bin"
    write(path, [(i, boxes(500, i)) for i in range(1, 101)])
    os.truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(ValueError) as excinfo:
        ProposalCache(path, readonly=True).keys()
    assert one_error_line(excinfo) == (
        f"proposal cache {path} is damaged (database disk image is malformed); "
        "delete it and recompute it with `detkit proposals ...`"
    )


def test_readonly_never_writes(tmp_path):
    path = tmp_path / "p.bin"
    write(path, [(1, boxes(4, 0)), (2, boxes(6, 1))])
    before = path.read_bytes()
    c = ProposalCache(path, PARAMS, readonly=True)
    with pytest.raises(PermissionError, match="open read-only"):
        c.put(3, boxes(1, 0))
    with pytest.raises(sqlite3.OperationalError, match="readonly"):  # SQLite's mode=ro, not only our check
        c._connection().execute("DELETE FROM proposals")
    assert c.keys() == [1, 2] and path.read_bytes() == before


def test_readers_see_what_writers_commit_and_writers_share_the_file(tmp_path):
    """WAL: a reader opened before the writes sees each committed image; two writers (no lock)
    interleave their transactions."""
    path = tmp_path / "p.bin"
    first = ProposalCache(path, PARAMS, images=IMAGES)
    reader = ProposalCache(path, readonly=True)
    assert len(reader) == 0
    second = ProposalCache(path, PARAMS, images=IMAGES)
    for i in range(1, 11):
        (first if i % 2 else second).put(i, boxes(i, i))
        assert reader.keys() == list(range(1, i + 1))
        np.testing.assert_array_equal(reader.get(i), boxes(i, i))
    for c in (first, second, reader):
        c.close()


class _Reads(torch.utils.data.Dataset):
    """Boxes of image `index + 1`, and whether this process read them through a connection of its own."""

    def __init__(self, cache, n):
        self.cache, self.n = cache, n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        got = torch.from_numpy(self.cache.get(index + 1))
        return got, self.cache._conn_pid == os.getpid(), os.getpid()


def test_dataloader_workers_read_concurrently_while_a_writer_writes(tmp_path):
    path = tmp_path / "p.bin"
    images = listing(*range(1, 41))
    writer = ProposalCache(path, PARAMS, images=images)
    for i in range(1, 21):
        writer.put(i, boxes(i % 7, i))
    reader = ProposalCache(path, readonly=True)
    reader.get(1)  # the parent's connection exists before the workers fork
    loader = torch.utils.data.DataLoader(
        _Reads(reader, 20), batch_size=None, num_workers=2, multiprocessing_context="fork"
    )
    pids = set()
    for k, (got, own_connection, pid) in enumerate(loader):
        writer.put(21 + k, boxes(3, 21 + k))  # the writer goes on while the workers read
        np.testing.assert_array_equal(got.numpy(), boxes((k + 1) % 7, k + 1))
        assert own_connection and pid != os.getpid()
        pids.add(pid)
    assert len(pids) == 2
    writer.close()
    assert reader.keys() == list(range(1, 41))  # the parent's connection still works
    np.testing.assert_array_equal(reader.get(40), boxes(3, 40))


def fake_proposals(path, **kwargs):
    """Stands in for selective search: boxes made from the image id in the file name."""
    import numpy as np

    image_id = int(os.path.basename(path).split(".")[0])
    rng = np.random.default_rng(image_id)
    xy = rng.uniform(0, 400, (500, 2))
    return np.concatenate([xy, xy + rng.uniform(1, 100, (500, 2))], axis=1).astype(np.float32)


KILLED_WRITER = """
import os, sys
import detkit.proposals.cache as cache_mod
{source}
cache_mod._proposals_for_file = fake_proposals
items = [(i, f"{{i}}.jpg") for i in range(1, int(sys.argv[2]) + 1)]
cache_mod.compute_proposals(items, sys.argv[1], workers=1, progress=False)
"""


def test_kill_9_mid_write_leaves_whole_records_and_a_rerun_completes(tmp_path, monkeypatch):
    """`detkit proposals` killed with SIGKILL while it writes: the file opens, every stored image has
    its whole boxes, and a rerun computes exactly the images without them."""
    path, n = tmp_path / "p.bin", 3000
    code = KILLED_WRITER.format(source=inspect.getsource(fake_proposals))
    child = subprocess.Popen([sys.executable, "-c", code, str(path), str(n)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while child.poll() is None and time.monotonic() < deadline:
            if path.is_file() and path.stat().st_size > 0:
                try:
                    with ProposalCache(path, readonly=True) as watch:
                        if len(watch) >= 200:
                            break
                except (ValueError, sqlite3.OperationalError):  # tables not committed yet
                    pass
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL

    with sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    with ProposalCache(path, readonly=True) as c:
        done = c.keys()
        assert 200 <= len(done) < n, "the writer was not killed mid-run"
        for i in done:
            np.testing.assert_array_equal(c.get(i), fake_proposals(f"{i}.jpg"))

    computed = []

    def counting(path, **kwargs):
        computed.append(int(os.path.basename(path).split(".")[0]))
        return fake_proposals(path)

    monkeypatch.setattr(cache_mod, "_proposals_for_file", counting)
    items = [(i, f"{i}.jpg") for i in range(1, n + 1)]
    cache = compute_proposals(items, path, workers=1, progress=False)
    assert sorted(computed) == sorted(set(range(1, n + 1)) - set(done))
    assert cache.keys() == list(range(1, n + 1))
    for i in (1, done[-1], n):
        np.testing.assert_array_equal(cache.get(i), fake_proposals(f"{i}.jpg"))


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
    assert len(calls) == 4 and cache.keys() == [100, 101, 102, 103]
    first = {i: cache.get(i) for i in cache}
    assert all(0 < len(b) <= 50 for b in first.values())

    with sqlite3.connect(out) as conn:  # as if the run had stopped before image 102
        conn.execute("DELETE FROM proposals WHERE image_id = 102")
    conn.close()
    calls.clear()
    cache = compute_proposals(image_files, out, **kw)
    assert calls == [str(image_files[2][1])] and cache.keys() == [100, 101, 102, 103]
    np.testing.assert_array_equal(cache.get(102), first[102])

    calls.clear()
    compute_proposals(image_files, out, **kw)
    assert calls == []
    with pytest.raises(ValueError, match="max_proposals"):
        compute_proposals(image_files, out, **{**kw, "max_proposals": 10})


def test_compute_proposals_pool_matches_in_process(tmp_path, image_files):
    a = compute_proposals(image_files, tmp_path / "a.bin", workers=1, progress=False)
    b = compute_proposals(image_files, tmp_path / "b.bin", workers=2, progress=False)
    assert a.keys() == b.keys() == [100, 101, 102, 103]
    for i in a:
        np.testing.assert_array_equal(a.get(i), b.get(i))
    assert b.params == selective_search_params()


def test_compute_proposals_reports_unreadable_images(tmp_path, image_files):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    items = image_files[:2] + [(7, bad), (8, tmp_path / "missing.png")]
    with pytest.raises(RuntimeError, match=r"failed for 2 image\(s\).*id 7: OSError: cannot decode"):
        compute_proposals(items, tmp_path / "c.bin", workers=1, progress=False)
    assert ProposalCache(tmp_path / "c.bin").keys() == [100, 101]
    with pytest.raises(RuntimeError, match=r"none cached \(.*d\.bin not written\)"):
        compute_proposals(items[2:], tmp_path / "d.bin", workers=1, progress=False)
    assert sorted(os.listdir(tmp_path)) == sorted(["bad.png", "c.bin", *(p.name for _, p in image_files)])


def load_script():
    from detkit.cli import proposals

    return proposals


def test_precompute_script(tmp_path, image_files, capsys):
    main = load_script().main
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": i, "file_name": p.name} for i, p in image_files]}))
    out = tmp_path / "out" / "props.bin"
    base = ["--annotations", str(ann), "--image-root", str(tmp_path), "--output", str(out)]

    assert main(base + ["--max-proposals", "30", "--workers", "1", "--quiet"]) == 0
    cache = ProposalCache(out, readonly=True)
    assert cache.keys() == [100, 101, 102, 103] and cache.params["max_proposals"] == 30
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
    old = tmp_path / "old.bin"
    old.write_bytes(b"DKPROPS1" + bytes(8))
    ann.write_text(json.dumps({"images": [{"id": i, "file_name": p.name} for i, p in image_files]}))
    assert main(base[:4] + ["--output", str(old), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {old} is not a detkit proposal cache (SQLite); recompute it with `detkit proposals ...`\n"


def _full_cache(path):
    with ProposalCache(path, PARAMS, images=IMAGES) as c:
        for i, *_ in IMAGES:
            c.put(i, boxes(3, i))


def test_image_list_is_recorded_and_must_match(tmp_path):
    path = tmp_path / "p.bin"
    _full_cache(path)
    assert ProposalCache(path, readonly=True).images[3] == ("000003.jpg", 1003)
    ProposalCache(path, PARAMS, images=IMAGES).close()  # same list: fine
    changed = [r if r[0] != 4 else [4, "000004.jpg", 999] for r in IMAGES]
    with pytest.raises(ValueError, match=r"made for other images.*image id 4: cache 000004.jpg \(1004 bytes\), now "):
        ProposalCache(path, PARAMS, images=changed)


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


def test_compute_proposals_refuses_a_cache_of_other_images(tmp_path, image_files):
    out = tmp_path / "c.bin"
    compute_proposals(image_files[:2], out, workers=1, progress=False, max_proposals=20)
    with pytest.raises(ValueError, match="made for other images"):
        compute_proposals(image_files, out, workers=1, progress=False, max_proposals=20)


def test_a_cache_dropped_without_close_closes_its_connection(tmp_path):
    """A reader or writer nobody closes (a data set's cache) closes its connection when it is
    collected, without a ResourceWarning."""
    path = tmp_path / "p.bin"
    writer = ProposalCache(path, PARAMS, images=listing(1))
    writer.put(1, torch.tensor([[0.0, 0.0, 4.0, 4.0]]))
    reader = ProposalCache(path, readonly=True)
    assert reader.get(1).shape == (1, 4)
    connections = [writer._conn, reader._conn]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del writer, reader
        gc.collect()
    assert [w.message for w in caught if issubclass(w.category, ResourceWarning)] == []
    for conn in connections:
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            conn.execute("SELECT 1")
    assert ProposalCache(path, readonly=True).get(1).shape == (1, 4)


def test_benchmark_runs(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_proposal_cache", ROOT / "benchmarks/bench_proposal_cache.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = ["--num-images", "30", "--boxes", "10", "--reads", "100", "--repeats", "1", "--dir", str(tmp_path)]
    assert bench.main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["sqlite"]["reads_per_s"] > 0 and report["sqlite"]["images_written_per_s"] > 0
    assert "ratio" not in report and os.listdir(tmp_path) == []
