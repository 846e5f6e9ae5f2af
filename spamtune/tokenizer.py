"""The GPT-2 byte-pair encoding, offline.

``tiktoken.get_encoding("gpt2")`` downloads its rank file on first use and caches it on
disk, which fails on an air-gapped machine. spamtune ships the same rank file inside the
package (see ``assets/LICENSE-gpt2-bpe.txt``), checks its sha256 before use and builds the
encoding from memory: no network, no files written.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache
from importlib import resources

import tiktoken

from spamtune.errors import SpamtuneError

TOKENIZER_ID = "gpt2"
EOT_TOKEN = "<|endoftext|>"
EOT_ID = 50256
# The byte-pair ranks, 50,000 merges + 256 bytes; <|endoftext|> makes the vocabulary 50,257.
BPE_FILE = "gpt2.tiktoken"
BPE_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# The pre-tokenisation regex of OpenAI's GPT-2 encoder: contractions, letter runs, digit
# runs, punctuation runs, and whitespace (a trailing space attaches to the next word).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _load_ranks() -> dict[bytes, int]:
    raw = resources.files("spamtune.assets").joinpath(BPE_FILE).read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != BPE_SHA256:
        raise SpamtuneError(
            f"the bundled GPT-2 BPE file is corrupt (sha256 {digest[:12]}..., expected {BPE_SHA256[:12]}...); "
            "reinstall spamtune"
        )
    ranks = {}
    for line in raw.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@lru_cache(maxsize=1)
def get_tokenizer() -> tiktoken.Encoding:
    """The GPT-2 tokenizer (same ids as ``tiktoken.get_encoding("gpt2")``), built once per process.

    ``encode(text)`` treats ``<|endoftext|>`` in user text as plain text unless it is passed in
    ``allowed_special``, so a message cannot inject control tokens.
    """
    return tiktoken.Encoding(
        name=TOKENIZER_ID,
        pat_str=GPT2_PATTERN,
        mergeable_ranks=_load_ranks(),
        special_tokens={EOT_TOKEN: EOT_ID},
        explicit_n_vocab=50257,
    )


def encode_texts(texts: list[str], max_length: int | None = None) -> list[list[int]]:
    """Token ids of many texts, each cut to its first ``max_length`` tokens.

    The beginning of a message is kept: SMS spam announces itself early ("WINNER!!", "URGENT").
    Special tokens in the text are encoded as ordinary text. An empty text becomes ``[EOT_ID]`` so
    that every message has a position to classify from.
    """
    # One text at a time: encode_ordinary_batch starts a thread pool per call, which for
    # SMS-length texts costs more than the encoding itself (measured 3-50x slower).
    encode = get_tokenizer().encode_ordinary
    out = []
    for text in texts:
        seq = encode(text)
        if not seq:
            seq = [EOT_ID]
        out.append(seq[:max_length] if max_length else seq)
    return out
