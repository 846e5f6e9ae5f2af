"""``spamtune predict --mail``: one line per message of a Maildir, an mbox, a folder, a .eml or stdin."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from helpers import P_HAM, P_SPAM, deny_reading, non_blocking_pipe, write_rigged_run
from mail_samples import SAMPLES
from typer.testing import CliRunner

from spamtune.cli import app


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_rigged_run(tmp_path_factory.mktemp("predict-mail") / "run")


def invoke(run_dir, *args, input=None):
    return CliRunner().invoke(app, ["predict", "--run", str(run_dir), *args], input=input)


def test_maildir_one_line_per_message_in_every_format(run_dir, tmp_path):
    box = tmp_path / "Maildir"
    (box / "cur").mkdir(parents=True)
    (box / "new").mkdir()
    (box / "cur" / "1.host:2,S").write_bytes(b"Subject: hello\n\nsee you soon\n")
    (box / "cur" / "2.host:2,S").write_bytes(b"Subject: prize\r\n\r\nYou won!\r\n")
    (box / "new" / "3.host").write_bytes(SAMPLES["attachments_only"][0])
    tsv = invoke(run_dir, "--mail", str(box), "--format", "tsv")
    assert tsv.exit_code == 0, tsv.output
    assert tsv.stdout.splitlines() == [
        f"ham\t{P_HAM:.4f}\tcur/1.host:2,S",
        f"spam\t{P_SPAM:.4f}\tcur/2.host:2,S",
        f"ham\t{P_HAM:.4f}\tnew/3.host",
    ]
    records = [json.loads(line) for line in invoke(run_dir, "--mail", str(box), "--format", "jsonl").stdout.splitlines()]
    assert [r["id"] for r in records] == ["cur/1.host:2,S", "cur/2.host:2,S", "new/3.host"]
    assert [r["label"] for r in records] == ["ham", "spam", "ham"]
    assert records[1]["p_spam"] == round(P_SPAM, 6) and records[1]["damaged"] is False
    assert invoke(run_dir, "--mail", str(box), "--format", "label").stdout == "ham\nspam\nham\n"
    text = invoke(run_dir, "--mail", str(box), "--format", "text").stdout.splitlines()
    assert text[1] == f"spam  p(spam)={P_SPAM:.3f}  cur/2.host:2,S"
    failing = invoke(run_dir, "--mail", str(box), "--fail-on-spam", "--format", "label")
    assert failing.exit_code == 1 and failing.stdout == "ham\nspam\nham\n"


def test_a_message_file_that_cannot_be_read_keeps_its_line_in_every_format(run_dir, tmp_path, monkeypatch):
    """One output line per message, always: the unreadable one says error, the messages after it
    are classified, stderr names it, and the exit status says that not every line is a verdict."""
    box = tmp_path / "corpus"
    box.mkdir()
    (box / "1.eml").write_bytes(b"Subject: hello\n\nsee you soon\n")
    (box / "2.eml").write_bytes(b"Subject: prize\n\nYou won!\n")
    (box / "3.eml").write_bytes(b"Subject: prize\n\nYou won!\n")
    deny_reading(monkeypatch, box / "2.eml")
    warning = f"WARNING: cannot read {box / '2.eml'}: Permission denied; its line says error"
    error = f"Error: 1 message file(s) in {box} could not be read; their lines say error"
    tsv = invoke(run_dir, "--mail", str(box), "--format", "tsv")
    assert tsv.stdout.splitlines() == [f"ham\t{P_HAM:.4f}\t1.eml", "error\t\t2.eml", f"spam\t{P_SPAM:.4f}\t3.eml"]
    assert tsv.exit_code == 1 and tsv.stderr.splitlines() == [warning, error]
    records = [json.loads(line) for line in invoke(run_dir, "--mail", str(box), "--format", "jsonl").stdout.splitlines()]
    assert records[1] == {"id": "2.eml", "label": "error", "p_spam": None, "damaged": True, "error": "Permission denied"}
    assert [r["label"] for r in records] == ["ham", "error", "spam"] and "error" not in records[2]
    assert invoke(run_dir, "--mail", str(box), "--format", "label").stdout == "ham\nerror\nspam\n"
    text = invoke(run_dir, "--mail", str(box), "--format", "text").stdout.splitlines()
    assert text[1:] == ["error  p(spam)=-      2.eml", f"spam  p(spam)={P_SPAM:.3f}  3.eml"]
    failing = invoke(run_dir, "--mail", str(box), "--fail-on-spam", "--format", "label")
    assert failing.exit_code == 2 and failing.stdout == "ham\nerror\nspam\n"  # an error outranks "spam found"
    out = tmp_path / "verdicts.tsv"
    written = invoke(run_dir, "--mail", str(box), "--out", str(out))
    assert written.exit_code == 1 and out.read_text().splitlines()[1] == "error\t\t2.eml"


def test_mbox_ids_and_stdin(run_dir, tmp_path):
    mbox = tmp_path / "box"
    mbox.write_bytes(
        b"From a Mon\nSubject: one\nMessage-ID: <a@x>\n\nwin!\n\nFrom b Mon\nSubject: two\n\nordinary\n"
    )
    out = invoke(run_dir, "--mail", str(mbox), "--format", "tsv").stdout.splitlines()
    assert out == [f"spam\t{P_SPAM:.4f}\t1 <a@x>", f"ham\t{P_HAM:.4f}\t2"]
    stdin = invoke(run_dir, "--mail", "-", "--format", "jsonl", input=b"Subject: x\n\nfree!\n")
    assert json.loads(stdin.stdout) == {"id": "-", "label": "spam", "p_spam": round(P_SPAM, 6), "damaged": False}


def test_an_id_with_an_escape_sequence_reaches_no_terminal(run_dir, tmp_path):
    """A planted Message-ID or Maildir file name went to the output as it was: its escape sequence
    set the title of the terminal that showed `predict --mail ... --format tsv`, and a U+0085 in it
    broke the line in two for a line reader. tsv writes each as an escape, text as a space."""
    box = tmp_path / "Maildir"
    (box / "cur").mkdir(parents=True)
    (box / "new").mkdir()
    (box / "cur" / "1.host\x1b]0;pwned\x07:2,S").write_bytes(b"Subject: hello\n\nsee you soon\n")
    tsv = invoke(run_dir, "--mail", str(box), "--format", "tsv")
    assert tsv.exit_code == 0, tsv.output
    assert tsv.stdout == f"ham\t{P_HAM:.4f}\tcur/1.host\\x1b]0;pwned\\x07:2,S\n"
    shown = invoke(run_dir, "--mail", str(box), "--format", "text").stdout
    assert shown == f"ham   p(spam)={P_HAM:.3f}  cur/1.host ]0;pwned :2,S\n"
    mbox = tmp_path / "box"
    mbox.write_bytes("From a Mon\nMessage-ID: <a\x1b]0;pwned\x07\x9b\x85@x>\n\nwin!\n".encode())
    tsv = invoke(run_dir, "--mail", str(mbox), "--format", "tsv").stdout
    assert tsv == f"spam\t{P_SPAM:.4f}\t1 <a\\x1b]0;pwned\\x07\\x9b @x>\n"
    jsonl = invoke(run_dir, "--mail", str(mbox), "--format", "jsonl").stdout
    assert jsonl.isascii() and json.loads(jsonl)["id"] == "1 <a\x1b]0;pwned\x07\x9b\x85@x>"


def test_a_non_blocking_stdin_is_read_to_the_end_of_the_message(monkeypatch):
    """A pipe made non-blocking by another process sharing it reads as empty while its writer
    pauses: the message was its part before the first pause, and its verdict one on that part."""
    from spamtune.cli.predict_mail import mail_messages

    with non_blocking_pipe([b"Subject: x\n\nfirst ", b"then free!\n"]) as stream:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(stream))
        assert list(mail_messages(Path("-"))) == [("-", b"Subject: x\n\nfirst then free!\n")]


@pytest.mark.parametrize("fail_on_spam, status", [((), 1), (("--fail-on-spam",), 2)])
def test_an_empty_stdin_is_no_message_and_gets_no_verdict(run_dir, fail_on_spam, status):
    """As filter says: `cat missing.eml | spamtune predict --mail -` got "ham" and exit status 0."""
    empty = invoke(run_dir, "--mail", "-", *fail_on_spam, input=b"")
    assert (empty.exit_code, empty.stdout) == (status, "")
    assert empty.stderr == "Error: --mail - read nothing on stdin: no message to classify\n"


def test_long_mode_changes_what_is_read(run_dir, tmp_path):
    message = tmp_path / "long.eml"
    message.write_bytes(b"Subject: news\n\n" + b" word" * 300 + b" unsubscribe!\n")
    heads = invoke(run_dir, "--mail", str(message), "--format", "label", "--long", "head").stdout
    tails = invoke(run_dir, "--mail", str(message), "--format", "label", "--long", "head-tail").stdout
    assert (heads, tails) == ("ham\n", "spam\n")


def test_usage_errors(run_dir, tmp_path):
    both = invoke(run_dir, "--mail", str(tmp_path), "hello")
    assert both.exit_code == 2 and "--mail reads its own messages" in both.stderr
    missing = invoke(run_dir, "--mail", str(tmp_path / "nope"))
    assert missing.exit_code == 1 and missing.stderr.startswith("Error: mail source not found")
    bad_long = invoke(run_dir, "--long", "tail", "x")
    assert bad_long.exit_code == 2


@pytest.mark.parametrize("args", [["--mail", ""], ["--mail="]])
def test_an_empty_mail_path_is_a_usage_error_not_the_current_folder(run_dir, tmp_path, monkeypatch, args):
    """`--mail "$MAILDIR"` with the variable unset read every file under the current folder."""
    (tmp_path / "notes.txt").write_bytes(b"not mail\n")
    monkeypatch.chdir(tmp_path)
    empty = invoke(run_dir, *args)
    assert (empty.exit_code, empty.stdout) == (2, "")
    assert empty.stderr.startswith("Error: --mail needs a path")
    assert invoke(run_dir, "--mail", ".", "--format", "label").stdout == "ham\n"  # the current folder, said so


def test_evaluate_on_mail_sources_and_long_modes(run_dir, tmp_path):
    ham = tmp_path / "ham"
    ham.mkdir()
    for i in range(3):
        (ham / f"{i}.eml").write_bytes(b"Subject: hi\n\nsee you at %d\n" % i)
    (tmp_path / "spam.mbox").write_bytes(
        b"From a Mon\nSubject: one\n\nyou won!\n\nFrom b Mon\nSubject: two\n\n" + b" word" * 300 + b" prize!\n"
    )
    args = ["evaluate", str(run_dir), "--input", f"ham={ham}", "--input", f"spam={tmp_path / 'spam.mbox'}", "--format", "json"]
    chunks = CliRunner().invoke(app, args)  # mail is read in chunks by default
    assert chunks.exit_code == 0, chunks.output
    report = json.loads(chunks.stdout)
    assert report["n"] == 5 and report["accuracy"] == 1.0
    head = json.loads(CliRunner().invoke(app, [*args, "--long", "head"]).stdout)
    assert head["accuracy"] == pytest.approx(4 / 5)  # the long spam's "!" lies past the first window


def test_a_class_named_error_is_refused_where_its_lines_would_look_like_unreadable_ones(tmp_path):
    """A run with a class named as an unreadable message's label: label and text lines could not
    tell them apart, tsv and jsonl can (no p_spam)."""
    run_dir = write_rigged_run(tmp_path / "run", labels={"error": 0, "spam": 1})
    message = tmp_path / "1.eml"
    message.write_bytes(b"Subject: hello\n\nsee you soon\n")
    for fmt in ("label", "text"):
        refused = invoke(run_dir, "--mail", str(message), "--format", fmt)
        assert refused.exit_code == 2 and refused.stdout == ""
        assert refused.stderr.splitlines() == [
            f"Error: this run has a class named 'error', the label --mail gives a message it cannot read: with --format {fmt} "
            "the two look alike; use --format tsv or jsonl, where an unreadable message has no p_spam"
        ]
    tsv = invoke(run_dir, "--mail", str(message), "--format", "tsv")
    assert tsv.exit_code == 0, tsv.output
    assert tsv.stdout.startswith("error\t0.")


# ---------------------------------------------------------------- --explain


def _explain_box(tmp_path) -> Path:
    """A folder whose messages the model reads otherwise than their bytes: a QP subject, an HTML body."""
    box = tmp_path / "explained"
    box.mkdir()
    (box / "1.eml").write_bytes(b"Subject: hello\n\nsee   you\tsoon\n")
    (box / "2.eml").write_bytes(
        b"Subject: =?utf-8?q?Gagn=C3=A9?=\nContent-Type: text/html\n\n<p>Claim <b>your prize now!</b></p>\n"
    )
    return box


def test_explain_with_mail_explains_the_text_the_model_read_in_every_format(run_dir, tmp_path):
    """--explain was refused with --mail: each message's line now says why, in spans of the text
    the model read of it (decoded, HTML stripped), which jsonl and tsv carry to map them back."""
    from spamtune.mail import message_text

    box = _explain_box(tmp_path)
    read = [message_text((box / name).read_bytes()) for name in ("1.eml", "2.eml")]
    assert read[1] == "Gagné Claim your prize now!"  # not the message's bytes: the spans index this
    jsonl = invoke(run_dir, "--mail", str(box), "--explain", "--format", "jsonl")
    assert jsonl.exit_code == 0, jsonl.output
    records = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert [r["id"] for r in records] == ["1.eml", "2.eml"] and [r["label"] for r in records] == ["ham", "spam"]
    assert [r["text"] for r in records] == read
    for record in records:
        assert record["window"] == [{"start": 0, "end": len(record["text"]), "token_start": 0, "token_end": record["window"][0]["token_end"]}]
        assert all(record["text"][s["start"] : s["end"]] == s["text"] for s in record["explanation"])
    assert records[1]["explanation"][0]["text"] == "now!" and records[1]["explanation"][0]["score"] > 0
    header, *rows = [line.split("\t") for line in invoke(run_dir, "--mail", str(box), "--explain", "--header").stdout.splitlines()]
    assert header == ["label", "p_spam", "id", "explanation", "window", "text"]
    assert [row[:3] for row in rows] == [["ham", f"{P_HAM:.4f}", "1.eml"], ["spam", f"{P_SPAM:.4f}", "2.eml"]]
    assert [json.loads(row[3]) for row in rows] == [r["explanation"] for r in records]
    assert [json.loads(row[4]) for row in rows] == [r["window"] for r in records] and [row[5] for row in rows] == read
    text = invoke(run_dir, "--mail", str(box), "--explain", "--format", "text").stdout.splitlines()
    assert text == [f"ham   p(spam)={P_HAM:.3f}  1.eml  hello see you soon", f"spam  p(spam)={P_SPAM:.3f}  2.eml  Gagné Claim your prize [+now!]"]
    label = invoke(run_dir, "--mail", str(box), "--explain", "--format", "label")
    assert label.exit_code == 2 and label.stdout == "" and "--explain needs --format text, tsv or jsonl" in label.stderr


def test_explain_with_mail_keeps_the_line_of_a_message_that_cannot_be_read(run_dir, tmp_path, monkeypatch):
    """One line per message with --explain too, its explanation fields empty (null), the columns
    of every tsv line the same."""
    box = _explain_box(tmp_path)
    (box / "0.eml").write_bytes(b"Subject: gone\n\nwin!\n")
    deny_reading(monkeypatch, box / "0.eml")
    tsv = invoke(run_dir, "--mail", str(box), "--explain", "--format", "tsv", "--header")
    assert tsv.exit_code == 1 and "cannot read" in tsv.stderr
    rows = [line.split("\t") for line in tsv.stdout.splitlines()]
    assert rows[1] == ["error", "", "0.eml", "", "", ""] and {len(row) for row in rows} == {6}
    records = [json.loads(line) for line in invoke(run_dir, "--mail", str(box), "--explain", "--format", "jsonl").stdout.splitlines()]
    assert records[0] == {"id": "0.eml", "label": "error", "p_spam": None, "damaged": True, "error": "Permission denied",
                          "explanation": None, "window": None, "text": None}  # fmt: skip
    assert [r["label"] for r in records[1:]] == ["ham", "spam"] and records[2]["explanation"]
    text = invoke(run_dir, "--mail", str(box), "--explain", "--format", "text").stdout.splitlines()
    assert len(text) == 3 and text[0] == "error  p(spam)=-      0.eml"


def test_explain_with_mail_explains_the_window_that_decided_read_as_mail_is(run_dir, tmp_path):
    """Mail is read in chunks unless --long says otherwise (lines of text: their head): the
    explanation is of the chunk whose verdict the line gives, from stdin too."""
    raw = b"Subject: news\n\n" + b" word" * 300 + b" unsubscribe!\n"
    for args, label, parts in (((), "spam", 1), (("--long", "head-tail"), "spam", 2), (("--long", "head"), "ham", 1)):
        result = invoke(run_dir, "--mail", "-", "--explain", "--format", "jsonl", *args, input=raw)
        assert result.exit_code == 0, result.output
        record = json.loads(result.stdout)
        assert (record["id"], record["label"], len(record["window"])) == ("-", label, parts)
        assert (record["window"][-1]["end"] == len(record["text"])) == (label == "spam")  # the head ends before the "!"
        spam_side = [s["text"] for s in record["explanation"] if s["score"] > 0]
        assert ("unsubscribe!" in spam_side) == (label == "spam")
        assert all(record["text"][s["start"] : s["end"]] == s["text"] for s in record["explanation"])


def test_explain_with_mail_forwards_each_window_once_for_its_verdict(run_dir, tmp_path, rows_forwarded):
    """Each message's windows went through the model for its verdict, then again inside its
    explanation: now the verdict is the explanation's, and the lines are those without --explain
    plus the explanation."""
    from spamtune.infer import SpamClassifier
    from spamtune.mail import message_text
    from spamtune.options import DEFAULT_LONG

    box = _explain_box(tmp_path)
    (box / "3.eml").write_bytes(b"Subject: news\n\n" + b" word" * 300 + b" unsubscribe!\n")
    plain = [json.loads(line) for line in invoke(run_dir, "--mail", str(box), "--format", "jsonl").stdout.splitlines()]
    verdict_rows = sum(rows_forwarded)
    texts = [message_text(path.read_bytes()) for path in sorted(box.iterdir())]
    clf = SpamClassifier.load(run_dir, few_shapes=True)  # as predict loads it
    rows_forwarded.clear()
    clf.explain(texts, long=DEFAULT_LONG)
    explain_rows = sum(rows_forwarded)
    rows_forwarded.clear()
    result = invoke(run_dir, "--mail", str(box), "--explain", "--format", "jsonl")
    assert result.exit_code == 0, result.output
    assert sum(rows_forwarded) == explain_rows and verdict_rows > 0  # was explain_rows + verdict_rows
    explained = [json.loads(line) for line in result.stdout.splitlines()]
    assert [{k: r[k] for k in ("id", "label", "p_spam", "damaged")} for r in explained] == plain
    assert [r["text"] for r in explained] == texts and [r["label"] for r in plain] == ["ham", "spam", "spam"]
