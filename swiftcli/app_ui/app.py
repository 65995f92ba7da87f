"""`swift app-ui`: a web chat (gradio) over one InferEngine: pt, vLLM, or a `swift deploy` server (--api_url).

The page uses only the engine interface. A reply streams from `infer_stream_async`; Stop cancels gradio's event,
gradio closes the reply's generator, and that closes the engine's stream, which aborts the generation. Chat models
get gradio's ChatInterface (Send, Stop, Retry to regenerate, Clear, multi-turn history); base (generation) models
get a completion form. Each browser tab is its own gradio session with its own history, and gradio's queue holds
the requests beyond --max_batch_size generating at once instead of refusing them.
"""
from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

from ..arguments import AppUIArguments, is_loopback
from ..engine.base import InferEngine
from ..errors import SwiftError
from ..protocol import InferRequest, Messages, RequestConfig, content_text
from ..reasoning import split_reasoning
from ..request_config import ui_fields

try:
    import gradio as gr
except ModuleNotFoundError as e:
    if e.name != "gradio":
        raise
    raise SwiftError("swift app-ui needs gradio: pip install 'swiftcli[ui]' (gradio 6.31)") from None

logger = logging.getLogger("swiftcli")


def run_app_ui(args: AppUIArguments) -> None:
    """Serve the page until Ctrl+C or SIGTERM."""
    demo = make_app(args)
    if not is_loopback(args.host):
        logger.warning("Serving the UI on %s without a login: anyone who can reach port %d can use the model.",
                       args.host, args.port)
    # SIGTERM ends like Ctrl+C: gradio closes its server and Python exits normally, so atexit stops vLLM's engine
    # processes (the default action kills only this one and orphans them).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        demo.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True)
    except KeyboardInterrupt:  # Ctrl+C before gradio's own wait could catch it: the same normal stop
        demo.close()


def make_app(args: AppUIArguments) -> gr.Blocks:
    """The page for these arguments; a model that fails to load gets a page that says why, not a dead port."""
    try:
        engine = load_engine(args)
    except Exception as e:  # the page shows it; the terminal gets the details
        logger.error("Loading the model failed: %s", e, exc_info=not isinstance(e, SwiftError))
        demo = error_page(args, e)
    else:
        from ..engine import print_banner

        print_banner(engine)
        demo = build_ui(engine)
    return demo.queue(default_concurrency_limit=args.max_batch_size)


def load_engine(args: AppUIArguments) -> InferEngine:
    if args.api_url:
        from ..engine.remote_engine import RemoteEngine

        # The server's model defaults are unknown here: the command line's settings are the page's defaults.
        return RemoteEngine(args.api_url, args.api_key, args.request_config())
    from ..engine import get_engine, seed_everything

    seed_everything(args.seed)
    return get_engine(args)


# ---- pages -----------------------------------------------------------------------------------------------------
def build_ui(engine: InferEngine) -> gr.Blocks:
    """The chat page, or the completion page for a base model."""
    with gr.Blocks(title=f"{engine.info.model_type} - swift app-ui", analytics_enabled=False) as demo:
        gr.Markdown(header(engine), elem_id="header")
        adapter = gr.Dropdown([("base model", "")] + [(name, name) for name in engine.info.adapters], value="",
                              label="LoRA adapter", visible=bool(engine.info.adapters), render=False)
        settings = generation_settings(engine)
        if engine.template.is_generation:
            completion_view(engine, adapter, settings)
        else:
            chat_view(engine, adapter, settings)
    return demo


def header(engine: InferEngine) -> str:
    info = engine.info
    facts = [f"template `{engine.template.template_type}`", f"backend `{info.backend}`", f"dtype {info.dtype}"]
    if info.max_model_len:
        facts.append(f"context {info.max_model_len}")
    if info.adapters:
        facts.append(f"adapters {', '.join(info.adapters)}")
    facts += [f"{key} {value}" for key, value in info.details.items()]
    return f"## swift app-ui: {info.model_type}\n" + " · ".join(facts)


def chat_view(engine: InferEngine, adapter: gr.Dropdown, settings: list[gr.Component]) -> None:
    """Settings on the left, the chat on the right: ChatInterface uses the controls where they are rendered."""

    async def chat(message: str, history: list[dict[str, Any]], system_prompt: str, adapter_name: str,
                   *values: Any) -> AsyncIterator[str | list[gr.ChatMessage]]:
        def request() -> InferRequest:
            return InferRequest(messages=chat_messages(message, history, system_prompt), adapter=adapter_name or None)

        async for text in stream_text(engine, request, values):
            yield chat_reply(engine.template.reasoning_parser, text)

    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            system = gr.Textbox(engine.template.default_system or "", label="System prompt", lines=3, max_lines=8,
                                placeholder="empty: the template's default")
            adapter.render()
            with gr.Accordion("Generation settings", open=False):
                for control in settings:
                    control.render()
        with gr.Column(scale=3):
            gr.ChatInterface(chat, additional_inputs=[system, adapter, *settings],
                             chatbot=gr.Chatbot(label="Chat", height=560, feedback_options=None, buttons=["copy"]),
                             textbox=gr.Textbox(placeholder="Type a message; Enter sends", submit_btn="Send",
                                                stop_btn="Stop", elem_id="message"),
                             validator=lambda message: gr.validate(bool(message.strip()), "Type a message first."),
                             flagging_mode="never", fill_height=False)


