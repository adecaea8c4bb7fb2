"""The cloud gateway: one OpenAI-style endpoint that routes each request by placement."""
