"""AdamW on the CPU and CUDA: PyTorch's fused update, without ``torch.optim``.

Every ``torch.optim`` optimizer imports ``torch._dynamo``, PyTorch's compiler, the first time
one is made: a second or more of a run's start-up on a 2-core machine, a twentieth of a run
that reuses its kept prefix cache. ``AdamW`` calls the kernel ``torch.optim.AdamW(fused=True)``
calls, ``torch._fused_adamw_``, with the same per-parameter state (``step``, ``exp_avg``,
``exp_avg_sq``) and the same ``state_dict`` layout, so it updates the weights bit for bit as
that optimizer does and resume files are interchangeable between the two.

It covers what spamtune trains on one device: fp32 weights (bf16 and fp16 autocast keep them
fp32) on the CPU or a CUDA GPU, in one process or under DDP. Under fp16, ``GradScaler`` unscales
the gradients and skips a step with an infinite one before calling ``step``, as it does for any
optimizer; the scale is a power of two, so the update is the one ``torch.optim``'s fused step
makes with the scale passed in. FSDP's sharded parameters and MPS keep ``torch.optim.AdamW``
(``train.make_optimizer``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class AdamW:
    """``torch.optim.AdamW(params, lr, betas, eps, weight_decay, fused=True)`` for CPU and CUDA tensors."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        weight_decay: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        group = {"params": list(params), "lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        self.param_groups: list[dict] = [group]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self._params():
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            # The kernel takes lists of one device and dtype, as torch.optim groups them.
            lists: dict[tuple, tuple[list, list, list, list, list]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state.get(p)
                if not state:
                    state = self.state[p] = {
                        "step": torch.zeros((), dtype=torch.float32, device=p.device),
                        "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                        "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                    }
                for items, value in zip(
                    lists.setdefault((p.device, p.dtype), ([], [], [], [], [])),
                    (p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"]),
                ):
                    items.append(value)
            beta1, beta2 = group["betas"]
            for params, grads, exp_avgs, exp_avg_sqs, steps in lists.values():
                torch._foreach_add_(steps, 1)
                torch._fused_adamw_(
                    params, grads, exp_avgs, exp_avg_sqs, [], steps,
                    lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                    amsgrad=False, maximize=False, grad_scale=None, found_inf=None,
                )  # fmt: skip

    def state_dict(self) -> dict:
        """``torch.optim``'s layout: state by parameter index, in the order of the groups."""
        index = {p: i for i, p in enumerate(self._params())}
        state = {index[p]: dict(s) for p, s in self.state.items()}
        groups, start = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": list(range(start, start + n))})
            start += n
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Take the state of ``state_dict`` (this class's or ``torch.optim.AdamW``'s), as that
        optimizer does: each group's settings, the moments in their parameter's dtype and
        device, the step count fp32."""
        params = self._params()
        loaded, groups = state_dict["state"], state_dict["param_groups"]
        sizes = [len(group["params"]) for group in groups]
        if sizes != [len(group["params"]) for group in self.param_groups] or any(not 0 <= int(i) < len(params) for i in loaded):
            raise ValueError(f"optimizer state for parameter groups of {sizes} does not fit this optimizer's")
        for group, saved in zip(self.param_groups, groups):
            group.update({key: saved[key] for key in ("lr", "betas", "eps", "weight_decay")})
        self.state = {}
        for i, saved in loaded.items():
            p = params[int(i)]
            self.state[p] = {
                key: value.to(device=p.device, dtype=torch.float32 if key == "step" else p.dtype).clone()
                for key, value in saved.items()
            }
