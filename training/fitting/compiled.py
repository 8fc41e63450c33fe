"""torch.compile of the one loss definition (training/network/loss.py), where it was measured to pay.

benchmarks/training_compile.py (real rows, alternating contenders, one thread a process): for K
stacked members the compiled loss + backward is 1.5-1.65x eager autograd and 1.4-1.5x the hand-written
step at K = 6, while for one network it loses to both (0.87x eager). Compiling costs 20-30 s per
process with a cold inductor cache, repaid after 730-1,600 steps. So ``training.compile = "auto"``
compiles only what was measured: fp32 on a CPU, at least :data:`MIN_MEMBERS` members stacked in the
process, at least :data:`MIN_STEPS` steps, no KL warm-up (its changing weight would recompile every
epoch). A GPU waits for its own measurement (benchmarks/gpu_device_check.sh); ``"on"`` compiles anyway.

The compiled function is the same ``StackedNetworks.loss``; a short last batch runs it eagerly (one
compiled shape, no recompiles), and a compile that fails (no C++ compiler on the machine, an op the
compiler lacks) leaves the run on eager autograd with one warning instead of ending it.
"""

from __future__ import annotations

import warnings

import torch

MIN_MEMBERS = 3  # measured: 3 per worker process (the preset on 2 cores) and 6 pay; 1 loses
MIN_STEPS = 2000  # the compile (20-30 s) repaid after 730-1,600 steps at 6 members


def use_compile(mode: str, members: int, steps: int, device: str, precision: str, kl_warmup: int, fast_step: str) -> bool:
    """Whether ``training.compile`` = ``mode`` compiles this run's loss (see module docstring)."""
    if mode == "off":
        return False
    if mode == "on":  # with fast_step = "on" too: refused by the settings check (training/config.py)
        return True
    return (fast_step != "on" and device == "cpu" and precision == "fp32" and members >= MIN_MEMBERS and steps >= MIN_STEPS
            and not kl_warmup)


class CompiledLoss:
    """``net.loss`` compiled for batches of ``batch_size`` rows, eager for any other size and after a failed compile."""

    def __init__(self, net, batch_size: int):
        self.net, self.eager, self.batch_size = net, net.loss, batch_size
        self.compiled = torch.compile(net.loss, dynamic=False)
        self.failed = False
        self._checked = False

    def __call__(self, x: torch.Tensor, *args):
        if self.failed or x.shape[-2] != self.batch_size:
            return self.eager(x, *args)
        try:
            if not self._checked:  # the backward compiles on first use too: a throwaway step makes it fail here, not in .backward()
                params = [p for p in self.net.parameters() if p.requires_grad]
                torch.autograd.grad(self.compiled(x, *args)[0].sum(), params, allow_unused=True)  # gradients discarded
                self._checked = True
            return self.compiled(x, *args)
        except Exception as err:  # noqa: BLE001 - any compiler failure: train on, eagerly
            self.failed = True
            why = (str(err).strip().splitlines() or [""])[0][:200]
            warnings.warn(f"torch.compile of the training loss failed ({type(err).__name__}: {why}); training with eager autograd", stacklevel=2)
            return self.eager(x, *args)
