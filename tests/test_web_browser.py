"""The web UI in a real browser: headless Chromium driven by Selenium against `tiforge web`.

One user's way through it: fill the form, see a bad value refused under its field, start a tiny run
of the toy model, watch the plot and a validation grid appear, stop, resume, download the embedding
and load it with diffusers; then the Runs, compare and Embedding pages. A token-protected server
refuses the browser without its token. Each page is saved as a screenshot into a folder the test
prints (and also into $TIFORGE_WEB_SCREENSHOTS when set).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import yaml
import pytest

T0 = time.monotonic()
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SRC = str(Path(__file__).resolve().parents[1] / "src")
TOKEN = "<purple-star>"
STEPS = 2000  # far more than the test lets it run: it is stopped after the first grid, on any machine

selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install selenium)")
if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip(f"the browser tests need Debian's chromium and chromedriver ({CHROMIUM}, {CHROMEDRIVER}): "
                "apt-get install chromium chromium-driver (scripts/install_browser.sh)", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(url: str, process: subprocess.Popen | None = None, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"tiforge web exited with {process.returncode}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise TimeoutError(f"no server at {url} after {timeout} s")


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = tmp_path_factory.mktemp("web_screenshots")
    print(f"\nweb UI screenshots: {folder}")
    yield folder
    extra = os.environ.get("TIFORGE_WEB_SCREENSHOTS")
    if extra:
        shutil.copytree(folder, extra, dirs_exist_ok=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`tiforge web` as a user starts it, on a free port, over an empty root folder."""
    root = tmp_path_factory.mktemp("web_root")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    log = open(root.parent / f"{root.name}-server.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "tiforge.cli", "web", "--root", str(root), "--port", str(port),
                                "--no-browser"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(f"{url}/api/schema", process)
        yield url, root
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.downloads = downloads
    yield driver
    driver.get("about:blank")  # the page's event stream ends before the servers stop
    driver.quit()


def until(driver, condition, timeout: float = 60, message: str = ""):
    """Wait for `condition`; the page re-renders as events arrive, so an element may go stale meanwhile."""
    return WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)).until(
        lambda d: condition(d), message)


def field(driver, path: str):
    return driver.find_element(By.CSS_SELECTOR, f'.field[data-path="{path}"]')


def fill(driver, path: str, value) -> None:
    el = driver.find_element(By.NAME, path)
    if el.get_attribute("type") == "checkbox":
        if el.is_selected() != bool(value):
            el.click()
    elif el.tag_name == "select":
        Select(el).select_by_visible_text(str(value))
    else:
        el.clear()
        el.send_keys("\n".join(value) if isinstance(value, list) else str(value))


def text(driver, css: str) -> str:
    """The element's text; the page re-renders as events arrive, so a found element may go stale."""
    for _ in range(20):
        try:
            found = driver.find_elements(By.CSS_SELECTOR, css)
            return found[0].text if found else ""
        except StaleElementReferenceException:
            time.sleep(0.05)
    return ""


def click(driver, element_id: str) -> None:
    """Click a button the live page may re-render between finding and clicking it."""
    until(driver, lambda d: d.find_element(By.ID, element_id).click() is None, timeout=15)


def step_shown(driver) -> int:
    shown = text(driver, "#stat-step b").split("/")[0].strip()
    return int(shown) if shown.isdigit() else -1


def ink(driver, canvas_id: str) -> int:
    """How many pixels of the chart are in a curve's colour (not the grey of axes and text): 0 on an
    empty chart."""
    return driver.execute_script("""
        const c = document.getElementById(arguments[0]);
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4) {
          if (d[i + 3] > 0 && Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]) > 80) n++;
        }
        return n;""", canvas_id)


def screenshot(driver, shots: Path, name: str, focus=None) -> None:
    print(f"{time.monotonic() - T0:6.1f} s  {name}")
    if focus is None:
        driver.execute_script("window.scrollTo(0, 0)")
    else:
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", focus)
    driver.save_screenshot(str(shots / f"{name}.png"))


def toy_settings(root: Path) -> tuple[dict, dict]:
    """The demo's training, shortened so the first validation grid comes early: (the essentials a
    user types, the rest as a YAML file the user loads)."""
    from tiforge.toy.demo import INITIALIZER, demo_images_dir
    from tiforge.toy.model import toy_model_dir

    typed = {"model": str(toy_model_dir()), "placeholder_token": TOKEN, "initializer_token": INITIALIZER,
             "num_vectors": 2, "data_loader.dataset.dataset_dir": str(demo_images_dir()),
             "base_output_dir": str(root / "runs")}
    loaded = {"max_train_steps": STEPS, "train_batch_size": 6, "report_to": "none", "seed": 0,
              "validation_prompts": [f"a {TOKEN}"], "validate_every_n_steps": 4, "save_every_n_steps": 4,
              "num_validation_images_per_prompt": 2, "num_validation_inference_steps": 2,
              "data_loader": {"resolution": 32, "caption_templates": ["a {}"]}}
    return typed, loaded


