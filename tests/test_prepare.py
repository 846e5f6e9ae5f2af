import contextlib
import csv
import errno
import gzip
import hashlib
import io
import json
import os
import signal
import sys
import zipfile
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from helpers import non_blocking_pipe
from typer.testing import CliRunner

from spamtune import paths
from spamtune.cli import app
from spamtune.data import MAX_TEXT_CHARS, Split, read_label_map, read_split, write_split
from spamtune.errors import SpamtuneError, SpamtuneUsageError
from spamtune.labelled_texts import read_labelled_texts
from spamtune.prepare import PrepareOptions, prepare_splits, write_prepared

OUTPUT_NAMES = ["train.csv", "validation.csv", "test.csv", "labels.json", "prepare.json"]


def run_prepare(*args):
    return CliRunner().invoke(app, ["prepare", *map(str, args)])


def read_splits(root):
    return {name: read_split(paths.split_file(root, name)) for name in paths.SPLITS}


def all_rows(root):
    """(label index, text) of every row in the three split files."""
    return Counter((label, text) for split in read_splits(root).values() for label, text in zip(split.labels, split.texts))


def write_rows(path, header, rows):
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# --- the real SMS Spam Collection -------------------------------------------------------------


def book_splits(sms_file, seed=123):
    """Chapter 6's create_balanced_dataset + random_split, on the file parsed with quoting off."""
    df = pd.read_csv(sms_file, sep="\t", header=None, names=["Label", "Text"], quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False)
    num_spam = (df["Label"] == "spam").sum()
    ham_subset = df[df["Label"] == "ham"].sample(num_spam, random_state=seed)
    balanced = pd.concat([ham_subset, df[df["Label"] == "spam"]])
    balanced["Label"] = balanced["Label"].map({"ham": 0, "spam": 1})
    shuffled = balanced.sample(frac=1, random_state=seed).reset_index(drop=True)
    train_end = int(len(shuffled) * 0.7)
    validation_end = train_end + int(len(shuffled) * 0.1)
    return shuffled[:train_end], shuffled[train_end:validation_end], shuffled[validation_end:]


def test_real_file_is_read_with_quoting_off(sms_file):
    source = read_labelled_texts(sms_file)
    assert source.format == "sms"
    assert len(source.texts) == 5574
    assert source.label_counts() == {"ham": 4827, "spam": 747}
    assert source.label_map == {"ham": 0, "spam": 1}
    # Messages that open with a quote are where default CSV quoting merges lines.
    quoted = [t for t in source.texts if t.startswith('"')]
    assert quoted and all("\n" not in t and "\t" not in t for t in quoted)
    assert source.sha256 == "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d"


def test_real_file_gives_the_books_split(sms_file, tmp_path):
    result = run_prepare("--input", sms_file, "--data-dir", tmp_path)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [str(tmp_path / name) for name in OUTPUT_NAMES]
    assert "read 5,574 rows (4,827 ham / 747 spam)" in result.stderr

    splits = read_splits(tmp_path)
    assert [len(s) for s in splits.values()] == [1045, 149, 300]
    assert Counter(label for s in splits.values() for label in s.labels) == {0: 747, 1: 747}
    for ours, book in zip(splits.values(), book_splits(sms_file)):
        assert ours.texts == book["Text"].tolist()
        assert ours.labels == book["Label"].tolist()
    assert read_label_map(tmp_path) == {"ham": 0, "spam": 1}

    record = json.loads((tmp_path / "prepare.json").read_text())
    assert record["input"]["sha256"] == hashlib.sha256(sms_file.read_bytes()).hexdigest()
    assert record["input"]["rows_per_label"] == {"ham": 4827, "spam": 747}
    assert record["options"] == {"balance": "undersample", "split": [0.7, 0.1, 0.2], "seed": 123, "stratify": False, "dedupe": False, "keep_label_case": False}
    assert {name: c["total"] for name, c in record["counts"].items()} == {"train": 1045, "validation": 149, "test": 300}
    train_texts = set(splits["train"].texts)
    leaked_test = sum(t in train_texts for t in splits["test"].texts)
    leaked_validation = sum(t in train_texts for t in splits["validation"].texts)
    assert leaked_test > 0 and record["leakage_into_train"] == {"validation": leaked_validation, "test": leaked_test}
    assert f"leakage: {leaked_test} of 300 test texts and {leaked_validation} of 149 validation texts also appear in train" in result.stderr
    # The table: a row per split with its label counts and token lengths.
    train_row = next(line for line in result.stderr.splitlines() if "train" in line and "1,045" in line)
    assert str(record["token_lengths"]["train"]["max"]) in train_row


