"""A fine-tuned classifier on disk: ``model.safetensors`` + ``config.json`` in a run folder.

The pair is everything ``predict`` needs, readable by any safetensors loader and never
unpickled. Both files are written atomically, the weights first, so a reader either sees
the previous complete checkpoint or the new one.
"""

from __future__ import annotations

import errno
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from spamtune.errors import SpamtuneError
from spamtune.fsutil import atomic_path, atomic_write_json, read_json
from spamtune.model import GPTConfig, GPTModel
from spamtune.runs import CONFIG_FILE, WEIGHTS_FILE
from spamtune.tokenizer import EOT_ID, TOKENIZER_ID

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
        data = dict(data)
        fmt = data.pop("format", None)
        if fmt != FORMAT:
            raise SpamtuneError(f"not a spamtune classifier config (format {fmt!r}, expected {FORMAT!r})")
        try:
            data["model"] = GPTConfig.from_dict(data["model"])
            return cls(**data)
        except (KeyError, TypeError) as exc:
            raise SpamtuneError(f"classifier config is incomplete or has unknown fields: {exc}") from None


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
    return ClassifierConfig.from_dict(read_json(Path(run_dir) / CONFIG_FILE, "run config"))


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

    The module is built on the meta device (no memory, no random init) and then takes the
    file's tensors as its parameters, read one at a time, so loading costs one read of the
    weights and never holds two copies of the model. ``linear_dtype`` stores the blocks'
    Linear weights in an autocast dtype as they are read (see ``infer.store_linear_weights_in``).
    """
    run_dir = Path(run_dir)
    cfg = load_classifier_config(run_dir)
    path = run_dir / weights_name
    if not path.is_file():
        raise SpamtuneError(f"no {weights_name} in {run_dir}")
    with torch.device("meta"):
        model = build_classifier(cfg)
    cast = block_linear_parameter_names(model) if linear_dtype is not None else set()
    tensors = {}
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            keys = list(f.keys())
        for key in keys:
            # One memory map per tensor: when casting, each map is released (with the pages
            # the cast read) as soon as the copy is made, so the fp32 file is never all resident.
            with safe_open(str(path), framework="pt", device=str(device)) as f:
                tensor = f.get_tensor(key)
                if linear_dtype is not None:
                    tensor = tensor.to(linear_dtype) if key in cast else tensor.clone()
            tensors[key] = tensor
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise SpamtuneError(f"cannot read {path}: {exc}") from None
    check_state_shapes(model, tensors, str(path))
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval(), cfg


def check_state_shapes(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """One clear line when a checkpoint does not fit the model it is loaded into."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        key = (missing or extra)[0]
        kind = "lacks" if missing else "has an unexpected"
        raise SpamtuneError(f"{source} does not match the model: it {kind} weight '{key}'")
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise SpamtuneError(
                f"{source} is a checkpoint of another shape: '{key}' is {list(tensors[key].shape)}, "
                f"the model needs {list(shape)}"
            )
