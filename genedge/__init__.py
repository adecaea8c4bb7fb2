"""genedge: shared contract and CLI of the live edge orchestrator for generative-AI models."""

__version__ = "0.1.0"
