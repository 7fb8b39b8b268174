"""The web app: `create_app(root, token)` wires the pieces (each route is a few lines calling the
module that does the work). The API is described at /api/openapi.json and in the README's "tiforge web"."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from fastapi import Body, FastAPI, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware

from tiforge.web import config_form, data_preview, embeddings, files, jobs, models, runs
from tiforge.web.auth import install_same_origin_check, install_token_check
from tiforge.web.errors import ApiError, install_error_handlers
from tiforge.web.events_hub import EventHub
from tiforge.web.limits import DEFAULT_MAX_UPLOAD, BodyLimit
from tiforge.web.schema_form import form_schema


def static_dir() -> Path:
    return Path(str(resources.files("tiforge") / "web" / "static"))


def create_app(root: str | Path, token: str | None = None, hosts: list[str] | None = None,
               max_upload: int = DEFAULT_MAX_UPLOAD) -> FastAPI:
    """`root`: the folder whose runs are listed and where the UI's configs go; `token`: required on
    every request when set; `hosts`: the Host names answered (against DNS rebinding on the loopback)."""
    app = FastAPI(title="tiforge web", docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")
    app.state.root = Path(root).expanduser().resolve()
    install_error_handlers(app)
    # The last added runs first: the Host check, the token, the same-origin check, the size limits.
    app.add_middleware(BodyLimit, uploads={"/api/embeddings/inspect": max_upload})
    install_same_origin_check(app)
    install_token_check(app, token)
    if hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts)
    app.state.hub = EventHub()
    app.state.jobs = jobs.JobManager(app.state.root, app.state.hub.publish)
    _page_routes(app)
    _config_routes(app)
    _job_routes(app)
    _run_routes(app)
    _embedding_routes(app)
    _data_routes(app)
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

    @app.get("/api/config/demo")
    def demo():
        # The config `tiforge demo` trains (toy model, bundled pictures), so a new user can run the
        # demo from the browser without knowing where those live.
        from tiforge.toy.demo import demo_config  # imports the trainer: only when asked

        return {"config": demo_config("tiforge-demo")}

    @app.post("/api/config/from-yaml")
    def from_yaml(yaml: str = Body(..., embed=True)):
        return config_form.from_yaml(yaml)

    @app.post("/api/config/to-yaml")
    def to_yaml(config: dict = Body(..., embed=True)):
        answer = config_form.validate(config, preflight=False)
        _refuse_invalid(answer)
        return {"yaml": answer["yaml"]}


def _refuse_invalid(answer: dict) -> None:
    if not answer["ok"]:
        first = answer["errors"][0]
        raise ApiError(400, first["message"], first["field"], errors=answer["errors"])


def _url_maker(root: Path):
    def url_of(path: str | None) -> str | None:
        """The download address of a file inside a run folder under root."""
        if not path:
            return None
        target = Path(path).resolve()
        for folder in (target.parent, *target.parents):
            if folder == root or not folder.is_relative_to(root):
                return None
            if runs.is_run_folder(folder):
                return runs.file_url(runs.run_id(root, folder), target.relative_to(folder).as_posix())
        return None

    return url_of


def _job_routes(app: FastAPI) -> None:
    manager: jobs.JobManager = app.state.jobs
    url_of = _url_maker(app.state.root)

    def job_of(job_id: str) -> jobs.Job:
        if job_id not in manager.jobs:
            raise ApiError(404, f"no job {job_id}")
        return manager.jobs[job_id]

    @app.post("/api/jobs")
    def start(config: dict = Body(..., embed=True)):
        answer = config_form.validate(config)
        _refuse_invalid(answer)
        job = manager.submit(answer["config"])
        return {"id": job.id, "state": job.state}

    @app.get("/api/jobs")
    def listing():
        return {"jobs": [jobs.summary(j, url_of) for j in manager.jobs.values()]}

    @app.get("/api/jobs/{job_id}")
    def one(job_id: str):
        return jobs.summary(job_of(job_id), url_of)

    @app.post("/api/jobs/{job_id}/stop")
    def stop(job_id: str):
        return jobs.summary(manager.stop(job_of(job_id)), url_of)

    @app.post("/api/jobs/{job_id}/resume")
    def resume(job_id: str):
        job = job_of(job_id)
        if not job.resumable:
            raise ApiError(409, f"job {job_id} is {job.state} and has no checkpoint to resume from")
        return jobs.summary(manager.resume(job), url_of)

    @app.get("/api/events")
    def events():
        return StreamingResponse(app.state.hub.stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _run_routes(app: FastAPI) -> None:
    root: Path = app.state.root

    @app.get("/api/runs")
    def listing():
        return {"runs": [runs.summary(root, folder) for folder in runs.find_runs(root)]}

    @app.get("/api/runs/{rid:path}/embedding")
    def embedding(rid: str, layout: str = "kohya"):
        folder = files.run_folder(root, rid)
        found = runs.embeddings(folder)
        if not found:
            raise ApiError(404, f"run {rid} has no embedding yet")
        converted = embeddings.convert_to(root, found[-1], layout)
        return FileResponse(converted, filename=converted.name)

    @app.get("/api/runs/{rid:path}")
    def one(rid: str):
        return runs.details(root, files.run_folder(root, rid))

    @app.get("/api/files/{path:path}")
    def download(path: str):
        target = files.safe_file(root, path)
        headers = {"X-Content-Type-Options": "nosniff"}
        if target.suffix == ".html":  # report.html runs as a page of its own, without this server's cookie
            headers["Content-Security-Policy"] = "sandbox allow-scripts allow-popups"
        return FileResponse(target, filename=None if target.suffix in _INLINE else target.name, headers=headers)


_INLINE = {".png", ".jpg", ".jpeg", ".webp", ".html", ".txt", ".log", ".yaml", ".json", ".jsonl"}


async def _inspect_request(root: Path, request: Request) -> tuple[Path, str | None, str | None]:
    """(file, model, upload id) of an inspect request: a multipart upload, or JSON naming a file."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        async with request.form(max_files=1, max_fields=4) as form:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise ApiError(400, "no file in the upload", "file")
            upload_id, path = await run_in_threadpool(embeddings.save_upload, root, upload.filename, upload.file)
            return path, (form.get("model") or None), upload_id
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ApiError(400, "expected a JSON object")
    path = embeddings.chosen_file(root, body.get("upload_id"), body.get("path"))
    return path, body.get("model") or None, body.get("upload_id")