def test_train_watch_stop_resume_download(server, browser, shots, tmp_path):
    url, root = server
    fill_train_form(browser, url, root, tmp_path, shots)
    stopped_at = watch_and_stop(browser, shots)
    resume_and_stop(browser, shots, stopped_at)
    downloaded = download_into_diffusers(browser, url)

    # A second run folder to compare with: a copy (a second training would double the test's time).
    first = next((root / "runs").iterdir())
    shutil.copytree(first, first.with_name(first.name + "-copy"))
    give_metrics(root)
    browser.refresh()
    until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#runs-table tr[data-run]")) == 2, timeout=15)
    screenshot(browser, shots, "6-runs")
    compare_runs(browser, shots)
    run_page(browser, shots)
    embedding_page(browser, shots, downloaded)


def fill_train_form(d, url: str, root: Path, tmp_path: Path, shots: Path) -> None:
    """Load YAML, type the essentials, preview the data, see a bad value refused, Save YAML."""
    d.get(f"{url}/#/train")
    d.execute_script("localStorage.clear()")
    d.refresh()
    until(d, lambda d: d.find_elements(By.CSS_SELECTOR, '.field[data-path="model"]'), message="the form never showed")
    # A new user's first click: the demo's settings, valid as they come (Start enabled).
    click(d, "load-demo")
    until(d, lambda d: d.find_element(By.NAME, "placeholder_token").get_attribute("value") == TOKEN
          and d.find_element(By.ID, "start").is_enabled(), timeout=15,
          message=f"Fill with the demo did not give a valid form: {text(d, '#form-status')}")
    screenshot(d, shots, "0-train-demo-filled")
    # A file that is no config leaves the form as it was, and says why.
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [unclosed")
    d.find_element(By.ID, "load-yaml").send_keys(str(broken))
    until(d, lambda d: "the form is unchanged" in text(d, "#form-status"), timeout=15, message="no word on a broken YAML")
    assert d.find_element(By.NAME, "placeholder_token").get_attribute("value") == TOKEN
    # What the training would refuse at its start is a message under the field, and Start stays disabled.
    d.execute_script("document.querySelectorAll('details').forEach((x) => { x.open = true; })")
    fill(d, "data_loader.dataset.dataset_dir", str(tmp_path / "nowhere"))
    until(d, lambda d: "no such folder" in field(d, "data_loader.dataset.dataset_dir").find_element(By.CLASS_NAME, "error").text,
          timeout=15, message="no message under a missing data folder")
    assert not d.find_element(By.ID, "start").is_enabled()
    typed, loaded = toy_settings(root)
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump(loaded))
    d.find_element(By.ID, "load-yaml").send_keys(str(settings))
    until(d, lambda d: d.find_element(By.NAME, "max_train_steps").get_attribute("value") == str(STEPS), timeout=15,
          message="Load YAML did not fill the form")
    d.execute_script("document.querySelectorAll('details').forEach((x) => { x.open = true; })")
    for path, value in typed.items():
        fill(d, path, value)

    # Data preview: each picture with its caption as trained, the placeholder's tokens marked.
    d.find_element(By.ID, "preview-data").click()
    until(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#preview .thumb img")) == 6, timeout=30,
          message=f"no data preview: {text(d, '#preview')}")
    marked = d.find_elements(By.CSS_SELECTOR, "#preview .thumb .tok.ph")
    assert marked and TOKEN in marked[0].text
    d.execute_script("document.getElementById('preview').scrollIntoView()")  # thumbnails load lazily
    until(d, lambda d: d.execute_script(
        "return [...document.querySelectorAll('#preview img')].every((i) => i.complete && i.naturalWidth > 0)"),
        timeout=15, message="a thumbnail did not load")
    screenshot(d, shots, "1-train-data-preview", focus=d.find_element(By.ID, "preview"))

    # A bad value: the config's own message appears under that field, and Start stays disabled.
    fill(d, "optimizer.learning_rate", "fast")
    until(d, lambda d: field(d, "optimizer.learning_rate").find_element(By.CLASS_NAME, "error").text,
          timeout=15, message="no message under the bad learning rate")
    assert "invalid" in field(d, "optimizer.learning_rate").get_attribute("class")
    assert not d.find_element(By.ID, "start").is_enabled()
    screenshot(d, shots, "2a-train-form-bad-value", focus=field(d, "optimizer.learning_rate"))
    fill(d, "optimizer.learning_rate", "0.01")
    until(d, lambda d: d.find_element(By.ID, "start").is_enabled(), timeout=15,
          message=f"the form never became valid: {text(d, '#form-status')}")
    assert not field(d, "optimizer.learning_rate").find_element(By.CLASS_NAME, "error").text
    screenshot(d, shots, "2b-train-form-valid")

    # Save YAML writes what `tiforge train` runs unchanged.
    d.find_element(By.ID, "save-yaml").click()
    saved = until(d, lambda d: [p for p in d.downloads.glob("*.yaml")], timeout=15, message="Save YAML saved nothing")
    from tiforge.config.loading import config_from_dict

    config = config_from_dict(yaml.safe_load(saved[0].read_text()), str(saved[0]))
    assert (config.placeholder_token, config.max_train_steps) == (TOKEN, STEPS)
    saved[0].unlink()


