"""Training the presence network: config (torch-free), pairs, trainer, fit, pipeline."""
