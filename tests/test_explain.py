"""Word attributions: exact character spans for any script, the occlusion scores on a model
whose verdict is known, and the deletion test."""

from __future__ import annotations

import json
import re

import pytest
import torch
from helpers import P_HAM, P_SPAM, write_rigged_run

from spamtune import explain, explanation
from spamtune.checkpoint import load_classifier
from spamtune.device import Precision
from spamtune.examples import Examples
from spamtune.forward import predict_logits
from spamtune.infer import SpamClassifier
from spamtune.long_messages import predict_long
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
    e = explanation.Explanation("win big now", 0.9, (
        explanation.Span("win", 0, 3, 2.0), explanation.Span("big", 4, 7, 0.5), explanation.Span("now", 8, 11, -1.0),
    ))  # fmt: skip
    for call in (e.top, e.towards_spam, e.towards_ham):
        with pytest.raises(ValueError, match="^k must be at least 0, got -1$"):
            call(-1)
        assert call(0) == []
    assert [span["text"] for span in e.top(2)] == ["win", "big", "now"]
    with pytest.raises(TypeError):
        e.top(1.5)


def test_an_explanation_sent_as_json_reads_back_as_the_one_sent():
    """What the service sends (``top`` and ``window_list``) rebuilds an explanation that prints the
    same top spans and window, emoji and all; spans that are not the text's are refused."""
    text = "Claim 🎉 your prize now, café"
    sent = explanation.Explanation(text, 0.8, (
        explanation.Span("Claim", 0, 5, 0.25), explanation.Span("🎉", 6, 7, 1.5), explanation.Span("your", 8, 12, -0.5),
        explanation.Span("prize", 13, 18, 2.0), explanation.Span("now,", 19, 23, 0.1), explanation.Span("café", 24, 28, -1.0),
    ), (explanation.WindowPart(0, len(text), 0, 9),))  # fmt: skip
    got = explanation.Explanation.from_answer(text, 0.8, json.loads(json.dumps(sent.top(3))), sent.window_list())
    assert got.top(3) == sent.top(3) and got.window == sent.window and got.reads_whole_text
    assert [span.text for span in got.words] == ["Claim", "🎉", "your", "prize", "café"]  # text order; "now," not sent
    for bad in ([{"text": "🎉", "start": 7, "end": 8, "score": 1.0}], [{"text": "Claim", "start": 0, "end": 5}], "spans"):
        with pytest.raises(ValueError):
            explanation.Explanation.from_answer(text, 0.8, bad, [])
    with pytest.raises(ValueError):
        explanation.Explanation.from_answer(text, 0.8, [], [{"start": 0, "end": len(text) + 1, "token_start": 0, "token_end": 9}])


def test_without_spans_cuts_exactly_those_characters():
    text = "Claim 🎉 your prize now"
    spans = [explanation.Span("🎉", 6, 7, 1.0), explanation.Span("prize", 13, 18, 2.0)]
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


# 312 tokens whose only "!" is the last token of the second chunk (tokens 48-112) of the rigged
# run's 64-token windows: that chunk alone is spam, in the middle of the message. Cyrillic and
# emoji before it make character offsets differ from byte offsets.
MIDDLE_CUE = "Привет 🎉🎉 " + " word" * 97 + "!" + " word" * 200
TAIL_CUE = "Привет 🎉🎉 " + " word" * 150 + "!"  # spam in its last window only


@pytest.fixture(scope="module")
def rigged_classifier(tmp_path_factory):
    run = write_rigged_run(tmp_path_factory.mktemp("explain_long") / "run")
    return run, SpamClassifier.load(run, device="cpu", precision="fp32")


def _alone(clf, token_ids):
    """p(spam) of a list of tokens classified by itself (a batch of one: equal to the verdict to
    fp32 rounding, where any other window of these messages is 0.76 away)."""
    return torch.softmax(clf.token_logits([token_ids]), dim=1)[0, 1].item()


