"""``spamtune filter``: the verdict added as header lines, every other byte of the message kept."""

from __future__ import annotations

import errno
import io
import os
import re
import subprocess
import sys
from email import policy
from email.parser import BytesParser

import pytest
from helpers import P_HAM, P_SPAM, non_blocking_pipe, spamtune_without_torch, write_rigged_run
from mail_samples import SAMPLES
from typer.testing import CliRunner

from spamtune.cli import app
from spamtune.mail import message_text
from spamtune.mail_filter import RUN_HEADER, STATUS_HEADER, Verdict, filter_message, insertion_point, with_status_headers

VERDICT = Verdict(is_spam=True, p_spam=0.98712, threshold=0.5, run="20261125-run")
ADDED = re.compile(rb"X-Spamtune-(Status|Run): [^\r\n]*\r?\n")


def filtered(raw: bytes, classify=lambda head: VERDICT, max_bytes: int = 1 << 20, pass_through: bool = True):
    sink = io.BytesIO()
    source = io.BufferedReader(io.BytesIO(raw))
    outcome = filter_message(source, sink, classify, max_bytes=max_bytes, pass_through=pass_through)
    return sink.getvalue(), outcome


def without_added_lines(data: bytes) -> bytes:
    return ADDED.sub(b"", data)


# Every crafted message but the empty one, which is no message (see its own test).
MESSAGES = {n: raw for n, (raw, _, _) in SAMPLES.items() if raw}
VARIANTS = {**MESSAGES, **{f"{n}_crlf": raw.replace(b"\n", b"\r\n") for n, raw in MESSAGES.items() if b"\r\n" not in raw}}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_removing_the_added_lines_gives_back_the_exact_input(name):
    raw = VARIANTS[name]
    out, outcome = filtered(raw)
    assert outcome.verdict == VERDICT and outcome.error is None and outcome.size == len(raw)
    assert len(ADDED.findall(out)) == 2
    assert without_added_lines(out) == raw
    newline = b"\r\n" if b"\r\n" in raw.split(b"\n", 1)[0] + b"\n" else b"\n"
    assert f"{STATUS_HEADER}: Yes, p_spam=0.987, threshold=0.5".encode() + newline in out
    assert f"{RUN_HEADER}: 20261125-run; spamtune ".encode() in out


@pytest.mark.parametrize("max_bytes", [1 << 20, 40])
def test_a_non_blocking_stdin_passes_on_the_whole_message_not_its_head(max_bytes):
    """A pipe made non-blocking by another process sharing it reads as empty while its writer
    pauses: the filter took the first pause for the end of the message, and passed on its head
    alone with a verdict on it (exit 0), the rest lost. Within and past the classified head."""
    raw = SAMPLES["plain"][0]
    heads = []
    with non_blocking_pipe([raw[:20], raw[20:60], raw[60:]]) as source:
        sink = io.BytesIO()
        outcome = filter_message(source, sink, lambda head: heads.append(head) or VERDICT, max_bytes=max_bytes)
    assert heads == [raw[:max_bytes]] and outcome.size == len(raw)
    assert without_added_lines(sink.getvalue()) == raw and len(ADDED.findall(sink.getvalue())) == 2


@pytest.mark.parametrize("name", ["plain", "alternative", "crlf_plain", "eight_bit_header_latin1", "nested_rfc822"])
def test_the_added_lines_end_the_header_block(name):
    raw = SAMPLES[name][0]
    out, _ = filtered(raw)
    parsed = BytesParser(policy=policy.default).parsebytes(out)
    assert parsed[STATUS_HEADER] == "Yes, p_spam=0.987, threshold=0.5"
    assert list(parsed.keys())[-2:] == [STATUS_HEADER, RUN_HEADER]
    assert message_text(out) == message_text(raw)  # the body is untouched


