"""Compact runs: a run folder holding only what training changed, plus a reference to its base.

A last-block gpt2-small run changes 7 M of its 124 M parameters; a LoRA run changes none of
the base's and adds 2.4 M. A compact run folder holds:

* ``delta.safetensors``: every tensor that differs from the base (the trained blocks, the
  final LayerNorm if trained, LoRA's A/B) and the new head;
* ``base.json``: the base by sha256 and origin (``spamtune.bases.BaseRef``) and the LoRA
  settings, if any;
* ``config.json``, as in every run.

Loading resolves the base (``<data root>/bases``, else rebuilt from its origin), checks its
hash, lays the delta over it and merges LoRA, giving a plain classifier (``spamtune.export``
writes it as one standalone file). Runs with a full ``model.safetensors`` load as before.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from spamtune.bases import BaseRef, base_file, load_base, stored_base_intact
from spamtune.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ClassifierConfig,
    block_linear_parameter_names,
    build_classifier,
    check_finite,
    check_header,
    check_partial_header,
    check_state_shapes,
    load_classifier,
    load_classifier_config,
    read_checkpoint_header,
    save_tensors,
)
from spamtune.errors import SpamtuneError
from spamtune.fsutil import atomic_write_json, read_json
from spamtune.interrupts import on_meta_device, read_tensor
from spamtune.lora import merged_lora_weight
from spamtune.model import is_integer, is_real, show_value
from spamtune.run_catalog import bases_root_of

COMPACT_FORMAT = "spamtune-compact-run/1"
BASE_REF_FILE = "base.json"
DELTA_FILE = "delta.safetensors"
_LORA_A, _LORA_B = ".lora_a", ".lora_b"


def changed_tensors(model: torch.nn.Module, base: dict[str, torch.Tensor], frozen: Collection[str] = ()) -> dict[str, torch.Tensor]:
    """The model's tensors that are not the base's: new ones (head, LoRA) and changed ones.
    ``frozen``: names of tensors known to be the base's (see ``save_compact_run``), not compared."""
    out = {}
    for name, tensor in model.state_dict().items():
        if name in frozen and name in base:
            continue
        if name not in base or not torch.equal(tensor.detach().cpu(), base[name].to("cpu")):
            out[name] = tensor.detach().to("cpu").contiguous()
    return out


def save_compact_run(
    run_dir: str | Path,
    model: torch.nn.Module,
    cfg: ClassifierConfig,
    base: BaseRef,
    data_root: str | Path,
    lora: dict | None = None,
    frozen: Collection[str] = (),
) -> Path:
    """Write a compact run (see the module doc): ``model`` is the trained classifier, LoRA not
    merged (its A/B are what is stored); ``lora`` its settings (rank, alpha, blocks). The delta is
    found by comparing with the stored base, so only tensors that really changed are kept.

    ``frozen`` names tensors the caller knows to be the base's own, such as the parameters
    training never updated: they are not compared. The stored base is memory-mapped, so they are
    then never read: a last-block gpt2-small run compares 28 MB of its 500 MB, which took ~1.8 s
    at the end of a first run on the 2-core EPYC, its base's pages no longer in memory."""
    run_dir = Path(run_dir)
    # Not re-hashed here: a base damaged since it was stored fails the check when the run loads.
    delta = changed_tensors(model, load_base(data_root, base, verify=False), frozen)
    save_tensors(run_dir / DELTA_FILE, delta, {"format": "pt", "spamtune": COMPACT_FORMAT})  # a full disk: DiskFull
    write_base_ref(run_dir, base, data_root, lora)
    atomic_write_json(run_dir / CONFIG_FILE, cfg.to_dict())
    return run_dir


def write_base_ref(run_dir: str | Path, base: BaseRef, data_root: str | Path, lora: dict | None = None) -> None:
    """``base.json``: the run's base (and LoRA settings). Training writes it as soon as it has
    chosen the base, not only with the delta at the end, so that ``spamtune bases rm --unused``
    counts a run still training, or interrupted before it wrote a classifier, as the base's
    user. Alone it is no classifier: loading needs the delta and ``config.json`` beside it."""
    record = {"format": COMPACT_FORMAT, "base": base.to_dict(), "lora": lora, "data_root": str(Path(data_root).resolve())}
    atomic_write_json(Path(run_dir) / BASE_REF_FILE, record)


def is_compact_run(run_dir: str | Path) -> bool:
    return (Path(run_dir) / BASE_REF_FILE).is_file()


