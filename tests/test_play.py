"""genie.play: the session behind the page, the terminal fallback, and the page end to end in Chromium."""

from __future__ import annotations

import io
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from genie.models import Genie
from genie.models.sampling import SamplingConfig
from genie.play import PlaySession, ansi_frame, play_terminal
from tiny import SIZE, tiny_models


def session() -> PlaySession:
    tok, lam, dyn = tiny_models()
    genie = Genie(tok, dyn, lam, SamplingConfig(steps=2, temperature=1.0, context_frames=4))
    prompt = np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    return PlaySession(genie, prompt, seed=0)


def test_session_step_undo_reset_and_gif() -> None:
    s = session()
    first = s.frame
    assert first.shape == (SIZE, SIZE, 3) and s.fps is None
    a = s.step(1)
    b = s.step(2)
    assert s.actions == [1, 2] and s.fps is not None and s.fps > 0
    assert np.array_equal(s.undo(), a)  # undo replays the session without the last action: exact
    assert s.actions == [1]
    assert np.array_equal(s.step(2), b)  # same seed, same actions: the same world
    assert np.array_equal(s.reset(), first) and s.actions == []
    with pytest.raises(ValueError, match=r"in \[0, 4\)"):
        s.step(4)
    s.step(0)
    with Image.open(io.BytesIO(s.gif_bytes(scale=2))) as gif:
        assert gif.n_frames == 2 and gif.size == (2 * SIZE, 2 * SIZE)
    state = s.state()
    assert state["frame"].startswith("data:image/png;base64,") and state["num_actions"] == 4


def test_session_takes_an_uploaded_prompt_of_any_size() -> None:
    s = session()
    buf = io.BytesIO()
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(buf, format="PNG")
    frame, note = s.set_prompt_image(buf.getvalue())
    assert frame.shape == (SIZE, SIZE, 3) and note is not None and s.actions == []
    with pytest.raises(ValueError, match="cannot read the uploaded image"):
        s.set_prompt_image(b"garbage")


def test_terminal_fallback_plays_from_typed_commands() -> None:
    s = session()
    commands = iter(["1", "3", "u", "9", "x", "r", "2", "q"])
    out: list[str] = []
    play_terminal(s, read=lambda prompt: next(commands), write=out.append)
    assert s.actions == [2]
    assert sum("unknown input" in line for line in out) == 2  # 9 is out of range, x is not an action
    assert "\u2580" in ansi_frame(s.frame)


# -- the page in a real browser -----------------------------------------------------------------------------
def _browser() -> tuple[str, str] | None:
    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (chrome, driver) if chrome and driver else None


@pytest.fixture
def server() -> Iterator[str]:
    uvicorn = pytest.importorskip("uvicorn", reason="the play extra (starlette, uvicorn) is not installed")
    from genie.play import make_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(make_app(session()), host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "the play server did not start"
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.mark.slow
def test_play_page_end_to_end_in_headless_chromium(server: str) -> None:
    found = _browser()
    if found is None:
        pytest.skip("no Chromium + chromedriver on this machine (make test installs Debian's when it can)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (dev extra) is not installed")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chrome, driver_path = found
    options = webdriver.ChromeOptions()
    options.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        driver.get(server)
        wait = WebDriverWait(driver, 30)
        frame = driver.find_element(By.ID, "frame")
        wait.until(lambda d: (frame.get_attribute("src") or "").startswith("data:image/png"))
        first = frame.get_attribute("src")
        status: Any = driver.find_element(By.ID, "status")
        assert status.get_attribute("data-step") == "0"
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#actions button")) == 4)
        received = int(frame.get_attribute("data-frames") or 0)
        driver.find_element(By.ID, "action-2").click()  # click an action: a new frame arrives
        wait.until(lambda d: status.get_attribute("data-step") == "1")
        assert int(frame.get_attribute("data-frames") or 0) == received + 1
        assert "frames/s" in status.text
        driver.find_element(By.TAG_NAME, "body").send_keys("2")  # key "2" = action 1
        wait.until(lambda d: status.get_attribute("data-step") == "2")
        driver.find_element(By.ID, "undo").click()
        wait.until(lambda d: status.get_attribute("data-step") == "1")
        driver.find_element(By.ID, "reset").click()
        wait.until(lambda d: status.get_attribute("data-step") == "0")
        assert frame.get_attribute("src") == first  # reset: the prompt again
    finally:
        driver.quit()


# -- bad input: images, HTTP bodies, non-integer actions ---------------------------------------------------
def _bomb_png() -> bytes:
    """A small PNG whose header declares 20000 x 20000 pixels (Pillow's limit: ~179M)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def test_a_decompression_bomb_prompt_is_a_clear_error(tmp_path: Any) -> None:
    from genie.media import load_image

    s = session()
    with pytest.raises(ValueError, match=r"cannot read the uploaded image .*pixels"):
        s.set_prompt_image(_bomb_png())
    path = tmp_path / "bomb.png"
    path.write_bytes(_bomb_png())
    with pytest.raises(ValueError, match=r"cannot read prompt image .*bomb\.png"):
        load_image(path, (SIZE, SIZE))


@pytest.mark.parametrize("action", [1.7, 2.0, True, "1", None])
def test_session_refuses_non_integer_actions(action: Any) -> None:
    s = session()
    with pytest.raises(ValueError, match="integer"):
        s.step(action)
    assert s.actions == []


def _post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.parametrize(
    "body",
    [b'{"action": Infinity}', b'{"action": 1e400}', b'{"action": NaN}', b'{"action": 1.7}', b'{"action": true}',
     b'{"action": "1"}', b"[" * 500 + b"]" * 500, b"[1]", b'{"act": 1}', b"not json", b""],
)  # fmt: skip
def test_step_answers_400_with_one_line_to_a_bad_body(server: str, body: bytes) -> None:
    status, answer = _post(server + "step", body)
    assert status == 400 and "\n" not in answer["error"] and "action" in answer["error"]
    ok, state = _post(server + "step", b'{"action": 1}')  # the server goes on
    assert ok == 200 and state["actions"][-1] == 1


def test_deeply_nested_json_is_refused_not_a_500() -> None:
    from genie.play import parse_action_body

    with pytest.raises(ValueError, match="nested too deeply"):
        parse_action_body(b"[" * 100_000 + b"]" * 100_000)
    assert parse_action_body(b'{"action": 3}') == 3


@pytest.mark.parametrize(("route", "limit"), [("/step", "MAX_STEP_BODY"), ("/prompt", "MAX_PROMPT_BODY")])
def test_a_body_over_the_limit_is_413_unread(server: str, route: str, limit: str) -> None:
    import http.client
    import json
    from urllib.parse import urlparse

    import genie.play

    size = getattr(genie.play, limit) + 1
    where = urlparse(server)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    conn.putrequest("POST", route)
    conn.putheader("Content-Length", str(size))  # declared, never sent: the server must not wait for it
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and "limit" in json.loads(response.read())["error"]
    conn.close()
    status, _ = _post(server + "step", b"x" * (genie.play.MAX_STEP_BODY + 1))  # sent, too long
    assert status == 413
