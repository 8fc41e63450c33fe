"""The training loop: members, schedules, devices, optimiser, loss curves."""
