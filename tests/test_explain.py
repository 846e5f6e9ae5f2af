"""Word attributions: exact character spans for any script, the occlusion scores on a model
whose verdict is known, and the deletion test."""

from __future__ import annotations

import re

import pytest
import torch
from helpers import P_HAM, P_SPAM, write_rigged_run

from spamtune import explain
from spamtune.checkpoint import load_classifier
from spamtune.device import Precision
from spamtune.examples import Examples
from spamtune.forward import predict_logits
from spamtune.tokenizer import get_tokenizer

TEXTS = [
    "WINNER!! Claim your free prize now, text WIN to 80086",
    "Party tonight 🎉🎉 bring the 👨‍👩‍👧 and 🇬🇧 flags!",
    "免费领取奖品，请回复 YES 到 88888",
    "مبروك! لقد ربحت جائزة، اتصل الآن",
    "नमस्ते, आपने इनाम जीता है — अभी कॉल करें",
    "Привет,   как дела?\tЗвони  завтра\n",
    "café naïve résumé ﬁnal e\u0301",
    "   ",
    "x",
]


@pytest.mark.parametrize("text", TEXTS)
def test_token_spans_cover_the_text_in_order_without_cutting_a_character(text):
    tokens = get_tokenizer().encode_ordinary(text)
    spans = explain.token_char_spans(text, tokens)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for (a, b), (c, d) in zip(spans, spans[1:]):
        assert a < b and c < d
        assert c == b or (c, d) == (a, b) or c == b - 1  # a token inside a character shares it
    enc = get_tokenizer()
    for token, (a, b) in zip(tokens, spans):
        piece = enc.decode_single_token_bytes(token)
        try:
            whole = piece.decode("utf-8")
        except UnicodeDecodeError:
            continue  # part of a character: its span is the character
        assert text[a:b] == whole


@pytest.mark.parametrize("text", TEXTS)
def test_word_spans_are_the_exact_words_of_the_original_text(text):
    spans = explain.token_char_spans(text, get_tokenizer().encode_ordinary(text))
    words = explain.word_spans(text, spans)
    assert [text[a:b] for a, b, _ in words] == re.findall(r"\S+", text)
    for a, b, tokens in words:
        assert tokens and all(spans[i][0] < b and spans[i][1] > a for i in tokens)


def test_long_texts_are_grouped_into_runs_of_words():
    text = " ".join(f"w{i}" for i in range(200))
    spans = explain.token_char_spans(text, get_tokenizer().encode_ordinary(text))
    runs = explain.word_spans(text, spans, max_units=64)
    assert len(runs) == 64
    assert runs[0][0] == 0 and runs[-1][1] == len(text)
    assert all(text[a:b].split()[0].startswith("w") for a, b, _ in runs)
    # Truncated tokens: words past the cut are not scored.
    cut = explain.word_spans(text, spans[:10])
    assert all(b <= spans[9][1] + 4 for _, b, _ in cut) and len(cut) <= 10


@pytest.fixture(scope="module")
def rigged(tmp_path_factory):
    """A model whose spam log-odds are +2 when the last token is "!" and -2 otherwise."""
    run = write_rigged_run(tmp_path_factory.mktemp("rigged"))
    model, cfg = load_classifier(run)

    def logits_of(token_lists):
        return predict_logits(model, Examples(token_lists), cfg.pooling, precision=Precision("fp32", torch.device("cpu")))

    return logits_of, cfg


def test_occlusion_names_the_word_that_decides(rigged):
    logits_of, cfg = rigged
    texts = ["Call now to win!", "Are we still on for lunch tomorrow?", "🎉 免费 prize!"]
    out = explain.explain_texts(texts, logits_of, positive_index=1, max_length=cfg.max_length)
    spam, ham, emoji = out
    assert spam.p_spam == pytest.approx(P_SPAM, abs=1e-5) and ham.p_spam == pytest.approx(P_HAM, abs=1e-5)
    # Only "win!" holds the "!": removing it turns +2 log-odds into -2.
    assert [w.to_dict()["text"] for w in spam.towards_spam(5)] == ["win!"]
    assert spam.towards_spam(1)[0].score == pytest.approx(4.0, abs=1e-4)
    assert all(abs(w.score) < 1e-4 for w in spam.words if w.text != "win!")
    assert ham.towards_spam() == []
    assert emoji.top(1)[0] == {"text": "prize!", "start": 5, "end": 11, "score": pytest.approx(4.0, abs=1e-4)}
    assert emoji.text[5:11] == "prize!"  # one character per emoji and per ideogram
    for e in out:
        for w in e.words:
            assert e.text[w.start : w.end] == w.text


