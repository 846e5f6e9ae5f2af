"""Reading messages longer than the model's window: head, head-tail and overlapping chunks."""

from __future__ import annotations

import pytest
from helpers import P_HAM, P_SPAM, write_rigged_run

from spamtune.infer import SpamClassifier
from spamtune.long_messages import MAX_WINDOWS, predict_long, windows
from spamtune.tokenizer import get_tokenizer


def test_short_messages_are_one_window_whatever_the_mode():
    for mode in ("head", "head-tail", "chunks"):
        assert windows([1, 2, 3], 3, mode) == [[1, 2, 3]]


def test_head_and_head_tail():
    ids = list(range(10))
    assert windows(ids, 4, "head") == [[0, 1, 2, 3]]
    assert windows(ids, 4, "head-tail") == [[0, 1, 8, 9]]
    assert windows(ids, 5, "head-tail") == [[0, 1, 7, 8, 9]]


def test_chunks_overlap_and_the_last_one_ends_at_the_end():
    ids = list(range(10))
    assert windows(ids, 4, "chunks", overlap=1) == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert windows(ids, 4, "chunks", overlap=0) == [[0, 1, 2, 3], [4, 5, 6, 7], [6, 7, 8, 9]]
    assert windows(list(range(11)), 8, "chunks") == [list(range(8)), list(range(3, 11))]  # default overlap 2


def test_chunks_of_a_huge_message_are_capped_and_span_it():
    ids = list(range(100_000))
    got = windows(ids, 10, "chunks")
    assert len(got) == MAX_WINDOWS
    assert got[0] == list(range(10)) and got[-1] == list(range(99_990, 100_000))
    assert all(len(w) == 10 for w in got)


def test_bad_arguments():
    for kwargs in ({"mode": "tail"}, {"mode": "chunks", "overlap": 4}, {"mode": "chunks", "overlap": -1}):
        with pytest.raises(ValueError):
            windows(list(range(10)), 4, **kwargs)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    run = write_rigged_run(tmp_path_factory.mktemp("long") / "run")
    return SpamClassifier.load(run, device="cpu", precision="fp32")


def test_predict_long_modes_on_a_rigged_run(classifier):
    """The rigged run calls a window spam when its last token is "!"; its window is 64 tokens."""
    tok = get_tokenizer()
    filler = " word" * 200
    cue_at_end = filler + "!"
    cue_at_63 = " word" * 63 + "!" + filler  # "!" is token 64: the last of the first window
    short = "hello there!"
    assert len(tok.encode(cue_at_end)) == 201
    head = predict_long(classifier, [cue_at_end, cue_at_63, short], "head")
    assert [p.label for p in head] == ["ham", "spam", "spam"]
    assert head == classifier.predict([cue_at_end, cue_at_63, short])  # head is what predict does
    assert [p.label for p in predict_long(classifier, [cue_at_end, cue_at_63], "head-tail")] == ["spam", "ham"]
    chunks = predict_long(classifier, [cue_at_end, cue_at_63, filler], "chunks")
    assert [p.label for p in chunks] == ["spam", "spam", "ham"]
    assert chunks[0].probability == pytest.approx(P_SPAM, abs=1e-5)
    assert chunks[2].probability == pytest.approx(P_HAM, abs=1e-5)
    assert chunks[0].text == cue_at_end


def test_predict_long_reads_a_string_as_one_text_and_refuses_what_is_not_text(classifier):
    """A string is one text, as ``predict_explained`` reads it, not one message per character;
    an item that is not a string is ``predict``'s TypeError, naming the item."""
    assert predict_long(classifier, "hi!", "chunks") == [classifier.predict("hi!")]
    assert predict_long(classifier, (t for t in ["a", "b!"]), "head") == classifier.predict(["a", "b!"])
    with pytest.raises(TypeError, match="^texts must be strings; item 1 is int$"):
        predict_long(classifier, ["fine", 3], "chunks")
    with pytest.raises(TypeError, match="^texts must be strings, not bytes"):
        predict_long(classifier, b"raw mail", "chunks")
