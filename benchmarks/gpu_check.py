"""One short check of spamtune on a CUDA GPU, sized for a few minutes of a lent machine.

CI has no GPU, so the CUDA paths (torch's fused AdamW with spamtune's own learning-rate
schedule, autocast, the prefix cache on the GPU, LoRA, sweeps, prediction) are checked here
by hand when a GPU is at hand. Run from the repository root:

    python benchmarks/gpu_check.py --out gpu-check.json

1. a tiny model trained the same way on the CPU and on the GPU in fp32 (cosine schedule,
   warm-up, clipping), evaluated every 10 steps: the first evaluations must agree closely
   (rounding differences grow over a whole run, so the final losses only roughly agree);
2. LoRA and a sweep of four configurations on the GPU;
3. the book's recipe (gpt2-small shape, random weights, last block, 5 epochs) on the GPU in
   the precision auto picks, a second run on the same cache, and the Hugging Face peers on
   the same GPU (padded and length-grouped);
4. prediction over the SMS file on the GPU against the peer, and the labels of the GPU run's
   classifier on the GPU against the same classifier on the CPU;
5. spamtune's AdamW on CUDA against ``torch.optim.AdamW(fused=True)``, plain and under fp16's
   gradient scaler with one infinite gradient: the same weights, bit for bit.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import (  # noqa: E402
    DEFAULT_SMS,
    SPAMTUNE,
    bench_peer_grouped,
    bench_peer_training,
    bench_recipe,
    log,
    timed_run,
)
from hf_peer import build_peer, time_prediction  # noqa: E402

from spamtune.adamw import AdamW  # noqa: E402
from spamtune.infer import SpamClassifier  # noqa: E402
from spamtune.model import GPTConfig  # noqa: E402
from spamtune.labelled_texts import read_labelled_texts  # noqa: E402
from spamtune.tokenizer import encode_texts  # noqa: E402

TINY = ["--model", "tiny", "--weights", "random", "--epochs", "2", "--lr", "5e-4"]
SCHEDULE = ["--schedule", "cosine", "--warmup-steps", "20", "--clip-grad-norm", "1.0"]


def finetune(data_dir: Path, name: str, *args: str) -> dict:
    out = data_dir / "runs" / name
    wall, _ = timed_run([*SPAMTUNE, "finetune", *args, "--data-dir", str(data_dir), "--out", str(out)])
    summary = json.loads((out / "summary.json").read_text())
    keys = ("device", "precision", "trainable", "validation_loss", "validation_accuracy", "test_accuracy", "steps")
    curve = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    early = {row["step"]: row["validation_loss"] for row in curve[:2]}
    return {"wall_s": round(wall, 2), **{k: summary[k] for k in keys}, "trainable_params": summary["trainable_params"], "early_validation_loss": early}


def check_tiny(data_dir: Path) -> dict:
    log("tiny model, fp32, cosine schedule with warm-up and clipping: CPU against GPU ...")
    runs = {
        device: finetune(data_dir, f"tiny-{device}", *TINY, *SCHEDULE, "--trainable", "all", "--precision", "fp32", "--eval-every", "10", "--device", device)
        for device in ("cpu", "cuda")
    }  # fmt: skip
    cpu, gpu = (runs[device]["early_validation_loss"] for device in ("cpu", "cuda"))
    early_gap = max(abs(cpu[step] - gpu[step]) for step in cpu)
    final_gap = abs(runs["cpu"]["validation_loss"] - runs["cuda"]["validation_loss"])
    log("tiny model: LoRA on the GPU ...")
    lora = finetune(data_dir, "tiny-lora", *TINY, "--trainable", "lora", "--device", "cuda")
    return {
        "runs": runs, "early_validation_loss_gap": round(early_gap, 6), "final_validation_loss_gap": round(final_gap, 6),
        "lora": lora, "agree": early_gap < 1e-3,
    }  # fmt: skip


def check_sweep(data_dir: Path) -> dict:
    log("sweep of four on the GPU (tiny) ...")
    out = data_dir / "sweep"
    cmd = [
        *SPAMTUNE, "sweep", *TINY, "--trainable", "last-block,lora", "--lr", "1e-4,5e-4", "--device", "cuda",
        "--data-dir", str(data_dir), "--out", str(out),
    ]  # fmt: skip
    wall, _ = timed_run(cmd)
    table = json.loads((out / "sweep.json").read_text())
    again, _ = timed_run(cmd)  # every configuration finished: all four are skipped
    return {"wall_s": round(wall, 2), "rerun_s": round(again, 2), "sweep": table}


def check_recipe(data_dir: Path) -> dict:
    first = bench_recipe(data_dir, "auto", "cuda")
    second = bench_recipe(data_dir, "auto", "cuda", name="-second")
    precision = first["precision"]
    padded = bench_peer_training(data_dir, precision, 30, "cuda")
    grouped = bench_peer_grouped(data_dir, precision, "cuda")
    return {
        "first": first,
        "second": second,
        "peer_padded": padded,
        "peer_grouped": grouped,
        "first_over_padded_peer": round(first["wall_s"] / padded["extrapolated_650_steps_s"], 3),
        "first_over_grouped_peer": round(first["wall_s"] / grouped["extrapolated_5_epochs_s"], 3),
        "second_over_first": round(second["wall_s"] / first["wall_s"], 3),
    }


def check_prediction(run_dir: str, sms: Path) -> dict:
    texts = read_labelled_texts(sms).texts
    gpu = SpamClassifier.load(run_dir, device="cuda")
    gpu.predict(texts[:64])  # kernels chosen, memory pools filled
    torch.cuda.synchronize()
    start = time.perf_counter()
    on_gpu = gpu.predict(texts)
    torch.cuda.synchronize()
    ours = len(texts) / (time.perf_counter() - start)
    peer = build_peer(GPTConfig.from_name("gpt2-small")).to("cuda")
    theirs = time_prediction(peer, encode_texts(texts, gpu.max_length), gpu.precision)
    sample = texts[:300]
    on_cpu = SpamClassifier.load(run_dir, device="cpu", precision="fp32").predict(sample)
    same = sum(a.label == b.label for a, b in zip(on_cpu, on_gpu[:300]))
    gap = max(abs(a.probability - b.probability) for a, b in zip(on_cpu, on_gpu[:300]))
    return {
        "precision": gpu.precision,
        "messages": len(texts),
        "spamtune_msg_per_s": round(ours, 1),
        "peer_msg_per_s": round(theirs, 1),
        "speedup": round(ours / theirs, 2),
        "cpu_fp32_vs_gpu_same_labels": f"{same}/{len(sample)}",
        "cpu_fp32_vs_gpu_max_p_spam_gap": round(gap, 4),
    }


def check_adamw() -> dict:
    def train(make, scaled: bool) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(shape, generator=gen).cuda()) for shape in ((768, 3072), (3072,), (2, 768))]
        optimizer = make(params)
        scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10, enabled=scaled)
        for step in range(6):
            scale = scaler.scale(torch.ones((), device="cuda"))
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen).cuda() * scale
            if scaled and step == 2:
                params[0].grad[0, 0] = float("inf")
            scaler.step(optimizer)
            scaler.update()
        return [p.detach().cpu() for p in params]

    result = {}
    for scaled in (False, True):
        mine = train(lambda ps: AdamW(ps, lr=1e-3, weight_decay=0.1), scaled)
        theirs = train(lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.1, fused=True), scaled)
        result["fp16_scaler" if scaled else "plain"] = all(torch.equal(a, b) for a, b in zip(mine, theirs))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sms", type=Path, default=DEFAULT_SMS)
    parser.add_argument("--out", type=Path, default=Path("gpu-check.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA GPU here")
    results: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "adamw_equal": check_adamw()}
    with tempfile.TemporaryDirectory(prefix="spamtune-gpu-") as tmp:
        data_dir = Path(tmp) / "data"
        timed_run([*SPAMTUNE, "prepare", "--input", str(args.sms), "--data-dir", str(data_dir)])
        for name, check in (
            ("tiny", lambda: check_tiny(data_dir)),
            ("sweep", lambda: check_sweep(data_dir)),
            ("recipe", lambda: check_recipe(data_dir)),
        ):
            try:
                results[name] = check()
            except SystemExit as failure:  # one failed command must not hide the other checks
                results[name] = {"failed": str(failure)[-3000:]}
            args.out.write_text(json.dumps(results, indent=2) + "\n")
        if "first" in results["recipe"]:
            results["prediction"] = check_prediction(results["recipe"]["first"]["run"], args.sms)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
