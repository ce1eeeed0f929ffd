"""The annotators' server around the page that app.py builds: what their browsers may fetch, and their login.

    MediaGate    ASGI middleware of the annotators' app: gradio's file routes serve the study's media only (its
                 videos and first frames, or gradio's cached copies of them: same name, same size); each video
                 fetch by a logged-in annotator is recorded in the votes store, which is what the store's play
                 gate (`VoteStore.submit`) checks. Uploads, proxies, streams and every other file are refused.
                 Media responses are not to be stored by the browser (`no-store`): a reload fetches them again.
    login(store) gradio's `auth`: an async check running the store's scrypt check (with its per-name and
                 per-address attempt limits) on threads of its own, never on the event loop; the address comes
                 from the request, through MediaGate.

No library logic here: the store decides what a fetch or a login means; this only connects gradio's requests to it.
"""
from __future__ import annotations

import contextvars
import os
from pathlib import Path

import anyio
import anyio.to_thread

ADDRESS: contextvars.ContextVar[str | None] = contextvars.ContextVar("annotator_address", default=None)
FILE_ROUTES = ("/gradio_api/file=", "/gradio_api/file/")
# gradio 6.31's routes that take or serve files other than through the file route: uploads (and recordings),
# proxies, streams, the run history's stored assets, profiling
REFUSED = ("/gradio_api/upload", "/gradio_api/process_recording", "/gradio_api/proxy=", "/gradio_api/stream/",
           "/gradio_api/run-history", "/gradio_api/runs", "/gradio_api/profiling", "/gradio_api/vibe")
LOGIN_THREADS = 2   # scrypt checks at once: a login flood takes at most these cores from the votes


class MediaGate:
    """See the module docstring. `cache`: gradio's folders of cached copies (its upload folder)."""

    def __init__(self, app, study, store, cache: list[str | Path]):
        self.app, self.study, self.store = app, study, store
        self.folders = [str(f) for f in study.media]
        self.cache = [str(Path(c).resolve()) for c in cache]
        self.videos = {v["video"] for it in study.items.values() for v in it["videos"]}
        self.frames = {it["first_frame"] for it in study.items.values()}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        ADDRESS.set((scope.get("client") or (None,))[0])
        path = scope["path"]
        if path.startswith(REFUSED):
            return await _refuse(scope, receive, send, 403, "not served to annotators")
        if path.startswith(FILE_ROUTES):
            name = self.media_name(path.split("=", 1)[1] if "=" in path else path[len(FILE_ROUTES[1]):])
            if name is None:
                return await _refuse(scope, receive, send, 404, "not a file of this study")
            user = annotator(scope)
            if name in self.videos and user is not None and scope["method"] == "GET":
                await anyio.to_thread.run_sync(self.store.record_fetch, self.study, user, name)
            send = _not_stored(send)  # the browser fetches a video again each time a page shows it (the gate)
        await self.app(scope, receive, send)

    def media_name(self, requested: str) -> str | None:
        """The study media file a file-route path names, or None: a file under the study's media folders, or a
        copy of one (same name and size) in gradio's cache."""
        path = Path(os.path.abspath(requested))
        name = path.name
        if name not in self.videos and name not in self.frames:
            return None
        if any(str(path.parent) == f for f in self.folders):
            return name
        original = self.study.video_path(name) if name in self.videos else self.study.frame_path(name)
        in_cache = any(str(path).startswith(c + os.sep) for c in self.cache)
        try:
            return name if in_cache and path.stat().st_size == original.stat().st_size else None
        except OSError:
            return None


def annotator(scope) -> str | None:
    """The logged-in user of a request: gradio's access-token cookie looked up in its own token table."""
    from starlette.requests import Request
    app = scope.get("app")
    cookies = Request(scope).cookies
    token = cookies.get(f"access-token-{app.cookie_id}") or cookies.get(f"access-token-unsecure-{app.cookie_id}")
    return app.tokens.get(token) if token else None


def _not_stored(send):
    """`send` with `Cache-Control: no-store` on the response: a video shown again (a reload, a later item) is
    fetched again, so the store's play gate sees each fetch (it counts those since the item was first served)."""
    async def sending(message):
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"]
            message = {**message, "headers": [*headers, (b"cache-control", b"no-store")]}
        await send(message)
    return sending


async def _refuse(scope, receive, send, status: int, text: str) -> None:
    from starlette.responses import PlainTextResponse
    await PlainTextResponse(text, status_code=status)(scope, receive, send)


def login(store):
    """gradio's `auth` for the annotators: the store's check (its limits, its scrypt) on a thread, awaited."""
    threads: list[anyio.CapacityLimiter] = []   # made on first use: a limiter belongs to the running event loop

    async def check(username: str, password: str) -> bool:
        if not threads:
            threads.append(anyio.CapacityLimiter(LOGIN_THREADS))
        return await anyio.to_thread.run_sync(store.check_login, username, password, ADDRESS.get(),
                                              limiter=threads[0])
    return check
