"""Mail figures: parsing speed, the prepare summary, ``--long`` head vs head-tail vs chunks, filter latency.

The labelled mail set is generated here, so it is licence-clean and reproducible: long
newsletters (plain text, or HTML with styles and links) of a few hundred to ~2,000 tokens, each
carrying one short message from the SMS test split, which the run never trained on, at the start,
the middle or the end of the body. A newsletter carrying a spam SMS is spam, one carrying a ham
SMS is ham. Ham is written as a folder of .eml files, spam as an mbox (with ``>From `` quoting);
a few messages are damaged on purpose (8-bit Latin-1 subjects, truncated base64), empty, or
filed twice.

Usage (an SMS-trained run, e.g. the README's offline pipeline):
    python benchmarks/mail_bench.py --data-dir DATA_ROOT [--run RUN_DIR] [--n 300] [--out bench-results]
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from spamtune import paths
from spamtune.infer import SpamClassifier
from spamtune.long_messages import predict_long
from spamtune.mail import extract
from spamtune.mail_sources import iter_messages
from spamtune.options import LONG_MODES
from spamtune.mail_filter import filter_message, verdict_function

REPO = Path(__file__).resolve().parents[1]
SPAMTUNE = [sys.executable, "-m", "spamtune"]
POSITIONS = ("start", "middle", "end")

ORGS = ["The garden club", "Our library", "The parish council", "The cycling group", "The school board",
        "The choir", "Our volunteers", "The allotment society", "The book circle", "The town museum"]
VERBS = ["met on", "will gather on", "reviewed plans on", "held a workshop on", "planned repairs on",
         "welcomed new members on", "discussed the budget on", "published minutes on"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
TOPICS = ["the spring fair", "the new opening hours", "the footpath survey", "the autumn concert",
          "the recycling scheme", "the roof appeal", "the summer reading list", "the tree planting day",
          "the history talk", "the annual general meeting", "the charity walk", "the photo competition"]
DETAILS = ["Minutes are on the noticeboard.", "Tea and cake will be served.", "Please bring a packed lunch.",
           "Parking is available behind the hall.", "Children are welcome.", "Thanks to everyone who helped.",
           "The next issue comes out in two weeks.", "Contact the secretary with questions.",
           "Tickets are available at the door.", "Photos from last month are online."]


def sentence(rng: random.Random) -> str:
    return f"{rng.choice(ORGS)} {rng.choice(VERBS)} {rng.choice(DAYS)} about {rng.choice(TOPICS)}. {rng.choice(DETAILS)}"


def newsletter(rng: random.Random, cue: str, position: str) -> list[str]:
    paragraphs = [" ".join(sentence(rng) for _ in range(rng.randint(3, 6))) for _ in range(rng.randint(6, 18))]
    if rng.random() < 0.3:  # a line an mbox must quote
        paragraphs.insert(1, "From the editor: thank you for reading.")
    at = {"start": 0, "middle": len(paragraphs) // 2, "end": len(paragraphs)}[position]
    paragraphs.insert(at, cue)
    return paragraphs


def message_bytes(i: int, rng: random.Random, paragraphs: list[str]) -> bytes:
    subject = f"Community digest #{i}"
    headers = f"From: digest@example.org\nTo: reader{i}@example.net\nDate: Mon, 23 Nov 2026 10:{i % 60:02d}:00 +0000\n" \
              f"Message-ID: <digest-{i}@example.org>\nMIME-Version: 1.0\n"
    if i % 97 == 5:  # an empty message
        return (headers + "Subject: \n\n").encode()
    if i % 37 == 3:  # damaged: an 8-bit Latin-1 subject
        head = headers.encode() + b"Subject: Nouvelles caf\xe9 #" + str(i).encode() + b"\n"
    else:
        head = (headers + f"Subject: {subject}\n").encode()
    if i % 53 == 7:  # damaged: base64 cut short
        body = base64.b64encode("\n\n".join(paragraphs).encode())
        body = body[: len(body) - 5]
        return head + b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n" + \
            b"\n".join(body[j : j + 76] for j in range(0, len(body), 76)) + b"\n"
    if rng.random() < 0.5:
        html = "<html><head><style>p { font: 12px serif }</style></head><body><h1>Digest</h1>" + "".join(
            f"<p>{p.replace('&', '&amp;')} <a href='https://example.org/{j}'>read more</a></p>"
            for j, p in enumerate(paragraphs)
        ) + "<!-- footer --></body></html>"
        return head + b"Content-Type: text/html; charset=utf-8\n\n" + html.encode() + b"\n"
    return head + b"Content-Type: text/plain; charset=utf-8\n\n" + "\n\n".join(paragraphs).encode() + b"\n"


def read_cues(data_root: Path) -> dict[str, list[str]]:
    cues: dict[str, list[str]] = {"ham": [], "spam": []}
    labels = {v: k for k, v in json.loads(paths.labels_file(data_root).read_text())["labels"].items()}
    with open(paths.split_file(data_root, "test"), newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            cues[labels[int(row["label"])]].append(row["text"])
    return cues


def build_corpus(root: Path, cues: dict[str, list[str]], n: int, seed: int) -> dict[str, dict]:
    """Ham as a folder of .eml files, spam as an mbox; returns each message's label and cue position."""
    rng = random.Random(seed)
    truth = {}
    (root / "ham").mkdir(parents=True)
    mbox = io.BytesIO()
    spam_number = 0
    for i in range(n):
        label = "spam" if i % 2 else "ham"
        position = POSITIONS[(i // 2) % 3]
        raw = message_bytes(i, rng, newsletter(rng, rng.choice(cues[label]), position))
        if label == "ham":
            (root / "ham" / f"{i:04d}.eml").write_bytes(raw)
            truth[f"ham:{i:04d}.eml"] = {"label": label, "position": position}
            if i % 25 == 0:  # the same message filed twice: --dedupe drops the copy
                (root / "ham" / f"{i:04d}-copy.eml").write_bytes(raw)
                truth[f"ham:{i:04d}-copy.eml"] = truth[f"ham:{i:04d}.eml"]
        else:
            spam_number += 1
            mbox.write(b"From digest@example.org Mon Nov 23 10:00:00 2026\n")
            for line in raw.splitlines(keepends=True):
                mbox.write(b">" + line if line.lstrip(b">").startswith(b"From ") else line)
            mbox.write(b"\n")
            truth[f"spam:{spam_number} <digest-{i}@example.org>"] = {"label": label, "position": position}
    (root / "spam.mbox").write_bytes(mbox.getvalue())
    return truth


def corpus_messages(root: Path) -> list[tuple[str, bytes]]:
    return [(f"ham:{i}", raw) for i, raw in iter_messages(root / "ham")] + [
        (f"spam:{i}", raw) for i, raw in iter_messages(root / "spam.mbox")
    ]


def bench_parsing(root: Path, repeats: int = 3) -> dict:
    best = best_cpu = None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        messages = corpus_messages(root)
        results = [extract(raw) for _, raw in messages]
        seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        best = seconds if best is None else min(best, seconds)
        best_cpu = cpu if best_cpu is None else min(best_cpu, cpu)
    size = sum(len(raw) for _, raw in messages)
    return {"messages": len(messages), "mb": round(size / 1e6, 2), "seconds": round(best, 3),
            "messages_per_s": round(len(messages) / best, 1), "messages_per_cpu_s": round(len(messages) / best_cpu, 1),
            "damaged": sum(r.damaged for r in results),
            "empty": sum(r.empty for r in results)}


def bench_long(classifier: SpamClassifier, root: Path, truth: dict) -> dict:
    from spamtune.tokenizer import encode_texts

    items = [(i, extract(raw).text) for i, raw in corpus_messages(root)]
    items = [(i, text) for i, text in items if text]
    lengths = [len(ids) for ids in encode_texts([t for _, t in items])]
    out = {"messages": len(items), "window": classifier.max_length,
           "tokens_median": statistics.median(lengths), "tokens_max": max(lengths),
           "longer_than_window": sum(n > classifier.max_length for n in lengths)}
    for mode in LONG_MODES:
        start, start_cpu = time.perf_counter(), time.process_time()
        predictions = predict_long(classifier, [t for _, t in items], mode)
        seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        hits, totals = Counter(), Counter()
        for (message_id, _), p in zip(items, predictions):
            t = truth[message_id]
            key = f"{t['label']}@{t['position']}"
            totals[key] += 1
            hits[key] += p.label == t["label"]
        correct = sum(hits.values())
        out[mode] = {"accuracy": round(correct / len(items), 4), "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
                     **{key: f"{hits[key]}/{totals[key]}" for key in sorted(totals)}}
    return out


def bench_filter(classifier: SpamClassifier, run_dir: Path, root: Path, n: int = 60) -> dict:
    """Per message with the model loaded (each --long mode), and per process (the default mode)."""
    messages = [raw for _, raw in corpus_messages(root)][:n]
    out = {}
    for mode in LONG_MODES:
        classify = verdict_function(classifier, mode)
        filter_message(io.BytesIO(messages[0]), io.BytesIO(), classify)  # warm-up
        times, cpu = [], []
        for raw in messages:
            start, start_cpu = time.perf_counter(), time.process_time()
            outcome = filter_message(io.BytesIO(raw), io.BytesIO(), classify)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
            assert outcome.error is None
        out[f"warm_ms_median_{mode}"] = round(statistics.median(times) * 1e3, 1)
        out[f"warm_cpu_ms_median_{mode}"] = round(statistics.median(cpu) * 1e3, 1)
    process = []
    for raw in messages[:3]:
        start = time.perf_counter()
        done = subprocess.run([*SPAMTUNE, "filter", "--run", str(run_dir)], input=raw, capture_output=True, check=False)
        process.append(time.perf_counter() - start)
        assert done.returncode == 0, done.stderr
    out["process_s_median"] = round(statistics.median(process), 2)
    return out


def prepare_summary(root: Path, data_dir: Path) -> str:
    done = subprocess.run(
        [*SPAMTUNE, "prepare", "--data-dir", str(data_dir), "--balance", "none", "--dedupe",
         "--input", f"ham={root / 'ham'}", "--input", f"spam={root / 'spam.mbox'}"],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="data root of an SMS-trained run (its test.csv gives the cues)")
    parser.add_argument("--run", type=Path, default=None, help="run folder (default: the latest under --data-dir)")
    parser.add_argument("--n", type=int, default=300, help="messages to generate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "bench-results")
    parser.add_argument("--parts", default="parsing,prepare,long,filter", help="which figures to measure")
    args = parser.parse_args()

    run_dir = args.run or paths.latest_run(args.data_dir)
    classifier = SpamClassifier.load(run_dir, device="cpu")
    results = {"run": str(run_dir), "precision": classifier.precision, "threshold": classifier.threshold}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "corpus"
        truth = build_corpus(root, read_cues(args.data_dir), args.n, args.seed)
        parts = {
            "parsing": lambda: bench_parsing(root),
            "prepare": lambda: prepare_summary(root, Path(tmp) / "prepared"),
            "long": lambda: bench_long(classifier, root, truth),
            "filter": lambda: bench_filter(classifier, run_dir, root),
        }
        for name in args.parts.split(","):
            results[name] = parts[name]()
            shown = results[name] if isinstance(results[name], str) else json.dumps(results[name], indent=1)
            print(f"{name}:\n{shown}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / f"mail-{time.strftime('%Y%m%d-%H%M%S')}.json"
    target.write_text(json.dumps(results, indent=2) + "\n")
    print(target)


if __name__ == "__main__":
    main()
