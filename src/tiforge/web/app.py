"""The web app: `create_app(root, token)` wires the pieces (each route is a few lines calling the
module that does the work); see docs in /api and the README's "tiforge web"."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import Body, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware

from tiforge.web import config_form
from tiforge.web.auth import install_token_check
from tiforge.web.errors import ApiError, install_error_handlers
from tiforge.web.schema_form import form_schema


def static_dir() -> Path:
    return Path(str(resources.files("tiforge") / "web" / "static"))


def create_app(root: str | Path, token: str | None = None, hosts: list[str] | None = None) -> FastAPI:
    """`root`: the folder whose runs are listed and where the UI's configs go; `token`: required on
    every request when set; `hosts`: the Host names answered (against DNS rebinding on the loopback)."""
    app = FastAPI(title="tiforge web", docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")
    app.state.root = Path(root).expanduser().resolve()
    install_error_handlers(app)
    install_token_check(app, token)
    if hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts)
    _page_routes(app)
    _config_routes(app)
    return app


def _page_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def index():
        page = static_dir() / "index.html"
        if not page.is_file():
            raise ApiError(404, "the web page is not installed (src/tiforge/web/static/index.html)")
        return FileResponse(page)

    app.mount("/static", StaticFiles(directory=static_dir(), check_dir=False), name="static")


def _config_routes(app: FastAPI) -> None:
    @app.get("/api/schema")
    def schema():
        return form_schema()

    @app.post("/api/config/validate")
    def validate(config: dict = Body(..., embed=True)):
        answer = config_form.validate(config)
        answer.pop("config")
        return answer

    @app.post("/api/config/from-yaml")
    def from_yaml(yaml: str = Body(..., embed=True)):
        return config_form.from_yaml(yaml)

    @app.post("/api/config/to-yaml")
    def to_yaml(config: dict = Body(..., embed=True)):
        answer = config_form.validate(config)
        if not answer["ok"]:
            first = answer["errors"][0]
            raise ApiError(400, first["message"], first["field"], errors=answer["errors"])
        return {"yaml": answer["yaml"]}