def holds_classifier(run_dir: str | Path) -> bool:
    """A run folder with a usable classifier: its config and a full model or a delta and base."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        return False
    return (run_dir / WEIGHTS_FILE).is_file() or (is_compact_run(run_dir) and (run_dir / DELTA_FILE).is_file())


def read_base_ref(run_dir: Path) -> tuple[BaseRef, dict | None]:
    path = Path(run_dir) / BASE_REF_FILE
    data = read_json(path, "base reference")
    if not isinstance(data, dict) or data.get("format") != COMPACT_FORMAT:
        raise SpamtuneError(f"{path} is not a spamtune compact run's base reference")
    lora = data.get("lora")
    if lora is not None:
        check_lora_settings(lora, path)
    try:
        return BaseRef.from_dict(data.get("base")), lora
    except SpamtuneError as exc:
        raise SpamtuneError(f"{path}: {exc}") from None


def check_same_base(run_dir: str | Path, base: BaseRef) -> None:
    """Refuse to resume a run on another base than the one its ``base.json`` named when it
    started: the resume state holds only the weights that train, the frozen ones come from the
    base again, so a GPT-2 file downloaded or imported anew since would make the run half one
    model and half another. A run without a readable ``base.json`` has nothing to compare."""
    try:
        started_on, _ = read_base_ref(Path(run_dir))
    except SpamtuneError:
        return
    if started_on.sha256 != base.sha256:
        raise SpamtuneError(
            f"{run_dir} started on base {started_on.sha256[:12]}... ({started_on.describe()}), but its settings now give base "
            f"{base.sha256[:12]}... ({base.describe()}): the weights it trained on changed since; put them back to resume it, "
            f"or start a new run with its settings: spamtune finetune --config {run_dir}"
        )


def check_lora_settings(lora, path: Path) -> None:
    """Refuse, in one line, LoRA settings that loading cannot merge with: the scale
    ``alpha / rank`` needs a positive whole rank and a positive finite alpha, as training does."""
    if not isinstance(lora, dict):
        raise SpamtuneError(f"{path}: 'lora' must be the LoRA settings (rank, alpha) or null, got {show_value(lora)}")
    rank, alpha = lora.get("rank"), lora.get("alpha")
    if not is_integer(rank) or rank < 1:
        raise SpamtuneError(f"{path}: the LoRA rank must be a positive integer, got {show_value(rank)}")
    if not is_real(alpha) or alpha <= 0:
        raise SpamtuneError(f"{path}: the LoRA alpha must be a positive number, got {show_value(alpha)}")


def merge_lora_tensors(tensors: dict[str, torch.Tensor], lora: dict | None) -> dict[str, torch.Tensor]:
    """Fold each layer's A/B into its weight (``W + alpha / rank * B @ A``) and drop them."""
    pairs = sorted(k.removesuffix(_LORA_A) for k in tensors if k.endswith(_LORA_A))
    if pairs and not lora:
        raise SpamtuneError("the run holds LoRA tensors but no LoRA settings")
    out = {k: v for k, v in tensors.items() if not k.endswith((_LORA_A, _LORA_B))}
    for layer in pairs:
        scale = float(lora["alpha"]) / int(lora["rank"])
        try:
            out[f"{layer}.weight"] = merged_lora_weight(out[f"{layer}.weight"], tensors[layer + _LORA_A], tensors[layer + _LORA_B], scale)
        except KeyError as exc:
            raise SpamtuneError(f"the run's LoRA tensors for {layer} are incomplete ({exc})") from None
    return out


