"""Resumable single-file cache of per-image proposals, and the offline job that fills it.

File layout (little-endian):

    header   b"DKPROPS1" | uint32 json_len | uint32 crc32(json) | json
             json = {"params": {...}, "images": [[id, file name, bytes], ...] | null,
                     "info": {...}}; "params" and "images" must match on open
    record*  b"\\xd7PRC" | int64 image_id | int32 n | uint32 crc | float32[n, 4] boxes
             crc = crc32(image_id, n, boxes)

Records are only ever appended. On open every record is checked (magic, size, CRC).
An incomplete record at the end (an interrupted run) is cut off; a damaged record
elsewhere is dropped and the file rewritten without it. Either way a warning names
the lost image ids (with an image list: the listed ids without a sound record) and
those images count as missing, so `compute_proposals` recomputes them. A damaged entry
is never returned. If one image id is stored twice, the later record wins.

Provenance: `compute_proposals` records the images a cache is made for (id, file name,
file size in bytes) next to the selective-search params; `check_images` compares a data
set with that list (and checks that every image has proposals) before any training step.
Caches of detkit versions before this record carry no image list (`images` is None).

Shape shorthand: N proposals of one image.
"""

from __future__ import annotations

import json
import mmap
import multiprocessing
import os
import signal
import struct
import warnings
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Self

import numpy as np

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock
    fcntl = None

from detkit.proposals.selective_search import _check_args, _opencv_contrib, selective_search_bgr
from detkit.utils.io import atomic_write
from detkit.utils.optional import require, require_opencv

cv2 = require_opencv("proposal caches", ("imdecode", "IMREAD_COLOR", "setNumThreads"), "proposals")
tqdm = require("tqdm.auto", "proposals", "detkit proposals").tqdm

__all__ = [
    "SELECTIVE_SEARCH_KEYS",
    "ProposalCache",
    "cache_settings",
    "compute_proposals",
    "image_records",
    "selective_search_params",
]

# the `selective_search` keyword arguments a cache records (what reproduces its proposals)
SELECTIVE_SEARCH_KEYS = ("mode", "max_proposals", "min_size", "resize_to", "seed")

_FILE_MAGIC = b"DKPROPS1"
_FILE_HEAD = struct.Struct("<8sII")
_REC_MAGIC = b"\xd7PRC"
_REC_HEAD = struct.Struct("<4sqiI")
_ID_N = struct.Struct("<qi")
_BOX_BYTES = 16  # four float32
_MAX_BOXES = 1 << 24  # sanity bound on a record's box count


def _record_crc(image_id: int, n: int, payload) -> int:
    return zlib.crc32(payload, zlib.crc32(_ID_N.pack(image_id, n)))


def _normalize_params(params) -> dict:
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict, got {type(params).__name__}")
    try:
        return json.loads(json.dumps(params, sort_keys=True))
    except (TypeError, ValueError) as e:
        raise ValueError(f"params must be JSON-serialisable: {e}") from None


def image_records(images: Iterable[tuple[int, str | os.PathLike]]) -> list[list]:
    """`[[image_id, file name, file size in bytes or None], ...]` (sorted, one per id) of `(id, path)` pairs.

    What a cache records about the images it was made for: a regenerated data set or
    another split changes a name or a size. Costs one `stat` per file, no decoding.
    """
    out: dict[int, list] = {}
    for image_id, path in images:
        image_id = int(image_id)
        if image_id not in out:
            try:
                size = os.stat(path).st_size
            except OSError:
                size = None
            out[image_id] = [image_id, os.path.basename(os.fspath(path)), size]
    return [out[k] for k in sorted(out)]


def _normalize_images(images) -> list[list] | None:
    if images is None:
        return None
    try:
        return sorted([int(i), str(name), None if size is None else int(size)] for i, name, size in images)
    except (TypeError, ValueError):
        raise ValueError("images must be (image_id, file name, size in bytes or None) triples") from None


