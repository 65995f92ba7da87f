"""`swift app-ui` in a real browser (headless Debian Chromium driven by Playwright), and RemoteEngine on its own.

- The chat view: a real `swift app-ui --infer_backend pt` process on the default model. It starts before the first
  test, so its minute of loading overlaps the tests that need no model.
- A model that fails to load, and --api_url: pages built by `make_app` and served from this process (no model to
  load), the latter at a scripted OpenAI server also in this process (the real `swift deploy` app around an engine
  the test controls) serving a base model: the completion view, and Stop reaching the engine across HTTP.
Browser tests skip when gradio, playwright or chromium is missing (scripts/install_browser.sh installs the last two).
"""
from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SwiftServer, free_port, serve_in_thread, start_swift

try:
    from playwright.sync_api import expect, sync_playwright
except ModuleNotFoundError:  # the browser tests skip: browser_missing() says why
    expect = sync_playwright = None

from swiftcli.arguments import AppUIArguments
from swiftcli.engine.base import EngineInfo, InferEngine
from swiftcli.engine.remote_engine import RemoteEngine
from swiftcli.errors import ArgumentError, SwiftError
from swiftcli.protocol import Choice, InferRequest, InferResponse, RequestConfig, StreamDelta, Usage
from swiftcli.template import Encoded, Template

# (gradio 6.31's queue analytics call pandas APIs that pandas 3 deprecates: not ours to fix)
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings(r"ignore::Warning:gradio\.queueing")]

SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "app-ui.png"
"""The README's picture, taken by the two-turn test when SWIFT_UPDATE_SCREENSHOT=1 (else into the test's tmp_path,
so a test run leaves the checkout as it was)."""
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]
MESSAGE_BOX = "#message textarea"
WAIT_MS = 120_000
"""Longest wait for anything in the page: on 2 shared cores a 2 s answer can take 20 s."""
FRANCE = "What is the capital of France?"
GERMANY = "What about Germany?"  # answered "Berlin" only with the France turn before it


def browser_missing() -> str | None:
    for module, hint in (("gradio", "pip install 'swiftcli[ui]'"),
                         ("playwright", "bash scripts/install_browser.sh")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed: {hint}"
    if shutil.which("chromium") is None:
        return "Debian's chromium is not installed: bash scripts/install_browser.sh"
    return None


needs_browser = pytest.mark.skipif(browser_missing() is not None, reason=browser_missing() or "")


# ---- a scripted OpenAI server: the real deploy app around an engine the test controls -----------------------
class ScriptedEngine(InferEngine):
    """Streams back what it was asked: 'echo: <last message or prompt> (<n> messages, adapter <name>)'. A LONG
    request streams a word every 0.1 s for a minute, FAIL fails after the first delta. `requests` records what
    arrived; `aborted` is set when a stream is closed before its end."""

    def __init__(self, is_generation: bool = False):
        self.template = Template("scripted", is_generation=is_generation)
        self.info = EngineInfo("scripted-model", "/nowhere/model", "scripted", "fp32", 4096,
                               {"my_lora": "/nowhere/lora"})
        self.default_config = RequestConfig(max_tokens=64)
        self.requests: list[tuple[InferRequest, RequestConfig | None]] = []
        self.aborted = threading.Event()

    def encode(self, request: InferRequest) -> Encoded:
        return Encoded([1, 2, 3])

    def _words(self, request: InferRequest) -> list[str]:
        last = request.prompt if request.prompt is not None else request.messages[-1]["content"]
        if "LONG" in last:
            return ["word "] * 600
        return ["echo: ", f"{last} ", f"({len(request.messages or [])} messages, adapter {request.adapter})"]

    def infer(self, requests, config=None, use_tqdm=False):
        return [InferResponse([Choice(0, "".join(self._words(r)), "stop")], Usage(3, 3)) for r in requests]

    def infer_stream(self, request, config=None):
        self.requests.append((request, config))
        words = self._words(request)
        try:
            for i, word in enumerate(words):
                if i == 1 and "FAIL" in str(request.messages or request.prompt):
                    raise RuntimeError("scripted failure mid-stream")
                time.sleep(0.1 if len(words) > 3 else 0)
                yield StreamDelta(0, word)
            yield StreamDelta(0, "", "stop")
            yield StreamDelta(0, "", usage=Usage(3, len(words)))
        except GeneratorExit:
            self.aborted.set()
            raise


@pytest.fixture(scope="module")
def scripted_chat() -> Iterator[tuple[ScriptedEngine, str]]:
    engine = ScriptedEngine()
    with serve_in_thread(engine) as url:
        yield engine, url


@pytest.fixture(scope="module")
def scripted_base() -> Iterator[tuple[ScriptedEngine, str]]:
    engine = ScriptedEngine(is_generation=True)
    with serve_in_thread(engine) as url:
        yield engine, url


# ---- RemoteEngine on its own ---------------------------------------------------------------------------------
def test_remote_engine_describes_the_served_model(scripted_chat, scripted_base):
    chat, base = RemoteEngine(scripted_chat[1]), RemoteEngine(scripted_base[1])
    assert chat.info.model_type == "scripted-model" and chat.info.max_model_len == 4096
    assert chat.info.adapters == {"my_lora": "/nowhere/lora"}
    assert not chat.template.is_generation and base.template.is_generation


def test_remote_stream_sends_the_conversation_adapter_and_settings(scripted_chat):
    engine, url = scripted_chat
    remote = RemoteEngine(url, default_config=RequestConfig(stop=["END"]))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "And now?"}]
    config = RequestConfig(max_tokens=5, temperature=0.5, top_p=0.9, top_k=3, repetition_penalty=1.1, seed=7)
    deltas = list(remote.infer_stream(InferRequest(messages=messages, adapter="my_lora"), config))
    assert "".join(d.text for d in deltas) == "echo: And now? (4 messages, adapter my_lora)"
    assert deltas[-1].usage == Usage(3, 3)
    got_request, got = engine.requests[-1]
    assert got_request.messages == messages
    assert (got.max_tokens, got.temperature, got.top_p, got.top_k, got.repetition_penalty, got.seed, got.stop) == (
        5, 0.5, 0.9, 3, 1.1, 7, ["END"])


