"""The training loop, optimizer groups and schedules, checkpoint state, distributed helpers."""
