"""report.html: one self-contained page per run, rendered by a real (headless) browser, showing the
run's own pictures; metrics.jsonl beside it, one line per step, exact across a resume."""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tiforge.config.loading import config_from_dict
from tiforge.training.interrupts import TrainingStopped
from tiforge.training.recipe import train

from conftest import SDXL, base_config, make_images

EVIL = "<script>window.__pwned = 1</script>"


def run(cfg: dict, **kw):
    return train(config_from_dict(cfg), progress=False, **kw)


@pytest.fixture(scope="module")
def validated_run(tiny_sd1, tmp_path_factory):
    """4 steps, validation at step 2 and at the end, captions and a prompt carrying markup."""
    tmp = tmp_path_factory.mktemp("report")
    data = make_images(tmp / "images", captions=[f"a <thing> next to {EVIL}", "a <thing> on <b>grass</b>"])
    cfg = base_config(tiny_sd1, data, tmp / "out", max_train_steps=4, validate_every_n_steps=2,
                      validation_prompts=["a <thing>", f"<thing> {EVIL}"], num_validation_images_per_prompt=2,
                      num_validation_inference_steps=2, data_loader__caption_preset=None,
                      data_loader__dataset={"type": "IMAGE_CAPTION_DIR_DATASET", "dataset_dir": str(data)})
    return run(cfg).run_dir


def chrome():
    if not (shutil.which("chromium") or Path("/usr/bin/chromium").exists()) or not Path("/usr/bin/chromedriver").exists():
        pytest.skip("chromium and chromedriver are not installed (scripts/install_browser.sh installs them)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(arg)
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


# What the browser drew for an <img>: its pixels, read back through a canvas.
PIXELS = """const img = arguments[0]; const c = document.createElement('canvas');
c.width = img.naturalWidth; c.height = img.naturalHeight; const g = c.getContext('2d'); g.drawImage(img, 0, 0);
return Array.from(g.getImageData(0, 0, c.width, c.height).data);"""


def test_report_renders_in_chromium_with_the_runs_pictures(validated_run, tmp_path):
    from selenium.webdriver.common.by import By

    run_dir = validated_run
    on_disk = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.glob("validation/*/prompt*_image*.png"))
    assert len(on_disk) == 2 * 2 * 2, on_disk  # 2 validations x 2 prompts x 2 pictures
    driver = chrome()
    try:
        driver.get((run_dir / "report.html").as_uri())
        for plot in ("loss-plot", "norm-plot"):
            element = driver.find_element(By.ID, plot)
            assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", element) > 300
        shown = driver.find_elements(By.CSS_SELECTOR, "#validation-grids img.vimg")
        assert sorted(img.get_attribute("data-file") for img in shown) == on_disk
        for img in shown:
            path = run_dir / img.get_attribute("data-file")
            uri = img.get_attribute("src")
            assert uri.startswith("data:image/png;base64,")
            assert base64.b64decode(uri.split(",", 1)[1]) == path.read_bytes()
            drawn = np.array(driver.execute_script(PIXELS, img), dtype=np.uint8)
            expected = np.asarray(Image.open(path).convert("RGBA"))
            assert drawn.reshape(expected.shape).tolist() == expected.tolist(), path
        rows = driver.find_elements(By.CSS_SELECTOR, "#validation-grids tr")
        assert [r.find_element(By.TAG_NAME, "td").text.split("\n")[0] for r in rows[1:]] == ["step_00000002", "final"]
        assert "a <thing>" in rows[0].text and EVIL in rows[0].text  # the prompts, as text
        config = driver.find_element(By.ID, "config-yaml").text
        assert "placeholder_token: <thing>" in config and "max_train_steps: 4" in config
        captions = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "#data-table .caption")]
        assert f"a <thing> <thing>_1 next to {EVIL}" in captions
        marked = [t.text for t in driver.find_elements(By.CSS_SELECTOR, "#data-table .tok.ph")]
        assert marked[:2] == ["<thing>\n49408", "<thing>_1\n49409"] or marked[:2] == ["<thing>49408", "<thing>_149409"]
        assert driver.find_elements(By.TAG_NAME, "script") == []
        assert driver.execute_script("return window.__pwned === undefined")
        driver.set_window_size(1280, driver.execute_script("return document.body.scrollHeight") + 100)
        shot = tmp_path / "report.png"
        driver.save_screenshot(str(shot))
        print(f"report screenshot: {shot}")
    finally:
        driver.quit()
    assert Image.open(shot).size[1] > 1500


