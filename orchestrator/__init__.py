"""The orchestrator: placement decisions from measured profiles and live rates (issue 3; not built yet)."""
