import socket

import pytest

from spamtune import tokenizer
from spamtune.tokenizer import EOT_ID, encode_texts, get_tokenizer


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a socket fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the tokenizer tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    get_tokenizer.cache_clear()
    yield
    get_tokenizer.cache_clear()


def test_known_ids_offline(no_network, tmp_path, monkeypatch):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    enc = get_tokenizer()
    assert enc.encode("Do you have time") == [5211, 345, 423, 640]
    assert enc.encode("Hello, world") == [15496, 11, 995]
    assert enc.n_vocab == 50257
    assert not (tmp_path / "cache").exists(), "building the tokenizer must write no files"


def test_endoftext_only_when_allowed():
    enc = get_tokenizer()
    assert enc.encode("<|endoftext|>", allowed_special={"<|endoftext|>"}) == [EOT_ID]
    assert EOT_ID not in enc.encode_ordinary("<|endoftext|>")
    with pytest.raises(ValueError):
        enc.encode("<|endoftext|>")  # tiktoken refuses disallowed specials by default
    assert EOT_ID not in encode_texts(["hi <|endoftext|> there"])[0]


@pytest.mark.parametrize("text", ["naïve café £5 ünïcödé", "emoji 🎉🚀 and 中文", "tabs\tand\nnewlines  ", "\u0092quote"])
def test_decode_round_trips(text):
    enc = get_tokenizer()
    assert enc.decode(enc.encode_ordinary(text)) == text


def test_encode_texts_truncates_from_the_end_and_fills_empty():
    ids = encode_texts(["Do you have time", ""], max_length=2)
    assert ids == [[5211, 345], [EOT_ID]]


def test_corrupt_bundled_file_is_refused(monkeypatch):
    monkeypatch.setattr(tokenizer, "BPE_SHA256", "0" * 64)
    get_tokenizer.cache_clear()
    try:
        with pytest.raises(tokenizer.SpamtuneError, match="corrupt"):
            get_tokenizer()
    finally:
        get_tokenizer.cache_clear()


def test_same_ids_as_tiktoken_reference_ranks():
    """Our regex + ranks agree with tiktoken's own gpt2 definition on tricky text."""
    import tiktoken_ext.openai_public as ref

    enc = get_tokenizer()
    theirs = __import__("tiktoken").Encoding(
        name="ref", pat_str=ref.r50k_pat_str, mergeable_ranks=enc._mergeable_ranks,
        special_tokens={"<|endoftext|>": EOT_ID},
    )  # fmt: skip
    text = "I'll've   it's 1234 £5.00!!!  \n\n  ok?? WINNER!! Call 09061701461. They're we'd've"
    assert enc.encode_ordinary(text) == theirs.encode_ordinary(text)