def _images_mismatch(have: list[list], want: list[list]) -> str:
    """One line on how two image lists differ (first differing id)."""
    have_map, want_map = {r[0]: r[1:] for r in have}, {r[0]: r[1:] for r in want}
    for image_id in sorted(set(have_map) | set(want_map)):
        a, b = have_map.get(image_id), want_map.get(image_id)
        if a != b:
            fmt = lambda r: "absent" if r is None else f"{r[0]} ({r[1]} bytes)"  # noqa: E731
            return f"first difference: image id {image_id}: cache {fmt(a)}, now {fmt(b)}"
    return "same images"


def _id_list(ids, limit: int = 20) -> str:
    ids = sorted(ids)
    return ", ".join(map(str, ids[:limit])) + (f" ... ({len(ids)} in all)" if len(ids) > limit else "")


class ProposalCache:
    """Proposal boxes (`float32[N, 4]` XYXY) keyed by integer image id, in one file.

    Args:
        path: cache file; created (with `params` in its header) if missing or empty.
        params: the settings that produced the boxes. Opening an existing file with
            different params raises ValueError naming the differences; None accepts
            whatever the file holds (for readers), but is needed to create a file.
        images: the images the boxes are for, as `image_records` makes them. A new file
            records them; an existing file must record the same list (ValueError naming
            the first difference otherwise; an old file without a list is refused too).
            None accepts the file's list (for readers).
        readonly: never modify the file (damaged records are skipped, not repaired);
            for readers while another process writes. A writable cache holds an
            exclusive lock on the file (POSIX) from opening to `close()`.
        verify: check every record's CRC on open (reads the whole file once). Without
            it only the record layout is checked; `get` checks the CRC either way.
        fsync_every: `put` flushes every record and fsyncs every this many.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        params: dict | None = None,
        *,
        images=None,
        readonly: bool = False,
        verify: bool = True,
        fsync_every: int = 64,
    ):
        self.path = Path(path)
        self.readonly = readonly
        self.fsync_every = max(1, int(fsync_every))
        self._index: dict[int, tuple[int, int]] = {}  # id -> (payload offset, n)
        self._writer = None
        self._reader = None
        self._reader_pid = None
        self._unsynced = 0
        wanted = None if params is None else _normalize_params(params)
        wanted_images = _normalize_images(images)
        self.images: dict[int, tuple[str, int | None]] | None = None

        if readonly and not self.path.is_file():
            raise FileNotFoundError(f"proposal cache not found: {self.path}")
        if wanted is None and not self.path.is_file():
            raise ValueError(f"params are required to create the proposal cache {self.path}")
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write_handle()  # creates the file and takes the lock
        try:
            if self.path.stat().st_size == 0:
                if wanted is None:
                    raise ValueError(f"params are required to create the proposal cache {self.path}")
                if readonly:
                    raise ValueError(f"proposal cache {self.path} is empty")
                self._create(wanted, wanted_images)
                return
            self.params, recorded, self._data_start = self._read_header()
            self.images = None if recorded is None else {r[0]: (r[1], r[2]) for r in recorded}
            if wanted is not None and wanted != self.params:
                raise ValueError(
                    f"proposal cache {self.path} was made with other parameters: "
                    f"{_describe_mismatch(self.params, wanted)}. Use another output file "
                    "or delete this one."
                )
            if wanted_images is not None and recorded is None:
                raise ValueError(
                    f"proposal cache {self.path} records no image list (made by an older detkit), so it "
                    "cannot be checked against these images; delete it (or use another output file) to rebuild it"
                )
            if wanted_images is not None and wanted_images != recorded:
                raise ValueError(
                    f"proposal cache {self.path} was made for other images (another split, or the data "
                    f"changed): {len(recorded)} images recorded, {len(wanted_images)} given; "
                    f"{_images_mismatch(recorded, wanted_images)}. Use another output file or delete this one."
                )
            self._scan(verify)
        except BaseException:
            self.close()
            raise

    # -- file level ---------------------------------------------------------------------

    def _create(self, params: dict, images: list[list] | None) -> None:
        from detkit import __version__

        self.params = params
        self.images = None if images is None else {r[0]: (r[1], r[2]) for r in images}
        info = {"detkit": __version__, "opencv": cv2.__version__}
        body = json.dumps({"params": params, "images": images, "info": info}, sort_keys=True).encode()
        f = self._write_handle()
        f.write(_FILE_HEAD.pack(_FILE_MAGIC, len(body), zlib.crc32(body)) + body)
        self.sync()
        self._data_start = _FILE_HEAD.size + len(body)

    def _read_header(self) -> tuple[dict, list[list] | None, int]:
        return _read_header(self.path)

    def _parse(self, buf, pos: int, size: int, verify: bool):
        """(image_id, n, end) of a sound record at `pos`, else (image_id or None, None, None)."""
        if pos + _REC_HEAD.size > size:
            return None, None, None
        magic, image_id, n, crc = _REC_HEAD.unpack_from(buf, pos)
        if magic != _REC_MAGIC or not 0 <= n <= _MAX_BOXES:
            return None, None, None
        start = pos + _REC_HEAD.size
        end = start + n * _BOX_BYTES
        if end > size:
            return image_id, None, None
        if verify and _record_crc(image_id, n, memoryview(buf)[start:end]) != crc:
            return image_id, None, None
        return image_id, n, end

    def _scan(self, verify: bool) -> None:
        size = self.path.stat().st_size
        spans: list[tuple[int, int, int, int]] = []  # (start, end, id, n) of sound records
        damaged: list[tuple[int, int, int | None]] = []  # (start, end, id if readable)
        if size > self._data_start:
            with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                pos = self._data_start
                while pos < size:
                    image_id, n, end = self._parse(mm, pos, size, verify)
                    if n is not None:
                        spans.append((pos, end, image_id, n))
                        pos = end
                        continue
                    # resynchronise on the next sound record, if any
                    nxt = mm.find(_REC_MAGIC, pos + 1)
                    while nxt != -1 and self._parse(mm, nxt, size, verify)[1] is None:
                        nxt = mm.find(_REC_MAGIC, nxt + 1)
                    end = size if nxt == -1 else nxt
                    damaged.append((pos, end, image_id))
                    pos = end

        for start, _, image_id, n in spans:
            self._index[image_id] = (start + _REC_HEAD.size, n)
        if not damaged:
            return

        if self.images is not None:  # exact: listed ids without a sound record (a bad id field never shows)
            ids = [i for i in self.images if i not in self._index]
        else:  # old file: the ids readable in the damaged records
            ids = [d[2] for d in damaged if d[2] is not None]
            ids = [i for i in ids if i not in self._index]  # ids stored again later are safe
        tail_only = len(damaged) == 1 and damaged[0][1] == size
        what = "an incomplete record at the end" if tail_only else f"{len(damaged)} damaged region(s)"
        action = "ignored (read-only)" if self.readonly else "removed"
        shown = _id_list(ids)
        warnings.warn(
            f"proposal cache {self.path}: {what} {action}"
            + (f"; image ids to recompute: {shown}" if ids else "")
            + " (an interrupted run or a corrupt file)",
            RuntimeWarning,
            stacklevel=3,
        )
        if self.readonly:
            return
        if tail_only:
            self._writer.truncate(damaged[0][0])
            self.sync()
        else:
            self._rewrite(spans)

    def _rewrite(self, spans) -> None:
        """Rewrite the file keeping only the sound records (atomic replace)."""
        index = {}

        def copy_sound_records(dst) -> None:
            with open(self.path, "rb") as src:
                dst.write(src.read(self._data_start))
                for start, end, image_id, n in spans:
                    src.seek(start)
                    index[image_id] = (dst.tell() + _REC_HEAD.size, n)
                    dst.write(src.read(end - start))

        atomic_write(self.path, copy_sound_records)
        self._index = index
        self.close()  # the lock was on the replaced file: lock the new one
        self._write_handle()

    def check_images(self, images: Iterable[tuple[int, str | os.PathLike]], *, hint: str = "") -> None:
        """Refuse, with a one-line ValueError, to serve a data set's `(image_id, path)` images when
        the cache was made for other images (names or byte sizes differ, ids unknown) or lacks
        proposals for some of them (all missing ids are named). A cache without an image list
        (an older detkit) gets the coverage check and a warning. `hint` ends the messages.
        """
        wanted = image_records(images)
        if self.images is not None:
            foreign = [r for r in wanted if self.images.get(r[0]) != (r[1], r[2])]
            if foreign:
                recorded = [[i, *v] for i, v in self.images.items() if i in {r[0] for r in foreign}]
                raise ValueError(
                    f"proposal cache {self.path} was made for other images (another split, or the data changed): "
                    f"{len(foreign)} of {len(wanted)} images differ; {_images_mismatch(recorded, foreign)}{hint}"
                )
        else:
            warnings.warn(
                f"proposal cache {self.path} records no image list (made by an older detkit): it cannot be "
                f"checked against the data set's images; rebuild it to get that check{hint}",
                RuntimeWarning,
                stacklevel=2,
            )
        missing = [r[0] for r in wanted if r[0] not in self._index]
        if missing:
            raise ValueError(
                f"proposal cache {self.path} has no proposals for {len(missing)} of {len(wanted)} images "
                f"(image ids {_id_list(missing)}){hint}"
            )

    # -- mapping API --------------------------------------------------------------------

    def __contains__(self, image_id) -> bool:
        return int(image_id) in self._index

    def __len__(self) -> int:
        return len(self._index)

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._index))

    def keys(self) -> list[int]:
        """Cached image ids, in file order."""
        return list(self._index)

    def get(self, image_id) -> np.ndarray:
        """Boxes of one image as `float32[N, 4]`; KeyError if the id is not cached."""
        image_id = int(image_id)
        try:
            offset, n = self._index[image_id]
        except KeyError:
            raise KeyError(f"image id {image_id} is not in proposal cache {self.path}") from None
        f = self._read_handle()
        f.seek(offset - _REC_HEAD.size)
        raw = f.read(_REC_HEAD.size + n * _BOX_BYTES)
        if len(raw) == _REC_HEAD.size + n * _BOX_BYTES:
            magic, rid, rn, crc = _REC_HEAD.unpack_from(raw)
            payload = memoryview(raw)[_REC_HEAD.size :]
            if magic == _REC_MAGIC and (rid, rn) == (image_id, n) and _record_crc(rid, rn, payload) == crc:
                return np.frombuffer(payload, dtype="<f4").astype(np.float32).reshape(n, 4)
        raise ValueError(
            f"proposal cache {self.path}: the record of image id {image_id} is damaged; "
            "reopen the cache to drop it and recompute the image"
        )

    __getitem__ = get

    def put(self, image_id, boxes) -> None:
        """Append the boxes (`[N, 4]` XYXY) of one image; a later put of an id wins."""
        if self.readonly:
            raise PermissionError(f"proposal cache {self.path} is open read-only")
        if isinstance(image_id, bool) or not isinstance(image_id, (int, np.integer)):
            raise TypeError(f"image_id must be an int, got {type(image_id).__name__}")
        image_id = int(image_id)
        if not -(1 << 63) <= image_id < (1 << 63):
            raise ValueError(f"image_id {image_id} does not fit in int64")
        if hasattr(boxes, "detach"):  # torch tensor, without importing torch
            boxes = boxes.detach().cpu().numpy()
        boxes = np.asarray(boxes, dtype="<f4")
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes of image id {image_id} must have shape (N, 4), got {boxes.shape}")
        if not np.isfinite(boxes).all():
            raise ValueError(f"boxes of image id {image_id} contain non-finite values")
        payload = np.ascontiguousarray(boxes).tobytes()
        n = boxes.shape[0]
        f = self._write_handle()
        start = f.seek(0, os.SEEK_END)
        f.write(_REC_HEAD.pack(_REC_MAGIC, image_id, n, _record_crc(image_id, n, payload)) + payload)
        f.flush()
        self._index[image_id] = (start + _REC_HEAD.size, n)
        self._unsynced += 1
        if self._unsynced >= self.fsync_every:
            self.sync()

    def sync(self) -> None:
        """Flush and fsync pending writes."""
        if self._writer is not None:
            self._writer.flush()
            os.fsync(self._writer.fileno())
        self._unsynced = 0

    def close(self) -> None:
        """Sync and release file handles; the cache stays usable (handles reopen lazily)."""
        self.sync()
        for attr in ("_writer", "_reader"):
            f = getattr(self, attr)
            if f is not None:
                f.close()
                setattr(self, attr, None)

    def __del__(self) -> None:
        # dropped without close() (a data set's reader, say): close the handles, no ResourceWarning
        for attr in ("_writer", "_reader"):
            f = self.__dict__.get(attr)
            if f is not None:
                f.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ProposalCache({str(self.path)!r}, {len(self)} images, params={self.params})"

    def _write_handle(self):
        if self._writer is None:
            # append mode: every write lands at the end; also creates a missing file
            f = open(self.path, "a+b")  # noqa: SIM115 (long-lived, closed by close())
            if fcntl is not None:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    f.close()
                    raise RuntimeError(
                        f"proposal cache {self.path} is open for writing elsewhere (another "
                        "process or ProposalCache object); close that, or open this one "
                        "with readonly=True"
                    ) from None
            self._writer = f
        return self._writer

    def _read_handle(self):
        # one handle per process: DataLoader workers fork with this object
        if self._reader is None or self._reader_pid != os.getpid():
            self._reader = open(self.path, "rb")  # noqa: SIM115 (long-lived, closed by close())
            self._reader_pid = os.getpid()
        return self._reader


def _read_header(path: Path) -> tuple[dict, list[list] | None, int]:
    """(params, image list or None, offset of the first record) of a cache file's header."""
    with open(path, "rb") as f:
        head = f.read(_FILE_HEAD.size)
        if len(head) < _FILE_HEAD.size or head[:8] != _FILE_MAGIC:
            raise ValueError(f"{path} is not a detkit proposal cache")
        _, length, crc = _FILE_HEAD.unpack(head)
        body = f.read(length)
    try:
        if len(body) != length or zlib.crc32(body) != crc:
            raise ValueError
        header = json.loads(body)
        params = header["params"]
        images = _normalize_images(header.get("images"))
        if not isinstance(params, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"the header of proposal cache {path} is damaged; delete the file to start over") from None
    return params, images, _FILE_HEAD.size + length