def test_scores_are_in_calibrated_units_and_empty_text_has_none(rigged):
    logits_of, cfg = rigged
    hot, empty = explain.explain_texts(["win!", ""], logits_of, positive_index=1, max_length=cfg.max_length, temperature=2.0)
    assert hot.words[0].score == pytest.approx(2.0, abs=1e-4)  # (2 - -2) / T
    assert hot.p_spam == pytest.approx(torch.sigmoid(torch.tensor(1.0)).item(), abs=1e-5)
    assert empty.words == () and empty.top() == []


def test_a_negative_count_of_spans_is_refused():
    """A slice [:-1] would silently drop the weakest span of each side."""
    e = explain.Explanation("win big now", 0.9, (
        explain.Span("win", 0, 3, 2.0), explain.Span("big", 4, 7, 0.5), explain.Span("now", 8, 11, -1.0),
    ))  # fmt: skip
    for call in (e.top, e.towards_spam, e.towards_ham):
        with pytest.raises(ValueError, match="^k must be at least 0, got -1$"):
            call(-1)
        assert call(0) == []
    assert [span["text"] for span in e.top(2)] == ["win", "big", "now"]
    with pytest.raises(TypeError):
        e.top(1.5)


def test_without_spans_cuts_exactly_those_characters():
    text = "Claim 🎉 your prize now"
    spans = [explain.Span("🎉", 6, 7, 1.0), explain.Span("prize", 13, 18, 2.0)]
    assert explain.without_spans(text, spans) == "Claim  your  now"


def test_deletion_test_prefers_the_named_words(rigged):
    logits_of, cfg = rigged
    texts = [f"Hello friend number {i} please call back now win!" for i in range(6)]
    explanations = explain.explain_texts(texts, logits_of, positive_index=1, max_length=cfg.max_length)

    def p_spam(batch):
        enc = get_tokenizer()
        logits = logits_of([enc.encode_ordinary(t) or [50256] for t in batch])
        return torch.softmax(logits, dim=1)[:, 1].tolist()

    result = explain.deletion_test(p_spam, explanations, k=1, draws=4, seed=0)
    assert result.messages == 6
    assert result.mean_drop_top == pytest.approx(P_SPAM - P_HAM, abs=1e-4)
    # A random word is the deciding one 1 time in 9: the mean random drop is far smaller.
    assert result.mean_drop_random < result.mean_drop_top / 2
    assert result.share_top_beats_random >= 0.5
    # k larger than any message's spam words: nothing to test, said as zero messages.
    assert explain.deletion_test(p_spam, explanations, k=2).messages == 0


def test_fp32_head_keeps_bf16_autocast_from_rounding_the_logits():
    from helpers import TINY

    from spamtune.checkpoint import ClassifierConfig, build_classifier

    torch.manual_seed(0)
    model = build_classifier(ClassifierConfig(model=TINY))
    head = model.out_head
    x = torch.randn(4, TINY.emb_dim)
    exact = head(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rounded = model.out_head(x)
        with explain.fp32_head(model):
            full = model.out_head(x)
            assert model.num_classes == 2
    assert rounded.dtype == torch.bfloat16 and not torch.equal(rounded.float(), exact)
    assert full.dtype == torch.float32 and torch.equal(full, exact)
    assert model.out_head is head  # put back


def test_predict_refuses_to_explain_a_message_read_by_another_window(tmp_path):
    """The rigged run calls a text spam for its final "!": past the window, --long chunks finds
    it at the end while the explanation occludes the words of the first window and names none."""
    from typer.testing import CliRunner

    from spamtune.cli import app

    run = write_rigged_run(tmp_path / "run")
    text = "see you at lunch tomorrow ok " * 20 + "call now!"
    chunks = CliRunner().invoke(app, ["predict", "--run", str(run), "--long", "chunks", "--format", "jsonl", "--device", "cpu", text])
    assert chunks.exit_code == 0 and '"label": "spam"' in chunks.stdout  # the last window decides
    for mode in ("chunks", "head-tail"):
        result = CliRunner().invoke(app, ["predict", "--run", str(run), "--explain", "--long", mode, "--device", "cpu", text])
        assert result.exit_code == 2 and result.stdout == ""
        assert result.stderr == (f"Error: --explain reads a message's first tokens, as --long head; with --long {mode} the label "
                                 "may come from a window the explanation never saw\n")  # fmt: skip
    head = CliRunner().invoke(app, ["predict", "--run", str(run), "--explain", "--long", "head", "--format", "jsonl", "--device", "cpu", text])
    assert head.exit_code == 0 and '"label": "ham"' in head.stdout
