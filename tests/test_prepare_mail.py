"""``spamtune prepare --input LABEL=PATH``: mail folders and mboxes as labelled texts."""

from __future__ import annotations

import json

import pytest
from helpers import TINY_CONFIG, deny_reading
from mail_samples import SAMPLES
from typer.testing import CliRunner

from spamtune.cli import app
from spamtune.errors import SpamtuneError, SpamtuneUsageError
from spamtune.mail import READING_VERSION
from spamtune.mail_sources import parse_source
from spamtune.options import PrepareOptions
from spamtune.labelled_texts import read_input, read_mail_sources
from spamtune.prepare import prepare_splits


def make_corpus(root):
    """A Maildir of 24 ham messages (2 damaged, 1 empty, 1 repeated) and an mbox of 20 spam."""
    box = root / "INBOX"
    for sub in ("cur", "new", "tmp"):
        (box / sub).mkdir(parents=True)
    for i in range(20):
        (box / "cur" / f"{1000 + i}.host:2,S").write_bytes(f"Subject: meeting {i}\n\nSee you at {i} o'clock.\n".encode())
    (box / "cur" / "2000.host:2,S").write_bytes(SAMPLES["eight_bit_header_latin1"][0])  # damaged
    (box / "new" / "3000.host").write_bytes(SAMPLES["truncated_base64"][0])  # damaged
    (box / "new" / "3001.host").write_bytes(SAMPLES["empty_body"][0])  # empty
    (box / "new" / "3002.host").write_bytes(b"Subject: meeting 3\n\nSee you at 3 o'clock.\n")  # the same text again
    mbox = b"".join(
        b"From spam@example.com Mon Nov 23 10:00:00 2026\nSubject: WIN %d\n\n>From now on you win %d pounds!\n\n" % (i, i)
        for i in range(20)
    )
    (root / "junk.mbox").write_bytes(mbox)
    return box, root / "junk.mbox"


def test_mail_sources_become_labelled_texts_with_counts(tmp_path):
    box, mbox = make_corpus(tmp_path)
    source = read_mail_sources([parse_source(f"ham={box}"), parse_source(f"spam={mbox}")])
    assert source.format == "mail" and source.label_map == {"ham": 0, "spam": 1}
    assert source.label_counts() == {"ham": 23, "spam": 20}
    assert source.texts[0] == "meeting 0 See you at 0 o'clock."
    assert source.texts[-1] == "WIN 19 From now on you win 19 pounds!"
    ham, spam = source.mail_sources
    assert (ham.label, ham.messages, ham.kept, ham.damaged, ham.empty, ham.truncated) == ("ham", 24, 23, 2, 1, 0)
    assert (spam.messages, spam.damaged, spam.empty) == (20, 0, 0)

    prepared = prepare_splits(source, PrepareOptions(balance="none", dedupe=True))
    assert prepared.duplicates_dropped == 1
    record = prepared.record()
    assert record["input"]["format"] == "mail"
    assert [s["kept"] for s in record["input"]["mail_sources"]] == [23, 20]


def test_the_digest_follows_the_mail(tmp_path):
    box, mbox = make_corpus(tmp_path)
    sources = [parse_source(f"ham={box}"), parse_source(f"spam={mbox}")]
    before = read_mail_sources(sources).sha256
    (box / "new" / "3000.host").write_bytes(b"Subject: changed\n\nnew text\n")
    assert read_mail_sources(sources).sha256 != before


def test_mail_labels_fold_case_like_file_labels(tmp_path):
    """``Ham=INBOX`` and ``ham=Archive`` are one class, as ``Ham`` and ``ham`` rows of a file are."""
    box, mbox = make_corpus(tmp_path)
    sources = [parse_source(f"Ham={box}"), parse_source(f"ham={box}"), parse_source(f"SPAM={mbox}")]
    folded = read_mail_sources(sources)
    assert folded.label_map == {"ham": 0, "spam": 1}
    assert folded.label_counts() == {"ham": 46, "spam": 20}
    assert folded.label_spellings_merged == {"ham": ["Ham", "ham"]}
    kept = read_mail_sources(sources, keep_label_case=True)
    assert sorted(kept.label_map) == ["Ham", "SPAM", "ham"] and not kept.label_case_folded


def test_mail_labels_that_mean_one_number_are_one_class(tmp_path):
    box, mbox = make_corpus(tmp_path)
    sources = [parse_source(f"1={box}"), parse_source(f"1.0={box}"), parse_source(f"0={mbox}")]
    for keep_label_case in (False, True):
        source = read_mail_sources(sources, keep_label_case=keep_label_case)
        assert source.label_map == {"0": 0, "1": 1} and source.label_counts() == {"0": 20, "1": 46}
        assert source.label_spellings_merged == {"1": ["1", "1.0"]}
    with pytest.raises(SpamtuneError, match=f"the mail source 0.5={mbox} has the label 0.5, a number with a fraction"):
        read_mail_sources([parse_source(f"1={box}"), parse_source(f"0.5={mbox}")])


