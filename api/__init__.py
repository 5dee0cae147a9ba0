"""The seal web service (FastAPI): adaptations, adapters, OpenAI-compatible completions."""