def test_remote_base_model_completes_a_prompt(scripted_base):
    remote = RemoteEngine(scripted_base[1])
    text = "".join(d.text for d in remote.infer_stream(InferRequest(prompt="Once upon a time")))
    assert text == "echo: Once upon a time (0 messages, adapter None)"
    assert remote.infer([InferRequest(prompt="Hi")])[0].text == "echo: Hi (0 messages, adapter None)"


def test_closing_a_remote_stream_aborts_the_generation_on_the_server(scripted_chat):
    engine, url = scripted_chat
    engine.aborted.clear()

    async def first_delta_then_close() -> StreamDelta:
        stream = RemoteEngine(url).infer_stream_async(InferRequest(messages=[{"role": "user", "content": "LONG"}]))
        delta = await anext(stream)
        await stream.aclose()
        return delta

    assert asyncio.run(first_delta_then_close()).text == "word "
    assert engine.aborted.wait(10), "the server kept generating for a stream the client closed"


def test_remote_errors_are_one_readable_line(scripted_chat):
    remote = RemoteEngine(scripted_chat[1])
    with pytest.raises(RuntimeError, match="scripted failure mid-stream"):
        list(remote.infer_stream(InferRequest(messages=[{"role": "user", "content": "FAIL"}])))
    with pytest.raises(ArgumentError, match="unknown adapter 'nope'"):
        list(remote.infer_stream(InferRequest(messages=[{"role": "user", "content": "Hi"}], adapter="nope")))
    remote.info.adapters["gone"] = "/nowhere"  # the server dropped an adapter since: its 404 says so
    with pytest.raises(SwiftError, match="answered 404: The model `gone` does not exist"):
        list(remote.infer_stream(InferRequest(messages=[{"role": "user", "content": "Hi"}], adapter="gone")))
    with pytest.raises(ConnectionError, match="cannot reach http://127.0.0.1:1/v1"):
        RemoteEngine("http://127.0.0.1:1/v1")


@pytest.mark.parametrize("flags,word", [
    ({"port": 0}, "--port"), ({"api_key": "k"}, "--api_key goes with --api_url"),
    ({"api_url": "127.0.0.1:8000/v1"}, "http(s) URL"),
    ({"api_url": "http://127.0.0.1:8000/v1", "model_type": "qwen-7b-chat"}, "drop --model_type"),
])
def test_app_ui_arguments_are_validated(flags, word):
    with pytest.raises(ArgumentError, match=word.replace("(", r"\(").replace(")", r"\)")):
        AppUIArguments(**flags)


# ---- the apps and the browser --------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def chat_app(tmp_path_factory) -> Iterator[SwiftServer | None]:
    """`swift app-ui` on the default model, started before the first test so that its minute of loading overlaps
    the tests that need no model. --max_new_tokens 32 keeps answers short (the Stop test raises it in the page);
    --max_batch_size 1 makes a second tab's request wait in gradio's queue."""
    if browser_missing():
        yield None
        return
    app = start_swift(tmp_path_factory.mktemp("app-ui"), "chat", "app-ui", "--infer_backend", "pt",
                      "--max_new_tokens", "32", "--max_batch_size", "1", ready_path="/",
                      env={"GRADIO_ANALYTICS_ENABLED": "False"})
    yield app
    app.stop()


