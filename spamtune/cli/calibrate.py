"""``spamtune calibrate``: fit a run's temperature and choose its decision threshold on the
validation split, stored in the run as ``calibration.json``.

The written path goes to stdout (``--format json``: the whole record); what was fitted and the
validation figures of the chosen operating point go to stderr.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Optional

import typer

from spamtune.cli import common
from spamtune.errors import SpamtuneError, SpamtuneUsageError

# A --max-ham-loss given as a bare fraction this large or larger is said back as a percentage:
# "0.5" for "0.5%" flags up to half the ham, and nothing else would tell.
LARGE_BARE_RATE = 0.1


class CalibrateFormat(str, enum.Enum):
    text = "text"
    json = "json"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def summary_lines(calibration) -> list[str]:
    """What a user wants to know about a calibration, as plain lines (no markup)."""
    v = calibration.validation
    lines = [
        f"temperature {calibration.temperature:.4g}: validation NLL {v['nll_before']:.4f} -> {v['nll_after']:.4f}, "
        f"ECE {v['ece_before']:.2%} -> {v['ece_after']:.2%} ({v['n']:,} messages)"
        if v.get("nll_before") is not None
        else f"temperature {calibration.temperature:.4g}",
        f"threshold {calibration.threshold:.4g} ({calibration.describe()}): on validation "
        f"{_percent(v.get('false_positive_rate'))} of {v.get('n_ham', 0):,} ham marked spam, "
        f"{_percent(v.get('spam_recall'))} of {v.get('n_spam', 0):,} spam caught, precision {_percent(v.get('precision'))}",
    ]
    return lines


@common.examples(
    ("spamtune calibrate --max-ham-loss 1%", "the newest run: most spam caught with at most 1% of validation ham lost"),
    ("spamtune calibrate --run my-run --cost-ratio 10", "a lost ham costs as much as 10 missed spams"),
    ("spamtune calibrate --run my-run --threshold 0.8 --format json", "an explicit threshold; the record on stdout"),
)
def calibrate_command(
    run_argument: Optional[str] = typer.Argument(None, metavar="RUN", hidden=True, show_default=False),
    run: Optional[str] = common.run_option(),
    max_ham_loss: Optional[str] = typer.Option(
        None, "--max-ham-loss", help="Highest share of validation ham marked spam, e.g. 0.5% or 0.005: the threshold keeps the most spam within it."
    ),
    threshold: Optional[float] = typer.Option(None, "--threshold", min=0.0, max=1.0, help="Use this spam probability threshold."),
    cost_ratio: Optional[float] = typer.Option(
        None, "--cost-ratio", help="Cost of one lost ham in missed spams, e.g. 10: the threshold with the least total cost on validation."
    ),
    output_format: Optional[CalibrateFormat] = typer.Option(
        None, "--format", help="text: the path on stdout; json: the record.", show_default="text"
    ),
    as_json: bool = common.json_option("json"),
    force: bool = typer.Option(
        False, "--force", help="Calibrate even when the prepared splits differ from those the run was trained with (warns loudly)."
    ),
    device: str = common.device_option(),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", metavar="DIR", show_default=False,
        help="Data root: where RUN names are looked up, and the validation split read. Default for the split: the run's own data root.",
    ),
) -> None:
    """Fit the temperature and choose the spam threshold of a run on its validation split.

    Without a target the threshold is 0.5 on the calibrated probability. predict, filter, evaluate and the Python API use the stored temperature and threshold unless given --threshold.

    Two-class (spam/ham) runs only: a run of more classes decides by the most probable one, so it has no operating point to choose (training fits its temperature).
    """
    from spamtune import paths
    from spamtune.calibration import calibrate_run, parse_rate
    from spamtune.runs import CALIBRATION_FILE

    if run_argument is not None and run is not None:
        raise SpamtuneUsageError("name the run once: with --run")
    output_format = common.chosen_format(output_format, as_json, CalibrateFormat.json, CalibrateFormat.text)
    common.one_choice({"--max-ham-loss": max_ham_loss is not None, "--threshold": threshold is not None, "--cost-ratio": cost_ratio is not None})
    if max_ham_loss is not None:
        rule, target = "max-ham-loss", parse_rate(max_ham_loss)
        if target >= LARGE_BARE_RATE and not max_ham_loss.strip().endswith("%"):
            # A bare number is a fraction: 0.5 lets half the ham be flagged, where "0.5%" was meant.
            common.warn(f"--max-ham-loss {max_ham_loss.strip()} is a fraction: up to {target:.0%} of ham may be marked spam; for {max_ham_loss.strip()} percent write {max_ham_loss.strip()}%")
    elif cost_ratio is not None:
        rule, target = "cost-ratio", cost_ratio
    else:
        rule, target = "threshold", 0.5 if threshold is None else threshold
    common.require_stdout()  # before calibration.json changes: a script reads its path or record there
    run_dir = paths.resolve_run(run if run is not None else run_argument, paths.data_root(data_dir))
    # Finishing the run fits its calibration again for the final weights, at 0.5: the operating
    # point chosen now would be gone without a word.
    common.unfinished_run_note(run_dir, "; that replaces this calibration with the threshold 0.5, so calibrate again after it")
    calibration = calibrate_run(run_dir, rule=rule, target=target, data_dir=data_dir, device=device, force=force)
    written = Path(run_dir) / CALIBRATION_FILE
    if output_format is CalibrateFormat.json:
        _report(common.json_line(calibration.to_dict()), written)
        return
    for line in summary_lines(calibration):
        common.note(line)
    _report(common.one_line(str(written)), written)  # a control character in the run's path shown, not acted on


def _report(line: str, written: Path) -> None:
    """Print the result line. calibration.json is in place by now: a stdout that cannot take the
    line (a full disk) is said to have failed the report alone, where the bare "cannot write the
    output" told a script that the run's threshold had stayed as it was."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        raise
    except OSError as exc:
        common.discard_stdout()  # what stayed in its buffer would fail again, with a second line, at exit
        raise SpamtuneError(f"{written} is written, but its report could not be written to stdout: {exc.strerror or exc}") from None


def register(app: typer.Typer) -> None:
    common.add_command(app, "calibrate", calibrate_command)