def test_same_seed_same_bytes_other_seed_other_split(sms_file, tmp_path):
    for folder, seed in (("a", 123), ("b", 123), ("c", 7)):
        assert run_prepare("--input", sms_file, "--data-dir", tmp_path / folder, "--seed", seed).exit_code == 0
    for name in ("train.csv", "validation.csv", "test.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()


def test_dedupe_on_real_file(sms_file, tmp_path):
    result = run_prepare("--input", sms_file, "--data-dir", tmp_path, "--dedupe")
    assert result.exit_code == 0, result.stderr
    assert "dropped 403 duplicate texts" in result.stderr
    assert "leakage: 0 of 262 test texts and 0 of 130 validation texts" in result.stderr
    splits = read_splits(tmp_path)
    texts = [t for s in splits.values() for t in s.texts]
    assert len(texts) == len(set(texts)) == 2 * 653
    assert [len(s) for s in splits.values()] == [914, 130, 262]
    assert json.loads((tmp_path / "prepare.json").read_text())["duplicates_dropped"] == 403


# --- small files --------------------------------------------------------------------------------


TRICKY_TEXTS = ["hello, world", 'she said "hi"', "two\nlines", "NA", "null", "", "  padded  ", "£5 prize", "x", "y"]


def test_csv_with_custom_columns_keeps_texts_verbatim(tmp_path):
    rows = [(text, "spam" if i % 2 else "ham") for i, text in enumerate([*TRICKY_TEXTS, "z"])]
    src = write_rows(tmp_path / "in.csv", ["message", "kind"], rows)
    out = tmp_path / "out"
    result = run_prepare("--input", src, "--text-col", "message", "--label-col", "kind", "--balance", "none", "--data-dir", out)
    assert result.exit_code == 0, result.stderr
    # Verbatim, except the one empty text, which is dropped (and said so).
    assert all_rows(out) == Counter((1 if kind == "spam" else 0, text) for text, kind in rows if text)
    assert "WARNING: dropped 1 rows whose text is empty" in result.stderr
    assert read_label_map(out) == {"ham": 0, "spam": 1}


def test_tsv_with_header_has_no_quoting(tmp_path):
    texts = ['"opens with a quote', 'ends with one"', "plain", "NA", "more", "text", "here", "and", "some", "else"]
    src = tmp_path / "in.tsv"
    src.write_text("body\ttag\n" + "".join(f"{t}\t{'pos' if i < 5 else 'neg'}\n" for i, t in enumerate(texts)), encoding="utf-8")
    out = tmp_path / "out"
    result = run_prepare("--input", src, "--text-col", "body", "--label-col", "tag", "--data-dir", out)
    assert result.exit_code == 0, result.stderr
    assert read_label_map(out) == {"neg": 0, "pos": 1}
    assert all_rows(out) == Counter((0 if i >= 5 else 1, t) for i, t in enumerate(texts))


def test_jsonl_with_integer_labels(tmp_path):
    src = tmp_path / "in.jsonl"
    records = [{"msg": text, "y": i % 2, "extra": None} for i, text in enumerate([*TRICKY_TEXTS, "z", "w"])]
    src.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    out = tmp_path / "out"
    result = run_prepare("--input", src, "--text-col", "msg", "--label-col", "y", "--balance", "none", "--data-dir", out)
    assert result.exit_code == 0, result.stderr
    assert read_label_map(out) == {"0": 0, "1": 1}
    assert all_rows(out) == Counter((r["y"], r["msg"]) for r in records if r["msg"])


def test_format_option_overrides_the_extension(tmp_path):
    src = write_rows(tmp_path / "rows.txt", ["text", "label"], [(f"t{i}", "ab"[i % 2]) for i in range(10)])
    assert run_prepare("--input", src, "--data-dir", tmp_path / "out").exit_code == 2
    result = run_prepare("--input", src, "--format", "csv", "--data-dir", tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    assert sum(all_rows(tmp_path / "out").values()) == 10


def test_a_tilde_in_the_input_is_the_home_folder(tmp_path, monkeypatch):
    """`--input=~/mails.csv`: the shell expands no "~" after "="."""
    monkeypatch.setenv("HOME", str(tmp_path))
    write_rows(tmp_path / "in.csv", ["text", "label"], [(f"t{i}", "ab"[i % 2]) for i in range(10)])
    result = run_prepare("--input=~/in.csv", "--data-dir", tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    assert json.loads((tmp_path / "out" / "prepare.json").read_text())["input"]["path"] == str(tmp_path / "in.csv")


def test_paths_with_control_characters_print_escaped_on_one_line(tmp_path):
    """The written paths went to stdout, and the input's name to stderr, as they were: a data
    root or --input named with an escape sequence and a line break drove the terminal and made
    two lines of each. Each is one escaped line; a plain path prints as it is."""
    src = write_rows(tmp_path / "in\x1b]0;x\x07\n.csv", ["text", "label"], [(f"t{i}", "ab"[i % 2]) for i in range(10)])
    result = run_prepare("--input", src, "--data-dir", tmp_path / "out\x1b[2J\nroot")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [f"{tmp_path}/out\\x1b[2J\\nroot/{name}" for name in OUTPUT_NAMES]
    assert f"read 10 rows (5 a / 5 b) from {tmp_path}/in\\x1b]0;x\\x07\\n.csv\n" in result.stderr
    assert "\x1b" not in result.output and (tmp_path / "out\x1b[2J\nroot" / "train.csv").is_file()


def test_paths_with_bytes_that_are_no_utf8_are_recorded_and_printed_escaped(tmp_path):
    """A data root or --input named with a byte that is no UTF-8: prepare failed with "unexpected
    UnicodeEncodeError" writing prepare.json, which records the input's path. The byte is
    written \\udcff there (read back as the same name) and in the paths printed."""
    odd = os.fsdecode(b"x\xff")
    src = write_rows(tmp_path / f"{odd}.csv", ["text", "label"], [(f"t{i}", "ab"[i % 2]) for i in range(10)])
    result = run_prepare("--input", src, "--data-dir", tmp_path / odd)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [f"{tmp_path}/x\\udcff/{name}" for name in OUTPUT_NAMES]
    written = (tmp_path / odd / "prepare.json").read_bytes()
    assert b'x\\udcff.csv"' in written and json.loads(written)["input"]["path"] == str(src)


def test_headerless_ham_spam_tsv_is_read_as_sms(tmp_path):
    src = tmp_path / "messages"
    src.write_text('ham\t"quoted\nspam\tWIN\tnow\n', encoding="utf-8")
    source = read_labelled_texts(src)
    assert source.format == "sms"
    assert source.texts == ['"quoted', "WIN\tnow"] and source.labels == ["ham", "spam"]


def test_several_labels_are_sorted_and_undersampled(tmp_path):
    rows = [(f"{label} {i}", label) for label, n in (("pos", 5), ("neg", 6), ("neutral", 4)) for i in range(n)]
    src = write_rows(tmp_path / "in.csv", ["text", "label"], rows)
    out = tmp_path / "out"
    result = run_prepare("--input", src, "--data-dir", out)
    assert result.exit_code == 0, result.stderr
    assert read_label_map(out) == {"neg": 0, "neutral": 1, "pos": 2}
    assert "read 15 rows (6 neg / 4 neutral / 5 pos)" in result.stderr
    kept = all_rows(out)
    assert Counter(label for label, _ in kept.elements()) == {0: 4, 1: 4, 2: 4}
    assert set(text for _, text in kept) <= set(text for text, _ in rows)


def test_integer_labels_map_in_numeric_order(tmp_path):
    src = write_rows(tmp_path / "in.csv", ["text", "label"], [("a", "10"), ("b", "2"), ("c", "1"), ("d", "2")])
    assert read_labelled_texts(src).label_map == {"1": 0, "2": 1, "10": 2}


def test_stratify_keeps_label_proportions(tmp_path):
    src = write_rows(tmp_path / "in.csv", ["text", "label"], [(f"m{i}", "spam" if i % 5 == 0 else "ham") for i in range(100)])
    out = tmp_path / "out"
    result = run_prepare("--input", src, "--balance", "none", "--stratify", "--data-dir", out)
    assert result.exit_code == 0, result.stderr
    counts = {name: Counter(s.labels) for name, s in read_splits(out).items()}
    assert counts == {"train": {0: 56, 1: 14}, "validation": {0: 8, 1: 2}, "test": {0: 16, 1: 4}}


def test_balance_none_keeps_every_row(sms_file, tmp_path):
    result = run_prepare("--input", sms_file, "--balance", "none", "--data-dir", tmp_path)
    assert result.exit_code == 0, result.stderr
    splits = read_splits(tmp_path)
    # Stratified: each label cut 70/10/20 on its own, so every split has the natural mix.
    assert [len(s) for s in splits.values()] == [3900, 556, 1118]
    assert [Counter(s.labels)[1] for s in splits.values()] == [522, 74, 151]
    assert Counter(label for s in splits.values() for label in s.labels) == {0: 4827, 1: 747}


def test_options_are_checked_in_the_library_too(sms_file):
    source = read_labelled_texts(sms_file)
    with pytest.raises(SpamtuneUsageError, match="sum to 1"):
        prepare_splits(source, PrepareOptions(split=(0.5, 0.1, 0.1)))


def file_bytes(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("blocked", OUTPUT_NAMES)
def test_a_failed_write_replaces_nothing(tmp_path, blocked):
    old = write_rows(tmp_path / "old.csv", ["text", "label"], [(f"old {i}", "ab"[i % 2]) for i in range(10)])
    new = write_rows(tmp_path / "new.csv", ["text", "label"], [(f"new {i}", "xy"[i % 2]) for i in range(10)])
    out = tmp_path / "out"
    assert run_prepare("--input", old, "--data-dir", out).exit_code == 0
    (out / blocked).unlink()
    (out / blocked).mkdir()  # this file cannot be renamed into place
    before = file_bytes(out)
    result = run_prepare("--input", new, "--data-dir", out)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == f"Error: cannot write {out / blocked}: it is a folder\n"
    assert file_bytes(out) == before and sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES)


def test_ctrl_c_among_the_renames_lands_after_the_last(tmp_path, monkeypatch):
    old = write_rows(tmp_path / "old.csv", ["text", "label"], [(f"old {i}", "ab"[i % 2]) for i in range(10)])
    new = write_rows(tmp_path / "new.csv", ["text", "label"], [(f"new {i}", "xy"[i % 2]) for i in range(10)])
    out = tmp_path / "out"
    assert run_prepare("--input", old, "--data-dir", out).exit_code == 0
    before = file_bytes(out)
    replace = os.replace

    def replace_then_ctrl_c(source, target):
        replace(source, target)
        if Path(target).name in OUTPUT_NAMES:  # a final name, not a temporary written in place
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(os, "replace", replace_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        write_prepared(out, prepare_splits(read_labelled_texts(new)))
    after = file_bytes(out)
    assert sorted(after) == sorted(OUTPUT_NAMES) and all(after[name] != before[name] for name in OUTPUT_NAMES)
    assert read_label_map(out) == {"x": 0, "y": 1}


def test_a_full_disk_is_reported_as_the_file_it_was_for(tmp_path, monkeypatch):
    src = write_rows(tmp_path / "in.csv", ["text", "label"], [(f"t{i}", "ab"[i % 2]) for i in range(10)])
    out = tmp_path / "out"

    class FullDisk:
        def writerow(self, row):
            raise OSError(errno.ENOSPC, "No space left on device")

        writerows = writerow

    monkeypatch.setattr(csv, "writer", lambda f: FullDisk())
    result = run_prepare("--input", src, "--data-dir", out)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == f"Error: disk full: {out / 'train.csv'}\n"
    assert list(out.iterdir()) == []


def test_sigterm_while_writing_leaves_no_temporary_and_exits_143(tmp_path, monkeypatch):
    """`timeout` or a scheduler ends prepare as Ctrl-C does: the data root keeps no half-written file."""
    from spamtune import prepare as prepare_module
    from spamtune.interrupts import forget_stop

    src = write_rows(tmp_path / "in.csv", ["text", "label"], [(f"t{i}", "ab"[i % 2]) for i in range(10)])
    out = tmp_path / "out"
    write_split_into = prepare_module.write_split_into

    def write_then_sigterm(path, split):
        write_split_into(path, split)
        signal.raise_signal(signal.SIGTERM)

    class Ended(Exception):
        pass

    def ended(signum, frame):  # what the default action would do, short of ending pytest
        raise Ended

    monkeypatch.setattr(prepare_module, "write_split_into", write_then_sigterm)
    previous = signal.signal(signal.SIGTERM, ended)
    try:
        result = run_prepare("--input", src, "--data-dir", out)
    finally:
        signal.signal(signal.SIGTERM, previous)
        forget_stop()
    assert result.exit_code == 143 and result.stdout == "" and result.stderr == "Error: interrupted\n"
    assert list(out.iterdir()) == []


# --- errors: one line on stderr, nothing on stdout, nothing written ------------------------------


def zip_of(name, data):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


def sms_lines(*lines):
    return "".join(line + "\n" for line in lines).encode("utf-8")


ERROR_CASES = {
    "default input missing": (None, [], 1, "run `spamtune download data` or pass --input FILE"),
    "input missing": ("absent.csv", [], 1, "input file not found: "),
    "text column missing": (b"label,message\nham,a\nspam,b\n", [], 1, "column 'text' not found in {src} (its header: 'label', 'message'); pass --text-col NAME, or add a header line if the file has none"),
    "no header, a line break in the first text": (b'ham,"two\nlines"\nspam,b\n', ["--format", "csv"], 1, "column 'text' not found in {src} (its header: 'ham', 'two\\nlines')"),
    "a line break in a jsonl key": (b'{"te\\nxt": "a", "label": "ham"}\n', ["--format", "jsonl"], 1, "column 'text' not found on line 1 of {src} (its keys: 'te\\nxt', 'label')"),
    "label column missing": (b"label,text\nham,a\nspam,b\n", ["--label-col", "kind"], 1, "column 'kind' not found in {src} (its header: 'label', 'text')"),
    "one label": (b"label,text\nham,a\nham,b\n", [], 1, "has only one label ('ham')"),
    "empty file": (b"", [], 1, "{src} is empty"),
    "header only": (b"label,text\n", [], 1, "has a header but no rows"),
    "split sum": (sms_lines("ham\ta", "spam\tb"), ["--split", "0.7,0.2,0.2"], 2, "--split fractions must sum to 1"),
    "split malformed": (sms_lines("ham\ta", "spam\tb"), ["--split", "0.7;0.3"], 2, "--split takes three comma-separated fractions"),
    "split zero": (sms_lines("ham\ta", "spam\tb"), ["--split", "0.8,0.2,0"], 2, "between 0 and 1"),
    "negative seed": (sms_lines("ham\ta", "spam\tb"), ["--seed", "-1"], 2, "--seed must be between 0 and 4294967295 (got -1)"),
    "seed too large": (sms_lines("ham\ta", "spam\tb"), ["--seed", str(2**32)], 2, "--seed must be between 0 and 4294967295"),
    "bad utf-8": (b"ham\tok\nspam\tcaf\xe9\n", [], 1, "is not valid UTF-8: line 2 has the byte 0xe9"),
    "utf-16": ("text\tlabel\nhi\tham\n".encode("utf-16"), [], 1, "{src} is not UTF-8 text: it is UTF-16 (as Excel saves 'Unicode Text'); save it as UTF-8"),
    "gzip": (gzip.compress(b"label,text\nham,a\nspam,b\n"), [], 1, "{src} is not UTF-8 text: it is gzip-compressed; decompress it first"),
    "xlsx": (zip_of("xl/worksheets/sheet1.xml", b"<worksheet>\xc3\x28</worksheet>" * 50), [], 1, "{src} is not UTF-8 text: it is a zip archive (an Excel .xlsx workbook is one)"),
    "sms line without tab": (sms_lines("ham\ta", "spam b"), [], 1, "line 2 of {src} has no TAB"),
    "sms unknown label": (sms_lines("ham\ta", "spam\tb", "spma\tc"), [], 1, "line 3 of {src} has the unknown label 'spma'"),
    "empty split": (sms_lines("ham\ta", "spam\tb", "ham\tc"), [], 1, "the validation split would be empty"),
    "one spam, undersampled": (b"label,text\n" + b"".join(b"ham,h%d\n" % i for i in range(40)) + b"spam,win\n", [], 1, "the validation split would be empty (2 rows to split after --balance undersample kept 1 per label, validation fraction 0.1)"),
    "a label too rare for train": (b"label,text\n" + b"".join(b"ham,h%d\n" % i for i in range(40)) + b"spam,win\n", ["--balance", "none"], 1, "the train split would hold no 'spam' row (1 in all; 2 labels)"),
    "a label with only empty texts": (b"label,text\n" + b"".join(b"%s,t%d\n" % ((b"a", b"b")[i % 2], i) for i in range(40)) + b"c, \n" * 5, ["--balance", "none"], 1, "the train split would hold no 'c' row (0 of its 5 left to split; 3 labels)"),
    "an id column as the label": (b"id,text\n" + b"".join(b"%d,t%d\n" % (i, i) for i in range(40)), ["--label-col", "id", "--format", "csv"], 1, " row (1 in all; 40 labels); a classifier learns only the labels it trains on"),
    "only one label has texts": (b"label,text\nham,a\nspam, \nham,c\n", [], 1, "fewer than two labels are left"),
    "bad jsonl line": (b'{"text": "a", "label": "x"}\n{"text": "b", "label"\n', ["--format", "jsonl"], 1, "line 2 of {src} is not valid JSON"),
    "jsonl nested too deeply": (b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b', "label": "x"}\n', ["--format", "jsonl"], 1, "line 1 of {src} is not valid JSON: nested too deeply"),
    "jsonl null text": (b'{"text": null, "label": "x"}\n', ["--format", "jsonl"], 1, "line 1 of {src}: 'text' is null, not a string"),
    "empty label": (b"label,text\nham,a\n ,b\n", [], 1, "data row 2 of {src} has an empty label"),
    "label with a line break": (b'label,text\nham,a\n"sp\nam",b\n', [], 1, "data row 2 of {src} has the label 'sp\\nam'; a label is printable text on one line"),
    "label with a tab": (b'{"text": "a", "label": "ham"}\n{"text": "b", "label": "sp\\tam"}\n', ["--format", "jsonl"], 1, "line 2 of {src} has the label 'sp\\tam'; a label is printable"),
    "label with an escape": (b'{"text": "a", "label": "\\u001b[31mspam"}\n', ["--format", "jsonl"], 1, "line 1 of {src} has the label '\\x1b[31mspam'"),
    "csv row with an unquoted comma": (b"label,text\nham,hello, you\nspam,win, now\n", [], 1, "data row 1 of {src} has more fields than its header ('label', 'text'); put a text holding a comma in double quotes"),
    "tsv row with a tab in its text": (b"label\ttext\nham\thello\tyou\nspam\twin\tnow\n", ["--format", "tsv"], 1, "data row 1 of {src} has more fields than its header ('label', 'text'); a TSV text cannot hold a tab"),
    "a class named as predict --mail's unreadable messages": (b"label,text\nham,a\nERROR,b\nham,c\nError,d\n", [], 1, "{src} has the label 'error' (2 rows): `spamtune predict --mail` prints it for a message it cannot read, and a class of that name could not be told from one; rename the class"),
    "jsonl text with half a surrogate pair": (b'{"text": "a", "label": "x"}\n{"text": "\\ud83d\\ude00 ok \\uD800!", "label": "y"}\n', ["--format", "jsonl"], 1, "line 2 of {src}: 'text' holds the escape \\ud800, half of a UTF-16 pair without the other half, which is no character"),
    "semicolon-separated csv": (b"label;text\nham;a\nspam;b\n", [], 1, "column 'text' not found in {src} (its header: 'label;text'); it is separated by ';' (as Excel writes CSV in some languages): save it comma-separated"),
    "semicolon-separated csv, a comma in a text": (b"label;text\nham;hello, you\nspam;b\n", [], 1, "data row 1 of {src} has more fields than its header ('label;text'); it is separated by ';'"),
    "tab-separated .csv": (b"label\ttext\nham\ta\nspam\tb\n", [], 1, "column 'text' not found in {src} (its header: 'label\\ttext'); it is separated by tabs: pass --format tsv"),
    "a quote escaped with a backslash in a csv": (b'label,text\nham,a\n\nspam,"he said \\"hi\\" to me"\nham,c\n', [], 1, 'data row 2 of {src} goes on after the closing quote of a quoted field; a quote inside one is written "" in CSV'),
    "csv files joined with their headers": (b"label,text\nham,a\nspam,b\n\xef\xbb\xbflabel , text\nham,c\n", [], 1, "data row 3 of {src} repeats the header ('text', 'label'): files joined with their headers? leave out every header line but the first"),
    "same column twice": (b"label,text\nham,a\nspam,b\n", ["--label-col", "text"], 2, "--text-col and --label-col are both 'text'"),
    "one column, named two ways": (b"label,Text\nham,a\nspam,b\n", ["--label-col", "TEXT"], 2, "--text-col and --label-col both name 'Text'"),
    "columns differing only in case": (b"label,Text,TEXT\nham,a,b\nspam,b,c\n", [], 1, "{src} has the columns 'Text', 'TEXT', which differ only in case or spaces; pass --text-col with the one to read"),
    "jsonl keys differing only in case": (b'{"Label": "ham", "text": "a", "LABEL": "spam"}\n', ["--format", "jsonl"], 1, "line 1 of {src} has the keys 'Label', 'LABEL', which differ only in case"),
    "csv column named twice": (b"label,text,label\nham,a,spam\nspam,b,ham\n", [], 1, "{src} has 2 columns named 'label' (for --label-col); rename all but one"),
    "jsonl key given twice": (b'{"text": "a", "label": "ham", "label": "spam"}\n', ["--format", "jsonl"], 1, "line 1 of {src} has 2 keys named 'label' (for --label-col); rename all but one"),
    "a label with a fraction": (b"label,text\n1,a\n0.5,b\n0,c\n", [], 1, "data row 2 of {src} has the label 0.5, a number with a fraction; a number names a class only as a whole number"),
    "jsonl number with a fraction": (b'{"text": "a", "label": 1}\n{"text": "b", "label": 1.5}\n', ["--format", "jsonl"], 1, "line 2 of {src} has the label 1.5, a number with a fraction"),
    "csv numbers beside true/false": (b"label,text\n1,a\nTrue,b\n0,c\n", [], 1, "data row 1 of {src} has the label '1' (a number) and data row 2 of {src} the label 'True' (true/false); a file's labels are all names, all numbers or all true/false"),
    "jsonl true beside a number": (b'{"text": "a", "label": true}\n{"text": "b", "label": 0}\n', ["--format", "jsonl"], 1, "line 1 of {src} has the label true (true/false) and line 2 of {src} the label 0 (a number); a file's labels are all names, all numbers or all true/false"),
    "jsonl number beside a name": (b'{"text": "a", "label": "spam"}\n\n{"text": "b", "label": 1}\n', ["--format", "jsonl"], 1, "line 1 of {src} has the label 'spam' (a name) and line 3 of {src} the label 1 (a number)"),
    "jsonl true beside a name": (b'{"text": "a", "label": true}\n{"text": "b", "label": "ham"}\n', ["--format", "jsonl"], 1, "line 1 of {src} has the label true (true/false) and line 2 of {src} the label 'ham' (a name)"),
    "jsonl NaN label": (b'{"text": "a", "label": 1}\n{"text": "b", "label": NaN}\n', ["--format", "jsonl"], 1, "line 2 of {src} has the label NaN; a label is a name or a whole number"),
    "jsonl label of 5,000 digits": (b'{"text": "a", "label": 0}\n{"text": "b", "label": ' + b"1" * 5000 + b"}\n", ["--format", "jsonl"], 1, "line 2 of {src} has the label 1111111111111111111111111111111111111... (5,000 characters), a number of over 1,000 digits"),
    "jsonl text a long list": (b'{"text": [' + b"1.5, " * 1000 + b'2], "label": 0}\n', ["--format", "jsonl"], 1, "line 1 of {src}: 'text' is [1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1.5, 1..., not a string"),
    "columns on sms file": (sms_lines("ham\ta", "spam\tb"), ["--text-col", "x"], 2, "--text-col and --label-col apply only to files with a header"),
}


@pytest.mark.parametrize("content, extra, exit_code, message", ERROR_CASES.values(), ids=ERROR_CASES.keys())
def test_errors_are_one_line_and_write_nothing(tmp_path, content, extra, exit_code, message):
    out = tmp_path / "out"
    if content is None:
        args = []
    elif isinstance(content, str):
        src = tmp_path / content
        args = ["--input", src]
    else:
        src = tmp_path / "input.csv" if content.startswith((b"label", b"{")) or not content else tmp_path / "input.tsv"
        src.write_bytes(content)
        args = ["--input", src]
    result = run_prepare(*args, *extra, "--data-dir", out)
    assert result.exit_code == exit_code
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert message.format(src=src if args else "") in lines[0]
    assert not out.exists()


# --- line ends: a CRLF file gives the texts its LF twin gives, in every format -------------------


CRLF_CASES = {
    # name: (file name, LF content, extra options)
    "headerless tsv, --format tsv": ("plain.txt", "ham\thello there\nspam\tWIN now\nham\tsee you\n", ["--format", "tsv"]),
    "headerless .tsv, detected": ("messages.tsv", "ham\thello there\nspam\tWIN now\nham\tsee you\n", []),
    "tsv with a header": ("with_header.tsv", "text\tlabel\nhello there\tham\nWIN now\tspam\n", []),
    "csv, quoted line break": ("in.csv", 'label,text\nham,"two\nlines"\nspam,WIN now\n', []),
    "jsonl": ("in.jsonl", '{"text": "hello there", "label": "ham"}\n{"text": "WIN now", "label": "spam"}\n', []),
}


# "\r" alone: classic Mac OS line ends, as Excel for Mac's "CSV (Macintosh)" still writes them.
@pytest.mark.parametrize("line_end", ["\r\n", "\r"], ids=["crlf", "cr"])
@pytest.mark.parametrize("name, content, extra", CRLF_CASES.values(), ids=CRLF_CASES.keys())
def test_crlf_files_give_the_same_texts_as_lf_files(tmp_path, name, content, extra, line_end):
    fmt = extra[1] if extra else None
    (tmp_path / "lf").mkdir()
    (tmp_path / "crlf").mkdir()
    lf = tmp_path / "lf" / name
    crlf = tmp_path / "crlf" / name
    lf.write_bytes(content.encode())
    crlf.write_bytes(content.replace("\n", line_end).encode())
    want, got = read_labelled_texts(lf, fmt), read_labelled_texts(crlf, fmt)
    assert got.texts == want.texts and got.labels == want.labels and got.format == want.format
    assert not any(text.endswith("\r") for text in got.texts)


def test_crlf_sms_file_prepares_the_texts_predict_reads(tmp_path):
    """The issue's case end to end: the split files hold no trailing \\r, and the texts are those
    predict's line reader gives for the same lines."""
    from spamtune.cli.predict import read_message_chunks

    lines = [f"{'spam' if i % 2 else 'ham'}\tmessage number {i}" for i in range(20)]
    src = tmp_path / "messages.tsv"
    src.write_bytes("".join(line + "\r\n" for line in lines).encode())
    out = tmp_path / "out"
    result = run_prepare("--input", src, "--format", "tsv", "--data-dir", out)
    assert result.exit_code == 0, result.stderr
    prepared = {text for _, text in all_rows(out)}
    read_back = [line.partition("\t")[2] for chunk in read_message_chunks(io.BytesIO(src.read_bytes())) for line in chunk]
    assert prepared == set(read_back) == {f"message number {i}" for i in range(20)}


@pytest.mark.parametrize(
    "name, content",
    [
        ("m.tsv", b"ham\tone\rtwo\r\nspam\tthree\n"),
        ("with_header.tsv", b"text\tlabel\none\rtwo\tham\r\nthree\tspam\n"),
        ("in.csv", b"text,label\none\rtwo,ham\r\nthree,spam\n"),
    ],
)
def test_a_lone_carriage_return_inside_a_text_is_kept(tmp_path, name, content):
    src = tmp_path / name
    src.write_bytes(content)
    assert read_labelled_texts(src).texts == ["one\rtwo", "three"]


# --- label case --------------------------------------------------------------------------------


def prepare_labelled(tmp_path, labels: list[str]):
    """``prepare`` (no balancing) of a CSV whose rows have ``labels``: the CSV, the data folder
    and the command's result, which succeeded."""
    src = write_rows(tmp_path / "in.csv", ["text", "label"], [(f"text {i}", label) for i, label in enumerate(labels)])
    out = tmp_path / "out"
    result = run_prepare("--input", src, "--balance", "none", "--data-dir", out)
    assert result.exit_code == 0, result.stderr
    return src, out, result


def test_labels_differing_in_case_are_one_class_with_a_warning(tmp_path):
    labels = ["Spam", "SPAM", "spam", "Ham", "ham", "ham"] * 3
    src, out, result = prepare_labelled(tmp_path, labels)
    assert read_label_map(out) == {"ham": 0, "spam": 1}
    assert "read 18 rows (9 ham / 9 spam)" in result.stderr
    assert "labels compared ignoring case" in result.stderr
    assert "WARNING: labels that differ only in case were merged into 'spam': 'SPAM', 'Spam', 'spam'" in result.stderr
    assert "merged into 'ham': 'Ham', 'ham'" in result.stderr
    record = json.loads((out / "prepare.json").read_text())
    assert record["label_case"] == "folded"
    assert record["label_spellings_merged"] == {"spam": ["SPAM", "Spam", "spam"], "ham": ["Ham", "ham"]}

    kept = run_prepare("--input", src, "--balance", "none", "--keep-label-case", "--data-dir", tmp_path / "kept")
    assert kept.exit_code == 0, kept.stderr
    assert read_label_map(tmp_path / "kept") == {"Ham": 0, "SPAM": 1, "Spam": 2, "ham": 3, "spam": 4}
    assert "warning" not in kept.stderr.lower() and "ignoring case" not in kept.stderr


def test_labels_are_compared_ignoring_case_as_unicode_folds_it(tmp_path):
    """STRASSE and straße differ only in case (casefold), as Spam and spam do: lower case kept
    them apart as two classes. A class keeps its lower-case name where its spellings have one."""
    labels = ["STRASSE", "straße", "Straße", "weg"] * 3
    src, out, result = prepare_labelled(tmp_path, labels)
    assert read_label_map(out) == {"strasse": 0, "weg": 1}
    assert "WARNING: labels that differ only in case were merged into 'strasse': 'STRASSE', 'Straße', 'straße'" in result.stderr
    kept = read_labelled_texts(src, keep_label_case=True)
    assert kept.label_map == {"STRASSE": 0, "Straße": 1, "straße": 2, "weg": 3} and not kept.label_spellings_merged
    # Named in lower case, not in casefold's form: ß stays ß, and a final sigma stays final.
    alone = write_rows(tmp_path / "alone.csv", ["text", "label"], [("a", "Straße"), ("b", "ΛΌΓΟΣ"), ("c", "λόγος")])
    assert read_labelled_texts(alone).label_map == {"straße": 0, "λόγος": 1}


def test_labels_that_mean_one_value_are_one_class(tmp_path):
    """1 and 1.0 (a float column written out by pandas), "0" and 0, true and "True": one class each."""
    src = tmp_path / "in.jsonl"
    labels = [1, 1.0, "1", " 1e0 ", 0, "0", -0.0, "+0"] * 3
    src.write_text("".join(json.dumps({"text": f"t{i}", "label": label}) + "\n" for i, label in enumerate(labels)), encoding="utf-8")
    out = tmp_path / "out"
    result = run_prepare("--input", src, "--balance", "none", "--data-dir", out)
    assert result.exit_code == 0, result.stderr
    assert read_label_map(out) == {"0": 0, "1": 1}
    assert "WARNING: labels that mean the same value were merged into '1': '1', '1.0', '1e0'" in result.stderr
    assert json.loads((out / "prepare.json").read_text())["label_spellings_merged"] == {"1": ["1", "1.0", "1e0"], "0": ["+0", "-0.0", "0"]}
    # --keep-label-case keeps Spam and spam apart, not 1 and 1.0: the merge is said all the same.
    assert read_labelled_texts(src, keep_label_case=True).label_spellings_merged == {"1": ["1", "1.0", "1e0"], "0": ["+0", "-0.0", "0"]}

    csv_src = write_rows(tmp_path / "in.csv", ["text", "label"], [(f"t{i}", label) for i, label in enumerate([" 2", "2.0 ", "10", "1e1"] * 3)])
    assert read_labelled_texts(csv_src).label_map == {"2": 0, "10": 1}
    truth = tmp_path / "truth.jsonl"
    truth.write_text("".join(json.dumps({"text": f"t{i}", "label": label}) + "\n" for i, label in enumerate([True, "True", False, " false"])), encoding="utf-8")
    source = read_labelled_texts(truth)
    assert source.labels == ["true", "true", "false", "false"] and source.label_map == {"false": 0, "true": 1}
    # One text in Unicode's two spellings (é, and e with a combining accent) is one class.
    accents = write_rows(tmp_path / "accents.csv", ["text", "label"], [("a", "caf\u00e9"), ("b", "cafe\u0301"), ("c", "x")])
    assert read_labelled_texts(accents).label_map == {"caf\u00e9": 0, "x": 1}
    # Written labels alone are names: "1" beside "spam" stays a class of its own, as written.
    assert read_labelled_texts(write_rows(tmp_path / "names.csv", ["text", "label"], [("a", "spam"), ("b", "1.0")])).label_map == {"1.0": 0, "spam": 1}


def test_jsonl_files_joined_with_their_byte_order_marks_are_read_whole(tmp_path):
    """Excel and Notepad start a UTF-8 file with a byte-order mark; `cat` keeps every file's."""
    part = "\ufeff" + "".join(json.dumps({"text": f"t{i}", "label": "ab"[i % 2]}) + "\n" for i in range(4))
    src = tmp_path / "joined.jsonl"
    src.write_text(part + part, encoding="utf-8")
    assert read_labelled_texts(src).texts == ["t0", "t1", "t2", "t3"] * 2


def test_columns_are_found_ignoring_case_and_spaces(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("Text, Label\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(10)), encoding="utf-8")
    out = tmp_path / "out"
    result = run_prepare("--input", src, "--data-dir", out, "--text-col", "TEXT")
    assert result.exit_code == 0, result.stderr
    assert sorted(text for _, text in all_rows(out)) == [f"t{i}" for i in range(10)]
    recorded = json.loads((out / "prepare.json").read_text())["input"]
    assert (recorded["text_col"], recorded["label_col"]) == ("Text", " Label")  # the header's own names
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"Text": "a", "LABEL": "x"}\n{"text": "b", "label": "y"}\n', encoding="utf-8")
    assert read_labelled_texts(jsonl).texts == ["a", "b"]
    # A column spelt exactly as asked is the one read, whatever others differ from it in case.
    exact = write_rows(tmp_path / "exact.csv", ["Text", "text", "label"], [("no", "yes", "x"), ("no", "yes too", "y")])
    assert read_labelled_texts(exact).texts == ["yes", "yes too"]


def test_columns_that_differ_only_in_unicode_case_are_found_and_two_are_refused(tmp_path):
    """Column names are compared as Unicode folds case: a header STRASSE is the column straße."""
    one = write_rows(tmp_path / "one.csv", ["STRASSE", "label"], [("a", "x"), ("b", "y")])
    assert read_labelled_texts(one, text_col="straße").texts == ["a", "b"]
    two = write_rows(tmp_path / "two.csv", ["STRASSE", "Straße", "label"], [("a", "b", "x"), ("c", "d", "y")])
    with pytest.raises(SpamtuneError, match="has the columns 'STRASSE', 'Straße', which differ only in case or spaces; pass --text-col"):
        read_labelled_texts(two, text_col="strasse")


def test_sms_layout_accepts_capitalised_labels(tmp_path):
    src = tmp_path / "messages"
    src.write_text("Ham\thello\nSPAM\tWIN\nham\tok\n", encoding="utf-8")
    source = read_labelled_texts(src)
    assert source.format == "sms" and source.labels == ["ham", "spam", "ham"]
    assert source.label_map == {"ham": 0, "spam": 1} and source.label_spellings_merged == {"ham": ["Ham", "ham"]}


# --- empty texts ---------------------------------------------------------------------------------


def test_empty_texts_are_dropped_with_their_count(tmp_path):
    rows = [(f"text {i}" if i % 4 else ("" if i % 8 else "   "), "ab"[i % 2]) for i in range(40)]
    src = write_rows(tmp_path / "in.csv", ["text", "label"], rows)
    out = tmp_path / "out"
    result = run_prepare("--input", src, "--balance", "none", "--data-dir", out)
    assert result.exit_code == 0, result.stderr
    assert "WARNING: dropped 10 rows whose text is empty" in result.stderr
    assert sum(all_rows(out).values()) == 30
    assert all(text.strip() for _, text in all_rows(out))
    assert json.loads((out / "prepare.json").read_text())["empty_texts_dropped"] == 10
    # --quiet silences the summary, not its warnings.
    quiet = run_prepare("--input", src, "--balance", "none", "--data-dir", tmp_path / "quiet", "--quiet")
    assert quiet.exit_code == 0 and quiet.stderr == "WARNING: dropped 10 rows whose text is empty (or only spaces)\n"


def test_no_warning_without_empty_texts(tmp_path):
    src = write_rows(tmp_path / "in.csv", ["text", "label"], [(f"t{i}", "ab"[i % 2]) for i in range(10)])
    result = run_prepare("--input", src, "--data-dir", tmp_path / "out")
    assert result.exit_code == 0 and "rows whose text is empty" not in result.stderr


# --- a text longer than a split file holds ------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_text_longer_than_a_split_file_holds_is_refused_by_its_row(tmp_path, fmt):
    rows = [(f"t{i}", "ab"[i % 2]) for i in range(20)] + [("w" * (MAX_TEXT_CHARS + 1), "a")]
    src = tmp_path / f"in.{fmt}"
    if fmt == "csv":
        write_rows(src, ["text", "label"], rows)
    else:
        src.write_text("".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in rows))
    out = tmp_path / "out"
    result = run_prepare("--input", src, "--balance", "none", "--data-dir", out)
    assert result.exit_code == 1 and result.stdout == ""
    where = f"data row 21 of {src}" if fmt == "csv" else f"line 21 of {src}"
    assert result.stderr == f"Error: {where} has a text of {MAX_TEXT_CHARS + 1:,} characters, more than the {MAX_TEXT_CHARS:,} a prepared split can hold; shorten it or leave it out\n"
    assert not out.exists()


def test_a_split_file_reads_back_the_longest_text_prepare_accepts(tmp_path):
    longest = Split(["w" * MAX_TEXT_CHARS, "short"], [0, 1])
    write_split(tmp_path / "train.csv", longest)
    assert read_split(tmp_path / "train.csv") == longest


# --- streams: stdin, a pipe, a FIFO -------------------------------------------------------------


def stream_input(tmp_path):
    """A CSV with a quoted line break and a comma in a text: a stream must be parsed as the file is."""
    rows = [(["ham", "spam"][i % 2], f"message {i}, with a comma" if i % 5 else f"two\nlines {i}") for i in range(40)]
    return write_rows(tmp_path / "in.csv", ["label", "text"], rows)


def prepare_in_a_process(*args, stdin=None, pass_fds=()):
    """``spamtune prepare ARGS`` in a fresh process, as a shell pipeline starts it."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, "-m", "spamtune", "prepare", *map(str, args)]
    return subprocess.run(command, stdin=stdin, pass_fds=pass_fds, capture_output=True, text=True, env=env, timeout=60)


def feeding(target, data: bytes):
    """A thread writing ``data`` into ``target`` (a FIFO's path, or a pipe's write end), as the
    command of `cmd > fifo` or `<(cmd)` does; a reader that never comes is not waited for."""
    import threading

    def write():
        with contextlib.suppress(BrokenPipeError), open(target, "wb") as sink:
            sink.write(data)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def assert_same_preparation(root, expected_root, path):
    for name in OUTPUT_NAMES[:-1]:
        assert (root / name).read_bytes() == (expected_root / name).read_bytes(), name
    record, expected = (json.loads((folder / "prepare.json").read_text()) for folder in (root, expected_root))
    assert record["input"].pop("path") == path and record["input"].pop("stream") is True
    del expected["input"]["path"], expected["input"]["stream"]
    assert record == expected  # the sha256 of the bytes read among the rest


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_non_blocking_stdin_is_read_to_its_end(monkeypatch):
    """A pipe made non-blocking by another process sharing it reads as empty while its writer
    pauses, which is no end of the input: every row is read."""
    rows = [b"ham\thello\n", b"spam\tfree entry\n", b"ham\tsee you\n"]
    with non_blocking_pipe(rows) as stream:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(stream))
        read = read_labelled_texts("-")
    assert (read.texts, read.labels) == (["hello", "free entry", "see you"], ["ham", "spam", "ham"])


def test_stdin_a_pipe_and_a_fifo_give_the_splits_of_the_file(tmp_path):
    """`prepare --input - < file`, `--input <(cat file)` and a named pipe were refused ("input is
    not a file" / "not found: ./-"); each is read once and prepared as the file itself."""
    src = stream_input(tmp_path)
    assert run_prepare("--input", src, "--data-dir", tmp_path / "file").exit_code == 0
    assert json.loads((tmp_path / "file" / "prepare.json").read_text())["input"]["stream"] is False

    with src.open("rb") as stdin:
        piped = prepare_in_a_process("--input", "-", "--format", "csv", "--data-dir", tmp_path / "stdin", stdin=stdin)
    assert piped.returncode == 0, piped.stderr
    assert "read 40 rows (20 ham / 20 spam) from stdin" in piped.stderr
    assert_same_preparation(tmp_path / "stdin", tmp_path / "file", "-")

    read_end, write_end = os.pipe()  # what bash's <(cat in.csv) hands over: /dev/fd/N
    try:
        feeding(write_end, src.read_bytes())
        substituted = prepare_in_a_process(
            "--input", f"/dev/fd/{read_end}", "--format", "csv", "--data-dir", tmp_path / "fd", pass_fds=(read_end,)
        )
    finally:
        os.close(read_end)
    assert substituted.returncode == 0, substituted.stderr
    assert_same_preparation(tmp_path / "fd", tmp_path / "file", f"/dev/fd/{read_end}")

    fifo = tmp_path / "named.csv"  # a FIFO's name gives its format as a file's does
    os.mkfifo(fifo)
    writer = feeding(fifo, src.read_bytes())
    result = run_prepare("--input", fifo, "--data-dir", tmp_path / "fifo")
    if writer.is_alive():  # refused unread: the writer still waits for a reader
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
    writer.join(10)
    assert result.exit_code == 0, result.stderr
    assert_same_preparation(tmp_path / "fifo", tmp_path / "file", str(fifo))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
@pytest.mark.parametrize("given", ["stdin", "fifo"])
def test_an_empty_or_endless_stream_is_one_line(tmp_path, monkeypatch, given):
    """Nothing on the stream is one line saying so; a stream with no end (`yes`, /dev/zero) is
    read up to MAX_STREAM_BYTES, then refused in one line rather than filling the memory."""
    from spamtune import labelled_texts

    monkeypatch.setattr(labelled_texts, "MAX_STREAM_BYTES", 1 << 20)
    fifo = tmp_path / "fifo.tsv"
    if given == "fifo":
        os.mkfifo(fifo)
    for data, message in ((b"", "is empty"), (b"ham\tx\n" * 200_000, "holds more than 1 MiB, more than prepare reads from a stream; save it to a file and pass --input FILE")):
        if given == "stdin":
            result = CliRunner().invoke(app, ["prepare", "--input", "-", "--data-dir", str(tmp_path / "out")], input=data)
        else:
            writer = feeding(fifo, data)
            result = run_prepare("--input", fifo, "--data-dir", tmp_path / "out")
            if writer.is_alive():
                os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
            writer.join(10)
        assert result.exit_code == 1 and result.stdout == ""
        assert result.stderr.splitlines() == [f"Error: {'stdin' if given == 'stdin' else fifo} {message}"]
        assert not (tmp_path / "out").exists()


def test_a_stream_without_a_format_is_one_line(tmp_path):
    """stdin has no name to take a format from: --format is asked for, unless it is in the SMS layout."""
    result = CliRunner().invoke(app, ["prepare", "--input", "-", "--data-dir", str(tmp_path)], input=stream_input(tmp_path).read_bytes())
    assert result.exit_code == 2 and result.stderr == "Error: cannot tell the format of stdin; pass --format tsv|csv|jsonl\n"
    sms = b"".join(b"%s\tmessage %d\n" % (b"spam" if i % 2 else b"ham", i) for i in range(40))
    result = CliRunner().invoke(app, ["prepare", "--input", "-", "--data-dir", str(tmp_path / "out")], input=sms)
    assert result.exit_code == 0, result.stderr
    assert json.loads((tmp_path / "out" / "prepare.json").read_text())["input"]["format"] == "sms"


# --- one preparation's files at a time ----------------------------------------------------------


def two_inputs(tmp_path):
    old = write_rows(tmp_path / "old.csv", ["text", "label"], [(f"old {i}", "ab"[i % 2]) for i in range(10)])
    new = write_rows(tmp_path / "new.csv", ["text", "label"], [(f"new {i}", "xy"[i % 2]) for i in range(10)])
    return old, new


def paused_among_the_renames(monkeypatch):
    """Make the next prepare stop once it has renamed three of its five files into place
    (prepare.json, labels.json, test.csv: the last first), until ``go`` is set."""
    import threading

    halfway, go, replace, renamed = threading.Event(), threading.Event(), os.replace, []

    def replace_then_wait(source, target):
        replace(source, target)
        if Path(target).name in OUTPUT_NAMES and not halfway.is_set():
            renamed.append(target)
            if len(renamed) == 3:
                halfway.set()
                assert go.wait(30)

    monkeypatch.setattr(os, "replace", replace_then_wait)
    return halfway, go


def in_thread(call):
    import threading

    outcome = {}

    def run():
        try:
            outcome["result"] = call()
        except Exception as exc:  # noqa: BLE001 - said by the test's assertion
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_reader_never_gets_files_of_two_preparations(tmp_path, monkeypatch):
    """finetune reading the splits while a prepare renames them in: it waits, and reads the new set."""
    from spamtune.examples import data_fingerprint, load_training_data

    old, new = two_inputs(tmp_path)
    out = tmp_path / "out"
    assert run_prepare("--input", old, "--data-dir", out).exit_code == 0
    halfway, go = paused_among_the_renames(monkeypatch)
    writer, _ = in_thread(lambda: write_prepared(out, prepare_splits(read_labelled_texts(new))))
    assert halfway.wait(30)  # labels.json and test.csv are the new ones, train.csv still the old
    reader, read = in_thread(lambda: load_training_data(out, 64, None))
    reader.join(0.5)
    waited = reader.is_alive()
    go.set()
    writer.join(30)
    reader.join(30)
    assert "error" not in read, read["error"]
    assert read["result"].labels == {"x": 0, "y": 1} and read["result"].fingerprint == data_fingerprint(out)
    assert waited  # for the set being written


def test_two_prepares_at_once_leave_one_whole_set(tmp_path, monkeypatch):
    old, new = two_inputs(tmp_path)
    out, alone = tmp_path / "out", tmp_path / "alone"
    assert run_prepare("--input", new, "--data-dir", alone).exit_code == 0
    halfway, go = paused_among_the_renames(monkeypatch)
    first, _ = in_thread(lambda: write_prepared(out, prepare_splits(read_labelled_texts(old))))
    assert halfway.wait(30)
    second, _ = in_thread(lambda: write_prepared(out, prepare_splits(read_labelled_texts(new))))
    second.join(0.5)
    waited = second.is_alive()
    go.set()
    first.join(30)
    second.join(30)
    assert not first.is_alive() and not second.is_alive()
    assert file_bytes(out) == file_bytes(alone)  # the second set, whole: none of the first's files
    assert waited  # for the first set to be in place


def test_a_wait_for_the_other_side_is_said_and_bounded(tmp_path, monkeypatch):
    from spamtune import split_lock

    old, new = two_inputs(tmp_path)
    out = tmp_path / "out"
    assert run_prepare("--input", old, "--data-dir", out).exit_code == 0
    monkeypatch.setattr(split_lock, "WAIT_SECONDS", 0.4)
    monkeypatch.setattr(split_lock, "NOTICE_SECONDS", 0.1)
    with split_lock.reading_splits(out):  # a finetune reading the splits, for ever
        result = run_prepare("--input", new, "--data-dir", out)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"WARNING: waiting for another process to finish reading the prepared splits in {out}",
        f"Error: the prepared splits in {out} are still being read by another process after 0.4 s; try again when it is done",
    ]
    assert read_label_map(out) == {"a": 0, "b": 1} and sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES)
    with split_lock.replacing_splits(out):
        finetune = CliRunner().invoke(app, ["finetune", "--data-dir", str(out), "--model", "tiny", "--weights", "random"])
    assert finetune.exit_code == 1
    assert finetune.stderr.splitlines() == [
        f"WARNING: waiting for `spamtune prepare` to finish writing the prepared splits in {out}",
        f"Error: the prepared splits in {out} are still being written by `spamtune prepare` after 0.4 s; try again when it ends",
    ]


def overlapping_readers(root, count=3, hold=0.3):
    """``count`` threads reading ``root``'s splits in turn without end, each holding the lock
    ``hold`` seconds, started ``hold / count`` apart: the shared lock is never free between
    them. Stopped by setting the event returned; ``reads`` counts the reads done."""
    import threading
    import time

    from spamtune.split_lock import reading_splits

    stop, reads, lock = threading.Event(), [0], threading.Lock()

    def read_in_turn():
        while not stop.is_set():
            with reading_splits(root):
                time.sleep(hold)
            with lock:
                reads[0] += 1

    threads = []
    for _ in range(count):
        threads.append(threading.Thread(target=read_in_turn, daemon=True))
        threads[-1].start()
        time.sleep(hold / count)
    return stop, reads, threads


def test_a_waiting_prepare_goes_before_the_readers_that_come_after_it(tmp_path, monkeypatch):
    """Readers whose shared locks overlap without end (a sweep's runs, evaluations in a loop)
    would keep the folder from ever being free for a prepare, which gave up after 2 minutes."""
    import time

    from spamtune import split_lock

    old, _ = two_inputs(tmp_path)
    out = tmp_path / "out"
    assert run_prepare("--input", old, "--data-dir", out).exit_code == 0
    monkeypatch.setattr(split_lock, "WAIT_SECONDS", 5.0)
    stop, reads, readers = overlapping_readers(out)
    try:
        time.sleep(0.5)
        started = time.monotonic()
        with split_lock.replacing_splits(out):
            waited = time.monotonic() - started
            assert (out / split_lock.WRITER_WAITING_MARK).is_file()
            before = reads[0]
            time.sleep(0.5)
            assert reads[0] == before  # none of them read while the splits are replaced
        time.sleep(0.5)
        assert reads[0] > before  # and they read again once it is done
    finally:
        stop.set()
        for reader in readers:
            reader.join(5)
    assert waited < 1.5  # one reader's hold (0.3 s) and the polls, on a loaded machine
    assert not any(reader.is_alive() for reader in readers)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES)  # the mark went with it


def test_a_killed_reader_or_waiting_prepare_holds_no_one_up(tmp_path, monkeypatch):
    """The kernel drops a killed process's locks: a reader's on the folder, a waiting
    prepare's on the mark it leaves behind, which the next prepare takes over and removes."""
    import subprocess
    import sys
    import time

    from spamtune import split_lock
    from spamtune.examples import load_training_data

    old, _ = two_inputs(tmp_path)
    out = tmp_path / "out"
    assert run_prepare("--input", old, "--data-dir", out).exit_code == 0
    monkeypatch.setattr(split_lock, "WAIT_SECONDS", 10.0)
    hold = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from spamtune import split_lock\n"
        "with getattr(split_lock, sys.argv[1])(Path(sys.argv[2])):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def holding(how):
        return subprocess.Popen([sys.executable, "-c", hold, how, str(out)], stdout=subprocess.PIPE, text=True, env=env)

    reader = holding("reading_splits")
    try:
        assert reader.stdout.readline() == "held\n"
        prepare = holding("replacing_splits")  # waits for the reader, holding the mark
        try:
            time.sleep(0.5)
            assert (out / split_lock.WRITER_WAITING_MARK).is_file() and prepare.poll() is None
            reader.kill()
            assert prepare.stdout.readline() == "held\n"  # once the killed reader's lock is gone
        finally:
            prepare.kill()
            prepare.wait()
    finally:
        reader.kill()
        reader.wait()
    assert (out / split_lock.WRITER_WAITING_MARK).is_file()  # left by the killed prepare, unlocked
    started = time.monotonic()
    assert load_training_data(out, 64, None).labels == {"a": 0, "b": 1}
    assert time.monotonic() - started < 5
    assert run_prepare("--input", old, "--data-dir", out).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES)


@pytest.mark.parametrize("planted", ["link", "fifo"])
def test_a_mark_planted_where_prepare_would_make_its_own_is_never_followed_nor_opened_to_block(tmp_path, planted):
    from spamtune.examples import load_training_data
    from spamtune.split_lock import WRITER_WAITING_MARK

    old, new = two_inputs(tmp_path)
    out = tmp_path / "out"
    assert run_prepare("--input", old, "--data-dir", out).exit_code == 0
    outside = tmp_path / "outside.txt"
    outside.write_text("not prepare's")
    if planted == "link":
        (out / WRITER_WAITING_MARK).symlink_to(outside)
    else:
        os.mkfifo(out / WRITER_WAITING_MARK)
    reader, read = in_thread(lambda: load_training_data(out, 64, None))
    reader.join(30)
    assert read["result"].labels == {"a": 0, "b": 1}
    writer, written = in_thread(lambda: run_prepare("--input", new, "--data-dir", out))
    writer.join(30)
    assert written["result"].exit_code == 0, written["result"].stderr
    assert read_label_map(out) == {"x": 0, "y": 1}
    assert outside.read_text() == "not prepare's"
    assert os.path.islink(out / WRITER_WAITING_MARK) == (planted == "link")  # left where it was planted


def test_on_a_file_system_without_flock_nothing_is_locked_and_no_mark_is_left(tmp_path, monkeypatch):
    from spamtune import split_lock
    from spamtune.examples import load_training_data

    def no_flock(fd, how):
        raise OSError(errno.ENOLCK, "No locks available")

    old, new = two_inputs(tmp_path)
    out = tmp_path / "out"
    assert run_prepare("--input", old, "--data-dir", out).exit_code == 0
    monkeypatch.setattr(split_lock.fcntl, "flock", no_flock)
    assert run_prepare("--input", new, "--data-dir", out).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES)
    (out / split_lock.WRITER_WAITING_MARK).write_bytes(b"")  # one a prepare left where flock worked
    assert load_training_data(out, 64, None).labels == {"x": 0, "y": 1}