def cache_settings(path: str | os.PathLike, max_proposals: int | None = None) -> dict:
    """`selective_search` keyword arguments (mode, max_proposals, min_size, resize_to, seed) that made a cache.

    Reads the header only. `max_proposals` caps the cache's own (what `WithProposals` serves):
    the settings that reproduce a model's training proposals on new images (`detkit predict`).
    """
    params = _read_header(Path(path))[0]
    if params.get("method", "selective_search") != "selective_search":
        raise ValueError(f"proposal cache {os.fspath(path)} holds {params['method']!r} proposals, not selective search")
    defaults = selective_search_params()
    settings = {k: params.get(k, defaults[k]) for k in SELECTIVE_SEARCH_KEYS}
    cap = settings["max_proposals"]
    if max_proposals is not None and (cap is None or max_proposals < cap):
        settings["max_proposals"] = int(max_proposals)
    return settings


def _describe_mismatch(have: dict, want: dict) -> str:
    parts = []
    for key in sorted(set(have) | set(want)):
        if have.get(key, "<missing>") != want.get(key, "<missing>"):
            parts.append(f"{key!r}: file has {have.get(key, '<missing>')!r}, requested {want.get(key, '<missing>')!r}")
    return "; ".join(parts)


# -- offline computation ----------------------------------------------------------------


