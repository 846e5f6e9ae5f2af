"""The Python API: ``SpamClassifier`` over a tiny run whose answers are known in advance."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from helpers import P_HAM, P_SPAM, write_rigged_run
from typer.testing import CliRunner

from spamtune import Prediction, SpamClassifier, paths
from spamtune.cli import app
from spamtune.errors import OptionError, SpamtuneError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return write_rigged_run(tmp_path_factory.mktemp("api") / "run")


@pytest.fixture(scope="module")
def clf(run_dir) -> SpamClassifier:
    return SpamClassifier.load(run_dir, device="cpu")


def test_predict_one_text_returns_one_prediction(clf):
    pred = clf.predict("WIN a prize now!")
    assert isinstance(pred, Prediction)
    assert pred.text == "WIN a prize now!"
    assert pred.label == "spam"
    assert pred.probability == pytest.approx(P_SPAM, abs=1e-4)
    with pytest.raises(AttributeError):
        pred.label = "ham"  # frozen


def test_predict_list_keeps_order_and_probability_is_always_spams(clf):
    texts = ["Do you have time", "Claim now!", "", "!", "ok see you later"]
    preds = clf.predict(texts)
    assert [p.text for p in preds] == texts
    assert [p.label for p in preds] == ["ham", "spam", "ham", "spam", "ham"]
    expected = [P_HAM, P_SPAM, P_HAM, P_SPAM, P_HAM]
    assert [p.probability for p in preds] == pytest.approx(expected, abs=1e-4)
    assert clf.predict(iter(texts)) == preds  # any iterable of strings
    assert clf.predict([]) == []


def test_predict_proba_shape_rows_and_columns(clf):
    probs = clf.predict_proba(["hello", "buy now!", ""])
    assert clf.labels == ["ham", "spam"]
    assert probs.shape == (3, 2)
    assert torch.allclose(probs.sum(dim=1), torch.ones(3))
    assert probs[:, 1].tolist() == pytest.approx([P_HAM, P_SPAM, P_HAM], abs=1e-4)
    assert clf.predict_proba("one text").shape == (1, 2)
    assert clf.predict_proba([]).shape == (0, 2)


def test_threshold_moves_the_decision(run_dir):
    strict = SpamClassifier.load(run_dir, device="cpu", threshold=0.9)
    assert strict.predict("free entry!").label == "ham"
    strict.threshold = strict.predict("free entry!").probability  # p >= threshold is spam
    assert strict.predict("free entry!").label == "spam"
    strict.threshold = 0.0
    assert strict.predict("hello").label == "spam"
    with pytest.raises(ValueError):
        strict.threshold = 1.5


@pytest.mark.parametrize(("value", "shown"), [("0.5", "str '0.5'"), (True, "bool True"), (None, "NoneType None")])
def test_a_threshold_that_is_not_a_number_is_an_option_error(run_dir, clf, value, shown):
    """Not a bare comparison TypeError (a string), nor True taken for 1.0 (a bool is an int)."""
    message = f"^threshold must be a number between 0 and 1, not {shown}$"
    if value is not None:  # None is load's "the run's own threshold"
        with pytest.raises(OptionError, match=message):
            SpamClassifier.load(run_dir, device="cpu", threshold=value)
    with pytest.raises(OptionError, match=message):
        clf.threshold = value
    assert clf.threshold == 0.5


def test_a_run_of_three_classes_decides_by_the_most_probable_one_and_refuses_a_threshold(tmp_path):
    run = write_rigged_run(tmp_path / "three", labels={"ham": 0, "spam": 1, "promo": 2})
    clf = SpamClassifier.load(run, device="cpu")
    assert [p.label for p in clf.predict(["hi!", "hi"])] == ["spam", "ham"]  # "hi": ham and promo tie, the first wins
    assert clf.describe_decision() == "the most probable of 3 classes (ham, spam, promo) is the label"
    with pytest.raises(OptionError, match=r"^threshold cannot apply: the run has 3 classes \(ham, spam, promo\)"):
        SpamClassifier.load(run, device="cpu", threshold=0.3)


def test_batching_and_padding_do_not_change_results(run_dir):
    texts = ["short!", "a much longer message that goes on and on " * 3, "x", "yes!", "mid length text"] * 7
    one_by_one = SpamClassifier.load(run_dir, device="cpu", batch_size=1).predict_proba(texts)
    batched = SpamClassifier.load(run_dir, device="cpu", batch_size=4).predict_proba(texts)
    assert torch.allclose(one_by_one, batched, atol=1e-5)


def test_over_long_text_keeps_its_start(clf):
    """max_length is 64 tokens: the "!" at the end of a long text is cut away, at its start it stays."""
    filler = " word" * 100
    assert clf.predict("hi!").label == "spam"
    assert clf.predict("hi" + filler + "!").label == "ham"
    assert clf.predict("!" + filler).label == "ham"  # the 64th token decides, not the first
    assert clf.predict("x" + " word" * 62 + "!").label == "spam"  # exactly 64 tokens: nothing lost
    assert clf.predict("x" + " word" * 63 + "!").label == "ham"  # 65 tokens: the "!" is cut


def test_last_pooling_reads_the_padded_position_at_max_length(tmp_path):
    """With ``last`` pooling the verdict comes from the pad at position max_length, for every text."""
    clf = SpamClassifier.load(write_rigged_run(tmp_path / "run", pooling="last"), device="cpu")
    assert [p.label for p in clf.predict(["hello!", "hello", "!"])] == ["ham", "ham", "ham"]
    probs = clf.predict_proba(["hello!", "a longer text with more tokens!"])
    assert torch.allclose(probs[0], probs[1])


def test_label_order_comes_from_the_run(tmp_path):
    clf = SpamClassifier.load(write_rigged_run(tmp_path / "run", labels={"spam": 0, "ham": 1}), device="cpu")
    assert clf.labels == ["spam", "ham"] and clf.positive_label == "spam"
    assert [p.label for p in clf.predict(["hey!", "hey"])] == ["spam", "ham"]
    assert clf.predict_proba("hey!")[0, 0].item() == pytest.approx(P_SPAM, abs=1e-4)


def test_load_defaults_to_the_latest_run_in_the_data_root(tmp_path, monkeypatch):
    older = write_rigged_run(paths.runs_dir(tmp_path) / "older")
    newer = write_rigged_run(paths.runs_dir(tmp_path) / "newer", labels={"spam": 0, "ham": 1})
    stamp = (older / "model.safetensors").stat().st_mtime
    os.utime(newer / "model.safetensors", (stamp + 10, stamp + 10))
    assert SpamClassifier.load(data_dir=tmp_path, device="cpu").run_dir == newer
    monkeypatch.setenv(paths.ENV_HOME, str(tmp_path))
    assert SpamClassifier.load(device="cpu").labels == ["spam", "ham"]


def test_load_errors_are_one_clear_line(tmp_path):
    with pytest.raises(SpamtuneError, match=r"no fine-tuned model found in .*runs; run `spamtune finetune` first"):
        SpamClassifier.load(data_dir=tmp_path)
    with pytest.raises(SpamtuneError, match="run folder not found"):
        SpamClassifier.load(tmp_path / "nope")
    with pytest.raises(SpamtuneError, match="config.json"):
        SpamClassifier.load(tmp_path)


def test_non_string_input_is_a_type_error(clf):
    with pytest.raises(TypeError, match="item 1 is int"):
        clf.predict(["fine", 3])
    for call in (clf.predict, clf.predict_proba, clf.explain):
        for value, shown in ((None, "NoneType"), (5, "int")):
            with pytest.raises(TypeError, match=f"^texts must be a string or an iterable of strings, not {shown}$"):
                call(value)


@pytest.mark.parametrize(("value", "shown"), [(1.5, "float 1.5"), ("8", "str '8'"), (True, "bool True")])
def test_a_batch_size_that_is_not_a_whole_number_is_an_option_error_at_load(run_dir, value, shown):
    """Not accepted, to fail inside the first predict (1.5) or in a comparison ("8"), nor True
    taken for 1."""
    with pytest.raises(OptionError, match=f"^batch size must be a whole number of messages, not {shown}$"):
        SpamClassifier.load(run_dir, device="cpu", batch_size=value)
    with pytest.raises(ValueError, match="at least 1"):
        SpamClassifier.load(run_dir, device="cpu", batch_size=0)


def test_a_device_this_machine_lacks_is_an_option_error_whatever_its_form(run_dir, monkeypatch):
    """A torch.device or an index is checked as a name is, not left to torch's assertion."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", torch.device("cuda"), torch.device("cuda", 1)):
        with pytest.raises(OptionError, match="CUDA is not available"):
            SpamClassifier.load(run_dir, device=device)
    assert SpamClassifier.load(run_dir, device=torch.device("cpu")).device == torch.device("cpu")