def watch_and_stop(d, shots: Path) -> int:
    """Start: the job page shows steps, the curve and the first validation grid while it runs, after
    a reload and in a second tab too; Stop saves and stops. The step it stopped at."""
    d.find_element(By.ID, "start").click()
    until(d, lambda d: "#/job/" in d.current_url, timeout=15)
    until(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#job-grid img.grid") and step_shown(d) >= 5, timeout=90,
          message=f"no validation grid: {text(d, '#view')}")
    assert ink(d, "loss-chart") > 50, "the loss curve was not drawn"
    assert "running" in text(d, "#job-state")
    screenshot(d, shots, "3-job-running")

    # The page survives a reload mid-run: the curve comes back from the job's history.
    d.refresh()
    until(d, lambda d: step_shown(d) >= 5 and ink(d, "loss-chart") > 50, timeout=30)
    # ... and a second tab on the same job follows it live too.
    job_url = d.current_url
    d.switch_to.new_window("tab")
    d.get(job_url)
    until(d, lambda d: step_shown(d) >= 5, timeout=30)
    seen = step_shown(d)
    until(d, lambda d: step_shown(d) > seen, timeout=30, message="the second tab did not follow the run")
    d.close()
    d.switch_to.window(d.window_handles[0])
    assert step_shown(d) > seen

    click(d, "stop")
    until(d, lambda d: text(d, "#job-state") == "stopped", timeout=60, message=f"never stopped: {text(d, '#view')}")
    stopped_at = step_shown(d)
    assert 0 < stopped_at < STEPS
    screenshot(d, shots, "4-job-stopped")
    return stopped_at


def resume_and_stop(d, shots: Path, stopped_at: int) -> None:
    """Resume: a new job that goes on from the checkpoint; stopped again once it has stepped."""
    until(d, lambda d: d.find_element(By.ID, "resume").is_displayed(), timeout=10)
    first_job = d.current_url
    click(d, "resume")
    until(d, lambda d: d.current_url != first_job, timeout=15)
    until(d, lambda d: step_shown(d) > stopped_at, timeout=60,
          message=f"the resumed run never stepped: {text(d, '#view')}")
    click(d, "stop")
    until(d, lambda d: text(d, "#job-state") == "stopped", timeout=60)
    screenshot(d, shots, "5-job-resumed-and-stopped")


def download_into_diffusers(d, url: str) -> Path:
    """Runs: the run is listed; its embedding downloads in diffusers' layout and diffusers loads it."""
    d.get(f"{url}/#/runs")
    until(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#runs-table tr[data-run]"), timeout=15)
    d.find_element(By.CSS_SELECTOR, "#runs-table tr[data-run] a.dl[href$='layout=diffusers']").click()
    downloaded = until(d, lambda d: [p for p in d.downloads.iterdir() if not p.name.endswith(".crdownload")],
                       timeout=30, message="no embedding was downloaded")
    load_in_diffusers(downloaded[0])
    return downloaded[0]


def give_metrics(root: Path) -> None:
    """Each run folder's loss history is its metrics.jsonl, written by the run's report (issue 20d);
    where a run has none yet, write one so the pages have curves to draw."""
    for folder in (root / "runs").iterdir():
        if not (folder / "metrics.jsonl").is_file():
            lines = [json.dumps({"step": s, "loss": 0.05 - 0.002 * s + 0.004 * (s % 3), "lr": 0.01, "seconds": 0.1})
                     for s in range(1, 12)]
            (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def compare_runs(d, shots: Path) -> None:
    for box in d.find_elements(By.CSS_SELECTOR, "#runs-table tr[data-run] input[type=checkbox]"):
        box.click()
    d.find_element(By.ID, "compare").click()
    until(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".side section img.grid")) >= 2, timeout=15,
          message=f"the compare page shows no grids: {text(d, '#view')}")
    assert ink(d, "compare-chart") > 50, "no curves on the compare page"
    screenshot(d, shots, "7-compare")