@contextlib.contextmanager
def app_in_process(**flags) -> Iterator[str]:
    """`swift app-ui`'s page for these flags (what make_app builds), served from this process; yields its URL."""
    from swiftcli.app_ui import make_app

    args = AppUIArguments(port=free_port(), **flags)
    demo = make_app(args)
    demo.launch(server_name="127.0.0.1", server_port=args.port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{args.port}"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=shutil.which("chromium"),
            headless=True, args=CHROMIUM_FLAGS, viewport={"width": 1280, "height": 860})
        context.set_default_timeout(WAIT_MS)
        expect.set_options(timeout=WAIT_MS)
        yield context
        context.close()


def open_page(browser, url: str, ready: str):
    """A new tab (a new gradio session) at `url`, once `ready` (a CSS selector) shows."""
    page = browser.new_page()
    page.goto(url)
    page.locator(ready).first.wait_for()
    return page


@pytest.fixture
def chat_page(chat_app, browser):
    chat_app.wait_ready()
    page = open_page(browser, chat_app.url, MESSAGE_BOX)
    yield page
    page.close()


def send(page, text: str) -> None:
    page.locator(MESSAGE_BOX).fill(text)
    page.get_by_role("button", name="Send").click()


def replies(page) -> list[str]:
    return [text.strip() for text in page.locator('[data-testid="bot"]').all_inner_texts()]


def queries(page) -> list[str]:
    return [text.strip() for text in page.locator('[data-testid="user"]').all_inner_texts()]


def wait_for_reply(page, turns: int) -> str:
    """The last reply once turn `turns` is over: that many replies shown and the Send button back."""
    expect(page.locator('[data-testid="bot"]')).to_have_count(turns)
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    return replies(page)[-1]


def record_replies(page) -> None:
    """From now on, remember every text the last reply shows (`seen_replies`): streaming shows several."""
    page.evaluate("""() => {
        window.seenReplies = [];
        if (window.replyObserver) return;
        window.replyObserver = new MutationObserver(() => {
            const bots = document.querySelectorAll('[data-testid="bot"]');
            const text = bots.length ? bots[bots.length - 1].innerText.trim() : '';
            if (text && window.seenReplies[window.seenReplies.length - 1] !== text) window.seenReplies.push(text);
        });
        window.replyObserver.observe(document.body, {childList: true, subtree: true, characterData: true});
    }""")


def seen_replies(page) -> list[str]:
    return page.evaluate("window.seenReplies")


def show_settings(page, label: str) -> None:
    """Open the "Generation settings" accordion unless the control `label` shows already."""
    if page.get_by_label(label).is_hidden():
        page.get_by_role("button", name="Generation settings").click()


def set_setting(page, label: str, value: str) -> None:
    show_settings(page, f"number input for {label}")
    page.get_by_label(f"number input for {label}").fill(value)
    page.get_by_label(f"number input for {label}").press("Enter")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- load failure, and --api_url with a base model (pages served from this process) -------------------------
@needs_browser
def test_model_load_failure_is_shown_in_the_page(browser):
    with app_in_process(model_id_or_path="/nonexistent/model") as url:
        page = open_page(browser, url, "#error textarea")
        assert "could not load" in page.locator("h2").first.inner_text()
        error = page.locator("#error textarea").input_value()
        assert "/nonexistent/model" in error and "does not exist" in error
        page.close()


@needs_browser
def test_api_url_base_model_gets_completions_an_adapter_choice_and_stop(browser, scripted_base):
    engine, api_url = scripted_base
    with app_in_process(api_url=api_url) as url:
        page = open_page(browser, url, "#header")
        header = page.locator("#header").inner_text()
        assert "scripted-model" in header and f"backend remote {api_url}" in header
        page.get_by_role("button", name="Send").click()
        expect(page.get_by_text("Type a prompt first.")).to_be_visible()

        show_settings(page, "LoRA adapter")
        page.get_by_label("LoRA adapter").click()
        page.get_by_role("option", name="my_lora").click()
        page.get_by_label("Prompt").fill("Once upon a time")
        page.get_by_role("button", name="Send").click()
        expect(page.get_by_label("Completion")).to_have_value("echo: Once upon a time (0 messages, adapter my_lora)")

        engine.aborted.clear()
        page.get_by_label("Prompt").fill("A LONG story")
        page.get_by_role("button", name="Send").click()
        expect(page.get_by_label("Completion")).to_have_value(re.compile("(word ){3,}"))
        page.get_by_role("button", name="Stop").click()
        assert engine.aborted.wait(10), "Stop did not reach the server's engine"
        page.close()