def selective_search_params(
    mode: str = "fast",
    max_proposals: int | None = 2000,
    min_size: float | None = None,
    resize_to: int | None = None,
    seed: int | None = 0,
) -> dict:
    """The params dict `compute_proposals` stores in (and checks against) a cache file."""
    _check_args(mode, max_proposals, min_size, resize_to)
    return {
        "method": "selective_search",
        "mode": mode,
        "max_proposals": max_proposals,
        "min_size": min_size,
        "resize_to": resize_to,
        "seed": seed,
    }


def _proposals_for_file(path, **ss_kwargs) -> np.ndarray:
    data = np.fromfile(path, dtype=np.uint8)  # (unlike cv2.imread) any path, clear errors
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise OSError(f"cannot decode image {path}")
    return selective_search_bgr(image, **ss_kwargs)


_WORKER_KWARGS: dict = {}


def _init_worker(ss_kwargs: dict) -> None:
    # Ctrl-C reaches the whole process group: the main process stops the pool, workers
    # stay quiet instead of printing a traceback each
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)  # one process per core; OpenCV's own threads would oversubscribe
    _WORKER_KWARGS.clear()
    _WORKER_KWARGS.update(ss_kwargs)


def _task(item, ss_kwargs=None):
    image_id, path = item
    try:
        return image_id, _proposals_for_file(path, **(ss_kwargs or _WORKER_KWARGS)), None
    except Exception as e:  # noqa: BLE001 - reported by the main process, which goes on
        return image_id, None, f"{type(e).__name__}: {e}"


