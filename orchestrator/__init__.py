"""The orchestrator: placement from measured profiles and live rates (issue 3; not built yet)."""
