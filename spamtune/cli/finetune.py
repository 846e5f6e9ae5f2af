"""``spamtune finetune``: train a classifier into a run folder, or ``--resume`` an unfinished one.

Progress goes to stderr (a live bar only on a terminal, one line per evaluation always); the
run folder's path is the last line on stdout. torch is imported inside the command only.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from spamtune.cli import common
from spamtune.cli.common import dataclass_options, field_help, stderr_console, styled, with_dataclass_options
from spamtune.cli.process_end import work_done
from spamtune.errors import SpamtuneError, SpamtuneUsageError
from spamtune.interrupts import interrupted_status, sigterm_as_interrupt, tell_the_launcher_it_was_said
from spamtune.options import LORA_OPTIONS, WEIGHT_SOURCES, FinetuneOptions, blamed_on_record, options_in_record
from spamtune.shell import shell_word

if TYPE_CHECKING:  # rich is imported when the command runs, not when the CLI starts
    from rich.console import Console


def _blocks(count: int) -> str:
    return "block 1" if count == 1 else f"blocks 1-{count}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes)}m {secs:04.1f}s" if minutes else f"{secs:.1f}s"


class ProgressReporter:
    """Renders training events on stderr: a rich progress bar on a terminal, plain lines always."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = None
        self.task = None
        # The bar shows the mean training loss since the last evaluation: steadier than one step's.
        self.loss_sum, self.loss_steps = 0.0, 0

    def __call__(self, event) -> None:
        from spamtune import events

        if isinstance(event, events.TrainingStarted):
            self._started(event)
        elif isinstance(event, events.StepDone) and self.progress is not None:
            self.loss_sum += event.loss
            self.loss_steps += 1
            self.progress.update(
                self.task,
                completed=event.step,
                loss=self.loss_sum / self.loss_steps,
                rate=event.examples_per_s,
                description=f"epoch {event.epoch}",
            )
        elif isinstance(event, events.PrefixCaching):
            if self.progress is not None:
                self.progress.update(self.task, description=f"caching blocks 1-{event.start_block}")
        elif isinstance(event, events.PrefixCacheReport):
            self._cached(event)
        elif isinstance(event, events.EvaluationStarted) and self.progress is not None:
            self.progress.update(self.task, description=f"evaluating {event.split}")
        elif isinstance(event, events.Evaluated):
            self.loss_sum, self.loss_steps = 0.0, 0
            r = event.record
            line = (
                f"step {r['step']:>5}  epoch {r['epoch']:g}  "
                f"train loss {r['train_loss']:.3f} acc {r['train_accuracy']:.2%}  "
                f"val loss {r['validation_loss']:.3f} acc {r['validation_accuracy']:.2%}"
            )
            self.console.print(styled(line, ("  best", "green") if event.is_best else ""))

    def _cached(self, e) -> None:
        if e.splits:
            how = {
                "built": "computed once",
                "stored": "computed once and kept for later runs",
                "hit": "loaded from the kept cache",
                "extended": "extended from a kept cache of fewer blocks",
            }.get(e.source, e.source)
            self._line(
                f"frozen-prefix cache: outputs of {_blocks(e.start_block)} for {', '.join(e.splits)} "
                f"{how}, {e.nbytes / 2**20:,.1f} MiB, {_duration(e.seconds)}"
                + (f" ({' and '.join(e.background)} finished behind the training steps)" if e.background else "")
                + "".join(f"; {note}" for note in (e.detail, e.skipped) if note)
            )
        elif e.skipped:
            self._line(f"frozen-prefix cache: {e.skipped}")

    def _line(self, text: str) -> None:
        """One line on the console that may hold paths the user gave (the run folder, a config
        file's name, a cache's path): an escape sequence in one is shown, not acted on."""
        self.console.print(common.one_line(text))

    def _started(self, e) -> None:
        resumed = f", resuming at step {e.start_step}" if e.start_step else ""
        self._line(
            f"fine-tuning {e.model} on {e.device} ({e.precision}{', ' + e.parallel if e.parallel else ''}): {e.trainable_params:,} of {e.total_params:,} "
            f"parameters trainable; {e.n_train}/{e.n_validation}/{e.n_test} train/validation/test messages, "
            f"up to {e.max_length} tokens; {e.total_steps} steps{resumed}"
        )
        self._line(f"run folder: {e.run_dir}")
        if e.warmup_steps >= e.total_steps:
            common.warn(f"--warmup-steps {e.warmup_steps} is not shorter than the run's {e.total_steps} steps: the learning rate never reaches --lr")
        if not self.console.is_terminal:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.3f}"),
            TextColumn("{task.fields[rate]:.1f} ex/s"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.task = self.progress.add_task("training", total=e.total_steps, completed=e.start_step, loss=math.nan, rate=0.0)
        self.progress.start()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _given_options(ctx: typer.Context, names: list[str]) -> list[str]:
    """The options typed on the command line (or set in the environment), not defaulted."""
    given = []
    for name in names:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            given.append(name)
    return given


# Every FinetuneOptions field is a flag of the same name; its default and help come from there.
# data_dir is the exception: the command line's default is $SPAMTUNE_HOME, else the user data
# folder. Fields with a fixed set of values are checked while parsing and list them in --help.
OPTION_NAMES = [f for f in FinetuneOptions.__dataclass_fields__ if f != "data_dir"]
CHECKED_OPTIONS = {
    "model": common.model_option(FinetuneOptions.model),
    "weights": common.choice_option(FinetuneOptions.weights, "--weights", WEIGHT_SOURCES, field_help(FinetuneOptions, "weights")),
    "trainable": common.trainable_option(FinetuneOptions.trainable),
    "pooling": common.pooling_option(FinetuneOptions.pooling),
    "device": common.device_option(),
    "precision": common.precision_option(),
}


def _resume_command(run_dir: Path) -> str:
    from spamtune.run_catalog import resume_command

    return resume_command(run_dir)


def _settings_from(config: str, root: Path) -> tuple[Path, dict]:
    """The FinetuneOptions fields of a run's hparams.json (a file, a run folder or a run's name),
    and that file; the data root is not among them: it follows --data-dir / $SPAMTUNE_HOME as always."""
    from spamtune import paths, runs
    from spamtune.fsutil import expand_user, read_json

    path = expand_user(config)
    if not path.exists() or path.is_dir():  # a file, even one that is no regular file, is read as the file
        path = paths.resolve_run(config, root) / runs.HPARAMS_FILE
    hparams = read_json(path.absolute(), "run hyperparameters")
    if not isinstance(hparams, dict):
        raise SpamtuneError(f"{path.absolute()} is not a run's hparams.json (a JSON object)")
    return path.absolute(), options_in_record(hparams, path.absolute(), OPTION_NAMES)


def _run_to_resume(run: str | None, root: Path) -> Path:
    """--run, else the newest interrupted run of the data root."""
    from spamtune import paths, run_catalog

    if run is not None:
        return paths.resolve_run(run, root)
    waiting = [info for info in run_catalog.list_runs(root) if info.status == run_catalog.INTERRUPTED]
    if not waiting:
        raise SpamtuneError(f"no interrupted run in {paths.runs_dir(root)} to resume; name one with --run, or {paths.ELSEWHERE}")
    return Path(waiting[0].path)


@common.examples(
    ("spamtune finetune", "the book: gpt2-small, pretrained, last block, 5 epochs"),
    ("spamtune finetune --model tiny --weights random --trainable all --epochs 4 --lr 5e-4 --pooling mean", "offline, from scratch"),
    ("spamtune finetune --config 20261125-101500-tiny-all --seed 7", "a run's settings again, another seed"),
)
@with_dataclass_options(dataclass_options(FinetuneOptions, OPTION_NAMES, checked=CHECKED_OPTIONS))
def finetune_command(
    ctx: typer.Context,
    run: str | None = common.run_option(
        "The run folder, a name (under <data root>/runs/) or a path: where a new run goes "
        "(default: a new <timestamp>-<model>-<trainable> folder), or with --resume the run to continue "
        "(default: the newest interrupted one).",
        show_default=False,
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue an unfinished run from its last checkpoint."),
    config: str | None = typer.Option(
        None, "--config", metavar="HPARAMS",
        help="Train with a run's settings: its hparams.json, or the run (a name or a folder); options given beside it win.",
    ),
    resume_run: str | None = typer.Argument(None, hidden=True, metavar="RUN", show_default=False),  # `--resume RUN`, older spelling
    out: Path | None = typer.Option(None, "--out", hidden=True),  # the older spelling of --run for a new run
    data_dir: Path | None = common.data_dir_option(),
    devices: int | None = typer.Option(
        None, "--devices", min=1,
        help="Train with N processes on this machine (one per GPU, through torchrun's launcher; DistributedDataParallel, "
        "or FSDP with --strategy fsdp). --batch-size stays the global batch.",
    ),
    **options,
) -> None:
    """Fine-tune GPT-2 into a spam classifier (the book's chapter-6 recipe by default)."""
    import sys

    root, run, given, configured = _settle(ctx, run, resume, config, resume_run, out, data_dir, options)
    if not resume:
        _refuse_unused_lora_options(given, options)
    # A resumed run's options are read later, with torch: it keeps the short spin.
    common.choose_training_spin([] if resume else [options], one_process=devices in (None, 1))

    from spamtune import distributed  # imports torch: the spin is chosen by now

    with blamed_on_record(*configured) if configured else contextlib.nullcontext():
        if distributed.will_launch(devices, options["device"]) and resume:
            from spamtune import train

            # A missing or finished run: one line here rather than one per rank (its options
            # are its own: its ranks read and check them).
            train.check_resumable(_run_to_resume(run, root))
        elif distributed.will_launch(devices, options["device"]):
            from spamtune import train

            # Refused here, once, rather than by each rank the launcher starts.
            train.check_before_launch(FinetuneOptions(**options), devices)
            if run is not None:
                from spamtune import paths, runs

                try:
                    runs.check_run_dir_free(paths.new_run_path(run, root))
                except runs.RunFolderTaken as exc:
                    raise _run_folder_taken(exc) from None
        if distributed.maybe_launch(devices, sys.argv[1:], options["device"]):
            return
        world = distributed.init_from_env(options["device"])
        try:
            with sigterm_as_interrupt():  # systemd, `timeout` or a scheduler's time limit: as Ctrl-C
                _finetune(world, root, run, resume, given, options)
        finally:
            distributed.shutdown()


def _refuse_unused_lora_options(given: list[str], options: dict) -> None:
    """LoRA's options given to a new run that trains no LoRA would do nothing: a usage error,
    before a run trains something else than what was asked for. (A resumed run's options are
    its own, compared by ``resume_finetune``.)"""
    unused = [common.flag(name) for name in LORA_OPTIONS if name in given]
    if unused and options.get("trainable") != "lora":
        one = len(unused) == 1
        raise SpamtuneUsageError(
            f"{', '.join(unused)} {'applies' if one else 'apply'} only with --trainable lora, and this run trains "
            f"{options.get('trainable')}: add --trainable lora, or leave {'it' if one else 'them'} out"
        )


def _settle(
    ctx: typer.Context, run, resume, config, resume_run, out, data_dir, options: dict
) -> tuple[Path, str | None, list[str], tuple[Path, set[str]] | None]:
    """The data root, the run named (or None), the options given on the command line and, with
    --config, its file and the options taken from it, from ``finetune_command``'s arguments;
    ``options`` takes the data root and, with --config, that run's settings where not given."""
    from spamtune import paths

    root = paths.data_root(data_dir)
    options["data_dir"] = str(root)
    given = _given_options(ctx, list(options))
    if resume_run is not None:
        if not resume or run is not None:
            raise SpamtuneUsageError(f"unexpected argument '{resume_run}'; name the run with --run")
        run = resume_run
    if out is not None:
        if run is not None:
            raise SpamtuneUsageError("--out is the older name of --run: give one")
        run = str(out)
    if config is None:
        return root, run, given, None
    if resume:
        raise SpamtuneUsageError("--config starts a new run; --resume continues one with its own settings")
    source, settings = _settings_from(config, root)
    taken = {name: value for name, value in settings.items() if name not in given}
    options.update(taken)
    return root, run, given, (source, set(taken))


def _run_folder_taken(exc) -> SpamtuneError:
    """The error for a ``--run`` folder that holds something (``runs.RunFolderTaken``)."""
    from spamtune import runs

    # --resume only where it can continue something: for a finished run, a file or a folder
    # of other things it would only lead to another error.
    unfinished = (exc.out / runs.HPARAMS_FILE).is_file() and not runs.is_finished(exc.out)
    resume = f", or continue this unfinished run with `{_resume_command(exc.out)}`" if unfinished else ""
    return SpamtuneError(f"{exc}; choose another --run{resume}")


def _finetune(world, root: Path, run: str | None, resume: bool, given: list[str], options: dict) -> None:
    """Train or resume (``_settle``'s results); under several ranks only rank 0 reports: the
    others' events are dropped and they print nothing."""
    from spamtune import events, paths, runs, train

    console = stderr_console()
    reporter = ProgressReporter(console)
    try:
        if resume:
            run_dir = _run_to_resume(run, root)
            summary = train.resume_finetune(run_dir, {name: options[name] for name in given}, on_event=reporter)
        else:
            out_dir = paths.new_run_path(run, root) if run is not None else None
            summary = train.finetune(FinetuneOptions(**options), out_dir, on_event=reporter)
        work_done()  # the run's files are complete: a Ctrl-C from here on would stop nothing
    except events.TrainingInterrupted as exc:
        reporter.close()
        if not world.is_main:
            raise typer.Exit(interrupted_status()) from None
        best = f"; the run holds the best weights so far, from step {exc.best_step}" if exc.best_step else ""
        # Said even under --quiet: it is the one way back into the run.
        common.warn(
            f"interrupted at step {exc.step} (last checkpoint: step {exc.checkpoint_step}{best}); "
            f"continue with: {_resume_command(exc.run_dir)}"
        )
        tell_the_launcher_it_was_said()
        raise typer.Exit(interrupted_status()) from None
    except events.TrainingStopped as exc:
        raise SpamtuneError(f"{exc}; continue with: {_resume_command(exc.run_dir)}") from None
    except runs.RunFolderTaken as exc:
        raise _run_folder_taken(exc) from None
    finally:
        reporter.close()
    if not world.is_main:
        return
    stopped = "  (stopped early)" if summary["stopped_early"] else ""
    console.print(
        f"test accuracy {summary['test_accuracy']:.2%} (loss {summary['test_loss']:.3f}) with the best weights "
        f"(step {summary['best_step']}, validation accuracy {summary['validation_accuracy']:.2%}){stopped}; "
        f"wall time {_duration(summary['wall_time_s'])}, {summary['examples_per_s']:.1f} examples/s"
    )
    if "calibration" in summary:
        c = summary["calibration"]
        fitted = f"temperature {c['temperature']:.3g} fitted on validation (ECE {c['ece_before']:.2%} -> {c['ece_after']:.2%})"
        if "threshold" in c:
            console.print(
                f"{fitted}, threshold {c['threshold']:g}; choose an operating point with: "
                f"spamtune calibrate --run {shell_word(summary['run'])} --max-ham-loss 1%"
            )
        else:  # a run of more classes: no threshold decides it, and calibrate refuses it
            console.print(f"{fitted}; the run decides by the most probable class, with no threshold")
    typer.echo(common.one_line(summary["run"]))  # a control character in the run's path shown, not acted on


def register(app: typer.Typer) -> None:
    common.add_command(app, "finetune", finetune_command)
