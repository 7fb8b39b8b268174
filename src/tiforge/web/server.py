"""`tiforge web`: start the server, print its address (with the token where one is needed) and open
the browser where there is one."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import threading
import webbrowser
from pathlib import Path

from tiforge.web.auth import LOCAL_HOSTS, token_for_host


def address(host: str, port: int, token: str | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def browser_available() -> bool:
    """A graphical session (or macOS/Windows), or a browser named in $BROWSER."""
    if sys.platform in ("darwin", "win32") or os.environ.get("BROWSER"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) and any(
        shutil.which(b) for b in ("xdg-open", "firefox", "chromium", "google-chrome", "sensible-browser"))


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """Ends the open event streams when asked to stop, so that the shutdown need not wait for them."""

        on_exit = staticmethod(lambda: None)

        def handle_exit(self, sig, frame) -> None:
            self.on_exit()
            super().handle_exit(sig, frame)

    return Server


def serve(host: str = "127.0.0.1", port: int = 7860, root: str | Path = ".", open_browser: bool = True) -> None:
    import uvicorn

    from tiforge.web.app import create_app

    token = token_for_host(host)
    hosts = [*LOCAL_HOSTS, "[::1]"] if token is None else None
    app = create_app(root, token, hosts=hosts)
    url = address("127.0.0.1" if host in ("0.0.0.0", "::") else host, port, token)
    print(f"tiforge web: serving {Path(root).resolve()} at {url}", flush=True)
    if host in ("0.0.0.0", "::"):  # every interface: other machines use this one's name
        print(f"  from other machines: {address(socket.gethostname(), port, token)}", flush=True)
    if token:
        print("  every request needs this token (the link above sets it in the browser); keep it private",
              flush=True)
    if open_browser and browser_available():
        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    server = _server_class()(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5))
    server.on_exit = app.state.hub.close
    try:
        server.run()
    finally:
        app.state.jobs.shutdown()  # a running training saves a checkpoint and stops, as on Ctrl-C
