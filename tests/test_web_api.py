"""`tiforge web`'s HTTP API: the form schema and validation, the access token, safe downloads and
uploads, the job queue, server-sent events, and one real tiny training through the API."""

from __future__ import annotations

import io
import json
import os
import pickle
import socket
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from tiforge.web.app import create_app  # noqa: E402

TOKEN = "s3cret-token"


def make_run(root: Path, name: str = "runs/2026-01-01_00-00-00") -> Path:
    """A run folder as tiforge writes it: config, log, metrics, a validation grid, an embedding."""
    run = root / name
    (run / "validation" / "final").mkdir(parents=True)
    (run / "config.yaml").write_text("type: SD_TEXTUAL_INVERSION\nmodel: x\n")
    (run / "train.log").write_text("INFO started\n")
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0 / s, "lr": 1e-3, "seconds": 0.1}) + "\n"
                                               for s in (1, 2, 3)) + '{"step": 4, "lo')  # last line cut short
    (run / "validation" / "final" / "grid.png").write_bytes(b"\x89PNG fake")
    (run / "thing.safetensors").write_bytes(b"not really")
    return run


@pytest.fixture
def root(tmp_path) -> Path:
    make_run(tmp_path / "root")
    (tmp_path / "secret.txt").write_text("TOP SECRET")
    return tmp_path / "root"


@pytest.fixture
def client(root) -> TestClient:
    return TestClient(create_app(root))


# ---------------------------------------------------------------------------------- the form


def test_schema_has_every_config_field_grouped_essentials_first(client):
    from tiforge.config.schema import SdxlTextualInversionConfig

    groups = client.get("/api/schema").json()["groups"]
    assert groups[0]["title"] == "Essentials" and not groups[0]["folded"]
    assert groups[-1]["title"] == "Advanced" and groups[-1]["folded"]
    fields = {f["path"]: f for g in groups for f in g["fields"]}
    top = {n for n in SdxlTextualInversionConfig.model_fields if n not in ("optimizer", "data_loader")}
    assert top <= set(fields)
    assert {"optimizer.learning_rate", "data_loader.dataset.dataset_dir", "data_loader.caption_preset"} <= set(fields)
    assert fields["model"]["required"] and fields["placeholder_token"]["required"]
    assert fields["save_format"]["kind"] == "choice" and "kohya" in fields["save_format"]["choices"]
    assert fields["max_train_steps"]["kind"] == "integer" and fields["optimizer.learning_rate"]["kind"] == "number"
    assert fields["lr_scheduler_args"]["kind"] == "yaml" and fields["validation_prompts"]["kind"] == "list"
    assert "IMAGE_CAPTION_DIR_DATASET" in fields["data_loader.dataset.type"]["choices"]
    assert "Encode every picture once" in fields["cache_vae_outputs"]["help"]


def tiny_form(tmp_path: Path, **values) -> dict:
    """A form that passes the start's checks too: the toy model, and a picture in tmp_path (when it exists)."""
    from PIL import Image

    from tiforge.toy.model import toy_model_dir

    if tmp_path.is_dir() and not (tmp_path / "one.png").exists():
        Image.new("RGB", (32, 32), "purple").save(tmp_path / "one.png")
    return {"model": str(toy_model_dir("sd")), "placeholder_token": "<t>", "initializer_token": "toy",
            "base_output_dir": "out", "max_train_steps": 2, "data_loader.dataset.dataset_dir": str(tmp_path),
            "data_loader.caption_preset": "object", **values}