def _start_method() -> str:
    # not fork: a forked child inherits OpenCV's (and torch's) thread pools in a broken state
    methods = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in methods else "spawn"


def compute_proposals(
    dataset_images: Iterable[tuple[int, str | os.PathLike]],
    cache_path: str | os.PathLike,
    *,
    mode: str = "fast",
    max_proposals: int | None = 2000,
    workers: int | None = None,
    resize_to: int | None = None,
    min_size: float | None = None,
    seed: int | None = 0,
    progress: bool = True,
) -> ProposalCache:
    """Selective-search every image into a :class:`ProposalCache`, resuming a partial run.

    Ids already in the cache are skipped. The rest run in a pool of `workers` processes
    (`imap_unordered`, one image per task, OpenCV single-threaded in each); only this
    process writes the file, one record per finished image, so an interrupted run loses
    at most the images in flight. Images that fail (unreadable files) do not stop the
    run: a RuntimeError names them at the end, the others are cached (a new file in which
    no image succeeded is removed). An OpenCV without selective search fails before any file
    is written.

    Args:
        dataset_images: `(image_id, image_path)` pairs.
        cache_path: cache file, created if missing; its params and image list (ids, file
            names, byte sizes: see `image_records`) must match these.
        workers: processes (default `os.cpu_count()`); 1 runs in this process.
        mode, max_proposals, resize_to, min_size, seed: see `selective_search`.
        progress: show a tqdm bar.

    Returns:
        The cache (file handles closed; they reopen on use).
    """
    params = selective_search_params(mode, max_proposals, min_size, resize_to, seed)
    _opencv_contrib()  # a non-contrib or broken OpenCV fails here, once, before any file is written
    ss_kwargs = {k: params[k] for k in ("mode", "max_proposals", "min_size", "resize_to", "seed")}
    dataset_images = [(int(i), os.fspath(p)) for i, p in dataset_images]
    created = not os.path.exists(cache_path)
    cache = ProposalCache(cache_path, params, images=image_records(dataset_images))

    todo, seen = [], set()
    for image_id, path in dataset_images:
        if image_id not in seen:
            seen.add(image_id)
            if image_id not in cache:
                todo.append((image_id, path))
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    workers = max(1, min(workers, len(todo)))

    failures, finished = [], False
    bar = tqdm(
        total=len(todo),
        desc="selective search",
        unit="img",
        disable=not progress or not todo,
        dynamic_ncols=True,
    )
    if len(seen) > len(todo):
        bar.set_postfix(cached=len(seen) - len(todo))
    try:
        if workers == 1:
            results = (_task(item, ss_kwargs) for item in todo)
            pool = None
        else:
            ctx = multiprocessing.get_context(_start_method())
            pool = ctx.Pool(workers, initializer=_init_worker, initargs=(ss_kwargs,))
            results = pool.imap_unordered(_task, todo, chunksize=1)
        try:
            for image_id, boxes, error in results:
                if error is None:
                    cache.put(image_id, boxes)
                else:
                    failures.append((image_id, error))
                bar.update(1)
            finished = True
        finally:
            if pool is not None:
                if finished:
                    pool.close()
                else:
                    pool.terminate()
                pool.join()
    finally:
        bar.close()
        cache.close()

    if failures:
        shown = "; ".join(f"id {i}: {e}" for i, e in failures[:5])
        done = len(todo) - len(failures)
        if done:
            kept = f"the other {done} are cached in {cache.path}"
        elif created and len(cache) == 0:  # nothing worth resuming: no empty file left behind
            cache.path.unlink()
            kept = f"none cached ({cache.path} not written)"
        else:
            kept = f"no other image cached in {cache.path}"
        more = " ..." if len(failures) > 5 else ""
        raise RuntimeError(f"selective search failed for {len(failures)} image(s), {kept}: {shown}{more}")
    return cache
