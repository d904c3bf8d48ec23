"""Training engine: config, schedule, checkpoints, the training loop, DDP and the evaluation runner.

Import the submodules directly (``training.engine.checkpoint`` ...): this package stays import-light so the
checkpoint helpers work without pulling the data pipeline in.
"""
