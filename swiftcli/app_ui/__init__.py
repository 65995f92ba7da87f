"""`swift app-ui`: a web chat (gradio) over a model loaded here or a running `swift deploy`."""
from .app import make_app, run_app_ui

__all__ = ["make_app", "run_app_ui"]
