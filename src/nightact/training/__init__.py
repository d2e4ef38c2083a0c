"""Training one model: the config and its named steps, callbacks, checkpoints and devices."""
