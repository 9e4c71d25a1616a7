"""The Gradio demo in a real headless browser (Debian's chromium, driven by Playwright): log in with the API key,
upload a video, press Analyze, and see the label, the streamed reasoning and the frames-used overlay. The answer is
the one the API gives for the same file, since both run on the same engine. A screenshot is kept as an artifact
(`$EMOREASON_ARTIFACTS`, default `test-artifacts/` in the checkout)."""

import os
import re
import shutil
from pathlib import Path

import pytest

from mllm.labels import label_space
from mllm.predict import build_messages

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LABEL_SPACE = "abaw_expr"  # the tiny checkpoint's


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (`make setup` installs Debian's package as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def _log_in(page, url: str, password: str) -> None:
    page.goto(url)
    page.get_by_label("username").fill("demo")
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Login").click()


def test_the_demo_answers_a_video_with_reasoning_label_and_overlay(server, client, browser, video_with_audio):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    _log_in(page, server["url"] + "/demo/", server["key"])
    page.wait_for_selector("#analyze", timeout=60_000)
    page.locator("#video-input input[type=file]").set_input_files(str(video_with_audio))
    expect(page.locator("#video-input video")).to_have_count(1, timeout=30_000)  # the upload landed
    page.click("#analyze")
    labels = label_space(LABEL_SPACE)
    expect(page.locator("#answer")).to_contain_text(re.compile("Expression: (" + "|".join(labels) + ")"),
                                                    timeout=180_000)  # fmt: skip
    overlay = page.locator("#overlay img")
    expect(overlay).to_be_visible(timeout=60_000)
    assert overlay.evaluate("img => img.naturalWidth") > 0
    chat = page.locator("#chat")
    expect(chat).to_contain_text("Reasoning")
    artifacts = Path(os.environ.get("EMOREASON_ARTIFACTS", REPO / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(artifacts / "demo.png"), full_page=True)
    shown = page.locator("#answer").inner_text().split("Expression:")[1].split()[0]

    # The API, asked the same question about the same file on the same engine (greedy), gives the same label.
    local = server["allowed"] / "demo-talk.mp4"
    shutil.copyfile(video_with_audio, local)
    messages = build_messages(local, "expr", LABEL_SPACE)
    part = messages[0]["content"][0]
    messages[0]["content"][0] = {"type": "video_url", "video_url": {"url": "file://" + part["video"]}}
    reply = client.chat.completions.create(
        model="emoreason", messages=messages, max_tokens=256, temperature=0, extra_body={"task": "expr"}
    )  # fmt: skip (the demo is greedy too)
    assert reply.model_extra["emoreason"]["label"] == shown
    page.close()


def test_the_demo_refuses_a_wrong_password(server, browser):
    from playwright.sync_api import expect

    page = browser.new_page()
    _log_in(page, server["url"] + "/demo/", "not-the-key")
    expect(page.get_by_text("Incorrect")).to_be_visible(timeout=30_000)
    assert page.locator("#analyze").count() == 0
    page.close()
