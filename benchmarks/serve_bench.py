"""`make bench`, serving part: `spamtune serve` under load against `spamtune predict`, in one run.

On one run (by default a gpt2-small-shaped classifier with random weights: the cost of a
forward pass does not depend on the weights' values):

1. `spamtune predict --file` over the SMS messages (the reference answers, and its messages/s);
2. a service started with `spamtune serve` on 127.0.0.1: its memory once loaded;
3. one short message on the idle service, p50 over HTTP (one kept-alive connection) against
   the in-process `SpamClassifier.predict` of the same message;
4. warm-up, then CLIENTS concurrent clients sending REQUESTS requests (single messages, and every
   BATCH_EVERY-th request a batch of 32): none may be lost, every answer must equal predict's
   (label, and p_spam within the batch-composition noise, reported); p50/p99 latency, messages/s,
   and memory after the load against memory after warm-up;
5. the cold start of `spamtune predict --server URL "x"` against `python -c pass`, timed on the
   idle service (between 3 and 4).

Prints a table with the targets and writes JSON to bench-results/serve-*.json.
Usage: python benchmarks/serve_bench.py [--sms PATH] [--model gpt2-small] [--requests 5000] ...
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import torch

from spamtune import checkpoint
from spamtune.infer import SpamClassifier
from spamtune.model import GPTConfig
from spamtune.labelled_texts import read_labelled_texts

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SMS = REPO / "data" / "sms_spam_collection" / "SMSSpamCollection"  # the copy bundled in the repo
SPAMTUNE = [sys.executable, "-m", "spamtune"]
SHORT_MESSAGE = "Are we still on for lunch?"
BATCH = 32

TARGETS = {
    "throughput_vs_predict_file": 0.9,  # at least
    "idle_http_p50_vs_in_process": 1.3,  # at most
    "memory_growth_after_load": 0.10,  # at most, relative to after warm-up
    "client_cold_start_over_python_s": 0.3,  # at most
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def write_random_run(run_dir: Path, model: str, max_length: int) -> Path:
    shape = GPTConfig.from_name(model)
    cfg = checkpoint.ClassifierConfig(
        model=shape, labels={"ham": 0, "spam": 1}, pooling="last-real", max_length=min(max_length, shape.context_length),
        base_model=model, weights="random",
    )  # fmt: skip
    torch.manual_seed(123)
    checkpoint.save_classifier(run_dir, checkpoint.build_classifier(cfg), cfg)
    return run_dir


class Service:
    """`spamtune serve` in a subprocess on a free loopback port."""

    def __init__(self, run_dir: Path, precision: str, extra: list[str], env: dict[str, str]):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [*SPAMTUNE, "serve", "--run", str(run_dir), "--port", str(self.port), "--precision", precision,
             "--max-texts", str(BATCH), *extra],
            stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        start = time.perf_counter()
        while True:
            line = self.proc.stderr.readline()
            if not line:
                raise SystemExit(f"serve_bench: the service did not start (exit {self.proc.wait()})")
            if "ready on" in line:
                break
        self.ready_s = time.perf_counter() - start
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # keep draining its log

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(60)


def post(conn: http.client.HTTPConnection, body: dict) -> tuple[int, dict]:
    conn.request("POST", "/v1/classify", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def timed_predict_file(run_dir: Path, messages: Path, precision: str, env: dict[str, str]) -> tuple[float, list[dict]]:
    start = time.perf_counter()
    proc = subprocess.run(
        [*SPAMTUNE, "predict", "--run", str(run_dir), "--precision", precision, "--file", str(messages), "--format", "jsonl"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"serve_bench: predict failed:\n{proc.stderr[-2000:]}")
    return wall, [json.loads(line) for line in proc.stdout.splitlines()]


def idle_latency(service: Service, clf: SpamClassifier, repeats: int) -> dict:
    log(f"idle latency, one short message x {repeats}: in-process, then over HTTP ...")
    for _ in range(5):
        clf.predict(SHORT_MESSAGE)
    in_process = []
    for _ in range(repeats):
        start = time.perf_counter()
        clf.predict(SHORT_MESSAGE)
        in_process.append(time.perf_counter() - start)
    conn = service.connection()
    for _ in range(5):
        post(conn, {"text": SHORT_MESSAGE})
    over_http = []
    for _ in range(repeats):
        start = time.perf_counter()
        status, _ = post(conn, {"text": SHORT_MESSAGE})
        over_http.append(time.perf_counter() - start)
        assert status == 200
    conn.close()
    p50_in, p50_http = statistics.median(in_process), statistics.median(over_http)
    return {
        "repeats": repeats,
        "in_process_p50_ms": round(p50_in * 1000, 2),
        "http_p50_ms": round(p50_http * 1000, 2),
        "ratio": round(p50_http / p50_in, 3),
    }


def load_test(service: Service, texts: list[str], reference: list[dict], n_requests: int, clients: int,
              batch_every: int) -> dict:  # fmt: skip
    """CLIENTS threads, each with its own kept-alive connection, share N_REQUESTS requests."""
    rng = random.Random(0)
    plan = []
    for i in range(n_requests):
        if batch_every and i % batch_every == batch_every - 1:
            start = rng.randrange(len(texts) - BATCH)
            plan.append(list(range(start, start + BATCH)))
        else:
            plan.append([rng.randrange(len(texts))])
    next_index = iter(range(n_requests))
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []
    mismatched_labels: list[int] = []
    max_dp = 0.0
    answered = 0

    def client() -> None:
        nonlocal max_dp, answered
        conn = service.connection()
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                break
            idx = plan[i]
            body = {"text": texts[idx[0]]} if len(idx) == 1 else {"texts": [texts[j] for j in idx]}
            start = time.perf_counter()
            try:
                status, answer = post(conn, body)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                with lock:
                    failures.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = service.connection()
                continue
            elapsed = time.perf_counter() - start
            results = [answer] if len(idx) == 1 else answer.get("results", [])
            with lock:
                if status != 200 or len(results) != len(idx):
                    failures.append(f"HTTP {status}: {answer}")
                    continue
                latencies.append(elapsed)
                answered += 1
                for j, r in zip(idx, results):
                    if r["label"] != reference[j]["label"]:
                        mismatched_labels.append(j)
                    max_dp = max(max_dp, abs(r["p_spam"] - reference[j]["p_spam"]))
        conn.close()

    log(f"load: {clients} clients, {n_requests:,} requests ...")
    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    messages = sum(map(len, plan))
    return {
        "clients": clients,
        "requests": n_requests,
        "batch_requests": sum(len(p) > 1 for p in plan),
        "messages": messages,
        "answered": answered,
        "lost": n_requests - answered,
        "failures": failures[:5],
        "label_mismatches": len(mismatched_labels),
        "label_mismatch_p_spam": sorted({round(reference[j]["p_spam"], 4) for j in mismatched_labels})[:10],
        "max_abs_p_spam_diff": max_dp,
        "wall_s": round(wall, 2),
        "msg_per_s": round(messages / wall, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "p99_ms": round(percentile(latencies, 99) * 1000, 1),
    }


def batch_stats(service: Service) -> dict:
    conn = service.connection()
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    values = {}
    for line in text.splitlines():
        for name in ("spamtune_batch_size_messages_sum", "spamtune_batch_size_messages_count",
                     "spamtune_batch_size_requests_sum"):  # fmt: skip
            if line.startswith(name + " "):
                values[name] = float(line.split()[1])
    passes = values.get("spamtune_batch_size_messages_count", 0) or 1
    return {
        "forward_passes": int(passes),
        "mean_messages_per_pass": round(values.get("spamtune_batch_size_messages_sum", 0) / passes, 1),
        "mean_requests_per_pass": round(values.get("spamtune_batch_size_requests_sum", 0) / passes, 1),
    }


def cold_start(url: str, repeats: int) -> dict:
    """Median wall time, and median CPU time (user + system: what a busy machine inflates least)."""
    log("client cold start ...")

    def measure(cmd: list[str]) -> tuple[float, float]:
        before = os.times()
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        wall = time.perf_counter() - start
        after = os.times()
        return wall, (after.children_user - before.children_user) + (after.children_system - before.children_system)

    def medians(cmd: list[str]) -> tuple[float, float]:
        runs = [measure(cmd) for _ in range(repeats)]
        return statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)

    python, python_cpu = medians([sys.executable, "-c", "pass"])
    client, client_cpu = medians([*SPAMTUNE, "predict", "--server", url, "--format", "label", "x"])
    return {
        "python_pass_s": round(python, 3), "client_s": round(client, 3), "over_python_s": round(client - python, 3),
        "python_pass_cpu_s": round(python_cpu, 3), "client_cpu_s": round(client_cpu, 3),
        "over_python_cpu_s": round(client_cpu - python_cpu, 3),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sms", type=Path, default=DEFAULT_SMS)
    parser.add_argument("--run", type=Path, default=None, help="a run to serve (default: a random gpt2-small-shaped one)")
    parser.add_argument("--model", default="gpt2-small", help="shape of the random run when --run is not given")
    parser.add_argument("--max-length", type=int, default=120, help="token limit of the random run (the book pads to 120)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--batch-every", type=int, default=10, help="every N-th request is a batch of 32 (0: none)")
    parser.add_argument("--latency-repeats", type=int, default=200)
    parser.add_argument("--warm-up", type=int, default=1000, help="requests before the memory baseline is taken")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch threads for predict, the service and the in-process timing alike (default: torch's); "
        "1 gives steadier figures on a machine shared with other work",
    )  # fmt: skip
    parser.add_argument("--serve-args", default="", help="extra `spamtune serve` options, e.g. '--max-batch 64'")
    parser.add_argument("--out", type=Path, default=REPO / "bench-results")
    args = parser.parse_args()
    if not args.sms.is_file():
        raise SystemExit(f"serve_bench: the SMS Spam Collection is not at {args.sms}; give --sms PATH")

    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    texts = [t.replace("\n", " ").replace("\r", " ") for t in read_labelled_texts(args.sms).texts]
    results: dict = {
        "when": datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "load_average_at_start": os.getloadavg(),
                    "torch_threads": args.threads or torch.get_num_threads()},  # fmt: skip
        "targets": TARGETS,
    }
    with tempfile.TemporaryDirectory(prefix="spamtune-serve-bench-") as tmp:
        run_dir = args.run or write_random_run(Path(tmp) / f"random-{args.model}", args.model, args.max_length)
        results["run"] = {"model": args.model if args.run is None else str(args.run), "precision": args.precision}
        messages = Path(tmp) / "messages.txt"
        messages.write_text("".join(t + "\n" for t in texts), encoding="utf-8")

        log(f"predict --file over {len(texts):,} messages ...")
        wall, reference = timed_predict_file(run_dir, messages, args.precision, env)
        for r in reference:  # predict's jsonl: p_spam (or, before that convention, probability)
            r["p_spam"] = r.get("p_spam", r.get("probability"))
        results["predict_file"] = {"messages": len(texts), "wall_s": round(wall, 2), "msg_per_s": round(len(texts) / wall, 1)}

        service = Service(run_dir, args.precision, args.serve_args.split(), env)
        try:
            rss_loaded = rss_mib(service.proc.pid)
            clf = SpamClassifier.load(run_dir, device="cpu", precision=args.precision)
            results["idle_latency"] = idle_latency(service, clf, args.latency_repeats)
            del clf
            # Before the load: after it the service still frees memory for a while, and on two
            # cores the client's start would be timed against that work rather than alone.
            results["cold_start"] = cold_start(service.url, 7)
            log("warm-up ...")
            load_test(service, texts, reference, args.warm_up, args.clients, args.batch_every)
            rss_warm = rss_mib(service.proc.pid)
            results["load"] = load_test(service, texts, reference, args.requests, args.clients, args.batch_every)
            rss_after = rss_mib(service.proc.pid)
            results["load"].update(batch_stats(service))
            results["memory_mib"] = {"after_load_of_run": round(rss_loaded, 1), "after_warm_up": round(rss_warm, 1),
                                     "after_requests": round(rss_after, 1),
                                     "growth_after_warm_up": round(rss_after / rss_warm - 1, 4)}  # fmt: skip
            results["service_ready_s"] = round(service.ready_s, 2)
        finally:
            results["exit_status_on_sigterm"] = service.stop()
    report(results)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"serve-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten: {path}")


def report(r: dict) -> None:
    p, load, idle, mem, cold = r["predict_file"], r["load"], r["idle_latency"], r["memory_mib"], r["cold_start"]
    ratio = load["msg_per_s"] / p["msg_per_s"]
    rows = [
        ("predict --file (whole command)", f"{p['messages']:,} msgs in {p['wall_s']:.1f} s = {p['msg_per_s']:.1f} msg/s", ""),
        (f"serve, {load['clients']} clients, {load['requests']:,} requests",
         f"{load['messages']:,} msgs in {load['wall_s']:.1f} s = {load['msg_per_s']:.1f} msg/s; "
         f"p50 {load['p50_ms']:.0f} ms, p99 {load['p99_ms']:.0f} ms", f"{ratio:.2f}x predict --file"),
        ("  answers", f"lost {load['lost']}, labels differing from predict {load['label_mismatches']}, "
                      f"max |dp_spam| {load['max_abs_p_spam_diff']:.2g}", ""),
        ("  dynamic batching", f"{load['forward_passes']:,} passes, {load['mean_messages_per_pass']} msgs and "
                               f"{load['mean_requests_per_pass']} requests per pass", ""),
        ("one short message, idle", f"HTTP p50 {idle['http_p50_ms']:.1f} ms vs in-process {idle['in_process_p50_ms']:.1f} ms",
         f"{idle['ratio']:.2f}x"),
        ("service memory (RSS)", f"loaded {mem['after_load_of_run']:.0f} MiB, warm {mem['after_warm_up']:.0f} MiB, "
                                 f"after load {mem['after_requests']:.0f} MiB", f"{mem['growth_after_warm_up']:+.1%}"),
        ("client cold start predict --server", f"{cold['client_s']:.2f} s vs python -c pass {cold['python_pass_s']:.2f} s",
         f"+{cold['over_python_s']:.2f} s"),
        ("  the same in CPU time", f"{cold['client_cpu_s']:.2f} s vs {cold['python_pass_cpu_s']:.2f} s",
         f"+{cold['over_python_cpu_s']:.2f} s"),
    ]  # fmt: skip
    width = max(len(a) for a, _, _ in rows)
    print(f"spamtune serve bench: {r['run']['model']} ({r['run']['precision']}), {r['machine']['cpu']}, "
          f"{r['machine']['cores']} cores, {r['machine']['torch_threads']} torch threads, load average at start {r['machine']['load_average_at_start'][0]:.1f}")  # fmt: skip
    for a, b, c in rows:
        print(f"  {a:<{width}}  {b}  {c}")
    t = r["targets"]
    checks = [
        (f"throughput >= {t['throughput_vs_predict_file']}x predict --file", ratio >= t["throughput_vs_predict_file"]),
        ("no request lost", load["lost"] == 0),
        (f"idle HTTP p50 <= {t['idle_http_p50_vs_in_process']}x in-process", idle["ratio"] <= t["idle_http_p50_vs_in_process"]),
        (f"memory after load within {t['memory_growth_after_load']:.0%} of warm", abs(mem["growth_after_warm_up"]) <= t["memory_growth_after_load"]),
        (f"client cold start <= python + {t['client_cold_start_over_python_s']} s", cold["over_python_s"] <= t["client_cold_start_over_python_s"]),
        ("SIGTERM exits 0", r["exit_status_on_sigterm"] == 0),
    ]  # fmt: skip
    print("targets:")
    for name, ok in checks:
        print(f"  {'PASS' if ok else 'MISS'}  {name}")
    r["checks"] = {name: ok for name, ok in checks}


if __name__ == "__main__":
    main()
