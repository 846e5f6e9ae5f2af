"""A fine-tuned classifier on disk: ``model.safetensors`` + ``config.json`` in a run folder.

The pair is everything ``predict`` needs, readable by any safetensors loader and never
unpickled. Both files are written atomically, the weights first, so a reader either sees
the previous complete checkpoint or the new one.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from spamtune.errors import SpamtuneError
from spamtune.fsutil import atomic_path, atomic_write_json, read_json
from spamtune.interrupts import on_meta_device, read_tensor
from spamtune.model import POOLINGS, GPTConfig, GPTModel, is_integer, show_value
from spamtune.runs import CONFIG_FILE, WEIGHTS_FILE, weights_file
from spamtune.tokenizer import EOT_ID, TOKENIZER_ID
from spamtune.weights import spamtune_shapes

FORMAT = "spamtune-classifier/1"


@dataclass
class ClassifierConfig:
    """What, besides the weights, it takes to classify a text the way training did."""

    model: GPTConfig
    labels: dict[str, int] = field(default_factory=lambda: {"ham": 0, "spam": 1})
    pooling: str = "last-real"
    max_length: int = 1024
    trainable: str = "last-block"
    base_model: str | None = None  # "gpt2-small", "tiny", ... or None for a custom shape
    weights: str = "pretrained"  # what training started from: "pretrained" or "random"
    tokenizer: str = TOKENIZER_ID
    pad_token_id: int = EOT_ID

    def __post_init__(self) -> None:
        check_classifier_fields(self)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def label_names(self) -> list[str]:
        """Label names ordered by class index."""
        return [name for name, _ in sorted(self.labels.items(), key=lambda kv: kv[1])]

    @property
    def positive_label(self) -> str:
        """The class whose probability ``predict`` reports: ``spam`` if present, else index 1."""
        return "spam" if "spam" in self.labels else self.label_names[min(1, self.num_classes - 1)]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["model"] = self.model.to_dict()
        return {"format": FORMAT, **data}

    @classmethod
    def from_dict(cls, data: dict) -> ClassifierConfig:
        """The config a ``config.json`` holds, every field checked (one line naming the first bad one)."""
        if not isinstance(data, dict):
            raise SpamtuneError(f"a classifier config is a JSON object, not {show_value(data)}")
        data = dict(data)
        fmt = data.pop("format", None)
        if fmt != FORMAT:
            raise SpamtuneError(f"not a spamtune classifier config (format {show_value(fmt)}, expected {FORMAT!r})")
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise SpamtuneError(f"unknown field(s) {', '.join(unknown)}")
        if "model" not in data:
            raise SpamtuneError("the field 'model' (the GPT shape) is missing")
        data["model"] = GPTConfig.from_dict(data["model"])
        return cls(**data)


def check_classifier_fields(cfg: ClassifierConfig) -> None:
    """Raise one line naming the first field of ``cfg`` that a classifier cannot use."""
    if not isinstance(cfg.model, GPTConfig):
        raise SpamtuneError(f"model must be a GPT shape, got {show_value(cfg.model)}")
    labels = cfg.labels
    if not isinstance(labels, dict) or len(labels) < 2:
        raise SpamtuneError(f"labels must map at least two label names to class indices, got {show_value(labels)}")
    for name, index in labels.items():
        if not isinstance(name, str) or not name or not is_integer(index):
            raise SpamtuneError(f"labels: {show_value(name)} -> {show_value(index)} is not a label name -> class index")
        if not name.isprintable():  # as prepare makes them: every output format writes labels as they are
            raise SpamtuneError(f"labels: {show_value(name)} is not a label name: a label is printable text on one line")
    if sorted(labels.values()) != list(range(len(labels))):
        raise SpamtuneError(
            f"labels must number the classes 0 to {len(labels) - 1}, each once; got indices {sorted(labels.values())}"
        )
    if cfg.pooling not in POOLINGS:
        raise SpamtuneError(f"pooling must be one of {', '.join(POOLINGS)}, got {show_value(cfg.pooling)}")
    if not is_integer(cfg.max_length) or cfg.max_length < 1:
        raise SpamtuneError(f"max_length must be a positive integer, got {show_value(cfg.max_length)}")
    for name in ("trainable", "weights", "tokenizer"):
        if not isinstance(getattr(cfg, name), str) or not getattr(cfg, name):
            raise SpamtuneError(f"{name} must be a non-empty string, got {show_value(getattr(cfg, name))}")
    if cfg.base_model is not None and not isinstance(cfg.base_model, str):
        raise SpamtuneError(f"base_model must be a model name or null, got {show_value(cfg.base_model)}")
    if not is_integer(cfg.pad_token_id) or not 0 <= cfg.pad_token_id < cfg.model.vocab_size:
        raise SpamtuneError(
            f"pad_token_id must be a token id below the vocabulary size {cfg.model.vocab_size}, "
            f"got {show_value(cfg.pad_token_id)}"
        )


def build_classifier(cfg: ClassifierConfig) -> GPTModel:
    """An untrained model of the classifier's shape (2-class head, nothing frozen)."""
    model = GPTModel(cfg.model)
    model.out_head = nn.Linear(cfg.model.emb_dim, cfg.num_classes)
    return model