def test_bytes_are_named_as_bytes_with_the_way_to_text(clf):
    """Bytes iterate as ints: the error names them, and the mail entry point for a raw message."""
    for call in (clf.predict, clf.predict_proba, clf.explain):
        with pytest.raises(TypeError, match=r"^texts must be strings, not bytes: decode them first .*message_text\(raw\)"):
            call(b"hi")
    with pytest.raises(TypeError, match=r"^texts must be strings; item 1 is bytearray: decode them first"):
        clf.predict(["fine", bytearray(b"hi")])


def test_cli_prints_what_the_api_returns(run_dir, clf):
    texts = ["Do you have time", "URGENT! call now!", "", "été", "ok!", "a" * 500]
    result = CliRunner().invoke(app, ["predict", "--run", str(run_dir), "--format", "jsonl", *texts])
    assert result.exit_code == 0, result.stderr
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    expected = clf.predict(texts)
    assert [(r["text"], r["label"]) for r in printed] == [(p.text, p.label) for p in expected]
    assert [r["p_spam"] for r in printed] == pytest.approx([p.probability for p in expected], abs=1e-6)


def test_bf16_stores_block_linears_cast_and_matches_plain_autocast(tmp_path):
    """Keeping the Linear weights in bf16 saves memory without changing a single result."""
    from helpers import TINY

    from spamtune import checkpoint
    from spamtune.device import Precision
    from spamtune.examples import Examples
    from spamtune.forward import predict_logits
    from spamtune.tokenizer import encode_texts

    cfg = checkpoint.ClassifierConfig(model=TINY, labels={"ham": 0, "spam": 1}, pooling="last-real", max_length=64)
    torch.manual_seed(0)
    checkpoint.save_classifier(tmp_path, checkpoint.build_classifier(cfg), cfg)
    clf = SpamClassifier.load(tmp_path, device="cpu", precision="bf16")
    linears = [m for m in clf.model.trf_blocks.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(p.dtype == torch.bfloat16 for m in linears for p in m.parameters())
    assert clf.model.tok_emb.weight.dtype == torch.float32 and clf.model.out_head.weight.dtype == torch.float32

    texts = ["WINNER!! Claim your prize", "Do you have time", "", "ok"]
    reference, _ = checkpoint.load_classifier(tmp_path)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # plain autocast around the fp32 path
        logits = predict_logits(reference, Examples(encode_texts(texts, 64)), "last-real", precision=Precision("fp32", "cpu"))
    expected = torch.softmax(logits.double(), dim=1).float()  # labels are decided in float64
    assert torch.equal(clf.predict_proba(texts), expected)
    fp32 = SpamClassifier.load(tmp_path, device="cpu", precision="fp32")
    assert all(p.dtype == torch.float32 for p in fp32.model.parameters())


def test_public_names_are_listed_and_typed():
    import typing

    import spamtune

    assert dir(spamtune) == sorted(spamtune.__all__)
    assert {"SpamClassifier", "Prediction", "GPTModel", "__version__"} <= set(dir(spamtune))
    assert all(getattr(spamtune, name) is not None for name in dir(spamtune))
    assert (Path(spamtune.__file__).parent / "py.typed").is_file()  # PEP 561: type checkers read the hints
    overloads = typing.get_overloads(SpamClassifier.predict) if hasattr(typing, "get_overloads") else []
    if overloads:  # Python 3.11+ records them
        hints = [typing.get_type_hints(f) for f in overloads]
        assert [(h["texts"], h["return"]) for h in hints][0] == (str, Prediction)
        assert hints[1]["return"] == list[Prediction]


def test_load_takes_a_run_name_under_the_data_root(tmp_path):
    write_rigged_run(paths.runs_dir(tmp_path) / "named", labels={"spam": 0, "ham": 1})
    assert SpamClassifier.load("named", data_dir=tmp_path, device="cpu").labels == ["spam", "ham"]
    with pytest.raises(SpamtuneError, match=f"no run named 'other' in {paths.runs_dir(tmp_path)}"):
        SpamClassifier.load("other", data_dir=tmp_path)
