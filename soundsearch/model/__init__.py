"""The presence network: config (torch-free), network, inference form (batch norm folded, for search), checkpoint format, registry (torch-free)."""