# ---- the chat view, default model ----------------------------------------------------------------------------
@needs_browser
def test_header_names_the_model_template_and_backend(chat_page):
    header = chat_page.locator("#header").inner_text()
    assert "smollm2-135m-instruct" in header and "template smollm2" in header and "backend pt" in header


@needs_browser
def test_answer_streams_and_the_second_turn_uses_the_history(chat_page, tmp_path):
    record_replies(chat_page)
    send(chat_page, FRANCE)
    answer = wait_for_reply(chat_page, 1)
    assert "Paris" in answer
    partial = [text for text in seen_replies(chat_page) if text != answer]
    assert partial and all(answer.startswith(text) for text in partial), seen_replies(chat_page)

    send(chat_page, GERMANY)
    assert "Berlin" in wait_for_reply(chat_page, 2)
    assert queries(chat_page) == [FRANCE, GERMANY]
    screenshot = SCREENSHOT if os.environ.get("SWIFT_UPDATE_SCREENSHOT") == "1" else tmp_path / "app-ui.png"
    chat_page.screenshot(path=str(screenshot))
    assert screenshot.stat().st_size > 10_000


@needs_browser
def test_stop_ends_a_long_answer_in_the_engine(chat_page, chat_app):
    set_setting(chat_page, "max_new_tokens", "300")
    send(chat_page, "Write a long story about a dragon.")
    expect(chat_page.locator('[data-testid="bot"]').last).to_have_text(re.compile(".{40}", re.DOTALL))  # under way
    chat_page.get_by_role("button", name="Stop").click()
    expect(chat_page.get_by_role("button", name="Send")).to_be_visible()
    time.sleep(1)  # the step that was running may finish
    stopped, cpu = replies(chat_page)[-1], cpu_seconds(chat_app.proc.pid)
    time.sleep(2)
    assert replies(chat_page)[-1] == stopped and len(stopped) < 1000  # 300 tokens are ~1200 characters
    assert cpu_seconds(chat_app.proc.pid) - cpu < 0.5, "the engine keeps generating after Stop"


@needs_browser
def test_clear_empties_the_chat_and_its_history(chat_page):
    send(chat_page, FRANCE)
    assert "Paris" in wait_for_reply(chat_page, 1)
    chat_page.get_by_role("button", name="Clear").click()
    expect(chat_page.locator('[data-testid="user"]')).to_have_count(0)
    send(chat_page, GERMANY)
    assert "Berlin" not in wait_for_reply(chat_page, 1)
    assert queries(chat_page) == [GERMANY]


@needs_browser
def test_regenerate_streams_the_last_answer_again(chat_page):
    send(chat_page, FRANCE)
    answer = wait_for_reply(chat_page, 1)
    record_replies(chat_page)
    chat_page.get_by_role("button", name="Retry").click()
    expect(chat_page.get_by_role("button", name="Stop")).to_be_visible()
    assert wait_for_reply(chat_page, 1) == answer  # greedy: the same words, generated again
    assert seen_replies(chat_page)[:-1] and queries(chat_page) == [FRANCE]


@needs_browser
def test_system_prompt_changes_the_answer(chat_page):
    chat_page.get_by_label("System prompt").fill("Your name is Zorblax.")
    send(chat_page, "What is your name?")
    assert "Zorblax" in wait_for_reply(chat_page, 1)


@needs_browser
def test_empty_input_is_refused_in_the_page(chat_page):
    send(chat_page, "   ")
    expect(chat_page.get_by_text("Type a message first.")).to_be_visible()
    assert queries(chat_page) == [] and replies(chat_page) == []


@needs_browser
def test_generation_error_is_shown_and_the_page_keeps_working(chat_page):
    send(chat_page, "word " * 9000)  # more tokens than the model's 8192 context
    expect(chat_page.get_by_text("maximum context length is 8192 tokens").first).to_be_visible()
    expect(chat_page.get_by_role("button", name="Send")).to_be_visible()
    send(chat_page, FRANCE)  # the failed query has no reply: it is left out of the history
    assert "Paris" in wait_for_reply(chat_page, 1)


@needs_browser
def test_two_tabs_queue_and_keep_their_own_histories(chat_page, chat_app, browser):
    first, second = chat_page, open_page(browser, chat_app.url, MESSAGE_BOX)
    try:
        send(first, FRANCE)
        send(second, GERMANY)  # --max_batch_size 1: it waits in gradio's queue
        assert "Paris" in wait_for_reply(first, 1)
        assert "Berlin" not in wait_for_reply(second, 1)
        assert queries(first) == [FRANCE] and queries(second) == [GERMANY]
    finally:
        second.close()