def test_input_rules(tmp_path):
    box, mbox = make_corpus(tmp_path)
    with pytest.raises(SpamtuneError, match="at least two"):
        read_input(tmp_path, [f"ham={box}"])
    with pytest.raises(SpamtuneUsageError, match="cannot be mixed"):
        read_input(tmp_path, [f"ham={box}", str(mbox)])
    with pytest.raises(SpamtuneUsageError, match="--format"):
        read_input(tmp_path, [f"ham={box}", f"spam={mbox}"], fmt="csv")
    with pytest.raises(SpamtuneError, match="mail source not found"):
        read_input(tmp_path, [f"ham={box}", f"spam={tmp_path / 'nope'}"])
    (tmp_path / "empty" / "cur").mkdir(parents=True)
    with pytest.raises(SpamtuneError, match="no messages found"):
        read_input(tmp_path, [f"ham={box}", f"spam={tmp_path / 'empty'}"])


def test_prepare_command_on_mail(tmp_path):
    box, mbox = make_corpus(tmp_path)
    data = tmp_path / "data"
    result = CliRunner().invoke(
        app, ["prepare", "--data-dir", str(data), "--input", f"ham={box}", "--input", f"spam={mbox}", "--dedupe"]
    )
    assert result.exit_code == 0, result.output
    assert (
        f"ham: 24 messages from {box}: 23 kept, 2 damaged (kept with what could be read), 1 empty (left out), "
        "0 unreadable (left out), 0 read on their first MiB"
    ) in result.stderr
    assert "dropped 1 duplicate texts" in result.stderr
    assert "leakage: 0 of" in result.stderr
    record = json.loads((data / "prepare.json").read_text())
    assert record["counts"]["train"]["total"] + record["counts"]["validation"]["total"] + record["counts"]["test"]["total"] == 40
    assert (data / "train.csv").is_file()


def test_a_mail_source_named_with_control_characters_is_named_escaped_on_one_line(tmp_path):
    """A source's line on stderr named its folder as it was: an escape sequence in the name
    drove the terminal, and a line break cut the line in two."""
    folder = tmp_path / "mail\x1b]0;x\x07\n"
    folder.mkdir()
    box, mbox = make_corpus(folder)
    result = CliRunner().invoke(app, ["prepare", "--data-dir", str(tmp_path / "data"), "--input", f"ham={box}", "--input", f"spam={mbox}"])
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(f"ham: 24 messages from {tmp_path}/mail\\x1b]0;x\\x07\\n/INBOX: 23 kept, ")
    assert f"\nspam: 20 messages from {tmp_path}/mail\\x1b]0;x\\x07\\n/junk.mbox: 20 kept, " in result.stderr
    assert "\x1b" not in result.stderr


def test_a_message_file_that_cannot_be_read_is_left_out_with_a_warning_naming_it(tmp_path, monkeypatch):
    """Training data is better without one message than not at all: the file is named on stderr,
    counted in the summary and in prepare.json, and the other messages are prepared."""
    box, mbox = make_corpus(tmp_path)
    denied = box / "cur" / "1005.host:2,S"
    deny_reading(monkeypatch, denied)
    data = tmp_path / "data"
    result = CliRunner().invoke(app, ["prepare", "--data-dir", str(data), "--input", f"ham={box}", "--input", f"spam={mbox}"])
    assert result.exit_code == 0, result.output
    assert f"WARNING: cannot read {denied}: Permission denied; it is left out" in result.stderr
    assert f"ham: 24 messages from {box}: 22 kept, 2 damaged (kept with what could be read), 1 empty (left out), 1 unreadable (left out)" in result.stderr
    [ham, spam] = json.loads((data / "prepare.json").read_text())["input"]["mail_sources"]
    assert (ham["messages"], ham["unreadable"], ham["kept"], spam["unreadable"]) == (24, 1, 22, 0)


def test_training_warns_when_the_splits_were_read_from_mail_by_another_version(tmp_path):
    """A model trained on mail read one way and shown mail read another is tested on text it never
    saw: prepare records how it read the mail, and finetune says when that is not how mail is read
    now. Splits from other files, or prepared by this version, train without the line."""
    box, mbox = make_corpus(tmp_path)
    data = tmp_path / "data"
    prepared = CliRunner().invoke(app, ["prepare", "--data-dir", str(data), "--input", f"ham={box}", "--input", f"spam={mbox}"])
    assert prepared.exit_code == 0, prepared.output
    record_file = data / "prepare.json"
    record = json.loads(record_file.read_text())
    assert record["input"]["mail_reading"] == READING_VERSION
    (data / "tiny.json").write_text(json.dumps(TINY_CONFIG))

    def finetune_stderr() -> str:
        result = CliRunner().invoke(
            app, ["finetune", "--data-dir", str(data), "--model", str(data / "tiny.json"), "--weights", "random",
                  "--device", "cpu", "--precision", "fp32", "--epochs", "1"]
        )
        assert result.exit_code == 0, result.output
        return result.stderr

    assert "mail reading" not in finetune_stderr()
    del record["input"]["mail_reading"]  # as prepare wrote it before it kept the version
    record_file.write_text(json.dumps(record))
    assert (
        f"WARNING: the splits in {data} were read from mail by another version of spamtune "
        f"(mail reading 1, now {READING_VERSION})"
    ) in finetune_stderr()
    del record["input"]["mail_sources"]  # splits from a file of labelled texts: no mail was read
    record_file.write_text(json.dumps(record))
    assert "mail reading" not in finetune_stderr()
