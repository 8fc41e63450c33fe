"""PyTorch side of inclust-plus: data assembly, the inClust+ module, training and checkpoints."""
