"""The synthetic document corpus and the indexes the services search, built deterministically at import.

A few thousand documents, each with a title, keywords and a body drawn from the fixed vocabulary (topic
words mixed with Zipf-distributed common words), under a fixed seed: every process builds the same corpus,
so results are reproducible across services, versions and machines. Building takes a fraction of a second;
per-request work is a few numpy operations over precomputed arrays.

Owns: the corpus (`CORPUS`), BM25 indexes (title+keywords for `keyword`, body for `text-search`), the
hashed bag-of-words embedding (`embed`, used by `ml-infer`) and the document embedding matrix (`ml-search`).
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from searchstack.vocabulary import VOCABULARY_SIZE, WORD_INDEX, WORDS, ZIPF_WEIGHTS, tokenize

CORPUS_SEED = 7
N_DOCS = 3000
N_TOPICS = 40
WORDS_PER_TOPIC = 50
TOPIC_SHARE = 0.5  # share of a document's words drawn from its topic rather than from the whole vocabulary
EMBEDDING_DIM = 256
MODEL_NAME = f"hashed-bow-{EMBEDDING_DIM}"

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Field:
    """One text field of all documents, flattened: token t is word `word[t]` of document `doc[t]`."""

    doc: IntArray
    word: IntArray


@dataclass(frozen=True)
class Corpus:
    doc_ids: tuple[str, ...]
    title: Field
    keywords: Field
    body: Field

    @property
    def size(self) -> int:
        return len(self.doc_ids)


def _sample_field(
    rng: np.random.Generator, topics: IntArray, topic_words: IntArray, lo: int, hi: int
) -> Field:
    lengths = rng.integers(lo, hi + 1, size=len(topics))
    doc = np.repeat(np.arange(len(topics)), lengths)
    zipf = np.asarray(ZIPF_WEIGHTS) / sum(ZIPF_WEIGHTS)
    common = rng.choice(VOCABULARY_SIZE, size=len(doc), p=zipf)
    topical = topic_words[topics[doc], rng.integers(0, WORDS_PER_TOPIC, size=len(doc))]
    word = np.where(rng.random(len(doc)) < TOPIC_SHARE, topical, common)
    return Field(doc=doc.astype(np.int64), word=word.astype(np.int64))


def build_corpus(seed: int = CORPUS_SEED, n_docs: int = N_DOCS) -> Corpus:
    rng = np.random.default_rng(seed)
    # Topic words avoid the 50 most common words, so topics are distinguishable.
    topic_words = rng.integers(50, VOCABULARY_SIZE, size=(N_TOPICS, WORDS_PER_TOPIC))
    topics = rng.integers(0, N_TOPICS, size=n_docs)
    # Ids look like the seed API's: digit strings of 8 to 10 digits, unique.
    ids = rng.choice(np.arange(10_000_000, 3_000_000_000, 977), size=n_docs, replace=False)
    return Corpus(
        doc_ids=tuple(str(int(i)) for i in ids),
        title=_sample_field(rng, topics, topic_words, 4, 10),
        keywords=_sample_field(rng, topics, topic_words, 3, 6),
        body=_sample_field(rng, topics, topic_words, 40, 120),
    )


def word_ids(text: str) -> list[int]:
    """The vocabulary ids of the text's tokens, in order, with repeats; unknown tokens are dropped."""
    return [WORD_INDEX[t] for t in tokenize(text) if t in WORD_INDEX]


@dataclass(frozen=True)
class Bm25Index:
    """Okapi BM25 over one or more fields, stored as per-word posting lists with precomputed weights.

    A query is a scatter-add of the weights of its words' postings: O(postings of the query words).
    """

    indptr: IntArray  # postings of word w are [indptr[w], indptr[w + 1])
    docs: IntArray
    weights: FloatArray
    n_docs: int

    @classmethod
    def build(cls, fields: Iterable[Field], n_docs: int, k1: float = 1.2, b: float = 0.75) -> Bm25Index:
        parts = list(fields)
        doc = np.concatenate([f.doc for f in parts])
        word = np.concatenate([f.word for f in parts])
        keys, tf = np.unique(word * n_docs + doc, return_counts=True)  # sorted by word, then doc
        post_word, post_doc = keys // n_docs, keys % n_docs
        doc_len = np.bincount(doc, minlength=n_docs).astype(np.float64)
        df = np.bincount(post_word, minlength=VOCABULARY_SIZE).astype(np.float64)
        idf = np.log1p((n_docs - df + 0.5) / (df + 0.5))
        norm = k1 * (1 - b + b * doc_len[post_doc] / doc_len.mean())
        weights = idf[post_word] * tf * (k1 + 1) / (tf + norm)
        indptr = np.concatenate([[0], np.cumsum(df)]).astype(np.int64)
        return cls(
            indptr=indptr, docs=post_doc.astype(np.int64), weights=weights.astype(np.float32), n_docs=n_docs
        )

    def scores(self, query_words: Sequence[int]) -> FloatArray:
        scores = np.zeros(self.n_docs, dtype=np.float32)
        for w in query_words:
            lo, hi = self.indptr[w], self.indptr[w + 1]
            # Document ids are unique within one posting list, so fancy-index += is exact here.
            scores[self.docs[lo:hi]] += self.weights[lo:hi]
        return scores


def _token_hash(token: str) -> tuple[int, float]:
    h = zlib.crc32(token.encode())  # stable across processes, unlike hash()
    return h % EMBEDDING_DIM, 1.0 if (h >> 16) & 1 else -1.0


_WORD_BUCKET = np.array([_token_hash(w)[0] for w in WORDS], dtype=np.int64)
_WORD_SIGN = np.array([_token_hash(w)[1] for w in WORDS], dtype=np.float32)


def embed(text: str) -> FloatArray:
    """The hashed bag-of-words embedding of a text: signed token counts hashed into buckets, L2-normalized.

    Unknown tokens hash too (they are part of the "model"), so any text has an embedding; a text without
    tokens embeds to the zero vector.
    """
    vector = np.zeros(EMBEDDING_DIM, dtype=np.float32)
    for token, count in Counter(tokenize(text)).items():
        bucket, sign = _token_hash(token)
        vector[bucket] += sign * (1.0 + np.log(count))
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def _document_embeddings(corpus: Corpus) -> FloatArray:
    matrix = np.zeros((corpus.size, EMBEDDING_DIM), dtype=np.float32)
    # Titles and keywords say more about a document than its body: weigh them up.
    for field, weight in ((corpus.title, 2.0), (corpus.keywords, 2.0), (corpus.body, 1.0)):
        np.add.at(matrix, (field.doc, _WORD_BUCKET[field.word]), weight * _WORD_SIGN[field.word])
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def top_k(scores: FloatArray, k: int) -> list[tuple[int, float]]:
    """The k highest-scoring document indexes, best first; equal scores in index order (deterministic)."""
    # A full lexsort of a few thousand floats costs ~0.2 ms and, unlike argpartition, orders ties by index.
    order = np.lexsort((np.arange(len(scores)), -scores))[:k]
    return [(int(i), float(scores[i])) for i in order]


CORPUS = build_corpus()
KEYWORD_INDEX = Bm25Index.build((CORPUS.title, CORPUS.keywords), CORPUS.size)
TEXT_INDEX = Bm25Index.build((CORPUS.body,), CORPUS.size)
DOC_EMBEDDINGS = _document_embeddings(CORPUS)
