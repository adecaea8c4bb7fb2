"""Adapters to the outside world: torch/diffusers/transformers, NVML, disk."""
