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
def playwright():
    """One Playwright for the module (a second one cannot start inside the first's event loop)."""
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (`make setup` installs Debian's package as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright):
    b = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
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


@pytest.fixture(scope="module")
def camera_browser(playwright, tmp_path_factory):
    """Chromium whose fake camera plays a real face clip (5 s of the astronaut, then 5 s without anyone, looped)
    and whose fake microphone plays speech."""
    from mllm.samples import synthetic

    folder = tmp_path_factory.mktemp("fake-camera")
    frames = synthetic.face_frames(100, size=(240, 320), absent=range(50, 100))
    clip = synthetic.write_y4m(folder / "clip.y4m", frames, fps=10)
    speech = synthetic.speech_or_tone("I am not sure how I feel about this, maybe it is fine.", 10.0)
    wav = synthetic.write_audio(folder / "speech.wav", speech)
    flags = ["--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
             f"--use-file-for-fake-video-capture={clip}", f"--use-file-for-fake-audio-capture={wav}"]  # fmt: skip
    b = playwright.chromium.launch(executable_path=CHROMIUM, args=flags)
    yield b
    b.close()


def test_the_live_tab_answers_the_camera_every_second_with_a_timeline(server, camera_browser):
    import time

    from playwright.sync_api import expect

    viewport = {"width": 1400, "height": 1000}
    context = camera_browser.new_context(permissions=["camera", "microphone"], viewport=viewport)
    page = context.new_page()
    _log_in(page, server["url"] + "/demo/", server["key"])
    page.get_by_role("tab", name="Live").click()
    page.locator("#live-camera").get_by_text("Click to Access Webcam").click()
    page.locator("#live-camera").get_by_text("Record").click()
    page.locator("#live-microphone").get_by_text("Record").click()
    labels = label_space(LABEL_SPACE)
    shown = page.locator("#live-answer")
    answer = re.compile(r"Expression: (" + "|".join(labels) + r")\s*([\d.]+)-([\d.]+) s · (face seen|no face)")
    expect(shown).to_contain_text(answer, timeout=180_000)
    # The answer updates in place, about once a second: windows end later and later, and the face comes and goes
    # with the clip (5 s of a face, 5 s without).
    seen, deadline = {}, time.monotonic() + 150
    while time.monotonic() < deadline and not (len(seen) >= 4 and len({m[3] for m in seen.values()}) == 2):
        match = answer.search(shown.inner_text())
        if match:
            seen[float(match[3])] = match.groups()
        time.sleep(0.25)
    ends = sorted(seen)
    assert len(ends) >= 4, seen
    assert {m[3] for m in seen.values()} == {"face seen", "no face"}, seen
    assert all(abs(b - a - round(b - a)) < 1e-6 for a, b in zip(ends, ends[1:], strict=False)), ends  # on the hop grid
    assert all(abs(float(seen[e][1]) - (e - 2.0)) < 0.051 for e in ends), seen  # two-second windows
    expect(page.locator("#live-reasoning")).to_contain_text("Reasoning")
    timeline = page.locator("#live-timeline img")
    expect(timeline).to_be_visible(timeout=30_000)
    assert timeline.evaluate("img => img.naturalWidth") > 900
    artifacts = Path(os.environ.get("EMOREASON_ARTIFACTS", REPO / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(artifacts / "demo-live.png"), full_page=True)
    context.close()