def test_explain_reads_the_chunk_that_decided_the_verdict(rigged_classifier):
    _, clf = rigged_classifier
    enc = get_tokenizer()
    ids = enc.encode_ordinary(MIDDLE_CUE)
    assert len(ids) == 312 and enc.decode(ids[111:112]) == "!"
    (verdict,) = predict_long(clf, [MIDDLE_CUE], "chunks")
    e = clf.explain(MIDDLE_CUE, long="chunks")
    assert verdict.label == "spam" and e.p_spam == verdict.probability
    (part,) = e.window
    assert (part.token_start, part.token_end) == (48, 112)
    assert part.start == len(enc.decode(ids[:48])) != len(enc.decode_bytes(ids[:48]))  # characters, not bytes
    assert part.end == MIDDLE_CUE.index("!") + 1
    assert enc.encode_ordinary(MIDDLE_CUE[part.start : part.end]) == ids[48:112]
    assert _alone(clf, ids[48:112]) == pytest.approx(verdict.probability, abs=1e-6)
    # The word that decided is named; every span lies in the window.
    assert e.towards_spam(1)[0].text == "word!" and e.towards_spam(1)[0].score == pytest.approx(4.0, abs=1e-4)
    assert all(part.start <= w.start < w.end <= part.end for w in e.words)
    assert not e.reads_whole_text


def test_explain_head_tail_reads_the_head_and_the_tail(rigged_classifier):
    _, clf = rigged_classifier
    enc = get_tokenizer()
    ids = enc.encode_ordinary(TAIL_CUE)
    n = len(ids)
    (verdict,) = predict_long(clf, [TAIL_CUE], "head-tail")
    e = clf.explain(TAIL_CUE, long="head-tail")
    assert verdict.label == "spam" and e.p_spam == verdict.probability
    head, tail = e.window
    assert (head.token_start, head.token_end, tail.token_start, tail.token_end) == (0, 32, n - 32, n)
    assert (head.start, tail.end) == (0, len(TAIL_CUE))
    assert enc.encode_ordinary(TAIL_CUE[: head.end]) == ids[:32]
    assert enc.encode_ordinary(TAIL_CUE[tail.start :]) == ids[n - 32 :]
    assert _alone(clf, ids[:32] + ids[n - 32 :]) == pytest.approx(verdict.probability, abs=1e-6)
    assert e.towards_spam(1)[0].text == "word!"
    assert all(head.start <= w.start < w.end <= head.end or tail.start <= w.start < w.end <= tail.end for w in e.words)
    # Without --long the head alone is read, and explained: no "!" in it.
    (first,) = clf.predict([TAIL_CUE])
    e = clf.explain(TAIL_CUE)
    assert first.label == "ham" and e.p_spam == first.probability and e.towards_spam() == []
    assert [(p.token_start, p.token_end) for p in e.window] == [(0, 64)]


def test_a_message_that_fits_is_explained_whole_in_every_mode(rigged_classifier):
    _, clf = rigged_classifier
    for mode in ("head", "head-tail", "chunks"):
        texts = ["Привет 🎉 win!", ""]
        e, empty = clf.explain(texts, long=mode)
        assert e.window == (explanation.WindowPart(0, len(e.text), 0, len(get_tokenizer().encode_ordinary(e.text))),)
        assert e.reads_whole_text and [e.p_spam, empty.p_spam] == [p.probability for p in predict_long(clf, texts, mode)]
        assert empty.window_list() == [{"start": 0, "end": 0, "token_start": 0, "token_end": 1}] and empty.words == ()
    with pytest.raises(ValueError, match="unknown long-message mode 'tail'"):
        clf.explain("hi", long="tail")