def test_a_bad_field_is_named_with_the_configs_own_message_never_a_500(client, tmp_path):
    answer = client.post("/api/config/validate",
                         json={"config": tiny_form(tmp_path, **{"optimizer.learning_rate": "abc",
                                                                "data_loader.resolution": 33})}).json()
    assert not answer["ok"] and answer["yaml"] is None
    by_field = {e["field"]: e["message"] for e in answer["errors"]}
    assert "valid number" in by_field["optimizer.learning_rate"]
    assert "multiple of 8" in by_field["data_loader.resolution"]
    cross = client.post("/api/config/validate", json={"config": tiny_form(tmp_path, max_train_epochs=3)}).json()
    assert cross["errors"][0]["field"] == "max_train_steps" and "both are set" in cross["errors"][0]["message"]
    for body in ({"config": "nonsense"}, {"nothing": 1}, [1, 2]):
        r = client.post("/api/config/validate", json=body)
        assert r.status_code == 400 and "error" in r.json()
    r = client.post("/api/config/validate", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"
    r = client.post("/api/jobs", json={"config": tiny_form(tmp_path, num_vectors=0)})
    assert r.status_code == 400 and r.json()["field"] == "num_vectors"


def test_a_valid_form_gives_yaml_that_tiforge_train_loads_unchanged(client, tmp_path):
    from tiforge.config.loading import config_from_dict

    import yaml

    answer = client.post("/api/config/validate", json={"config": tiny_form(tmp_path)}).json()
    assert answer["ok"] and answer["family"] == "sd" and answer["errors"] == []
    saved = client.post("/api/config/to-yaml", json={"config": tiny_form(tmp_path)}).json()["yaml"]
    config = config_from_dict(yaml.safe_load(saved))
    assert config.placeholder_token == "<t>" and config.data_loader.dataset.dataset_dir == str(tmp_path)
    back = client.post("/api/config/from-yaml", json={"yaml": saved}).json()
    assert back["errors"] == [] and back["config"]["max_train_steps"] == 2


def test_the_demo_fills_the_form_with_tiforge_demos_valid_config(client):
    from tiforge.toy.demo import TOKEN, demo_images_dir

    demo = client.get("/api/config/demo").json()["config"]
    answer = client.post("/api/config/validate", json={"config": demo}).json()
    assert answer["ok"] and answer["errors"] == [] and answer["family"] == "sd"
    assert demo["placeholder_token"] == TOKEN
    assert demo["data_loader"]["dataset"]["dataset_dir"] == str(demo_images_dir())


def test_what_the_training_would_refuse_at_its_start_is_refused_by_the_form(client, tmp_path):
    """Start stays disabled for a config that would fail in its first seconds, each problem under its field."""
    from tiforge.toy.demo import demo_config

    def answer(**changes):
        config = demo_config(str(tmp_path / "out"))
        for dotted, value in changes.items():
            *parents, last = dotted.split("__")
            node = config
            for key in parents:
                node = node[key]
            node[last] = value
        return client.post("/api/config/validate", json={"config": config}).json()

    assert answer()["ok"]
    (tmp_path / "empty").mkdir()
    cases = {"data_loader.dataset.dataset_dir": [dict(data_loader__dataset__dataset_dir=str(tmp_path / "nowhere")),
                                                 dict(data_loader__dataset__dataset_dir=str(tmp_path / "empty"))],
             "initializer_token": [dict(initializer_token="red dog")],
             "placeholder_token": [dict(placeholder_token="dog")],
             "model": [dict(model=str(tmp_path / "no-model")), dict(model=str(tmp_path / "empty"))]}
    for field, changes in cases.items():
        for change in changes:
            got = answer(**change)
            assert not got["ok"] and [e["field"] for e in got["errors"]] == [field], (change, got["errors"])
    # Saving YAML does not ask for the data to be on this machine (the file may be for another one).
    config = demo_config(str(tmp_path / "out"))
    config["data_loader"]["dataset"]["dataset_dir"] = str(tmp_path / "nowhere")
    assert client.post("/api/config/to-yaml", json={"config": config}).status_code == 200
    assert client.post("/api/jobs", json={"config": config}).status_code == 400


def test_the_family_follows_the_chosen_model(client, tmp_path):
    from tiforge.toy.model import toy_model_dir

    answer = client.post("/api/config/validate", json={"config": tiny_form(tmp_path, model=str(toy_model_dir("sdxl")))})
    assert answer.json()["family"] == "sdxl" and "type: SDXL_TEXTUAL_INVERSION" in answer.json()["yaml"]
    sd = client.post("/api/config/validate", json={"config": tiny_form(tmp_path, model=str(toy_model_dir("sd")))})
    assert sd.json()["family"] == "sd"


def test_an_invoke_training_yaml_loads_as_it_is(client):
    from importlib import resources

    text = (resources.files("tiforge") / "assets" / "example_config.yaml").read_text()
    answer = client.post("/api/config/from-yaml", json={"yaml": text}).json()
    # Every field is read as it is; only the example's placeholder data folder is not on this machine.
    assert answer["config"]["type"] == "SD_TEXTUAL_INVERSION"
    assert [e["field"] for e in answer["errors"]] == ["data_loader.dataset.dataset_dir"]
    bad = client.post("/api/config/from-yaml", json={"yaml": "a: [unclosed"}).json()
    assert "not valid YAML" in bad["errors"][0]["message"]


def test_data_preview_shows_captions_as_trained_tokens_warnings_and_bad_files(client, tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_images

    pictures = make_images(tmp_path / "pictures", n=3, captions=["a photo of <t> in red", "just a circle"])
    (pictures / "broken.png").write_bytes(b"not a picture")
    (pictures / "broken.txt").write_text("<t>")
    form = tiny_form(tmp_path, **{"data_loader.dataset.dataset_dir": str(pictures), "data_loader.caption_preset": "",
                                  "data_loader.dataset.type": "IMAGE_CAPTION_DIR_DATASET", "data_loader.resolution": 32})
    answer = client.post("/api/data/preview", json={"config": form}).json()
    assert answer["count"] == 3 and [b["file"] for b in answer["bad_files"]] == ["broken.png"]
    first = next(i for i in answer["items"] if i["file"] == "img_0.png")
    assert first["caption"] == "a photo of <t> in red"
    marked = [t["text"] for t in first["tokens"] if t["placeholder"]]
    assert marked == ["<t>"] and first["tokens"][0]["id"] == 49406
    assert any("do not contain the placeholder" in w and "img_1.png" in w for w in answer["warnings"])
    thumb = client.get(first["image"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    preview_id = first["image"].split("job=")[1]
    assert client.get(f"/api/data/thumb?id=99&job={preview_id}").status_code == 404
    missing = client.post("/api/data/preview", json={"config": tiny_form(tmp_path / "nowhere")})
    assert missing.status_code == 400 and missing.json()["field"] == "data_loader.dataset"


def test_the_model_list_offers_the_toy_models_and_the_console_uis_folders(client, tmp_path, monkeypatch):
    folder = tmp_path / "models" / "my-sd"
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionXLPipeline"}')
    monkeypatch.setenv("TIFORGE_MODEL_DIRS", str(tmp_path / "models"))
    found = client.get("/api/models").json()["models"]
    assert {"name": "my-sd", "path": str(folder), "family": "sdxl"} in found
    assert {m["family"] for m in found if "toy" in m["name"]} == {"sd", "sdxl"}


# ---------------------------------------------------------------------------------- the token


def test_without_the_token_every_request_is_refused_when_bound_beyond_localhost(root):
    c = TestClient(create_app(root, token=TOKEN))
    for url in ("/", "/static/app.js", "/api/schema", "/api/jobs", "/api/runs", "/api/events",
                "/api/files/runs/2026-01-01_00-00-00/config.yaml"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Cookie": "tiforge_token=wrong"}):
            r = c.get(url, headers=headers)
            assert r.status_code == 403 and "token" in r.json()["error"], (url, headers)
    r = c.post("/api/config/validate", json={"config": {}}, params={"token": "wrong"})
    assert r.status_code == 403
    r = c.post("/api/embeddings/inspect", files={"file": ("big.safetensors", b"0" * (51 * 2**20))})
    assert r.status_code == 403  # the token is checked before anything else, the upload limit included


def test_the_token_is_accepted_by_query_header_or_the_cookie_the_page_sets(root):
    c = TestClient(create_app(root, token=TOKEN))
    assert c.get("/api/schema", params={"token": TOKEN}).status_code == 200
    assert c.get("/api/schema", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    first = c.get("/", params={"token": TOKEN})  # the printed address
    assert first.status_code != 403
    cookie = first.headers["set-cookie"]
    assert "tiforge_token=" in cookie and "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert c.get("/api/runs").status_code == 200  # the client kept the cookie
    assert c.get("/api/files/runs/2026-01-01_00-00-00/config.yaml").status_code == 200


def test_on_localhost_other_host_names_are_refused(root):
    c = TestClient(create_app(root, hosts=["127.0.0.1", "localhost"]), base_url="http://localhost")
    assert c.get("/api/schema").status_code == 200
    assert c.get("/api/schema", headers={"host": "attacker.example"}).status_code == 400


def test_tiforge_web_binds_localhost_without_a_token_and_anything_else_with_one(monkeypatch):
    from tiforge.frontends.cli import main
    from tiforge.web import server

    assert server.token_for_host("127.0.0.1") is None
    token = server.token_for_host("0.0.0.0")
    assert token and len(token) >= 32 and token != server.token_for_host("0.0.0.0")
    assert server.address("0.0.0.0", 7860, "abc") == "http://0.0.0.0:7860/?token=abc"
    calls = []
    monkeypatch.setattr(server, "serve", lambda **kw: calls.append(kw))
    assert main(["web", "--no-browser", "--port", "9000", "--root", "/data"]) == 0
    assert calls == [{"host": "127.0.0.1", "port": 9000, "root": "/data", "open_browser": False}]


def test_another_sites_page_cannot_start_or_stop_trainings(client, tmp_path):
    form = {"config": tiny_form(tmp_path)}
    r = client.post("/api/jobs", content=json.dumps(form), headers={"content-type": "text/plain"})
    assert r.status_code == 400  # a form post without CORS is not read as JSON
    for headers in ({"origin": "https://evil.example"}, {"sec-fetch-site": "cross-site"}):
        r = client.post("/api/jobs/123/stop", headers=headers)
        assert r.status_code == 403 and "another site" in r.json()["error"]
    same = client.post("/api/jobs/123/stop", headers={"origin": "http://testserver", "sec-fetch-site": "same-origin"})
    assert same.status_code == 404  # passed the check; there is no such job


# ---------------------------------------------------------------------------------- runs and files


def test_runs_are_listed_with_history_grids_and_embeddings(client):
    runs = client.get("/api/runs").json()["runs"]
    assert [r["id"] for r in runs] == ["runs/2026-01-01_00-00-00"]
    run = runs[0]
    assert run["steps"] == 3 and run["loss"] == pytest.approx(1 / 3) and run["family"] == "sd"
    assert run["grids"] == ["/api/files/runs/2026-01-01_00-00-00/validation/final/grid.png"]
    assert run["embeddings"][0]["url"].endswith("/thing.safetensors") and run["report"] is None
    detail = client.get(f"/api/runs/{run['id']}").json()
    assert detail["history"] == [[1, 1.0, 1e-3], [2, 0.5, 1e-3], [3, pytest.approx(1 / 3), 1e-3]]
    assert "SD_TEXTUAL_INVERSION" in detail["config_yaml"]
    assert client.get(run["grids"][0]).content == b"\x89PNG fake"
    assert client.get("/api/runs/nope").status_code == 404
    (root_of(client) / run["id"] / "report.html").write_text("<script>fetch('/api/jobs')</script>")
    report = client.get(client.get("/api/runs").json()["runs"][0]["report"])
    assert report.status_code == 200 and "sandbox" in report.headers["content-security-policy"]
    assert client.post("/api/embeddings/inspect", content=b"{oops", headers={"content-type": "application/json"}
                       ).status_code == 400


def root_of(client: TestClient) -> Path:
    return client.app.state.root


def test_downloads_outside_a_run_folder_are_404(client, root):
    run = root / "runs" / "2026-01-01_00-00-00"
    (run / "escape").symlink_to(root.parent / "secret.txt")
    (root / "loose.txt").write_text("not in a run")
    rid = "runs/2026-01-01_00-00-00"
    for url in (f"/api/files/{rid}/escape", f"/api/files/{rid}/%2e%2e/%2e%2e/%2e%2e/secret.txt",
                f"/api/files/{rid}/..%2F..%2F..%2Fsecret.txt", f"/api/files/{rid}/%2Fetc%2Fpasswd",
                f"/api/files/{rid}//etc/passwd", "/api/files/%2Fetc/passwd", "/api/files/loose.txt",
                f"/api/files/{rid}/validation", "/api/files/runs/..%2F..%2Fsecret.txt"):
        r = client.get(url)
        assert r.status_code == 404 and "SECRET" not in r.text, url
    from tiforge.web.errors import ApiError
    from tiforge.web.files import safe_file

    for raw in (f"{rid}/../../../secret.txt", f"{rid}/escape", f"{root.parent}/secret.txt", "runs/../loose.txt",
                f"{rid}/{root.parent}/secret.txt"):
        with pytest.raises(ApiError) as err:
            safe_file(root.resolve(), raw)
        assert err.value.status == 404
    assert safe_file(root.resolve(), f"{rid}/config.yaml").name == "config.yaml"


# ---------------------------------------------------------------------------------- uploads


def test_an_oversized_upload_is_413_and_not_stored(root):
    c = TestClient(create_app(root, max_upload=4096))
    r = c.post("/api/embeddings/inspect", files={"file": ("big.safetensors", b"0" * 10_000)})
    assert r.status_code == 413 and "too large" in r.json()["error"]

    def chunks():  # no Content-Length: counted as it arrives
        boundary = b"--xx\r\n"
        yield boundary + b'Content-Disposition: form-data; name="file"; filename="big.pt"\r\n\r\n'
        for _ in range(10):
            yield b"0" * 1000
        yield b"\r\n--xx--\r\n"

    r = c.post("/api/embeddings/inspect", content=chunks(), headers={"content-type": "multipart/form-data; boundary=xx"})
    assert r.status_code == 413
    assert not any((root / ".tiforge-web" / "uploads").glob("*/*"))
    r = c.post("/api/config/validate", json={"config": {"model": "x" * 3 * 2**20}})
    assert r.status_code == 413 and "request too large" in r.json()["error"]


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["torch-zip", "plain-pickle"])
def test_a_malicious_pickle_is_refused_and_never_executed(root, tmp_path, container):
    import torch

    marker = tmp_path / "pwned"
    payload = {"emb_params": _Evil(marker)}
    buffer = io.BytesIO()
    if container == "torch-zip":
        torch.save(payload, buffer)
    else:
        pickle.dump(payload, buffer)
    c = TestClient(create_app(root))
    r = c.post("/api/embeddings/inspect", files={"file": ("learned_embeds.bin", buffer.getvalue())})
    assert r.status_code == 400 and "never runs code" in r.json()["error"]
    assert not marker.exists()
    assert not any((root / ".tiforge-web" / "uploads").glob("*/*"))  # the refused file is not kept
    r = c.post("/api/embeddings/inspect", files={"file": ("notes.txt", b"hello")})
    assert r.status_code == 400 and r.json()["field"] == "file"


def test_an_uploaded_embedding_is_inspected_and_converted(root):
    from safetensors.numpy import save
    import numpy as np

    data = save({"<cat>": np.ones((2, 768), dtype=np.float32)})
    c = TestClient(create_app(root))
    answer = c.post("/api/embeddings/inspect", files={"file": ("cat.safetensors", data)}).json()
    assert answer["layout"] == "diffusers" and answer["vectors"] == 2 and answer["dim"] == 768
    assert answer["norms"] == [pytest.approx(np.sqrt(768), rel=1e-3)] * 2 and "SD 1" in answer["family"]
    assert {v["tool"] for v in answer["loads_in"]} >= {"diffusers", "A1111", "InvokeAI"}
    r = c.post("/api/embeddings/convert", json={"upload_id": answer["upload_id"], "to": "a1111"})
    # A1111 and kohya take the prompt word from the file name: the download is named by the trigger alone.
    assert r.status_code == 200 and r.headers["content-disposition"].endswith('filename="cat.pt"')
    r = c.post("/api/embeddings/convert", json={"upload_id": "../../etc", "to": "kohya"})
    assert r.status_code == 404


# ---------------------------------------------------------------------------------- jobs (a stand-in trainer)

FAKE_TRAINER = textwrap.dedent("""
    import json, signal, sys, time, yaml
    config = yaml.safe_load(open(sys.argv[1]))
    run_dir = config["base_output_dir"]
    say = lambda **e: print(json.dumps(e), flush=True)
    def stop(*_):
        say(event="checkpoint", path=run_dir + "/checkpoints/checkpoint-step_00000001")
        say(event="error", message="stopped; resume with ...", exit_code=130)
        sys.exit(130)
    signal.signal(signal.SIGINT, stop)
    if config.get("seed") == 13:
        print("Traceback: boom", file=sys.stderr, flush=True)
        sys.exit(1)
    start = int(bool(config.get("resume_from_checkpoint")))
    say(event="start", run_dir=run_dir, step=start, max_steps=config["max_train_steps"])
    for step in range(start + 1, config["max_train_steps"] + 1):
        time.sleep(0.05)
        say(event="step", step=step, max_steps=config["max_train_steps"], epoch=1, loss=1.0 / step, lr=0.01,
            seconds=0.05, run_dir=run_dir)
    say(event="done", run_dir=run_dir, embedding=run_dir + "/t.safetensors", steps=config["max_train_steps"], loss=0.1)
""")


def wait_for(condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_long_curves_are_thinned_and_checkpoint_names_give_their_step():
    from tiforge.web.jobs import checkpoint_step, thinned

    rows = [[s, 1.0, 0.1] for s in range(1, 10_001)]
    assert len(thinned(rows)) <= 2001 and thinned(rows)[0][0] == 1 and thinned(rows)[-1][0] == 10_000
    assert checkpoint_step("/r/checkpoints/checkpoint-step_00000087") == 87 and checkpoint_step("out/checkpoint-500/") == 500
    assert checkpoint_step(None) is None


def test_jobs_run_one_at_a_time_stop_resume_and_fail_cleanly(root, tmp_path):
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    app = create_app(root)
    app.state.jobs.train_command = lambda config_path: [sys.executable, str(script), str(config_path)]
    c = TestClient(app)
    long = {**tiny_form(tmp_path), "max_train_steps": 400, "base_output_dir": str(root / "runs" / "a")}
    first = c.post("/api/jobs", json={"config": long}).json()
    second = c.post("/api/jobs", json={"config": {**long, "max_train_steps": 3, "seed": 13}}).json()
    assert first["state"] == "running" and second["state"] == "queued"
    wait_for(lambda: c.get(f"/api/jobs/{first['id']}").json()["step"] >= 2, what="steps")
    assert c.get(f"/api/jobs/{second['id']}").json()["state"] == "queued"
    running = c.get(f"/api/jobs/{first['id']}").json()
    assert running["history"][0] == [1, 1.0, 0.01] and running["max_steps"] == 400
    stopped = c.post(f"/api/jobs/{first['id']}/stop").json()
    assert stopped["state"] in ("stopping", "stopped")
    done = wait_for(lambda: (j := c.get(f"/api/jobs/{first['id']}").json())["state"] == "stopped" and j, what="stop")
    assert done["resumable"] and done["error"] is None
    failed = wait_for(lambda: (j := c.get(f"/api/jobs/{second['id']}").json())["state"] == "failed" and j,
                      what="the queued job to run and fail")
    assert "boom" in failed["error"] and not failed["resumable"]
    resumed = c.post(f"/api/jobs/{first['id']}/resume").json()
    assert resumed["id"] != first["id"] and resumed["resumed_from"] == first["id"]
    assert c.post(f"/api/jobs/{second['id']}/resume").status_code == 409
    assert c.post("/api/jobs/nope/stop").status_code == 404
    going = wait_for(lambda: (j := c.get(f"/api/jobs/{resumed['id']}").json())["step"] >= 2 and j, what="resumed steps")
    assert going["history"][:2] == [[1, 1.0, 0.01], [2, 0.5, 0.01]]  # the curve goes on after the checkpoint's step
    c.post(f"/api/jobs/{resumed['id']}/stop")
    wait_for(lambda: c.get(f"/api/jobs/{resumed['id']}").json()["state"] == "stopped", what="second stop")
    assert [j["id"] for j in c.get("/api/jobs").json()["jobs"]] == [first["id"], second["id"], resumed["id"]]


# ---------------------------------------------------------------------------------- server-sent events


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live_server(root):
    """The app behind a real uvicorn server (the test client cannot hold an open event stream)."""
    import uvicorn

    app = create_app(root, token=TOKEN)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 20, "the server")
    yield app, f"http://127.0.0.1:{server.config.port}"
    server.should_exit = True
    thread.join(10)


def test_events_stream_to_every_page_that_listens_and_need_the_token(live_server):
    import httpx

    app, base = live_server
    assert httpx.get(f"{base}/api/events", timeout=5).status_code == 403
    with httpx.stream("GET", f"{base}/api/events", params={"token": TOKEN}, timeout=10) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        assert next(lines) == ": connected"
        app.state.hub.publish({"job": "j1", "event": "step", "step": 7})
        data = next(line for line in lines if line.startswith("data: "))
        app.state.hub.close()  # the server stopping: the stream ends instead of holding the shutdown up
        assert [line for line in lines if line] == []
    assert json.loads(data[len("data: "):]) == {"job": "j1", "event": "step", "step": 7}


# ---------------------------------------------------------------------------------- a real training


def test_a_real_tiny_training_through_the_api_stops_resumes_and_finishes(tmp_path):
    """The toy model, a few steps: start, stop (checkpoint + embedding), resume in the same run folder,
    finish; the embedding, downloaded in the diffusers layout, loads with load_textual_inversion."""
    from diffusers import StableDiffusionPipeline

    from tiforge.toy.demo import demo_images_dir
    from tiforge.toy.model import toy_model_dir

    root = tmp_path / "web"
    root.mkdir()
    c = TestClient(create_app(root))
    form = {"model": str(toy_model_dir()), "placeholder_token": "<star>", "initializer_token": "toy",
            "base_output_dir": "runs", "max_train_steps": 12, "train_batch_size": 2, "seed": 0, "report_to": "none",
            "optimizer.learning_rate": 1e-2, "data_loader.dataset.dataset_dir": str(demo_images_dir()),
            "data_loader.caption_templates": ["a {}"], "data_loader.resolution": 32,
            "data_loader.dataloader_num_workers": 0, "validation_prompts": ["a <star>"],
            "num_validation_images_per_prompt": 1, "num_validation_inference_steps": 2}
    first = c.post("/api/jobs", json={"config": form}).json()
    job = lambda jid: c.get(f"/api/jobs/{jid}").json()  # noqa: E731
    wait_for(lambda: job(first["id"])["step"] >= 1, 120, "the first step")
    c.post(f"/api/jobs/{first['id']}/stop")
    stopped = wait_for(lambda: job(first["id"])["state"] in ("stopped", "failed") and job(first["id"]), 120, "stop")
    assert stopped["state"] == "stopped" and stopped["resumable"], stopped["log_tail"][-5:]
    assert stopped["step"] < 12
    resumed = c.post(f"/api/jobs/{first['id']}/resume").json()
    done = wait_for(lambda: job(resumed["id"])["state"] in ("finished", "failed") and job(resumed["id"]), 180, "finish")
    assert done["state"] == "finished", done["log_tail"][-10:]
    assert done["run_dir"] == stopped["run_dir"] and [row[0] for row in done["history"]] == list(range(1, 13))
    assert done["step"] == 12 and done["grid"] and c.get(done["grid"]).status_code == 200
    run = c.get("/api/runs").json()["runs"][0]
    assert Path(stopped["run_dir"]).name in run["id"]
    download = c.get(f"/api/runs/{run['id']}/embedding", params={"layout": "diffusers"})
    assert download.status_code == 200
    path = tmp_path / "star.safetensors"
    path.write_bytes(download.content)
    pipe = StableDiffusionPipeline.from_pretrained(str(toy_model_dir()), safety_checker=None)
    pipe.load_textual_inversion(str(path))
    assert "<star>" in pipe.tokenizer.get_vocab()
    trained = run["embeddings"][0]["url"]
    seen = c.post("/api/embeddings/inspect", json={"path": trained, "model": str(toy_model_dir())}).json()
    assert seen["vectors"] == 1 and seen["dim"] == 64 and len(seen["nearest"][0]["tokens"]) == 5
    pictures = c.post("/api/embeddings/generate", json={"path": trained, "model": str(toy_model_dir()),
                                                        "prompt": "a <star>", "steps": 2, "count": 2}).json()
    assert len(pictures["images"]) == 2 and c.get(pictures["images"][0]).headers["content-type"] == "image/png"
    unused = c.post("/api/embeddings/generate", json={"path": trained, "model": str(toy_model_dir()), "prompt": "a cat"})
    assert unused.status_code == 400 and "does not use the trigger" in unused.json()["error"]
