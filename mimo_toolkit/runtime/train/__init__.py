"""The training loop: trainer, schedule, engine, optimizers, metrics, checkpoints."""
