"""The hand-written CPU training step, allowed only for configurations it is tested to equal autograd on."""
