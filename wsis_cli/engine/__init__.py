"""Training loops, checkpoints and devices for the models in :mod:`wsis_cli.models`."""