def test_where_the_lines_go_without_a_header_block_end():
    assert insertion_point(b"Subject: x\n", complete=True) == (11, b"\n")  # headers only
    assert insertion_point(b"Subject: x", complete=True) == (0, b"\n")  # no line break to follow
    assert insertion_point(b"From a Mon\r\nSubject: x", complete=True) == (12, b"\r\n")  # after the envelope
    # The header block goes on past the head: before its last field, which may be continued there.
    assert insertion_point(b"Subject: x\r\nTo: y\r\n", complete=False) == (12, b"\r\n")
    assert insertion_point(b"Subject: x\r\nTo: y\r\n z\r\n", complete=False) == (12, b"\r\n")
    assert with_status_headers(b"\nbody", VERDICT).startswith(b"X-Spamtune-Status: Yes")


# An mbox envelope line in LF over CRLF header fields (as a tool that writes the `From ` line
# itself leaves a message it stored as received): the added lines are of the header block.
ENVELOPE_LF = b"From a@b Mon Nov 25 10:15:00 2026\nSubject: x\r\nTo: y\r\n z\r\n\r\nbody\r\n"


@pytest.mark.parametrize("max_bytes", [1 << 20, 60, 55])  # whole; cut in the body; cut in a field: before it
def test_the_added_lines_take_the_line_ending_of_the_header_block_not_of_the_envelope_line(max_bytes):
    out, outcome = filtered(ENVELOPE_LF, max_bytes=max_bytes)
    assert outcome.verdict == VERDICT and without_added_lines(out) == ENVELOPE_LF
    added = re.findall(rb"X-Spamtune-[^\n]*\n", out)
    assert len(added) == 2 and all(line.endswith(b"\r\n") for line in added)
    assert b"\r\n" + b"X-Spamtune-Status" in out  # after a whole field line, not the envelope's


def test_the_line_ending_is_the_one_of_the_header_line_before_the_added_lines():
    assert insertion_point(b"From a Mon\nSubject: x\r\nTo: y\r\n\r\nbody\r\n", complete=True) == (30, b"\r\n")
    assert insertion_point(b"From a Mon\nSubject: x\r\nTo: y\r\n", complete=False) == (23, b"\r\n")  # before To
    assert insertion_point(b"From a Mon\nSubject: x\r\n", complete=False) == (11, b"\r\n")  # that field's own
    assert insertion_point(b"From a Mon\r\n\nbody\n", complete=True) == (12, b"\n")  # no field: the empty line's
    assert with_status_headers(b"From a Mon\nSubject: x\r\n", VERDICT) == b"From a Mon\nSubject: x\r\n" + VERDICT.header_lines(b"\r\n")


@pytest.mark.parametrize("raw, before", [
    (b"Subject: cheap pills\nbuy now\nat example.com\n", b"buy now"),  # no empty line before the body
    (b"From a@b Mon\r\nSubject: x\r\nTo: y\r\n z\r\nbody text\r\n\r\nmore\r\n", b"body text"),
    (b"Subject: x\n>From a body line\n", b">From"),
    (b"just a line of text\n", b"just a line"),  # no header at all: the lines go on top
])  # fmt: skip
def test_the_added_lines_come_before_a_body_that_lacks_its_empty_line(raw, before):
    """Parsers end the header block at the first line that is not a header: lines added past it
    would be body text, and a Sieve or procmail rule on the header would miss the verdict."""
    out, _ = filtered(raw)
    assert without_added_lines(out) == raw
    assert out.index(b"X-Spamtune-Run") < out.index(before)
    parsed = BytesParser(policy=policy.default).parsebytes(out)
    assert parsed[STATUS_HEADER] == "Yes, p_spam=0.987, threshold=0.5"


def test_an_empty_input_is_no_message_and_gets_no_headers():
    def must_not_run(head):
        raise AssertionError("classified nothing")

    for pass_through in (True, False):
        out, outcome = filtered(b"", must_not_run, pass_through=pass_through)
        assert out == b"" and outcome.verdict is None and outcome.size == 0
        assert str(outcome.error) == "the input was empty: no message to classify"


