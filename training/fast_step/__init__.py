"""The hand-written training step (CPU and CUDA), allowed only for configurations it is tested to equal autograd on."""
