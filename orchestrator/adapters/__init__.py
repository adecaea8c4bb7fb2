"""Adapters of the orchestrator: the SQLite registry and the httpx clients of its peers."""