def test_run_names_cannot_break_the_header():
    lines = Verdict(False, 0.1, 0.7, "evil\r\nBcc: x@y\u00e9").header_lines(b"\r\n")
    assert lines.count(b"\r\n") == 2 and b"evil??Bcc: x@y?;" in lines
    assert lines.startswith(b"X-Spamtune-Status: No, p_spam=0.100, threshold=0.7\r\n")


def test_a_large_message_is_classified_on_its_start_and_passed_through_whole():
    body = b"".join(b"line %d of a long attachment\n" % i for i in range(200_000))  # ~6 MB
    raw = b"Subject: big\r\n\r\n" + body
    seen = []
    out, outcome = filtered(raw, lambda head: seen.append(len(head)) or VERDICT, max_bytes=4096)
    assert seen == [4096]
    assert outcome.size == len(raw)
    assert without_added_lines(out) == raw
    assert out.startswith(b"Subject: big\r\nX-Spamtune-Status: Yes")


def test_a_failing_classifier_passes_the_message_through_unchanged():
    def broken(head):
        raise RuntimeError("model exploded")

    raw = SAMPLES["html_only"][0]
    out, outcome = filtered(raw, broken)
    assert out == raw and outcome.verdict is None and "exploded" in str(outcome.error)
    out, outcome = filtered(raw, None)
    assert out == raw and outcome.error is not None


def test_a_failing_classifier_writes_nothing_when_the_message_is_to_be_deferred():
    def broken(head):
        raise RuntimeError("model exploded")

    raw = SAMPLES["html_only"][0]
    for classify in (broken, None):
        out, outcome = filtered(raw, classify, pass_through=False)
        assert out == b"" and outcome.verdict is None and outcome.error is not None
    # Nothing past the classified start is read either; a verdict still writes the message.
    big = b"Subject: big\n\n" + b"x" * 10_000
    out, outcome = filtered(big, broken, max_bytes=4096, pass_through=False)
    assert out == b"" and outcome.size == 4096
    out, outcome = filtered(big, max_bytes=4096, pass_through=False)
    assert without_added_lines(out) == big and outcome.size == len(big)


# ---------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_rigged_run(tmp_path_factory.mktemp("filter") / "run")


def invoke(*args, input: bytes):
    return CliRunner().invoke(app, ["filter", *args], input=input)


def test_filter_command_spam_and_ham(run_dir):
    spam = b"Subject: prize\r\nFrom: x@example.com\r\n\r\nYou won!\r\n"
    result = invoke("--run", str(run_dir), input=spam)
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == (
        b"Subject: prize\r\nFrom: x@example.com\r\n"
        + f"X-Spamtune-Status: Yes, p_spam={P_SPAM:.3f}, threshold=0.5\r\n".encode()
        + b"X-Spamtune-Run: run; spamtune "
        + result.stdout_bytes.split(b"; spamtune ")[1].split(b"\r\n")[0]
        + b"\r\n\r\nYou won!\r\n"
    )
    ham = SAMPLES["latin1_8bit"][0]
    result = invoke("--run", str(run_dir), "--threshold", "0.05", input=ham)
    assert result.exit_code == 0
    assert f"X-Spamtune-Status: Yes, p_spam={P_HAM:.3f}, threshold=0.05\n".encode() in result.stdout_bytes
    assert without_added_lines(result.stdout_bytes) == ham


def test_filter_command_without_a_run_passes_the_message_and_exits_1(tmp_path):
    raw = SAMPLES["eight_bit_header_latin1"][0]
    result = CliRunner().invoke(app, ["filter", "--data-dir", str(tmp_path)], input=raw)
    assert result.exit_code == 1
    assert result.stdout_bytes == raw
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: message passed through unclassified:")


def test_filter_command_with_a_broken_run_passes_the_message(tmp_path, run_dir):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    raw = SAMPLES["crlf_multipart"][0]
    result = CliRunner().invoke(app, ["filter", "--run", str(broken)], input=raw)
    assert result.exit_code == 1 and result.stdout_bytes == raw
    assert "Error: message passed through unclassified" in result.stderr