def test_report_is_one_file_and_escapes_markup(validated_run):
    html = (validated_run / "report.html").read_text()
    assert "<script" not in html.lower() and "<b>" not in html
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in html
    # self-contained: every picture inline, nothing fetched from elsewhere
    for attribute in ("src=", "href=\"http", "url("):
        for piece in html.split(attribute)[1:]:
            assert attribute != "src=" or piece.startswith('"data:'), piece[:80]
    assert "<link" not in html and "@import" not in html


def test_report_tracks_vectors_against_the_vocabulary(validated_run):
    snapshots = [json.loads(line) for line in (validated_run / "report_snapshots.jsonl").read_text().splitlines()]
    assert [(s["step"], s["moment"], s["validation"]) for s in snapshots] == [
        (0, "start", None), (2, "step_00000002", "validation/step_00000002"), (4, "end", "validation/final")]
    first = snapshots[0]["nearest"]["text_encoder"]
    assert len(first) == 2 and first[0][0][0] == "toy" and first[0][0][2] == pytest.approx(1.0, abs=1e-4)
    metrics = [json.loads(line) for line in (validated_run / "metrics.jsonl").read_text().splitlines()]
    assert snapshots[-1]["norms"] == metrics[-1]["norms"]
    assert metrics[0]["norms"]["text_encoder"] != metrics[-1]["norms"]["text_encoder"]


def test_metrics_jsonl_after_resume_keeps_one_line_per_step(tiny_sd1, image_dir, tmp_path):
    cfg = base_config(tiny_sd1, image_dir, tmp_path / "out", max_train_steps=4, save_every_n_steps=2,
                      train_batch_size=1)
    full = run(cfg)
    metrics = full.run_dir / "metrics.jsonl"
    before = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in before] == [1, 2, 3, 4]
    assert set(before[0]) >= {"step", "loss", "lr", "seconds"}
    half = full.run_dir / "checkpoints" / "checkpoint-step_00000002"
    run({**cfg, "resume_from_checkpoint": str(half)})
    after = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in after] == [1, 2, 3, 4]  # steps 3 and 4 of the first run are dropped
    assert [r["loss"] for r in after] == [r["loss"] for r in before]  # resume is exact, so are its numbers
    assert "step 4 of 4" in (full.run_dir / "report.html").read_text()


def test_a_stop_refreshes_the_report(tiny_sd1, image_dir, tmp_path):
    stop = threading.Event()
    stop.set()  # stops after the first step, as Ctrl-C does
    with pytest.raises(TrainingStopped):
        run(base_config(tiny_sd1, image_dir, tmp_path / "out", max_train_steps=50), stop_event=stop)
    (run_dir,) = (tmp_path / "out").iterdir()
    html = (run_dir / "report.html").read_text()
    assert "stopped &middot; step 1 of 50" in html and "checkpoint-step_00000001" in html


def test_sdxl_report_shows_both_encoders(tiny_sdxl, image_dir, tmp_path):
    result = run(base_config(tiny_sdxl, image_dir, tmp_path / "out", max_train_steps=1, **SDXL))
    html = (result.run_dir / "report.html").read_text()
    assert "vector norms over steps" in html
    assert html.count("<td>clip_l</td>") == 1 and html.count("<td>clip_g</td>") == 1
    assert "&lt;thing&gt;_1 [clip_g]" in html


FREED = """
import gc, sys, weakref
import tiforge.training.recipe as recipe
from tiforge.config.loading import config_from_dict
made = []
init = recipe.Recipe.__init__
recipe.Recipe.__init__ = lambda self, *a, **k: (init(self, *a, **k), made.append(weakref.ref(self)))[0]
gc.disable()  # only reference counting: what frees a run's model and data loader workers at once
recipe.train(config_from_dict(eval(sys.argv[1])), progress=False)
print("freed" if made[0]() is None else "kept alive")
"""


def test_a_finished_run_is_freed_at_once_in_a_fresh_process(tiny_sd1, image_dir, tmp_path):
    """matplotlib's first use in a process leaves reference cycles holding the frames it ran under;
    drawn from the recipe, they kept the finished run (and its worker processes) alive."""
    import subprocess
    import sys

    cfg = base_config(tiny_sd1, image_dir, tmp_path / "out", max_train_steps=1)
    done = subprocess.run([sys.executable, "-c", FREED, repr(cfg)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "freed"