@pytest.mark.parametrize("mode", ["head", "head-tail", "chunks"])
def test_predict_explains_the_window_that_decided_as_the_api_does(rigged_classifier, mode):
    """--explain with every --long: the verdict is the deciding window's, the output names that
    window in each format, and says what SpamClassifier.explain says."""
    from typer.testing import CliRunner

    from spamtune.cli import app

    run, clf = rigged_classifier
    texts = [MIDDLE_CUE, TAIL_CUE, "hi!"]
    explanations = clf.explain(texts, long=mode)
    verdicts = predict_long(clf, texts, mode)

    def invoke(*args):
        result = CliRunner().invoke(app, ["predict", "--run", str(run), "--device", "cpu", "--precision", "fp32",
                                          "--explain", "--long", mode, *args, "--", *texts])  # fmt: skip
        assert result.exit_code == 0, result.stderr
        return result.stdout.splitlines()

    records = [json.loads(line) for line in invoke("--format", "jsonl")]
    assert [r["label"] for r in records] == [v.label for v in verdicts]
    for record, e, v in zip(records, explanations, verdicts):
        assert record["p_spam"] == round(v.probability, 6) == round(e.p_spam, 6)
        assert record["explanation"] == json.loads(json.dumps(e.top(3)))
        assert record["window"] == e.window_list()
    header, *rows = [line.split("\t") for line in invoke("--format", "tsv", "--header")]
    assert header == ["label", "p_spam", "text", "explanation", "window"] and len(rows) == 3
    assert [json.loads(row[4]) for row in rows] == [r["window"] for r in records]
    assert [json.loads(row[3]) for row in rows] == [r["explanation"] for r in records]
    shown = invoke("--format", "text")
    for line, e in zip(shown, explanations):
        parts = " and ".join(f"{p.start}-{p.end}" for p in e.window)
        assert (f"  (explains chars {parts} of {len(e.text)})  " in line) == (not e.reads_whole_text)
    assert shown[2] == "spam  p(spam)=0.881  [+hi!]"


def test_a_surrogate_pair_is_read_as_prediction_reads_it(tmp_path):
    """A Python string may hold a surrogate pair: the tokenizer reads it as the character it
    stands for, and the explanation reads the same tokens (it read two U+FFFD, a different
    message with another p(spam)), with spans that never split the pair."""
    from helpers import TINY

    from spamtune import checkpoint
    from spamtune.checkpoint import ClassifierConfig

    torch.manual_seed(0)
    cfg = ClassifierConfig(model=TINY)
    checkpoint.save_classifier(tmp_path / "run", checkpoint.build_classifier(cfg), cfg)
    clf = SpamClassifier.load(tmp_path / "run", device="cpu", precision="fp32")
    texts = ["Call \ud83d\ude00 now", "x \ud800 y\ud83d\ude00\ud83d\ude00z", "\ud83d\ude00" * 40 + " prize"]
    for e, p in zip(clf.explain(texts), clf.predict(texts)):
        assert e.p_spam == p.probability
        (window,) = e.window
        words = [(m.start(), min(m.end(), window.end)) for m in re.finditer(r"\S+", e.text) if m.start() < window.end]
        assert [(w.start, w.end) for w in e.words] == words
        for w in e.words:
            assert e.text[w.start : w.end] == w.text
            assert not (w.end < len(e.text) and "\udc00" <= e.text[w.end] <= "\udfff")  # no pair cut in two


def test_a_huge_message_is_explained_from_its_window_alone(rigged_classifier, monkeypatch):
    """A word is cut to the window (a one-word line of a MiB was one span of the whole MiB, which
    the output then carried twice, though only its first tokens were occluded), and only the
    window's words are looked for: every word of the text was matched against every token of the
    window (a 1 MiB line of words took 18 s to explain with a 1,024-token window, for a 0.3 s
    verdict)."""
    _, clf = rigged_classifier
    blob = "A" * 50_000
    for e in (clf.explain(blob), clf.explain(blob, long="chunks")):
        (part,) = e.window
        assert [(w.start, w.end) for w in e.words] == [(part.start, part.end)] and part.end - part.start < 1000
    found = []

    class CountingWord:
        def finditer(self, *args):
            for match in re.compile(r"\S+").finditer(*args):
                found.append(match)
                yield match

    monkeypatch.setattr(explain, "_WORD", CountingWord())
    words = " word" * 50_000 + "!"
    assert clf.explain(words).towards_spam() == [] and len(found) <= 64
    e = clf.explain(words, long="chunks")
    assert e.window[0].token_end == 50_001 and e.towards_spam(1)[0].text == "word!"
    assert len(found) <= 128


