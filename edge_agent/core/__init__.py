"""Pure-Python core of the agent: levels, swap pool, admission. No torch, no FastAPI."""