# safetensors reports the OS error of a failed write inside its own message ("... (os error 28)").
_OS_ERROR = re.compile(r"os error (\d+)")


def save_tensors(final: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file atomically: the old file stays whole until the new one is.
    A failed write is the one-line error of any other write (``DiskFull`` on a full disk)."""
    with atomic_path(final) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as exc:
            code = _OS_ERROR.search(str(exc))
            raise OSError(int(code.group(1)) if code else errno.EIO, str(exc)) from None


def save_classifier(run_dir: str | Path, model: GPTModel, cfg: ClassifierConfig, weights_name: str = WEIGHTS_FILE):
    """Write the weights and the config, each atomically."""
    run_dir = Path(run_dir)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_tensors(run_dir / weights_name, tensors, {"format": "pt", "spamtune": FORMAT})
    atomic_write_json(run_dir / CONFIG_FILE, cfg.to_dict())


def load_classifier_config(run_dir: str | Path) -> ClassifierConfig:
    """A run's ``config.json``, validated; a bad one is one line naming the file and the field.
    A run folder with neither config nor weights is explained as ``load_classifier`` explains it
    (still training, interrupted early), rather than as a missing file."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file() and weights_file(Path(run_dir)) is None:
        from spamtune.run_catalog import why_no_classifier

        raise SpamtuneError(why_no_classifier(Path(run_dir)))
    data = read_json(path, "run config")
    try:
        return ClassifierConfig.from_dict(data)
    except SpamtuneError as exc:
        raise SpamtuneError(f"{path}: {exc}") from None


def block_linear_parameter_names(model: GPTModel) -> set[str]:
    """Names of the transformer blocks' Linear weights and biases: what autocast computes in low precision."""
    return {
        f"trf_blocks.{module_name}.{param_name}"
        for module_name, module in model.trf_blocks.named_modules()
        if isinstance(module, nn.Linear)
        for param_name, _ in module.named_parameters(recurse=False)
    }


def load_classifier(
    run_dir: str | Path,
    device: str | torch.device = "cpu",
    weights_name: str = WEIGHTS_FILE,
    *,
    linear_dtype: torch.dtype | None = None,
) -> tuple[GPTModel, ClassifierConfig]:
    """The fine-tuned model of a run folder, in eval mode.

    Nothing is built before the config has been checked against the weights file's header
    (names, shapes, dtypes: read without loading a tensor), so a config that does not describe
    the file fails in milliseconds, whatever size it claims. The module is then built on the
    meta device (no memory, no random init) and takes the file's tensors as its parameters,
    read one at a time, so loading costs one read of the weights and never holds two copies of
    the model; a tensor holding NaN or infinity is refused as it is read. ``linear_dtype``
    stores the blocks' Linear weights in an autocast dtype as they are read (see
    ``infer.store_linear_weights_in``).
    """
    run_dir = Path(run_dir)
    path = run_dir / weights_name
    # Asked first: a run training, or stopped before it wrote a classifier, already names its
    # base (base.json) but has no config yet, and is no compact run to load; a delta that lost
    # its base.json is no full run either.
    lost_base_ref = (run_dir / COMPACT_DELTA_FILE).is_file() and not (run_dir / COMPACT_BASE_FILE).is_file()
    if not path.is_file() and (not (run_dir / CONFIG_FILE).is_file() or lost_base_ref):
        from spamtune.run_catalog import why_no_classifier

        raise SpamtuneError(why_no_classifier(run_dir))
    if not path.is_file() and (run_dir / COMPACT_BASE_FILE).is_file():
        return _load_compact(run_dir, device, linear_dtype)
    cfg = load_classifier_config(run_dir)
    if not path.is_file():
        raise SpamtuneError(f"no {weights_name} in {run_dir}")
    check_checkpoint_header(path, cfg)
    with on_meta_device():
        model = build_classifier(cfg)
    cast = block_linear_parameter_names(model) if linear_dtype is not None else set()

    def keep(key: str, tensor: torch.Tensor) -> torch.Tensor:
        check_finite(tensor, key, path)
        if linear_dtype is None:
            return tensor
        return tensor.to(linear_dtype) if key in cast else tensor.clone()

    tensors = read_tensors(path, device, keep)
    model.load_state_dict(tensors, strict=True, assign=True)  # names and shapes: checked in the header
    return model.eval(), cfg


def read_tensors(path: Path, device, keep: Callable[[str, torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file through ``keep(name, tensor)`` (a check, a cast, a
    hash), in name order. One memory map per tensor: each is released, with the pages it read,
    once ``keep`` has made what is kept of it, so a cast fp32 file is never all resident."""
    out = {}
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            names = sorted(f.keys())
        for name in names:
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                out[name] = keep(name, read_tensor(f, name))
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise SpamtuneError(f"cannot read {path}: {exc}") from None
    return out


def check_state_shapes(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """One clear line when a checkpoint does not fit the model it is loaded into."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_shapes(expected, {k: tuple(v.shape) for k, v in tensors.items()}, source)


def check_shapes(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], source: str) -> None:
    """One clear line unless ``found`` has exactly the names and shapes of ``expected``."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        key = (missing or extra)[0]
        kind = "lacks" if missing else "has an unexpected"
        raise SpamtuneError(f"{source} does not match the model: it {kind} weight '{key}'")
    for key, shape in expected.items():
        if found[key] != shape:
            raise SpamtuneError(
                f"{source} is a checkpoint of another shape: '{key}' is {list(found[key])}, the model needs {list(shape)}"
            )


# What save_classifier writes: every tensor float32 (safetensors' dtype code).
CHECKPOINT_DTYPE = "F32"


def classifier_shapes(cfg: ClassifierConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of ``build_classifier(cfg)``'s weights, computed without building it."""
    return _classifier_shapes(cfg.model, cfg.num_classes)


def _classifier_shapes(model: GPTConfig, num_classes: int) -> dict[str, tuple[int, ...]]:
    return {**spamtune_shapes(model), "out_head.weight": (num_classes, model.emb_dim), "out_head.bias": (num_classes,)}


def read_checkpoint_header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Each tensor's shape and dtype code (``F32``, ``I8``...) from a safetensors header: nothing
    is loaded, so this costs the same for any size the header claims."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: (tuple(f.get_slice(key).get_shape()), f.get_slice(key).get_dtype()) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise SpamtuneError(f"{path} is not a readable safetensors file: {exc}") from None


def check_checkpoint_header(path: Path, cfg: ClassifierConfig) -> None:
    """Refuse, in one line, weights that do not fit ``cfg``, before anything is built."""
    check_header(read_checkpoint_header(path), cfg, path)


def check_header(header: dict[str, tuple[tuple[int, ...], str]], cfg: ClassifierConfig, path: Path, config_source: str | None = None) -> None:
    """Refuse, in one line, a header (``read_checkpoint_header``; for a compact run, its base's
    and delta's together) whose tensors are not exactly ``cfg``'s classifier, in float32.
    ``config_source`` names where ``cfg`` came from (default: the run's ``config.json``).

    The sizes the config states are compared with those the header shows first, so a config
    claiming ten million layers is refused without listing ten million layers' names; the
    full name-by-name shape check then runs over a table no longer than the file's own.
    """
    shapes = {key: shape for key, (shape, _) in header.items()}
    blocks = {int(key.split(".")[1]) for key in shapes if key.startswith("trf_blocks.") and key.split(".")[1].isdigit()}
    stated = {
        "n_layers": (cfg.model.n_layers, max(blocks, default=-1) + 1),
        "vocab_size": (cfg.model.vocab_size, shapes.get("tok_emb.weight", (None,))[0]),
        "context_length": (cfg.model.context_length, shapes.get("pos_emb.weight", (None,))[0]),
        "emb_dim": (cfg.model.emb_dim, shapes.get("tok_emb.weight", (None, None))[-1]),
        "classes": (cfg.num_classes, shapes.get("out_head.weight", (None,))[0]),
    }
    differ = [f"{name} {want:,} vs {got if got is None else f'{got:,}'}" for name, (want, got) in stated.items() if want != got]
    if differ:
        raise SpamtuneError(
            f"{config_source or path.parent / CONFIG_FILE} does not describe {path} (config vs weights: {'; '.join(differ)})"
        )
    check_shapes(classifier_shapes(cfg), shapes, str(path))
    _check_dtypes(header, path)


def check_partial_header(header: dict[str, tuple[tuple[int, ...], str]], cfg: ClassifierConfig, path: Path) -> None:
    """Refuse, in one line, a header holding any tensor that is not one of ``cfg``'s classifier
    weights, in its shape and in float32: a compact run's delta, checked on its own when its base
    is to be rebuilt (so before that base is allocated). Each block's names are checked against
    one block's, so the check costs the header's length whatever the config claims."""
    one_block = _classifier_shapes(replace(cfg.model, n_layers=1), cfg.num_classes)
    expected = {}
    for key in header:
        parts = key.split(".")
        in_a_block = len(parts) > 2 and parts[0] == "trf_blocks" and parts[1].isdigit() and int(parts[1]) < cfg.model.n_layers
        template = ".".join(["trf_blocks", "0", *parts[2:]]) if in_a_block else key
        if template in one_block and (in_a_block or not template.startswith("trf_blocks.")):
            expected[key] = one_block[template]
    check_shapes(expected, {key: shape for key, (shape, _) in header.items()}, str(path))
    _check_dtypes(header, path)


def _check_dtypes(header: dict[str, tuple[tuple[int, ...], str]], path: Path) -> None:
    for key, (_, dtype) in header.items():
        if dtype != CHECKPOINT_DTYPE:
            raise SpamtuneError(
                f"{path}: '{key}' is stored as {dtype}; a {FORMAT} checkpoint holds float32 ({CHECKPOINT_DTYPE}) weights"
            )


def check_finite(tensor: torch.Tensor, key: str, path: Path) -> None:
    """Refuse a weight holding NaN or infinity: such a model answers with NaN probabilities that
    look like confident labels. One reduction (no copy) for the common case of finite weights; a
    non-finite sum is confirmed element-wise, since large finite values can overflow a sum."""
    if tensor.is_floating_point() and not torch.isfinite(tensor.sum()) and not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        raise SpamtuneError(f"{path}: weight '{key}' holds {bad:,} NaN or infinite value(s); the checkpoint is broken")


# A compact run (spamtune.compact) names its base here instead of holding model.safetensors.
COMPACT_BASE_FILE = "base.json"
COMPACT_DELTA_FILE = "delta.safetensors"


def _load_compact(run_dir: Path, device, linear_dtype: torch.dtype | None) -> tuple[GPTModel, ClassifierConfig]:
    """A compact run's classifier (its base resolved and checked, LoRA merged), so that every
    reader of runs (``predict``, ``evaluate``, ``SpamClassifier``) takes both kinds of run."""
    from spamtune.compact import load_compact_run

    return load_compact_run(run_dir, device, linear_dtype=linear_dtype)
