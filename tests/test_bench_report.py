"""``benchmarks/bench.py --report``: a saved result's targets, each with the ratio a run at its
floor would show, and the targets no exact run could meet on that machine marked so."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO

IMPORT_TORCH_S = 1.0
COMPUTE_FLOOR_S, TRAINABLE_FLOOR_S, OPTIMIZER_FLOOR_S = 30.0, 0.5, 4.0
PADDED_PEER_S, GROUPED_PEER_S = 700.0, 250.0


def saved_result(recipe_s: float, second_s: float) -> dict:
    """A bench result of one fp32 recipe, shaped as ``bench.py`` writes it."""
    run = {
        "precision": "fp32", "device": "cpu", "wall_s": recipe_s, "prefix_cache_build_s": 20.0,
        "prefix_cache_background_wait_s": 0.1, "prefix_cache_source": "stored", "prefix_cache_mib": 121.6,
        "training_steps_s": 12.0, "steps": 655, "trainable_params": 7090946, "examples_per_s": 300.0,
        "test_accuracy": 0.88, "run_folder_mb": 28.4, "run": "runs/x", "walls_s": [recipe_s],
    }  # fmt: skip
    return {
        "machine": {"cpu": "x86_64", "cores": 2, "torch": "2.13.0+cpu", "auto_precision_cpu": "fp32", "copy_gbs": 45.0},
        "targets": {
            "recipe_vs_peer_fp32": 0.08, "predict_speedup": 5.0, "cold_start_over_torch_s": 1.0, "predict_peak_gb": 1.2,
            "concurrent_over_sequential": 1.25, "first_run_vs_grouped_peer": 0.12,
            "first_run_vs_padded_peer": {"fp32": 0.06}, "second_over_first_run": 0.3, "run_folder_mb": 40.0,
        },
        "recipe": [run],
        "second_run": {**run, "wall_s": second_s, "walls_s": [second_s], "pair_ratios": [second_s / recipe_s], "ratio": second_s / recipe_s},
        "peer_training": [{"precision": "fp32", "measured_steps": 30, "s_per_step": PADDED_PEER_S / 650, "pad_width": 120, "extrapolated_650_steps_s": PADDED_PEER_S}],
        "peer_grouped": [{"precision": "fp32", "device": "cpu", "steps_per_epoch": 131, "epoch_s": GROUPED_PEER_S / 5, "extrapolated_5_epochs_s": GROUPED_PEER_S}],
        "floors": [{
            "precision": "fp32", "peak_gflops": 200.0, "frozen_tflop": 6.0, "trainable_tflop": 0.1, "distinct_tokens": 41498,
            "compute_floor_s": COMPUTE_FLOOR_S, "trainable_floor_s": TRAINABLE_FLOOR_S, "optimizer_memory_floor_s": OPTIMIZER_FLOOR_S,
            "recipe_over_floor": 1.3, "cache_build_gflops": 190.0, "cache_partly_behind": True,
        }],
        "prediction": [{"precision": "fp32", "messages": 5574, "spamtune_msg_per_s": 80.0, "peer_msg_per_s": 14.0, "speedup": 80 / 14}],
        "cold_start": {"import_torch_s": IMPORT_TORCH_S, "predict_x_s": 1.1, "over_torch_s": 0.1},
        "predict_cli": {"messages": 5574, "wall_s": 80.0, "peak_rss_gb": 0.9},
        "concurrent_runs": [{"wait_policy": "spamtune's default", "sequential_s": 40.0, "concurrent_s": 25.0, "ratio": 0.625}],
        "ranks": {"epochs": 1, "max_weight_difference": 1e-7, "runs": {
            "1 process, 1 thread": {"wall_s": 5.0, "training_steps_s": 0.5, "test_accuracy": 0.85},
        }},
    }  # fmt: skip


def report_lines(tmp_path, result: dict) -> dict[str, str]:
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(result))
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench.py"), "--report", str(path)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    targets = out.stdout.split("targets")[1].splitlines()[1:]
    return {line.split("  ")[2].strip(): line for line in targets if line.strip()}


def test_each_speed_target_is_given_at_the_floor_and_one_below_it_is_out_of_reach(tmp_path):
    first_at_floor = IMPORT_TORCH_S + COMPUTE_FLOOR_S + OPTIMIZER_FLOOR_S
    lines = report_lines(tmp_path, saved_result(recipe_s=40.0, second_s=14.0))

    padded = lines["recipe (fp32 on cpu) <= 0.06x padded peer fp32"]
    assert padded.startswith("  PASS")  # 40 s against 700 s: 0.057x
    assert f"{40.0 / PADDED_PEER_S:.3f}x" in padded
    at_floor = first_at_floor / PADDED_PEER_S
    assert f"at the floor {at_floor:.3f}x: leaves {0.06 / at_floor:.2f}x the floor" in padded

    # 35 s at the floor against 0.12 x 250 s = 30 s: no exact run gets there
    grouped = lines["recipe (fp32 on cpu) <= 0.12x grouped peer fp32"]
    assert grouped.startswith("  MISS")
    assert f"at the floor {first_at_floor / GROUPED_PEER_S:.3f}x: out of reach" in grouped

    second_at_floor = (IMPORT_TORCH_S + TRAINABLE_FLOOR_S + OPTIMIZER_FLOOR_S) / first_at_floor
    second = lines["second run <= 0.3x first run"]
    assert second.startswith("  MISS") and f"{14.0 / 40.0:.3f}x" in second
    assert f"at the floor {second_at_floor:.3f}x: leaves {0.3 / second_at_floor:.2f}x the floor" in second

    # targets that are not speed ratios carry no floor
    assert "floor" not in lines["recipe (fp32 on cpu) run folder <= 40 MB"]
    assert lines["cold start <= import torch + 1.0 s"].startswith("  PASS")


def test_a_slower_import_puts_the_second_run_target_out_of_reach(tmp_path):
    """A machine where ``import torch`` is a large part of a run at its floor (3.2 s on the
    16-core machine, against a 9.7 s first run at its floor)."""
    result = saved_result(recipe_s=40.0, second_s=12.0)
    result["cold_start"]["import_torch_s"] = 20.0
    second = report_lines(tmp_path, result)["second run <= 0.3x first run"]
    at_floor = (20.0 + TRAINABLE_FLOOR_S + OPTIMIZER_FLOOR_S) / (20.0 + COMPUTE_FLOOR_S + OPTIMIZER_FLOOR_S)
    assert f"at the floor {at_floor:.3f}x: out of reach" in second


def test_a_sweep_is_set_against_the_first_run_timed_just_before_it(tmp_path):
    """The sweep runs minutes after the median first run; the first run timed right before it
    saw the machine's load of the moment, and is the reference. A result saved before that run
    was timed is set against the median first run."""
    result = saved_result(recipe_s=40.0, second_s=12.0)
    result["targets"]["sweep_of_6_over_first_run"] = 3.0
    result["sweep"] = {"precision": "fp32", "configurations": 6, "wall_s": 135.0, "first_run_s": 48.0, "sweep": {}}
    sweep = report_lines(tmp_path, result)["sweep of 6 <= 3.0x one first run"]
    assert sweep.startswith("  PASS") and f"{135.0 / 48.0:.3f}x" in sweep  # 3.375x the median 40 s
    del result["sweep"]["first_run_s"]
    sweep = report_lines(tmp_path, result)["sweep of 6 <= 3.0x one first run"]
    assert sweep.startswith("  MISS") and f"{135.0 / 40.0:.3f}x" in sweep