def test_many_long_texts_are_explained_a_group_at_a_time(rigged, monkeypatch):
    """Every variant of every text went through the model in one call: predict's chunk of 2,048
    long lines at GPT-2's window held 136 M token ids at once (2.6 GB). Calls now hold about
    VARIANT_TOKENS ids, and the explanations are those of one call."""
    logits_of, cfg = rigged
    texts = [f"line {i} " + "see you at lunch " * 20 + ("call now!" if i % 3 else "") for i in range(12)] + ["", "x!"]
    whole = explain.explain_texts(texts, logits_of, positive_index=1, max_length=cfg.max_length)
    calls = []

    def counted(token_lists):
        calls.append(sum(map(len, token_lists)))
        return logits_of(token_lists)

    monkeypatch.setattr(explain, "VARIANT_TOKENS", 5_000, raising=False)
    grouped = explain.explain_texts(texts, counted, positive_index=1, max_length=cfg.max_length)
    one_text = 65 * cfg.max_length  # a window and its 64 variants
    assert len(calls) > 3 and max(calls[1:]) <= 5_000 + one_text  # calls[0] finds the windows
    for a, b in zip(whole, grouped):
        assert (a.text, a.p_spam, a.window, [w.text for w in a.words]) == (b.text, b.p_spam, b.window, [w.text for w in b.words])
        assert [w.score for w in a.words] == pytest.approx([w.score for w in b.words], abs=1e-4)


def test_under_bf16_the_window_explained_is_the_one_that_decided(tmp_path):
    """Explaining runs the head in fp32 (explain.fp32_head); the deciding window is chosen by
    the verdict's own pass, at the run's precision: chosen with the fp32 head, one of these 40
    messages was explained in a window other than the one whose probability gave its label."""
    import random

    from spamtune import checkpoint
    from spamtune.checkpoint import ClassifierConfig
    from spamtune.model import GPTConfig

    cfg = ClassifierConfig(model=GPTConfig(context_length=64, emb_dim=64, n_layers=2, n_heads=4), max_length=64)
    torch.manual_seed(1)
    checkpoint.save_classifier(tmp_path / "run", checkpoint.build_classifier(cfg), cfg)
    clf = SpamClassifier.load(tmp_path / "run", device="cpu", precision="bf16")
    rng = random.Random(0)
    words = "see you at lunch free prize call now win cash tomorrow ok".split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(50, 400))) for _ in range(40)]
    ids = [get_tokenizer().encode_ordinary(t) for t in texts]
    from spamtune.long_messages import deciding_windows

    _, windows = deciding_windows(ids, clf.max_length, "chunks", 1, clf.token_logits)
    explained = clf.explain(texts, long="chunks")
    assert [e.p_spam for e in explained] == [p.probability for p in predict_long(clf, texts, "chunks")]
    assert [tuple((p.token_start, p.token_end) for p in e.window) for e in explained] == windows


@pytest.mark.parametrize("mode", ["head", "chunks"])
def test_predict_explained_gives_the_verdicts_of_predict_long_from_the_explanations_pass(rigged_classifier, rows_forwarded, mode):
    """The verdicts and the explanations come from one pass over the windows: what predict_long
    gives, bit for bit, for the rows that explain alone forwards."""
    _, clf = rigged_classifier
    texts = [MIDDLE_CUE, TAIL_CUE, "hi!", "Привет 🎉 win", ""]
    verdicts = predict_long(clf, texts, mode)
    verdict_rows = sum(rows_forwarded)
    rows_forwarded.clear()
    explanations = clf.explain(texts, long=mode)
    explain_rows = sum(rows_forwarded)
    rows_forwarded.clear()
    predictions, explained = clf.predict_explained(texts, mode)
    assert sum(rows_forwarded) == explain_rows and verdict_rows > 0
    assert predictions == verdicts  # labels and float probabilities, exactly
    assert explained == explanations and [e.p_spam for e in explained] == [p.probability for p in verdicts]