def test_filter_with_a_threshold_for_a_run_of_three_classes_passes_the_message_and_says_why(tmp_path):
    """Such a run decides by the most probable class and refuses a threshold: the message goes
    through unclassified, and the reason names the flag, as predict's does."""
    three = write_rigged_run(tmp_path / "three", labels={"ham": 0, "spam": 1, "promo": 2})
    raw = b"Subject: hi\n\nyo!\n"
    result = CliRunner().invoke(app, ["filter", "--run", str(three), "--threshold", "0.3"], input=raw)
    assert result.exit_code == 1 and result.stdout_bytes == raw
    assert result.stderr == (
        "Error: message passed through unclassified: --threshold cannot apply: the run has 3 classes (ham, spam, "
        "promo) and decides by the most probable one; a spam threshold is for two-class (spam/ham) runs\n"
    )


def test_filter_without_stdin_or_stdout_says_so_in_one_line(run_dir):
    """A process started with stdin or stdout closed has ``sys.stdin``/``sys.stdout`` None.
    Without stdin the command line is wrong (2) in every mode; stdout closed defers with tempfail."""
    stdout_closed = "stdout is closed: there is nowhere to write the output (redirect it instead, e.g. > /dev/null)"
    for closed, mode, status, message in (
        (0, "fail", 2, "filter reads one message on stdin, but this process has none"),
        (0, "tempfail", 2, "filter reads one message on stdin, but this process has none"),
        (1, "fail", 1, stdout_closed),
        (1, "pass", 1, stdout_closed),
        (1, "tempfail", 75, f"message deferred: {stdout_closed}"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "spamtune", "filter", "--run", str(run_dir), "--on-error", mode],
            input=None if closed == 0 else b"Subject: x\n\nhi\n",
            preexec_fn=lambda fd=closed: os.close(fd), stderr=subprocess.PIPE, text=False, timeout=300,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        assert (proc.returncode, proc.stderr.decode()) == (status, f"Error: {message}\n")


def test_filter_reads_a_long_message_in_chunks_by_default(run_dir):
    raw = b"Subject: newsletter\n\n" + b" word" * 400 + b" claim now!\n"
    default = invoke("--run", str(run_dir), input=raw)
    assert default.exit_code == 0 and b"X-Spamtune-Status: Yes" in default.stdout_bytes
    head = invoke("--run", str(run_dir), "--long", "head", input=raw)
    assert b"X-Spamtune-Status: No" in head.stdout_bytes


# ---------------------------------------------------------------- --on-error: what a failure does to the message

# Each mode's exit status, whether the message is still written (unchanged), and its stderr line.
ON_ERROR = {
    "fail": (1, True, "Error: message passed through unclassified: "),
    "pass": (0, True, "Error: message passed through unclassified: "),
    "tempfail": (75, False, "Error: message deferred, nothing written: "),
}


def assert_failed_as_asked(result, mode: str, raw: bytes, reason: str):
    status, written, line = ON_ERROR[mode]
    assert result.exit_code == status, result.stderr
    assert result.stdout_bytes == (raw if written else b"")
    assert result.stderr.startswith(line + reason) and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr


def broken_run(parent):
    broken = parent / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    return broken


@pytest.mark.parametrize("mode", sorted(ON_ERROR))
def test_on_error_when_the_model_cannot_load(mode, tmp_path):
    raw = SAMPLES["eight_bit_header_latin1"][0]
    missing = invoke("--data-dir", str(tmp_path), "--on-error", mode, input=raw)
    assert_failed_as_asked(missing, mode, raw, "no fine-tuned model found in ")
    raw = SAMPLES["crlf_multipart"][0]
    run = broken_run(tmp_path)
    broken = invoke("--run", str(run), "--on-error", mode, input=raw)
    assert_failed_as_asked(broken, mode, raw, f"cannot read run config {run / 'config.json'}: ")


@pytest.mark.parametrize("mode", sorted(ON_ERROR))
def test_on_error_when_stdin_is_empty(mode, run_dir):
    """A mail server that hands over nothing must not get a message of two header lines back."""
    result = invoke("--run", str(run_dir), "--on-error", mode, input=b"")
    assert_failed_as_asked(result, mode, b"", "the input was empty: no message to classify\n")


@pytest.mark.parametrize("mode", sorted(ON_ERROR))
def test_on_error_when_the_classification_fails(mode, run_dir, monkeypatch):
    """The run loads; the model fails on the message."""
    import spamtune.long_messages

    def explode(*args, **kwargs):
        raise RuntimeError("model exploded")

    monkeypatch.setattr(spamtune.long_messages, "predict_long", explode)
    raw = SAMPLES["crlf_plain"][0]
    result = invoke("--run", str(run_dir), "--on-error", mode, input=raw)
    assert_failed_as_asked(result, mode, raw, "RuntimeError: model exploded\n")


@pytest.mark.parametrize("mode", sorted(ON_ERROR))
def test_on_error_when_the_service_cannot_be_reached(mode):
    raw = SAMPLES["plain"][0]
    result = invoke("--server", "http://127.0.0.1:9", "--on-error", mode, input=raw)
    assert_failed_as_asked(result, mode, raw, "cannot reach the service at http://127.0.0.1:9")


@pytest.mark.parametrize("mode", ["pass", "tempfail"])
def test_on_error_in_client_mode_stays_torch_free(mode):
    """In a new process: the exit status the mail server sees, and no torch import."""
    raw = SAMPLES["plain"][0]
    status, written, line = ON_ERROR[mode]
    proc = spamtune_without_torch("filter", "--server", "http://127.0.0.1:9", "--on-error", mode, input=raw, status=status)
    assert proc.stdout == (raw if written else b"")
    [error, probe] = proc.stderr.decode().splitlines()
    assert error.startswith(line + "cannot reach the service") and probe == "torch imported: False"


def test_on_error_defaults_to_fail(tmp_path):
    raw = SAMPLES["plain"][0]
    default = invoke("--data-dir", str(tmp_path), input=raw)
    assert_failed_as_asked(default, "fail", raw, "no fine-tuned model found in ")
    given = invoke("--data-dir", str(tmp_path), "--on-error", "fail", input=raw)
    assert (default.exit_code, default.stdout_bytes, default.stderr) == (given.exit_code, given.stdout_bytes, given.stderr)


class Stdin(io.RawIOBase):
    """A stdin that gives ``data``, then fails as a dying disk or a cut connection can; it counts reads."""

    def __init__(self, data: bytes):
        self.data, self.at, self.reads = data, 0, 0

    def readable(self):
        return True

    def readinto(self, buffer):
        self.reads += 1
        if self.at == len(self.data):
            raise OSError(errno.EIO, "Input/output error")
        n = min(len(buffer), len(self.data) - self.at)
        buffer[:n] = self.data[self.at : self.at + n]
        self.at += n
        return n


def filter_reading(stdin: Stdin, *args: str, capsys) -> tuple[int, bytes, str]:
    """``spamtune filter ARGS`` in this process with ``stdin`` (which CliRunner cannot take): its
    exit status, stdout and stderr."""
    out = io.BytesIO()
    streams = io.TextIOWrapper(io.BufferedReader(stdin)), io.TextIOWrapper(out, write_through=True)
    saved = sys.stdin, sys.stdout
    sys.stdin, sys.stdout = streams
    try:
        code = app(["filter", *args], prog_name="spamtune", standalone_mode=False)
        written = out.getvalue()
    finally:
        sys.stdin, sys.stdout = saved
    return code, written, capsys.readouterr().err


@pytest.mark.parametrize("args", [["--on-error", "later"], ["--on-error", ""], ["--on-error", "tempfail", "--threshold", "2"],
                                  ["--on-error", "tempfail", "--server", "http://127.0.0.1:9", "--long", "head"]])  # fmt: skip
def test_a_wrong_command_line_exits_2_before_reading_in_every_mode(args, capsys):
    stdin = Stdin(b"Subject: x\n\nhi\n")
    code, out, err = filter_reading(stdin, *args, capsys=capsys)
    assert code == 2 and out == b"" and stdin.reads == 0
    assert err.startswith("Error: ") and err.count("\n") == 1 and "Traceback" not in err
    if args[1] == "later":
        assert "'later' is not one of fail, pass, tempfail" in err


@pytest.mark.parametrize("mode", sorted(ON_ERROR))
def test_an_input_that_breaks_midway_never_exits_0(mode, run_dir, capsys):
    """The message classified and its start written, then the input fails: every byte read is out,
    but no mode claims success for a message cut short; tempfail defers it (its output is void)."""
    raw = b"Subject: big\n\n" + b"word " * 300_000  # 1.5 MB: past the classified first MiB
    code, out, err = filter_reading(Stdin(raw), "--run", str(run_dir), "--long", "head", "--on-error", mode, capsys=capsys)
    assert len(without_added_lines(out)) >= 1 << 20 and raw.startswith(without_added_lines(out))
    assert b"X-Spamtune-Status: No" in out
    assert err.count("\n") == 1 and "Traceback" not in err
    if mode == "tempfail":
        assert (code, err) == (75, "Error: message deferred while being copied: OSError: [Errno 5] Input/output error\n")
    else:
        assert code == 1 and "Input/output error" in err


@pytest.mark.parametrize(
    "mode, status, line",
    [
        ("tempfail", 75, "message deferred while being copied"),
        ("fail", 1, "message not passed on whole"),
        ("pass", 1, "message not passed on whole"),
    ],
)
def test_stdout_that_breaks_midway_never_exits_0(run_dir, mode, status, line):
    """The mail server stops reading: one line and a failure in every mode, not the quiet 0 that
    other commands end with when their reader goes away (the message did not get through)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    raw = b"Subject: big\n\n" + b"word " * 300_000
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "spamtune", "filter", "--run", str(run_dir), "--long", "head", "--on-error", mode],
            input=raw, stdout=write_end, stderr=subprocess.PIPE, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert proc.returncode == status
    assert proc.stderr.decode() == f"Error: {line}: BrokenPipeError: [Errno 32] Broken pipe\n"


class Interrupted(io.RawIOBase):
    """A stdin read when Ctrl-C arrives."""

    def readable(self):
        return True

    def readinto(self, buffer):
        raise KeyboardInterrupt


@pytest.mark.parametrize("mode, status, line", [("tempfail", 75, "Error: message deferred: interrupted\n"), ("fail", 130, "Error: interrupted\n")])
def test_ctrl_c_defers_with_tempfail(mode, status, line, run_dir, capsys):
    """With tempfail every failure defers, a Ctrl-C too: 130 is no status a mail server takes for "retry later"."""
    code, out, err = filter_reading(Interrupted(), "--run", str(run_dir), "--on-error", mode, capsys=capsys)
    assert (code, out, err) == (status, b"", line)


def test_sigint_while_the_service_answers_defers_with_tempfail():
    """A real SIGINT, sent once the filter has read the message and asked a service that does not answer."""
    import signal
    import socket

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(60)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "spamtune", "filter", "--server", url, "--on-error", "tempfail"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            proc.stdin.write(SAMPLES["plain"][0])
            proc.stdin.close()
            connection, _ = listener.accept()  # the filter is waiting for the verdict
            with connection:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=60)  # its output is a line or two: no pipe fills meanwhile
            out, err = proc.stdout.read(), proc.stderr.read()
        finally:
            proc.kill()
    assert (proc.returncode, out, err.decode()) == (75, b"", "Error: message deferred: interrupted\n")
