"""`swift deploy`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) in front of one engine."""
from .serve import run_deploy

__all__ = ["run_deploy"]