def _embedding_routes(app: FastAPI) -> None:
    root: Path = app.state.root

    @app.post("/api/embeddings/inspect")
    async def inspect(request: Request):
        path, model, upload_id = await _inspect_request(root, request)
        try:
            answer = await run_in_threadpool(embeddings.inspect, path, model)
        except ApiError:
            if upload_id and path.parent.name == upload_id:
                shutil.rmtree(path.parent, ignore_errors=True)  # a refused upload is not kept
            raise
        return {**answer, "upload_id": upload_id, "file": path.name}

    @app.post("/api/embeddings/convert")
    def convert(to: str = Body(...), upload_id: str | None = Body(None), path: str | None = Body(None)):
        converted = embeddings.convert_to(root, embeddings.chosen_file(root, upload_id, path), to)
        return FileResponse(converted, filename=converted.name)

    @app.post("/api/embeddings/generate")
    def generate(model: str = Body(...), prompt: str = Body(...), upload_id: str | None = Body(None),
                 path: str | None = Body(None), steps: int = Body(20, ge=1, le=150), seed: int = Body(0),
                 count: int = Body(1, ge=1, le=16)):
        source = embeddings.chosen_file(root, upload_id, path)
        gen_id, paths = embeddings.generate(root, source, model, prompt, steps, seed, count)
        return {"images": [f"/api/generated/{gen_id}/{p.name}" for p in paths]}

    @app.get("/api/generated/{gen_id}/{name}")
    def picture(gen_id: str, name: str):
        return FileResponse(embeddings.generated(root, gen_id, name))


def _data_routes(app: FastAPI) -> None:
    previews = data_preview.Previews()

    @app.post("/api/data/preview")
    def preview(config: dict = Body(..., embed=True)):
        from tiforge.config.loading import config_from_dict

        answer = config_form.validate(config, preflight=False)  # the preview reports the data's problems itself
        _refuse_invalid(answer)
        return data_preview.preview(config_from_dict(answer["config"], "form"), previews)

    @app.get("/api/data/thumb")
    def thumb(id: int, job: str):
        return Response(data_preview.thumbnail(previews.file(job, id)), media_type="image/png")

    @app.get("/api/models")
    def model_list():
        return {"models": models.local_models()}
