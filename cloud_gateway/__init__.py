"""The cloud gateway: routes each request by placement (issue 4; not built yet)."""
