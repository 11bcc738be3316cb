"""The fixed vocabulary of the synthetic corpus, and how text becomes tokens.

Pure Python and cheap to import, so the load generator can build realistic queries from the same words the
services index without paying for the corpus. Everything is derived from fixed seeds: the same words, in
the same frequency order, in every process and on every machine.
"""

from __future__ import annotations

import random
import re
from itertools import accumulate

VOCABULARY_SEED = 20240607
VOCABULARY_SIZE = 2000
# Word frequencies follow Zipf's law with this exponent: rank r has weight 1 / (r + 1) ** ZIPF_EXPONENT.
ZIPF_EXPONENT = 1.05

_ONSETS = ("b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "st", "tr")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "", "", "n", "r", "s", "l", "x")
_TOKEN = re.compile(r"[a-z0-9]+")


def _make_word(rng: random.Random) -> str:
    syllables = rng.choice((2, 2, 3, 3, 4))
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)) + rng.choice(_CODAS)


def _make_vocabulary() -> tuple[str, ...]:
    rng = random.Random(VOCABULARY_SEED)
    words: dict[str, None] = {}  # an ordered set: insertion order is frequency rank
    while len(words) < VOCABULARY_SIZE:
        words.setdefault(_make_word(rng), None)
    return tuple(words)


# Ordered by frequency rank: WORDS[0] is the most common word of the corpus.
WORDS: tuple[str, ...] = _make_vocabulary()
WORD_INDEX: dict[str, int] = {word: i for i, word in enumerate(WORDS)}
ZIPF_WEIGHTS: tuple[float, ...] = tuple(1.0 / (rank + 1) ** ZIPF_EXPONENT for rank in range(VOCABULARY_SIZE))
ZIPF_CUMULATIVE: tuple[float, ...] = tuple(accumulate(ZIPF_WEIGHTS))


def tokenize(text: str) -> list[str]:
    """Lower-cased alphanumeric runs; everything else separates tokens."""
    return _TOKEN.findall(text.lower())


def sample_words(rng: random.Random, count: int) -> list[str]:
    """`count` words drawn with corpus (Zipf) frequencies."""
    return rng.choices(WORDS, cum_weights=ZIPF_CUMULATIVE, k=count)
