"""Where index versions live on disk, and the one loaded copy each process searches.

Layout under settings.INDEX_DIR:

    CURRENT                 the name of the version in use (swapped with os.replace)
    versions/<version>/     manifest.json, dense.faiss, vectors.f16.npy, chunk_ids.npy,
                            article_ids.npy, years.npy, retracted.npy, pubtypes.npz, bm25/ (one
                            document per chunk), bm25_articles/ (one per article, in id order)

A process loads a version once and keeps it. Before each search it stats CURRENT (a few
microseconds); when the pointer changed, it loads the new version and swaps it in, so web and
worker processes pick up a rebuilt index without a restart.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings

from retrieval.errors import RetrievalError

logger = logging.getLogger(__name__)

POINTER_NAME = "CURRENT"
MANIFEST_NAME = "manifest.json"
HNSW_EF_SEARCH = 128
IVF_NPROBE = 32  # lists probed at 1M vectors (nlist 4000): Recall@10 0.948 against exact
IVF_PROBED_SHARE = IVF_NPROBE / 4000  # kept as nlist grows with the collection


def ivf_nprobe(nlist: int) -> int:
    """Lists an IVF index probes per query: the share that gave 0.948 Recall@10 at 1M vectors
    (32 of 4,000), at least 32; nlist grows as 4 x sqrt(vectors), so a fixed 32 would probe
    ever less (bench/retrieval.py --synthetic 5000000 --nprobe ...). DENSE_IVF_NPROBE, when
    set, is taken instead (still at most nlist)."""
    if settings.DENSE_IVF_NPROBE:
        return min(nlist, int(settings.DENSE_IVF_NPROBE))
    return min(nlist, max(IVF_NPROBE, math.ceil(nlist * IVF_PROBED_SHARE)))


def index_root() -> Path:
    return Path(settings.INDEX_DIR)


def versions_dir() -> Path:
    return index_root() / "versions"


def pointer_path() -> Path:
    return index_root() / POINTER_NAME


def read_pointer() -> str | None:
    try:
        return pointer_path().read_text().strip() or None
    except FileNotFoundError:
        return None


def write_pointer(version: str) -> None:
    """Atomically point CURRENT at a version (readers see the old or the new, never half)."""
    root = index_root()
    temporary = root / f".{POINTER_NAME}.{os.getpid()}.tmp"
    with open(temporary, "w") as handle:
        handle.write(version + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, pointer_path())


def read_manifest(version: str) -> dict[str, Any]:
    return dict(json.loads((versions_dir() / version / MANIFEST_NAME).read_text()))


def faiss_gpu_count() -> int:
    import faiss

    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return int(get_num_gpus()) if get_num_gpus else 0


@dataclass
class LoadedIndex:
    version: str
    path: Path
    manifest: dict[str, Any]
    dense: Any  # faiss.Index
    on_gpu: bool
    chunk_ids: np.ndarray  # position -> Chunk.id (int64)
    article_ids: np.ndarray  # position -> Article.id (int64)
    years: np.ndarray  # int16, 0 = unknown
    retracted: np.ndarray  # bool
    pubtype_positions: dict[str, np.ndarray]  # lower-case type -> positions (int32)
    bm25: Any  # bm25s.BM25
    vectors: np.ndarray  # float16 copy of the embeddings, for exact rescoring
    article_bm25: Any = None  # bm25s.BM25, one row per article; None in versions before it
    article_rows: np.ndarray = field(  # row of article_bm25 -> Article.id (sorted)
        default_factory=lambda: np.zeros(0, dtype=np.int64))
    _masks: dict[tuple[Any, ...], np.ndarray | None] = field(default_factory=dict)
    _masks_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def size(self) -> int:
        return int(self.chunk_ids.shape[0])

    def allowed_mask(self, year_from: int | None, year_to: int | None,
                     publication_types: tuple[str, ...], exclude_retracted: bool
                     ) -> np.ndarray | None:
        """Boolean mask of chunk positions the filters allow; None when all are allowed."""
        key = (year_from, year_to, tuple(sorted(t.lower() for t in publication_types)),
               exclude_retracted)
        with self._masks_lock:
            if key in self._masks:
                return self._masks[key]
        mask = np.ones(self.size, dtype=bool)
        if exclude_retracted:
            mask &= ~self.retracted
        if year_from is not None:
            mask &= self.years >= year_from  # unknown years (0) are excluded by a range
        if year_to is not None:
            mask &= (self.years <= year_to) & (self.years > 0)
        if publication_types:
            by_type = np.zeros(self.size, dtype=bool)
            for name in key[2]:
                positions = self.pubtype_positions.get(name)
                if positions is not None:
                    by_type[positions] = True
            mask &= by_type
        result = None if bool(mask.all()) else mask
        with self._masks_lock:
            if len(self._masks) > 64:
                self._masks.clear()
            self._masks[key] = result
        return result


def load_version(version: str) -> LoadedIndex:
    import bm25s
    import faiss

    path = versions_dir() / version
    manifest = read_manifest(version)
    dense: Any = faiss.read_index(str(path / "dense.faiss"))
    on_gpu = False
    if manifest.get("index_type") == "gpu-flat-fp16" and faiss_gpu_count() > 0:
        options = faiss.GpuClonerOptions()
        options.useFloat16 = True
        dense = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, dense, options)
        on_gpu = True
    elif manifest.get("index_type") == "hnsw":
        dense.hnsw.efSearch = HNSW_EF_SEARCH
    elif manifest.get("index_type") == "ivf-pq":
        ivf = faiss.extract_index_ivf(dense)
        ivf.nprobe = ivf_nprobe(ivf.nlist)
    positions = np.load(path / "pubtypes.npz")
    names = manifest.get("publication_types", [])
    bm25 = bm25s.BM25.load(str(path / "bm25"), mmap=False, show_progress=False)
    article_ids = np.load(path / "article_ids.npy")
    article_bm25 = bm25s.BM25.load(str(path / "bm25_articles"), mmap=False,
                                   show_progress=False) \
        if (path / "bm25_articles").is_dir() else None
    return LoadedIndex(
        version=version, path=path, manifest=manifest, dense=dense, on_gpu=on_gpu,
        chunk_ids=np.load(path / "chunk_ids.npy"),
        article_ids=article_ids,
        years=np.load(path / "years.npy"), retracted=np.load(path / "retracted.npy"),
        pubtype_positions={name.lower(): positions[f"t{i}"] for i, name in enumerate(names)},
        bm25=bm25, article_bm25=article_bm25, article_rows=np.unique(article_ids),
        # Memory-mapped: at full-PubMed scale only the rescored rows are ever read.
        vectors=np.load(path / "vectors.f16.npy", mmap_mode="r"),
    )


_lock = threading.Lock()
_loaded: LoadedIndex | None = None
_loaded_key: tuple[Any, ...] | None = None
_failed_key: tuple[Any, ...] | None = None


def _pointer_key() -> tuple[Any, ...] | None:
    path = pointer_path()
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return (str(path), stat.st_ino, stat.st_mtime_ns, stat.st_size)


def get_index() -> LoadedIndex:
    """The loaded current version; reloads when CURRENT changed. Raises RetrievalError."""
    global _loaded, _loaded_key, _failed_key
    key = _pointer_key()
    loaded = _loaded
    if loaded is not None and key == _loaded_key:
        return loaded
    if key is None:
        raise RetrievalError(
            f"No literature index is built yet in {index_root()}; run `python manage.py "
            "ingest PATH` (for example the PubMedQA or PubMed files) to build one.")
    with _lock:
        if _loaded is not None and key == _loaded_key:
            return _loaded
        version = read_pointer()
        if _loaded is not None and version == _loaded.version and \
                _loaded.path.parent == versions_dir():
            _loaded_key = key
            return _loaded
        if key == _failed_key and _loaded is not None:
            return _loaded  # a broken version is not retried on every search
        try:
            started = time.monotonic()
            assert version is not None
            fresh = load_version(version)
        except Exception as error:
            _failed_key = key
            logger.error("cannot load index version %s from %s: %s", version, index_root(),
                         error)
            if _loaded is not None and _loaded.path.parent == versions_dir():
                return _loaded
            raise RetrievalError(
                f"The literature index {version} in {index_root()} cannot be loaded "
                f"({type(error).__name__}); rebuild it with `python manage.py build_index`."
            ) from error
        logger.info("loaded index %s (%d chunks, %s) in %.2fs", version, fresh.size,
                    fresh.manifest.get("index_type"), time.monotonic() - started)
        _loaded, _loaded_key = fresh, key
        return fresh


def reset_loaded_index() -> None:
    """Forget the loaded copy (tests; a process that switches INDEX_DIR)."""
    global _loaded, _loaded_key, _failed_key
    with _lock:
        _loaded = _loaded_key = _failed_key = None


def current_status() -> dict[str, Any]:
    """What /readyz shows; never raises."""
    status: dict[str, Any] = {"loaded": False, "version": None, "articles": 0, "chunks": 0,
                              "index_type": None, "message": ""}
    try:
        index = get_index()
    except RetrievalError as error:
        status["message"] = str(error)
        return status
    except Exception as error:  # readiness must answer, whatever went wrong
        status["message"] = f"The literature index cannot be read ({type(error).__name__}: " \
            f"{error}); rebuild it with `python manage.py build_index`."
        return status
    manifest = index.manifest
    status.update(loaded=True, version=index.version, articles=manifest.get("articles", 0),
                  chunks=manifest.get("chunks", 0), index_type=manifest.get("index_type"),
                  embedding_model=manifest.get("embedding_model"),
                  built_at=manifest.get("created_at"), on_gpu=index.on_gpu,
                  message="ready")
    return status
