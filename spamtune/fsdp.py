"""``finetune --strategy fsdp``: the model's training state sharded across the ranks with
PyTorch's own fully sharded data parallelism (FSDP2, ``torch.distributed.fsdp.fully_shard``).

Under DDP every rank holds the whole model, its gradients and AdamW's two moments: 16 bytes per
trained fp32 parameter, 25 GB for gpt2-xl with ``--trainable all``. FSDP gives each of N ranks
one N-th of each of them and gathers a group's weights only while that group computes.

What is sharded (``shard_classifier``), and why:

* every transformer block that trains is a group of its own, so during a step at most one
  block's whole weights are gathered besides the root group's;
* the root group holds the rest of what trains: the head, the final LayerNorm, and the
  embeddings under ``--trainable all``;
* frozen parameters are left out (``ignored_params``): every rank keeps them whole, as under
  DDP. They need no gradient reduction, the frozen-prefix cache is computed from them (the first
  blocks, embeddings included) on every rank without any collective, and a frozen parameter
  costs 4 bytes where a trained one costs 16. So with the book's ``last-block`` only the last
  block, final LayerNorm and head are sharded; with ``--trainable all``, the case FSDP is for,
  nothing is frozen and everything is sharded.

Gradient accumulation reduces (reduce-scatters) the gradients after every micro-batch: FSDP's
``no_sync`` would keep whole unsharded gradients between micro-batches, the memory FSDP is
there to save. The sum is the same.

Evaluation (``whole_model``): each rank scores its own share of a split, so ranks run different
numbers of forward passes, which per-batch gathers cannot follow. The weights are gathered
once for the whole evaluation instead: each rank holds the whole weights (4 bytes a parameter,
not the 16 of training) while it scores, and no forward pass waits on another rank.

Checkpoints are what one process writes: sharded tensors (weights, AdamW's moments) are
gathered whole (``whole``) before rank 0 writes them, and a rank takes its shard of a whole
tensor when it reads them (``shard_like``), so a run folder and its resume state do not depend on
the number of ranks, or on the strategy: an fsdp run resumes with DDP, one process or another
number of ranks, and the other way round.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn


def shard_classifier(model: nn.Module, device: torch.device) -> nn.Module:
    """Apply ``fully_shard`` to ``model`` (a ``GPTModel`` after the classifier surgery) in
    place: each training block, then the root; frozen parameters stay whole on every rank.
    The model keeps its class's methods: ``classify`` (the training and evaluation entry) and
    the last block's ``forward_at`` gather their group's weights like ``forward`` does."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    frozen = {p for p in model.parameters() if not p.requires_grad}
    for block in model.trf_blocks:
        if any(p.requires_grad for p in block.parameters()):
            fully_shard(block, mesh=mesh, reshard_after_forward=True, ignored_params=frozen)
            register_fsdp_forward_method(block, "forward_at")
    # The root's weights (head, final LayerNorm) are needed again first in backward: kept gathered.
    fully_shard(model, mesh=mesh, reshard_after_forward=False, ignored_params=frozen)
    register_fsdp_forward_method(model, "classify")
    return model


def is_sharded(model: nn.Module) -> bool:
    """Whether ``shard_classifier`` applied FSDP to ``model`` (looked up like ``is_shard``)."""
    module = sys.modules.get("torch.distributed.fsdp")
    return module is not None and isinstance(model, module.FSDPModule)


def is_shard(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a ``DTensor`` (a sharded parameter or optimizer state). Importing
    ``torch.distributed.tensor`` costs half a second of every run's start, and no DTensor can
    exist before something has imported it, so it is only looked up."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a shard (gathered: every rank must call this, in the same order);
    a plain tensor as it is."""
    return tensor.full_tensor() if is_shard(tensor) else tensor


def shard_like(param: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """``full`` (a whole tensor every rank holds, e.g. read from the resume file) as ``param``
    is laid out: this rank's shard of it when ``param`` is sharded, taken locally without any
    communication; else ``full`` on ``param``'s device."""
    full = full.to(param.device, param.dtype)
    if is_shard(param):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
    return full


def set_from_rank0(model: nn.Module, weights: dict[str, torch.Tensor], distributed: bool) -> None:
    """Give the trainable parameters the values of ``weights``, which rank 0 alone holds
    (the other ranks pass ``{}``): scattered into shards under FSDP, broadcast under DDP, copied
    in a single process. Every rank must call this."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            if not distributed:
                param.copy_(weights[name])
                continue
            main = dist.get_rank() == 0
            if is_shard(param):
                from torch.distributed.tensor import distribute_tensor

                full = weights[name].to(param.device, param.dtype) if main else torch.empty(param.shape, dtype=param.dtype, device=param.device)
                param.copy_(distribute_tensor(full, param.device_mesh, param.placements))  # rank 0's, scattered
            else:
                full = weights[name].to(param.device, param.dtype) if main else torch.empty_like(param)
                dist.broadcast(full, src=0)
                param.copy_(full)


@contextlib.contextmanager
def whole_model(model: nn.Module) -> Iterator[None]:
    """For an evaluation: every group's weights gathered once on entry and kept (no forward
    pass gathers or frees anything, so ranks may run different numbers of them), sharded again
    on exit. Every rank must enter it; for a model that is not sharded it does nothing."""
    if not is_sharded(model):
        yield
        return
    groups = [m for m in model.modules() if is_sharded(m)]
    for group in groups:
        group.set_reshard_after_forward(False, recurse=False)
        group.unshard()
    try:
        yield
    finally:
        for group in groups:
            group.reshard()
            # As shard_classifier set them: blocks gathered per forward, the root kept.
            group.set_reshard_after_forward(group is not model, recurse=False)


def plain_copy(model: nn.Module, weights: dict[str, torch.Tensor], cfg) -> nn.Module:
    """A plain classifier (``checkpoint.build_classifier(cfg)``) holding ``model``'s frozen
    tensors (shared, not copied) and ``weights`` for the trained ones: what rank 0 writes as
    ``model.safetensors`` from a sharded model, with no collective (it also runs after Ctrl-C,
    when the other ranks are gone)."""
    from spamtune.checkpoint import build_classifier

    tensors = {name: p.detach() for name, p in model.named_parameters() if not p.requires_grad}
    tensors.update(dict(model.named_buffers()))
    tensors.update(weights)
    with torch.device("meta"):
        plain = build_classifier(cfg)
    plain.load_state_dict(tensors, strict=True, assign=True)
    return plain