def load_compact_run(
    run_dir: str | Path,
    device: str | torch.device = "cpu",
    data_root: str | Path | None = None,
    *,
    verify: bool = True,
    linear_dtype: torch.dtype | None = None,
) -> tuple[torch.nn.Module, ClassifierConfig]:
    """The classifier of a compact run, LoRA merged, in eval mode.

    The same checks as a full run's load: the base's and the delta's headers together must be
    exactly the config's classifier in float32 before a tensor is read (a stored base's header;
    a base rebuilt from its origin must come from the config's own model shape), and no
    weight may hold NaN or infinity. ``linear_dtype`` stores the blocks' Linear weights in an
    autocast dtype, each cast as it is read (``checkpoint.load_classifier``); a layer LoRA
    adapted is merged in fp32 first, as ``export`` merges it.
    """
    run_dir = Path(run_dir)
    cfg = load_classifier_config(run_dir)
    ref, lora = read_base_ref(run_dir)
    root = Path(data_root) if data_root is not None else bases_root_of(run_dir)
    delta_path = run_dir / DELTA_FILE
    delta_header = read_checkpoint_header(delta_path)
    merged_header = merged_lora_header(delta_header, lora)
    stored = base_file(root, ref.sha256)
    if not _checked_against_stored_base(stored, merged_header, cfg, delta_path, root, ref):
        # load_base makes the base again from its origin: the delta is checked before that allocates.
        if ref.origin.get("model", cfg.model.to_dict()) != cfg.model.to_dict():
            raise SpamtuneError(f"{run_dir / BASE_REF_FILE} names a base of another model shape than {run_dir / CONFIG_FILE}")
        check_partial_header(merged_header, cfg, delta_path)
    with on_meta_device():
        model = build_classifier(cfg)
    # Cast as read: the base's block weights that neither the delta replaces nor LoRA adapts.
    adapted = {k.removesuffix(_LORA_A) + ".weight" for k in delta_header if k.endswith(_LORA_A)}
    cast = block_linear_parameter_names(model) - adapted - set(delta_header) if linear_dtype is not None else set()

    def keep(source: Path):
        def checked(name: str, tensor: torch.Tensor) -> torch.Tensor:
            check_finite(tensor, name, source)
            return tensor.to(linear_dtype) if name in cast else tensor

        return checked

    tensors = load_base(root, ref, device, verify=verify, keep=keep(stored))
    try:
        with safe_open(str(delta_path), framework="pt", device=str(device)) as f:
            tensors.update({k: keep(delta_path)(k, read_tensor(f, k)) for k in f.keys()})
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise SpamtuneError(f"cannot read {delta_path}: {exc}") from None
    tensors = merge_lora_tensors(tensors, lora)
    for name in sorted(adapted):  # finite A and B can still overflow the weight they are merged into
        check_finite(tensors[name], name, delta_path)
    check_state_shapes(model, tensors, str(delta_path))
    model.load_state_dict(tensors, strict=True, assign=True)
    if linear_dtype is not None:
        from spamtune.infer import store_linear_weights_in

        store_linear_weights_in(model, linear_dtype)  # the delta's trained and LoRA-merged layers
    return model.eval(), cfg


def _checked_against_stored_base(stored: Path, delta_header: dict, cfg: ClassifierConfig, delta_path: Path, root: Path, ref: BaseRef) -> bool:
    """Check the stored base's header and the delta's together against the config; False when
    the stored base is missing or damaged (unreadable, or not the base its hash names), which
    ``load_base`` then makes again or says how to get back. When the two disagree with the
    config, the base is hashed to tell whose fault it is: a damaged base is not the run's."""
    if not stored.is_file():
        return False
    try:
        base_header = read_checkpoint_header(stored)
    except SpamtuneError:
        return False
    try:
        check_header({**base_header, **delta_header}, cfg, delta_path)
    except SpamtuneError:
        if stored_base_intact(root, ref):
            raise
        return False
    return True


def merged_lora_header(header: dict[str, tuple[tuple[int, ...], str]], lora: dict | None) -> dict:
    """A delta's header as ``merge_lora_tensors`` will leave it: each LoRA A/B pair checked
    against the layer it adapts (``[rank, in]`` and ``[out, rank]``) and dropped."""
    out = {k: v for k, v in header.items() if not k.endswith((_LORA_A, _LORA_B))}
    adapted = {k.removesuffix(_LORA_A).removesuffix(_LORA_B) for k in header if k.endswith((_LORA_A, _LORA_B))}
    if adapted and not lora:
        raise SpamtuneError("the run holds LoRA tensors but no LoRA settings")
    for layer in sorted(adapted):
        a, b = header.get(layer + _LORA_A), header.get(layer + _LORA_B)
        if a is None or b is None:
            raise SpamtuneError(f"the run's LoRA tensors for {layer} are incomplete")
        rank = lora.get("rank")
        (a_shape, a_dtype), (b_shape, b_dtype) = a, b
        if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != rank or b_shape[1] != rank:
            raise SpamtuneError(f"the run's LoRA tensors for {layer} are not of rank {rank}: {list(a_shape)} and {list(b_shape)}")
        if a_dtype != b_dtype:
            raise SpamtuneError(f"the run's LoRA tensors for {layer} differ in dtype ({a_dtype}, {b_dtype})")
        merged = (b_shape[0], a_shape[1])
        # A delta holding the layer's weight too (only a damaged one does): A and B must fit
        # it here, or the merge would multiply them, whatever size they claim, before failing.
        weight = out.setdefault(f"{layer}.weight", (merged, a_dtype))
        if tuple(weight[0]) != merged:
            raise SpamtuneError(
                f"the run's LoRA tensors for {layer} are {list(a_shape)} and {list(b_shape)}, its weight {list(weight[0])}: they do not fit it"
            )
    return out


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", data_root: str | Path | None = None):
    """Any run's classifier: compact (delta over a base) or full (``model.safetensors``)."""
    if is_compact_run(run_dir):
        return load_compact_run(run_dir, device, data_root)
    return load_classifier(run_dir, device)
