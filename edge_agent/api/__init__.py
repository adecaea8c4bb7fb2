"""Thin FastAPI routes of the agent."""
