"""The presence network: config (torch-free), network, checkpoint format, registry (torch-free)."""