@pytest.mark.parametrize("mode", ["head", "chunks"])
def test_predict_explain_forwards_each_window_once_for_its_verdict(rigged_classifier, rows_forwarded, mode):
    """predict --explain classified every text on its own, then again inside the explanation
    (which needs the verdict's window): one forward of every window more than explaining costs.
    The lines are what predict writes without --explain, plus the explanation."""
    from typer.testing import CliRunner

    from spamtune.cli import app

    run, _ = rigged_classifier
    texts = [MIDDLE_CUE, TAIL_CUE, "hi!", "Привет 🎉 win", ""]

    def invoke(*args):
        result = CliRunner().invoke(app, ["predict", "--run", str(run), "--device", "cpu", "--precision", "fp32",
                                          "--format", "jsonl", "--long", mode, *args, "--", *texts])  # fmt: skip
        assert result.exit_code == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    plain = invoke()
    verdict_rows = sum(rows_forwarded)
    # As predict loads it (batch shapes rounded): the rows explaining alone forwards.
    clf = SpamClassifier.load(run, device="cpu", precision="fp32", few_shapes=True)
    rows_forwarded.clear()
    explanations = clf.explain(texts, long=mode)
    explain_rows = sum(rows_forwarded)
    rows_forwarded.clear()
    explained = invoke("--explain")
    assert sum(rows_forwarded) == explain_rows  # was explain_rows + verdict_rows
    assert verdict_rows > 0
    assert [{k: r[k] for k in ("text", "label", "p_spam")} for r in explained] == plain
    assert [r["explanation"] for r in explained] == [json.loads(json.dumps(e.top(3))) for e in explanations]
    assert [r["window"] for r in explained] == [e.window_list() for e in explanations]


def test_one_classifier_explains_and_predicts_from_two_threads_as_it_does_in_turn(tmp_path):
    """``explain`` runs the head in fp32 (``fp32_head``) for a while: a ``predict`` from another
    thread meanwhile must still get the answers it gets alone, and two explanations at once must
    leave the model's own head in place (the second one used to put the fp32 wrapper back)."""
    import threading

    clf = SpamClassifier.load(write_rigged_run(tmp_path / "run"), device="cpu", precision="bf16")
    head = clf.model.out_head
    texts = ["WIN a prize now!", "see you at noon", "call me!", "ok"]
    alone = [p.probability for p in clf.predict(texts)]
    explained_alone = [e.top(3) for e in clf.explain(texts)]
    assert not isinstance(head, explain._Fp32Head)

    # Hold the first explanation inside its fp32 pass until the other thread is done (or, where
    # the other thread waits for it, for a moment), so the two overlap whenever they can.
    inside, other_done = threading.Event(), threading.Event()
    explainer = None

    def hold(*_):
        if threading.current_thread() is explainer and isinstance(clf.model.out_head, explain._Fp32Head) and not inside.is_set():
            inside.set()
            other_done.wait(timeout=1)

    hook = clf.model.trf_blocks[0].register_forward_pre_hook(hold)
    results = {}

    def run_explain():
        results["explain"] = [e.top(3) for e in clf.explain(texts)]

    try:
        for other in ("predict", "explain"):
            inside.clear()
            other_done.clear()
            explainer = threading.Thread(target=run_explain)
            explainer.start()
            assert inside.wait(timeout=30)
            if other == "predict":
                results["predict"] = [p.probability for p in clf.predict(texts)]
            else:
                results["second explain"] = [e.top(3) for e in clf.explain(texts)]
            other_done.set()
            explainer.join(timeout=60)
            assert results.pop("explain") == explained_alone
    finally:
        hook.remove()
    assert results == {"predict": alone, "second explain": explained_alone}
    assert clf.model.out_head is head
    assert [p.probability for p in clf.predict(texts)] == alone
