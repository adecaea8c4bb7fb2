"""The edge agent: measures, loads, evicts and serves real diffusion and language models."""
