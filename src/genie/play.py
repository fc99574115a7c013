"""Play a trained world: ``python -m genie.play checkpoint=PATH [prompt=IMAGE] [port=7860]``.

Serves a local page (127.0.0.1 by default; the ``play`` extra: Starlette + uvicorn) showing the current
frame large, one button per latent action (keys 1…9 too), prompt-image upload, reset, undo, a
frames-per-second readout and a download of the session as a GIF. ``terminal=true`` plays in the terminal
instead (no extra needed): type action ids, ``u`` to undo, ``r`` to reset, ``q`` to quit.

:class:`PlaySession` is the state behind both (pure torch + PIL): the prompt, the actions taken and the
frames; undo replays the session minus its last action under the same seed, so it is exact.
"""

from __future__ import annotations

import base64
import io
import json
import time
from typing import Any

import numpy as np
import torch
from PIL import Image

from genie.media import gif_bytes, read_image, to_uint8_frames
from genie.models.genie import Genie


class PlaySession:
    """One interactive world: ``reset(frame)``, ``step(action)``, ``undo()``, ``frames``, ``gif_bytes()``."""

    def __init__(self, genie: Genie, prompt: np.ndarray, seed: int = 0) -> None:
        self.genie, self.seed = genie, seed
        self.actions: list[int] = []
        self.last_step_seconds: float | None = None
        self.reset(prompt)

    @property
    def num_actions(self) -> int:
        return self.genie.num_actions

    def reset(self, prompt: np.ndarray | None = None) -> np.ndarray:
        """Start again from ``prompt`` (``frame_HW3`` uint8 at the model's size) or the current prompt."""
        if prompt is not None:
            self.prompt = np.asarray(prompt, dtype=np.uint8)
        self.actions = []
        self.genie.reset(self.prompt, seed=self.seed)
        self.last_step_seconds = None
        return self.frame

    def set_prompt_image(self, data: bytes) -> tuple[np.ndarray, str | None]:
        """A new prompt from image file bytes (any size: resized and centre-cropped), then reset."""
        frame, note = read_image(data, self.genie.image_size, "the uploaded image")
        return self.reset(frame), note

    def step(self, action: int) -> np.ndarray:
        if isinstance(action, bool) or not isinstance(action, int | np.integer):
            raise ValueError(f"an action is an integer id in [0, {self.num_actions}), got {action!r}")
        if not 0 <= int(action) < self.num_actions:
            raise ValueError(f"action must be in [0, {self.num_actions}), got {action}")
        start = time.perf_counter()
        self.genie.step(int(action))
        self.last_step_seconds = time.perf_counter() - start
        self.actions.append(int(action))
        return self.frame

    def undo(self) -> np.ndarray:
        """Take back the last action: replay the session without it (same seed, so the same frames)."""
        if not self.actions:
            return self.frame
        keep = self.actions[:-1]
        self.genie.reset(self.prompt, seed=self.seed)
        for a in keep:
            self.genie.step(a)
        self.actions = keep
        return self.frame

    @property
    def frame(self) -> np.ndarray:
        return to_uint8_frames(self.genie.frames[0, -1:])[0]

    @property
    def fps(self) -> float | None:
        return None if not self.last_step_seconds else 1.0 / self.last_step_seconds

    def gif_bytes(self, scale: int = 4, fps: int = 5) -> bytes:
        frames = to_uint8_frames(self.genie.frames[0])
        return gif_bytes(frames.repeat(scale, axis=1).repeat(scale, axis=2), fps)

    def state(self, note: str | None = None) -> dict[str, Any]:
        return {
            "frame": png_data_url(self.frame),
            "step": len(self.actions),
            "actions": self.actions,
            "num_actions": self.num_actions,
            "fps": self.fps,
            "note": note,
        }


