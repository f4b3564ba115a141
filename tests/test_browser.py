"""The web app in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`)
driven by Selenium against a running server on 127.0.0.1. Skipped where they are absent.

FER_JAX_SCREENSHOT=PATH saves the page after the upload test (docs/figures/serve.png).
"""
from __future__ import annotations

import os
import pathlib
import shutil
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
if not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)):
    pytest.skip("no Chromium here (apt-get install chromium chromium-driver)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver")
uvicorn = pytest.importorskip("uvicorn")
skimage_data = pytest.importorskip("skimage.data")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from fer_jax.serving.app import PredictionService, create_app  # noqa: E402


@pytest.fixture(scope="module")
def server():
    from fer_jax.inference.expressions import ExpressionPredictor
    service = PredictionService(ExpressionPredictor(None, batch_size=8, detector="blazeface"))
    service.warm_up()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(service, model_info={"model": "resnet18", "detector": "blazeface", "backend": "onnx"})
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/", service
    server.should_exit = True
    thread.join(timeout=10)


def browser(profile: pathlib.Path, *extra: str):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--window-size=1200,1000", f"--user-data-dir={profile}", *extra):
        options.add_argument(flag)
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)


def test_upload_a_photo_and_read_its_expression(server, tmp_path):
    url, _ = server
    photo = tmp_path / "astronaut.png"
    Image.fromarray(skimage_data.astronaut()).save(photo)
    driver = browser(tmp_path / "profile")
    try:
        driver.get(url)
        driver.find_element(By.ID, "files").send_keys(str(photo))
        label = WebDriverWait(driver, 60).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#results .photo .label"))[0]
        assert label.text == "happy"
        bars = driver.find_elements(By.CSS_SELECTOR, "#results .photo .bar")
        assert len(bars) == 7 and "happy" in [bar.text.split("\n")[0].split()[0] for bar in bars]
        if os.environ.get("FER_JAX_SCREENSHOT"):
            driver.save_screenshot(os.environ["FER_JAX_SCREENSHOT"])
    finally:
        driver.quit()


def write_y4m(path: pathlib.Path, frames: list[np.ndarray], rate: int = 10) -> pathlib.Path:
    """Frames (uint8 RGB, even sides) as a YUV4MPEG2 4:2:0 file, as Chromium's fake camera reads."""
    height, width = frames[0].shape[:2]
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{rate}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
            y = 0.299 * r + 0.587 * g + 0.114 * b
            u = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
            v = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
            half = lambda c: c.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))  # noqa: E731
            out.write(b"FRAME\n")
            for plane in (y, half(u), half(v)):
                out.write(np.clip(np.rint(plane), 0, 255).astype(np.uint8).tobytes())
    return path


@pytest.mark.slow
def test_webcam_labels_appear_and_update(server, tmp_path):
    url, service = server
    # The astronaut, 640 x 480, drifting right a few pixels a frame.
    big = np.asarray(Image.fromarray(skimage_data.astronaut()).resize((640, 640)))[:480]
    frames = [np.roll(big, 6 * i, axis=1) for i in range(20)]
    video = write_y4m(tmp_path / "face.y4m", frames)
    driver = browser(tmp_path / "profile", "--use-fake-device-for-media-stream",
                     "--use-fake-ui-for-media-stream", f"--use-file-for-fake-video-capture={video}")
    try:
        driver.get(url)
        driver.find_element(By.ID, "webcam-start").click()
        # Read in one script: the page redraws the list every frame (elements go stale).
        labels = "return Array.from(document.querySelectorAll('#webcam-faces .label'), e => e.textContent)"
        assert WebDriverWait(driver, 60).until(lambda d: d.execute_script(labels)) == ["happy"]
        before = service.requests
        time.sleep(3)
        assert service.requests >= before + 5  # the page keeps sending frames
        assert "frames/s" in driver.find_element(By.ID, "fps").text
        driver.find_element(By.ID, "webcam-stop").click()
    finally:
        driver.quit()
