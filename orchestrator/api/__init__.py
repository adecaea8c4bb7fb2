"""Thin HTTP routes of the orchestrator."""