def test_a_killed_prepares_temporaries_are_removed_by_the_next(tmp_path):
    src, _ = two_inputs(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("not prepare's")
    (out / ".train.csv.0badc0de.part").write_text("half a split")  # what a SIGKILL leaves
    (out / ".labels.json.deadbeef.part").symlink_to(outside)  # planted: removed, never followed
    kept = [out / ".train.csv.mine.part", out / ".notes.0badc0de.part"]  # not names prepare writes
    for path in kept:
        path.write_text("someone else's")
    assert run_prepare("--input", src, "--data-dir", out).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([*OUTPUT_NAMES, *(p.name for p in kept)])
    assert outside.read_text() == "not prepare's"


def test_a_stale_temporary_that_cannot_be_removed_is_left_and_the_prepare_goes_on(tmp_path, monkeypatch):
    src, _ = two_inputs(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    stuck = out / ".test.csv.0badc0de.part"  # another user's, in a folder with the sticky bit
    stuck.write_text("not ours to remove")
    unlink = Path.unlink

    def refuse_the_stuck_one(path, missing_ok=False):
        if path == stuck:
            raise PermissionError(errno.EPERM, "Operation not permitted", str(path))
        return unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refuse_the_stuck_one)
    result = run_prepare("--input", src, "--data-dir", out)
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([*OUTPUT_NAMES, stuck.name])


def test_a_prepare_killed_among_its_renames_leaves_splits_no_reader_takes(tmp_path):
    """A SIGKILL (or a power cut) between two renames leaves files of two preparations: no lock
    outlives it, so the root keeps a mark that readers refuse until a prepare completes."""
    import subprocess
    import sys

    from spamtune.errors import SpamtuneError
    from spamtune.examples import load_training_data

    old, new = two_inputs(tmp_path)
    out = tmp_path / "out"
    assert run_prepare("--input", old, "--data-dir", out).exit_code == 0
    killed_among_the_renames = (
        "import os, signal, sys\n"
        "replace = os.replace\n"
        "def replace_then_die(source, target):\n"
        "    replace(source, target)\n"
        "    if os.path.basename(target) == 'labels.json':  # renamed after prepare.json, before the splits\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "os.replace = replace_then_die\n"
        "from spamtune.entry import main\n"
        "sys.argv = ['spamtune', 'prepare', '--input', sys.argv[1], '--data-dir', sys.argv[2]]\n"
        "main()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    ended = subprocess.run([sys.executable, "-c", killed_among_the_renames, str(new), str(out)], capture_output=True, env=env, timeout=60)
    assert ended.returncode == -9
    assert read_label_map(out) == {"x": 0, "y": 1} and "old 0" in (out / "train.csv").read_text()  # two sets
    with pytest.raises(SpamtuneError, match=f"^the prepared splits in {out} may be from two preparations: a `spamtune prepare` was stopped while it renamed"):
        load_training_data(out, 64, None)
    finetune = CliRunner().invoke(app, ["finetune", "--data-dir", str(out), "--model", "tiny", "--weights", "random"])
    assert finetune.exit_code == 1 and "may be from two preparations" in finetune.stderr
    assert run_prepare("--input", new, "--data-dir", out).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES)
    assert load_training_data(out, 64, None).labels == {"x": 0, "y": 1}


def test_an_input_under_the_home_of_no_user_is_one_line(tmp_path):
    """pathlib raises a RuntimeError for ~name of no user: an unexpected error, not this line."""
    for spec in ("~no-such-user-spamtune/mails.csv", "spam=~no-such-user-spamtune/Junk"):
        result = run_prepare("--input", spec, "--data-dir", tmp_path)
        assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
        assert "no home folder for ~no-such-user-spamtune" in result.stderr and "unexpected" not in result.stderr