def completion_view(engine: InferEngine, adapter: gr.Dropdown, settings: list[gr.Component]) -> None:
    async def complete(prompt: str, adapter_name: str, *values: Any) -> AsyncIterator[str]:
        if not prompt.strip():  # (Interface's validator would leave its Stop button showing)
            gr.Warning("Type a prompt first.")
            return

        def request() -> InferRequest:
            return InferRequest(prompt=prompt, adapter=adapter_name or None)

        async for text in stream_text(engine, request, values):
            yield text

    gr.Interface(complete, gr.Textbox(label="Prompt", lines=6, placeholder="A base model continues this text"),
                 gr.Textbox(label="Completion", lines=12), additional_inputs=[adapter, *settings],
                 additional_inputs_accordion="Generation settings",
                 submit_btn="Send", stop_btn="Stop", clear_btn="Clear", flagging_mode="never")


def error_page(args: AppUIArguments, error: Exception) -> gr.Blocks:
    what = args.api_url or args.ckpt_dir or args.model_id_or_path or args.model_type or "the default model"
    with gr.Blocks(title="swift app-ui: no model", analytics_enabled=False) as demo:
        gr.Markdown(f"## swift app-ui could not load `{what}`\n"
                    "Fix the arguments (with --api_url: start the server) and run `swift app-ui` again.")
        gr.Textbox(f"{type(error).__name__}: {error}", label="Error", lines=4, interactive=False, elem_id="error")
    return demo


# ---- generation ------------------------------------------------------------------------------------------------
def generation_settings(engine: InferEngine) -> list[gr.Component]:
    """Controls that start at the engine's defaults (the model's generation_config overlaid with the command line):
    max_new_tokens, a slider per RequestConfig setting that declares one (request_config.py), the seed."""
    d = engine.default_config.resolved()
    most = max(engine.info.max_model_len, d.max_tokens or 1)
    sliders = [gr.Slider(low, high, value=min(max(getattr(d, f.name), low), high), step=step, label=f.name,
                         info=info or None, render=False)
               for f in ui_fields() for low, high, step, info in [f.metadata["ui"]]]
    return [gr.Slider(1, most, value=d.max_tokens or most, step=1, label="max_new_tokens", render=False), *sliders,
            gr.Number(-1, precision=0, minimum=-1, label="seed", info="-1: not fixed; a number repeats a sampled reply",
                      render=False)]


def request_config(max_new_tokens: float, *values: Any) -> RequestConfig:
    """The page's settings (generation_settings' order) as a request's; seed -1 leaves sampling to the process's
    random state (--seed)."""
    *settings, seed = values
    chosen = {f.name: type(f.metadata["ui"][2])(value) for f, value in zip(ui_fields(), settings)}  # int steps: ints
    return RequestConfig(max_tokens=int(max_new_tokens), seed=None if seed is None or seed < 0 else int(seed), **chosen)


def chat_reply(reasoning_parser: str | None, text: str) -> str | list[gr.ChatMessage]:
    """The reply so far as the chat shows it: a reasoning model's thinking in a collapsible "Thinking" message of
    its own (gradio's metadata title), then the answer."""
    reasoning, content = split_reasoning(reasoning_parser, text)
    if reasoning is None:
        return text
    return [gr.ChatMessage(role="assistant", content=reasoning, metadata={"title": "Thinking"}),
            gr.ChatMessage(role="assistant", content=content)]


def chat_messages(message: str, history: list[dict[str, Any]], system: str) -> Messages:
    """Gradio's history as alternating user/assistant turns. A query stopped (or failed) before its first token
    has no reply: it is left out, since the templates need the turns to alternate. Thinking shown by `chat_reply`
    is not sent back (chat templates keep only the answer)."""
    messages: Messages = [{"role": "system", "content": system}] if system.strip() else []
    query = None
    for m in history:
        if (m.get("metadata") or {}).get("title"):
            continue
        if m["role"] == "user":
            query = content_text(m["content"])
        elif m["role"] == "assistant" and query is not None:
            reply = content_text(m["content"])
            messages += [{"role": "user", "content": query}, {"role": "assistant", "content": reply}]
            query = None
    return messages + [{"role": "user", "content": message}]


async def stream_text(engine: InferEngine, make_request: Callable[[], InferRequest],
                      values: tuple[Any, ...]) -> AsyncIterator[str]:
    """The reply so far after each delta. Closing this generator (Stop, a closed tab) closes the engine's stream,
    which aborts the generation. A failure ends the reply with a notice that stays until closed: raising gr.Error
    instead would leave ChatInterface's input disabled behind its Stop button."""
    text = ""
    try:
        request, config = make_request(), request_config(*values)
        async with aclosing(engine.infer_stream_async(request, config)) as deltas:
            async for delta in deltas:
                if delta.text:
                    text += delta.text
                    yield text
    except SwiftError as e:
        gr.Warning(str(e), duration=None)
    except Exception as e:
        logger.exception("Generation failed")
        gr.Warning(f"Generation failed: {type(e).__name__}: {e}", duration=None)