def run_page(d, shots: Path) -> None:
    d.get(d.current_url.split("#")[0] + "#/runs")
    until(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#runs-table tr[data-run] td a"), timeout=15)
    d.find_element(By.CSS_SELECTOR, "#runs-table tr[data-run] td a").click()
    until(d, lambda d: d.find_elements(By.CSS_SELECTOR, "img.grid"), timeout=15)
    until(d, lambda d: ink(d, "run-chart") > 50, timeout=10, message="no curve on the run page")
    report = d.find_elements(By.LINK_TEXT, "Open report.html")
    screenshot(d, shots, "8-run")
    if report:
        assert httpx.get(report[0].get_attribute("href")).status_code == 200
    # "Train again" fills the form with the run's config.yaml, which validates as it is.
    d.find_element(By.ID, "train-again").click()
    until(d, lambda d: d.find_element(By.NAME, "max_train_steps").get_attribute("value") == str(STEPS), timeout=15)
    until(d, lambda d: d.find_element(By.ID, "start").is_enabled(), timeout=15,
          message=f"the run's own config did not validate: {text(d, '#form-status')}")


def embedding_page(d, shots: Path, upload: Path) -> None:
    """Upload a file, then pick a run's embedding: inspect's answer, a conversion, and pictures
    generated with it on the toy model."""
    d.get(d.current_url.split("#")[0] + "#/embedding")
    until(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#embedding-pick option")) > 1, timeout=15)
    d.find_element(By.ID, "embedding-file").send_keys(str(upload))
    until(d, lambda d: text(d, "#inspect-layout") == "diffusers", timeout=30,
          message=f"the uploaded file was not inspected: {text(d, '#view')}")
    Select(d.find_element(By.ID, "embedding-pick")).select_by_index(1)
    until(d, lambda d: text(d, "#inspect-layout") == "kohya", timeout=30,
          message=f"no inspection: {text(d, '#view')}")
    assert "vector 0" in text(d, "#inspect-nearest")
    screenshot(d, shots, "9a-embedding-inspect")
    before = set(d.downloads.iterdir())
    d.find_element(By.CSS_SELECTOR, "button[data-layout=a1111]").click()
    converted = until(d, lambda d: [p for p in set(d.downloads.iterdir()) - before
                                    if not p.name.endswith(".crdownload")],
                      timeout=30, message="Convert downloaded nothing")
    from tiforge.embeddings.files import load_embedding

    assert load_embedding(converted[0]).format == "a1111"
    fill_text(d, "gen-prompt", f"a {TOKEN}")
    fill_text(d, "gen-steps", "2")
    fill_text(d, "gen-count", "2")
    d.find_element(By.ID, "generate").click()
    until(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#gen-images img")) == 2, timeout=60,
          message=f"no pictures: {text(d, '#gen-images')}")
    screenshot(d, shots, "9b-embedding-generate", focus=d.find_element(By.ID, "gen-images"))


def fill_text(d, element_id: str, value: str) -> None:
    el = d.find_element(By.ID, element_id)
    el.clear()
    el.send_keys(value)


def load_in_diffusers(path: Path) -> None:
    from tiforge.toy.model import load_toy_pipeline, toy_model_dir

    pipe = load_toy_pipeline(toy_model_dir())
    pipe.load_textual_inversion(str(path), token=TOKEN)
    ids = pipe.tokenizer.convert_tokens_to_ids([TOKEN, f"{TOKEN}_1"])
    assert all(i != pipe.tokenizer.unk_token_id for i in ids), ids


def test_token_protected_server_refuses_without_token(tmp_path, browser, shots):
    """Bound beyond the loopback the server wants its token: the page is refused without it."""
    import uvicorn

    from tiforge.web.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(tmp_path, token="s3cret-token"), host="127.0.0.1", port=port,
                                           log_level="warning", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(f"{url}/api/schema")
        d = browser
        d.get(f"{url}/#/train")
        until(d, lambda d: "access token" in d.find_element(By.TAG_NAME, "body").text, timeout=10)
        assert not d.find_elements(By.ID, "view")
        screenshot(d, shots, "0-no-token-refused")
        d.get(f"{url}/?token=wrong")
        assert "access token" in d.find_element(By.TAG_NAME, "body").text
        d.get(f"{url}/?token=s3cret-token#/train")  # sets the cookie the page's own requests then carry
        until(d, lambda d: d.find_elements(By.CSS_SELECTOR, '.field[data-path="model"]'), timeout=15,
              message=f"the page did not load with the token: {d.find_element(By.TAG_NAME, 'body').text[:300]}")
        screenshot(d, shots, "0b-with-token")
        assert httpx.get(f"{url}/api/schema").status_code == 403
    finally:
        browser.get("about:blank")  # closes the page's event stream, which would hold the server open
        server.should_exit = True
        thread.join(10)