def png_data_url(frame: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


KEYS = "123456789"
PLAY_EXTRA = (
    "the play page needs the play extra: pip install 'genie-world-model[play]' "
    "(or play in the terminal with terminal=true)"
)

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>genie — play</title>
<style>
 body { font-family: system-ui, sans-serif; background: #111; color: #eee; margin: 2em; }
 #frame { width: 512px; image-rendering: pixelated; border: 1px solid #444; display: block; }
 button { font-size: 1.1em; margin: 0.2em; padding: 0.4em 0.8em; }
 #status { margin: 0.6em 0; font-family: monospace; }
</style></head>
<body>
<h1>genie</h1>
<img id="frame" alt="current frame">
<div id="status">loading…</div>
<div id="actions"></div>
<div>
 <button id="undo">undo (u)</button> <button id="reset">reset (r)</button>
 <a id="download" href="/session.gif" download="session.gif"><button>download GIF</button></a>
 <label>prompt image <input id="upload" type="file" accept="image/*"></label>
</div>
<p>Keys 1–9 take the latent actions.</p>
<script>
const keys = "__KEYS__";
let busy = false, frames = 0;
function show(s) {
  const img = document.getElementById("frame");
  img.src = s.frame;
  img.dataset.frames = ++frames;  // frames received from the server
  const fps = s.fps === null ? "–" : s.fps.toFixed(1);
  document.getElementById("status").textContent =
    "step " + s.step + " · " + fps + " frames/s" + (s.note ? " · " + s.note : "");
  document.getElementById("status").dataset.step = s.step;
  const box = document.getElementById("actions");
  if (box.children.length !== s.num_actions) {
    box.innerHTML = "";
    for (let a = 0; a < s.num_actions; a++) {
      const b = document.createElement("button");
      b.textContent = "action " + a + (a < keys.length ? " (" + keys[a] + ")" : "");
      b.id = "action-" + a;
      b.onclick = () => act(a);
      box.appendChild(b);
    }
  }
}
async function call(path, body) {
  if (busy) return;
  busy = true;
  try {
    const r = await fetch(path, {method: body === undefined ? "GET" : "POST", body: body});
    const s = await r.json();
    if (!r.ok) { document.getElementById("status").textContent = "error: " + s.error; return; }
    show(s);
  } finally { busy = false; }
}
function act(a) { return call("/step", JSON.stringify({action: a})); }
document.getElementById("undo").onclick = () => call("/undo", "");
document.getElementById("reset").onclick = () => call("/reset", "");
document.getElementById("upload").onchange = (e) => {
  const f = e.target.files[0]; if (f) call("/prompt", f);
};
document.addEventListener("keydown", (e) => {
  const i = keys.indexOf(e.key);
  if (i >= 0) act(i); else if (e.key === "u") call("/undo", ""); else if (e.key === "r") call("/reset", "");
});
call("/state");
</script>
</body></html>
"""


MAX_STEP_BODY = 1024  # bytes: {"action": 12} needs a dozen
MAX_PROMPT_BODY = 32 << 20  # an uploaded prompt image


class BodyTooLarge(Exception):
    """A request body over its route's limit (answered 413)."""


async def read_body(request: Any, limit: int) -> bytes:
    """The request's body, refused past ``limit`` bytes without reading the rest."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"request body of {declared} bytes is over the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _no_number(text: str) -> Any:
    raise ValueError(f"{text} is not an action id")


def parse_action_body(data: bytes) -> int:
    """The action of a ``/step`` body ``{"action": <id>}``: an integer, never a float, bool or string
    (``1.7`` or ``true`` are refused, not taken as action 1); a one-line ``ValueError`` otherwise."""
    usage = 'send {"action": <integer id>}'
    try:
        body = json.loads(data, parse_float=_no_number, parse_constant=_no_number)
    except RecursionError:
        raise ValueError(f"the body is nested too deeply; {usage}") from None
    except ValueError as err:  # (json.JSONDecodeError too)
        raise ValueError(f"the body is not an action ({str(err).splitlines()[0]}); {usage}") from None
    action = body.get("action") if isinstance(body, dict) else None
    if isinstance(action, bool) or not isinstance(action, int):
        raise ValueError(f"the action must be an integer id, got {json.dumps(action)[:40]}; {usage}")
    return action


def make_app(session: PlaySession) -> Any:
    """The Starlette app serving ``session`` (one user; requests are handled one at a time)."""
    try:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import HTMLResponse, JSONResponse, Response
        from starlette.routing import Route
    except ImportError as err:
        raise ImportError(PLAY_EXTRA) from err
    import anyio

    lock = anyio.Lock()

    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE.replace("__KEYS__", KEYS[: session.num_actions]))

    async def state(request: Request) -> Response:
        return JSONResponse(session.state())

    async def step(request: Request) -> Response:
        try:
            action = parse_action_body(await read_body(request, MAX_STEP_BODY))
        except ValueError as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        except BodyTooLarge as err:
            return JSONResponse({"error": str(err)}, status_code=413)
        async with lock:
            try:
                await anyio.to_thread.run_sync(session.step, action)
            except ValueError as err:
                return JSONResponse({"error": str(err)}, status_code=400)
            return JSONResponse(session.state())

    async def undo(request: Request) -> Response:
        async with lock:
            await anyio.to_thread.run_sync(session.undo)
            return JSONResponse(session.state())

    async def reset(request: Request) -> Response:
        async with lock:
            await anyio.to_thread.run_sync(session.reset)
            return JSONResponse(session.state())

    async def prompt(request: Request) -> Response:
        try:
            data = await read_body(request, MAX_PROMPT_BODY)
        except BodyTooLarge as err:
            return JSONResponse({"error": str(err)}, status_code=413)
        async with lock:
            try:
                _, note = await anyio.to_thread.run_sync(session.set_prompt_image, data)
            except ValueError as err:
                return JSONResponse({"error": str(err)}, status_code=400)
            return JSONResponse(session.state(note))

    async def gif(request: Request) -> Response:
        async with lock:
            data = await anyio.to_thread.run_sync(session.gif_bytes)
        return Response(
            data, media_type="image/gif", headers={"Content-Disposition": "attachment; filename=session.gif"}
        )

    return Starlette(
        routes=[
            Route("/", page),
            Route("/state", state),
            Route("/step", step, methods=["POST"]),
            Route("/undo", undo, methods=["POST"]),
            Route("/reset", reset, methods=["POST"]),
            Route("/prompt", prompt, methods=["POST"]),
            Route("/session.gif", gif),
        ]
    )


def serve(session: PlaySession, host: str = "127.0.0.1", port: int = 7860) -> None:
    try:
        import uvicorn
    except ImportError as err:
        raise ImportError(PLAY_EXTRA) from err
    app = make_app(session)
    print(f"[genie] play at http://{host}:{port}/  (Ctrl-C to stop)")
    uvicorn.run(app, host=host, port=port, log_level="warning")


# -- terminal fallback ------------------------------------------------------------------------------------
def ansi_frame(frame: np.ndarray, width: int = 64) -> str:
    """A frame as 24-bit-colour half blocks (two pixel rows per text row)."""
    h, w = frame.shape[:2]
    if w > width:
        step = w / width
        cols = (np.arange(width) * step).astype(int)
        rows = (np.arange(int(h / step) // 2 * 2) * step).astype(int)
        frame = frame[rows][:, cols]
    if frame.shape[0] % 2:
        frame = frame[:-1]
    lines = []
    for top, bottom in zip(frame[0::2], frame[1::2]):
        cells = [
            f"\x1b[38;2;{t[0]};{t[1]};{t[2]}m\x1b[48;2;{b[0]};{b[1]};{b[2]}m\u2580"
            for t, b in zip(top, bottom)
        ]
        lines.append("".join(cells) + "\x1b[0m")
    return "\n".join(lines)


def play_terminal(session: PlaySession, read: Any = input, write: Any = print) -> None:
    """Type an action id (0…|A|-1) and Enter; ``u`` undo, ``r`` reset, ``q`` quit."""
    write(ansi_frame(session.frame))
    while True:
        try:
            cmd = read(f"action 0-{session.num_actions - 1}, u(ndo), r(eset), q(uit)> ").strip().lower()
        except EOFError:
            return
        if cmd in ("q", "quit", "exit"):
            return
        try:
            if cmd == "u":
                frame = session.undo()
            elif cmd == "r":
                frame = session.reset()
            else:
                frame = session.step(int(cmd))
        except ValueError:
            write(f"unknown input {cmd!r}: type an action id in [0, {session.num_actions}), u, r or q")
            continue
        fps = f"{session.fps:.1f} frames/s" if session.fps else ""
        write(ansi_frame(frame))
        write(f"step {len(session.actions)} {fps}")


def command(cfg: Any) -> None:
    from genie.generate import genie_and_prompt

    genie, frame = genie_and_prompt(cfg)
    session = PlaySession(genie, frame, seed=cfg.seed)
    if cfg.terminal:
        play_terminal(session)
    else:
        serve(session, cfg.host, cfg.port)


def main() -> None:
    from genie.config import hydra_entry

    torch.set_grad_enabled(False)
    hydra_entry("play", command, also=(RuntimeError,))()


if __name__ == "__main__":
    main()
