"""Adam and its cosine learning-rate decay without ``torch.optim``.

``torch.optim.Adam`` computes exactly this update with the same fused kernel, but constructing
any ``torch.optim`` optimizer imports ``torch._dynamo`` (about 1 s of a 20 s ``inclust-train``
run on the 2-core machine of BENCHMARKS.md). The kernel is called directly here; where a torch
build lacks it, or a gradient scaler needs an optimizer object (fp16), ``torch.optim.Adam`` is used.
"""

from __future__ import annotations

import math

import torch


class FusedAdam:
    """Adam (betas 0.9/0.999, eps 1e-8, no weight decay) over ``params``, one fused kernel per step."""

    def __init__(self, params: list[torch.nn.Parameter], lr: float):
        self.params = list(params)
        self.lr = lr
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]

    @staticmethod
    def available(device: torch.device) -> bool:
        return hasattr(torch, "_fused_adam_") and device.type in ("cpu", "cuda")

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        steps = [self.steps[i] for i in live]
        torch._foreach_add_(steps, 1)
        fused_adam([self.params[i] for i in live], [self.params[i].grad for i in live], [self.exp_avg[i] for i in live],
                   [self.exp_avg_sq[i] for i in live], steps, self.lr)


def fused_adam(params, grads, exp_avgs, exp_avg_sqs, steps, lr: float) -> None:
    """torch's fused Adam kernel with this project's settings (betas 0.9/0.999, eps 1e-8, no weight
    decay: those of ``torch.optim.Adam``), in place; ``steps`` already counts this step."""
    torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=lr, beta1=0.9, beta2=0.999, weight_decay=0.0,
                       eps=1e-8, amsgrad=False, maximize=False)


class TorchAdam:
    """``torch.optim.Adam`` behind the same three calls (and the optimizer a GradScaler steps)."""

    def __init__(self, params: list[torch.nn.Parameter], lr: float):
        try:
            self.optimizer = torch.optim.Adam(params, lr=lr, fused=True)
        except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device
            self.optimizer = torch.optim.Adam(params, lr=lr, foreach=True)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = value

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.optimizer.step()


def adam(params, lr: float, device: torch.device, need_torch_optimizer: bool = False):
    params = list(params)
    if not need_torch_optimizer and FusedAdam.available(device):
        return FusedAdam(params, lr)
    return TorchAdam(params, lr)


def cosine_lr(base: float, step: int, total: int) -> float:
    """The learning rate after ``step`` of ``total`` steps of cosine decay to 0 (torch's CosineAnnealingLR)."""
    return base * (1 + math.cos(math.pi * min(step, total) / max(total, 1))) / 2
