"""Resumable single-file cache of per-image proposals (SQLite), and the offline job that fills it.

A cache is one SQLite database (Python's `sqlite3`, WAL journal):

    settings   (key TEXT PRIMARY KEY, value TEXT)   "params": JSON of the settings that made the
                                                    boxes (checked on open); "info": versions
    images     (image_id INTEGER PRIMARY KEY, file_name TEXT, size INTEGER)   the images it is for
    proposals  (image_id INTEGER PRIMARY KEY, boxes BLOB)   float32[N, 4] XYXY, little-endian

`PRAGMA application_id` marks the file as a detkit proposal cache and `user_version` numbers
its layout. Every `put` is one transaction: a run killed at any point (kill -9 included)
leaves whole records only, and `compute_proposals` resumes with the images that have none.
Readers open the file read-only and see every image committed so far, also while a writer
adds more; each process opens its own connection on first use (DataLoader workers).

Provenance: the image list holds (id, file name, file size in bytes) of the images a cache
is made for, next to the selective-search params; `check_images` compares a data set with
that list (and checks that every image has proposals) before any training step.

Shape shorthand: N proposals of one image.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Self

import numpy as np

from detkit.proposals.selective_search import _check_args, _opencv_contrib, selective_search_bgr
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

_SQLITE_MAGIC = b"SQLite format 3\x00"
_APPLICATION_ID = 0x444B5052  # b"DKPR"
_LAYOUT_VERSION = 1
_TABLES = {"settings", "images", "proposals"}
_BOX_BYTES = 16  # four float32
_BUSY_TIMEOUT_S = 60.0  # a writer waits this long for another writer's transaction
_MMAP_BYTES = 1 << 30  # readers map up to this much of the file instead of copying pages
_SELECT_BOXES = "SELECT boxes FROM proposals WHERE image_id = ?"

# connections opened before a fork: the child must neither use nor close them (SQLite's rule),
# so they are kept here, untouched, for the life of the child
_INHERITED: list[sqlite3.Connection] = []


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


def _describe_mismatch(have: dict, want: dict) -> str:
    parts = []
    for key in sorted(set(have) | set(want)):
        if have.get(key, "<missing>") != want.get(key, "<missing>"):
            parts.append(f"{key!r}: file has {have.get(key, '<missing>')!r}, requested {want.get(key, '<missing>')!r}")
    return "; ".join(parts)


def _not_a_cache(path: Path) -> ValueError:
    return ValueError(f"{path} is not a detkit proposal cache (SQLite); recompute it with `detkit proposals ...`")


def _check_file_type(path: Path) -> None:
    """Refuse a non-empty file that is not an SQLite database (e.g. a cache of detkit's old binary format)."""
    with open(path, "rb") as f:
        head = f.read(len(_SQLITE_MAGIC))
    if head and head != _SQLITE_MAGIC:
        raise _not_a_cache(path)


class ProposalCache:
    """Proposal boxes (`float32[N, 4]` XYXY) keyed by integer image id, in one SQLite file.

    Args:
        path: cache file; created (with `params` and `images`) if missing or empty.
        params: the settings that produced the boxes. Opening an existing file with
            different params raises ValueError naming the differences; None accepts
            whatever the file holds (for readers), but is needed to create a file.
        images: the images the boxes are for, as `image_records` makes them. A new file
            records them (they are needed to create one); an existing file must record the
            same list (ValueError naming the first difference otherwise). None accepts the
            file's list (for readers).
        readonly: open the file read-only (SQLite's `mode=ro`); for readers, also while
            another process writes. Writers may be several: each `put` is its own transaction.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        params: dict | None = None,
        *,
        images=None,
        readonly: bool = False,
    ):
        self.path = Path(path)
        self.readonly = readonly
        self._conn: sqlite3.Connection | None = None
        self._conn_pid: int | None = None
        self._images: dict[int, tuple[str, int | None]] | None = None
        wanted = None if params is None else _normalize_params(params)
        wanted_images = _normalize_images(images)

        if self.path.is_file():
            _check_file_type(self.path)
        elif readonly:
            raise FileNotFoundError(f"proposal cache not found: {self.path}")
        else:
            self._check_creatable(wanted, wanted_images)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            stored = self._read_params()
            if not readonly:  # once the file is known to be a cache or empty: it is a setting of the file
                self._query("PRAGMA journal_mode = WAL")  # readers go on reading while a writer writes
            if stored is None:
                if readonly:
                    raise ValueError(f"proposal cache {self.path} is empty")
                stored = self._create(wanted, wanted_images)
            self.params = stored
            if wanted is not None and wanted != self.params:
                raise ValueError(
                    f"proposal cache {self.path} was made with other parameters: "
                    f"{_describe_mismatch(self.params, wanted)}. Use another output file "
                    "or delete this one."
                )
            if wanted_images is not None:
                recorded = [[i, *v] for i, v in sorted(self.images.items())]
                if wanted_images != recorded:
                    raise ValueError(
                        f"proposal cache {self.path} was made for other images (another split, or the data "
                        f"changed): {len(recorded)} images recorded, {len(wanted_images)} given; "
                        f"{_images_mismatch(recorded, wanted_images)}. Use another output file or delete this one."
                    )
        except BaseException:
            self.close()
            raise

    # -- file level ---------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection:
        if self.readonly:
            conn = sqlite3.connect(f"{self.path.absolute().as_uri()}?mode=ro", uri=True, timeout=_BUSY_TIMEOUT_S)
            conn.execute(f"PRAGMA mmap_size = {_MMAP_BYTES}")
            return conn
        # autocommit: a single statement is one transaction; several are wrapped by hand
        conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        conn.execute("PRAGMA synchronous = NORMAL")  # in WAL mode: a killed process loses nothing committed
        return conn

    def _connection(self) -> sqlite3.Connection:
        """This process's connection, opened on first use (a DataLoader worker opens its own)."""
        pid = os.getpid()
        if self._conn is not None and self._conn_pid != pid:
            _INHERITED.append(self._conn)
            self._conn = None
        if self._conn is None:
            self._conn = self._open()
            self._conn_pid = pid
        return self._conn

    def _query(self, sql: str, args=()) -> list[tuple]:
        try:
            return self._connection().execute(sql, args).fetchall()
        except sqlite3.DatabaseError as e:
            if type(e) is not sqlite3.DatabaseError:  # locked, read-only, ...: not the file's fault
                raise
            raise ValueError(
                f"proposal cache {self.path} is damaged ({e}); delete it and recompute it with `detkit proposals ...`"
            ) from None

    def _read_params(self) -> dict | None:
        """The file's params; None for an empty database (a new file)."""
        tables = {row[0] for row in self._query("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            return None
        if tables != _TABLES or self._query("PRAGMA application_id")[0][0] != _APPLICATION_ID:
            raise _not_a_cache(self.path)
        version = self._query("PRAGMA user_version")[0][0]
        if version != _LAYOUT_VERSION:
            raise ValueError(
                f"proposal cache {self.path} has layout version {version}, this detkit reads {_LAYOUT_VERSION}; "
                "recompute it with `detkit proposals ...`"
            )
        rows = self._query("SELECT value FROM settings WHERE key = 'params'")
        if not rows:
            raise _not_a_cache(self.path)
        return json.loads(rows[0][0])

    def _check_creatable(self, params: dict | None, images: list[list] | None) -> None:
        if params is None:
            raise ValueError(f"params are required to create the proposal cache {self.path}")
        if images is None:
            raise ValueError(
                f"images are required to create the proposal cache {self.path} (its image list, see `image_records`)"
            )

    def _create(self, params: dict | None, images: list[list] | None) -> dict:
        """Write the tables, the params and the image list in one transaction; the params now stored."""
        from detkit import __version__

        self._check_creatable(params, images)
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")  # one writer creates; another one waits, then finds the tables
        try:
            if not conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                conn.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {_LAYOUT_VERSION}")
                conn.execute("CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                conn.execute(
                    "CREATE TABLE images (image_id INTEGER PRIMARY KEY, file_name TEXT NOT NULL, size INTEGER)"
                )
                conn.execute("CREATE TABLE proposals (image_id INTEGER PRIMARY KEY, boxes BLOB NOT NULL)")
                info = {"detkit": __version__, "opencv": cv2.__version__, "sqlite": sqlite3.sqlite_version}
                conn.executemany(
                    "INSERT INTO settings VALUES (?, ?)",
                    [("params", json.dumps(params, sort_keys=True)), ("info", json.dumps(info, sort_keys=True))],
                )
                conn.executemany("INSERT INTO images VALUES (?, ?, ?)", images)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return self._read_params()

    @property
    def images(self) -> dict[int, tuple[str, int | None]]:
        """`{image_id: (file name, size in bytes or None)}` of the images the cache is for (read once)."""
        if self._images is None:
            rows = self._query("SELECT image_id, file_name, size FROM images")
            self._images = {i: (name, size) for i, name, size in rows}
        return self._images

    def check_images(self, images: Iterable[tuple[int, str | os.PathLike]], *, hint: str = "") -> None:
        """Refuse, with a one-line ValueError, to serve a data set's `(image_id, path)` images when
        the cache was made for other images (names or byte sizes differ, ids unknown) or lacks
        proposals for some of them (all missing ids are named). `hint` ends the messages.
        """
        wanted = image_records(images)
        foreign = [r for r in wanted if self.images.get(r[0]) != (r[1], r[2])]
        if foreign:
            recorded = [[i, *v] for i, v in self.images.items() if i in {r[0] for r in foreign}]
            raise ValueError(
                f"proposal cache {self.path} was made for other images (another split, or the data changed): "
                f"{len(foreign)} of {len(wanted)} images differ; {_images_mismatch(recorded, foreign)}{hint}"
            )
        cached = set(self.keys())
        missing = [r[0] for r in wanted if r[0] not in cached]
        if missing:
            raise ValueError(
                f"proposal cache {self.path} has no proposals for {len(missing)} of {len(wanted)} images "
                f"(image ids {_id_list(missing)}){hint}"
            )

    # -- mapping API --------------------------------------------------------------------

    def __contains__(self, image_id) -> bool:
        return bool(self._query("SELECT 1 FROM proposals WHERE image_id = ?", (int(image_id),)))

    def __len__(self) -> int:
        return self._query("SELECT count(*) FROM proposals")[0][0]

    def __iter__(self) -> Iterator[int]:
        return iter(self.keys())

    def keys(self) -> list[int]:
        """Image ids with proposals, ascending."""
        return [row[0] for row in self._query("SELECT image_id FROM proposals ORDER BY image_id")]

    def get(self, image_id) -> np.ndarray:
        """Boxes of one image as `float32[N, 4]`; KeyError if the id is not cached."""
        image_id = int(image_id)
        rows = self._query(_SELECT_BOXES, (image_id,))
        if not rows:
            raise KeyError(f"image id {image_id} is not in proposal cache {self.path}")
        blob = rows[0][0]
        if not isinstance(blob, bytes) or len(blob) % _BOX_BYTES:
            raise ValueError(
                f"proposal cache {self.path}: the boxes of image id {image_id} are not float32[N, 4]; "
                "recompute it with `detkit proposals ...`"
            )
        return np.frombuffer(blob, dtype="<f4").reshape(-1, 4).astype(np.float32)

    __getitem__ = get

    def put(self, image_id, boxes) -> None:
        """Store the boxes (`[N, 4]` XYXY) of one listed image in one transaction; a later put of an id wins."""
        if self.readonly:
            raise PermissionError(f"proposal cache {self.path} is open read-only")
        if isinstance(image_id, bool) or not isinstance(image_id, (int, np.integer)):
            raise TypeError(f"image_id must be an int, got {type(image_id).__name__}")
        image_id = int(image_id)
        if not -(1 << 63) <= image_id < (1 << 63):
            raise ValueError(f"image_id {image_id} does not fit in int64")
        if image_id not in self.images:
            raise ValueError(f"image id {image_id} is not in the image list of proposal cache {self.path}")
        if hasattr(boxes, "detach"):  # torch tensor, without importing torch
            boxes = boxes.detach().cpu().numpy()
        boxes = np.asarray(boxes, dtype="<f4")
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes of image id {image_id} must have shape (N, 4), got {boxes.shape}")
        if not np.isfinite(boxes).all():
            raise ValueError(f"boxes of image id {image_id} contain non-finite values")
        self._query("INSERT OR REPLACE INTO proposals VALUES (?, ?)", (image_id, np.ascontiguousarray(boxes).tobytes()))

    def close(self) -> None:
        """Close this process's connection; the cache stays usable (it reopens on use)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            if self._conn_pid == os.getpid():
                conn.close()
            else:
                _INHERITED.append(conn)

    def __del__(self) -> None:
        # dropped without close() (a data set's reader, say): close the connection, no ResourceWarning
        if self.__dict__.get("_conn") is not None:
            self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ProposalCache({str(self.path)!r}, {len(self)} images, params={self.params})"


def cache_settings(path: str | os.PathLike, max_proposals: int | None = None) -> dict:
    """`selective_search` keyword arguments (mode, max_proposals, min_size, resize_to, seed) that made a cache.

    Reads the settings only. `max_proposals` caps the cache's own (what `WithProposals` serves):
    the settings that reproduce a model's training proposals on new images (`detkit predict`).
    """
    with ProposalCache(path, readonly=True) as cache:
        params = cache.params
    if params.get("method", "selective_search") != "selective_search":
        raise ValueError(f"proposal cache {os.fspath(path)} holds {params['method']!r} proposals, not selective search")
    defaults = selective_search_params()
    settings = {k: params.get(k, defaults[k]) for k in SELECTIVE_SEARCH_KEYS}
    cap = settings["max_proposals"]
    if max_proposals is not None and (cap is None or max_proposals < cap):
        settings["max_proposals"] = int(max_proposals)
    return settings


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
    process writes the file, one transaction per finished image, so an interrupted run
    (kill -9 included) loses at most the images in flight. Images that fail (unreadable
    files) do not stop the run: a RuntimeError names them at the end, the others are cached
    (a new file in which no image succeeded is removed). An OpenCV without selective search
    fails before any file is written.

    Args:
        dataset_images: `(image_id, image_path)` pairs.
        cache_path: cache file, created if missing; its params and image list (ids, file
            names, byte sizes: see `image_records`) must match these.
        workers: processes (default `os.cpu_count()`); 1 runs in this process.
        mode, max_proposals, resize_to, min_size, seed: see `selective_search`.
        progress: show a tqdm bar.

    Returns:
        The cache (its connection closed; it reopens on use).
    """
    params = selective_search_params(mode, max_proposals, min_size, resize_to, seed)
    _opencv_contrib()  # a non-contrib or broken OpenCV fails here, once, before any file is written
    ss_kwargs = {k: params[k] for k in ("mode", "max_proposals", "min_size", "resize_to", "seed")}
    dataset_images = [(int(i), os.fspath(p)) for i, p in dataset_images]
    created = not os.path.exists(cache_path)
    cache = ProposalCache(cache_path, params, images=image_records(dataset_images))

    todo, seen, cached = [], set(), set(cache.keys())
    for image_id, path in dataset_images:
        if image_id not in seen:
            seen.add(image_id)
            if image_id not in cached:
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
            for suffix in ("", "-wal", "-shm"):
                Path(f"{cache.path}{suffix}").unlink(missing_ok=True)
            kept = f"none cached ({cache.path} not written)"
        else:
            kept = f"no other image cached in {cache.path}"
        more = " ..." if len(failures) > 5 else ""
        raise RuntimeError(f"selective search failed for {len(failures)} image(s), {kept}: {shown}{more}")
    return cache
