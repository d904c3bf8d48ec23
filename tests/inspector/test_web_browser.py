"""The review page in a real browser (Debian's chromium driven through its chromedriver by Selenium) against a
live ``inspector serve`` process, while a real ``inspector run`` daemon process writes into the same database.

Clicks through what an operator does: filter -> frame -> review (keyboard and mouse, a drawn missed defect) ->
live arrival of a new result -> CSV export; screenshots go to the test's temp dir and are checked (the crops
rendered: pixel statistics of each crop's region in the screenshot)."""
from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from sqlalchemy import select
from webkit import WEB_CLASSES

from inspector.cli import main
from inspector.config import load_station_config
from inspector.db.models import Frame, ReviewEvent
from inspector.db.records import open_station_database

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                                reason="Debian chromium + chromium-driver not installed (.ci/run installs them)")


class Process:
    """A CLI process whose output is kept in a file (read back for its URL and for failure messages)."""

    def __init__(self, args: list[str], log: Path) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
        self.log = log
        self._out = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "inspector.cli", *args], stdout=self._out,
                                     stderr=subprocess.STDOUT, env=env)

    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.output())
            if found:
                return found
            assert self.proc.poll() is None, f"process ended early:\n{self.output()}"
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.output()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1600,1000",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.downloads = downloads
    yield driver
    driver.quit()


def wait_js(driver, script: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"browser condition not met within {timeout} s: {script}")


def crop_regions_rendered(driver, shot: Path) -> list[dict]:
    """Each crop image's region in the screenshot: not blank (has contrast), and differs from the template's."""
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[0] > 300, f"screenshot {shot} missing or empty"
    ratio = driver.execute_script("return window.devicePixelRatio") or 1
    stats = []
    for kind in ("frame", "template", "diff"):
        rect = driver.execute_script(f"""const r = document.querySelector('#detections .crop-{kind}')
            .getBoundingClientRect(); return [r.left, r.top, r.width, r.height];""")
        x, y, w, h = (int(v * ratio) for v in rect)
        region = image[y:y + h, x:x + w]
        assert region.size and w > 150 and h > 150, f"{kind} crop is not shown large ({w}x{h})"
        stats.append({"kind": kind, "mean": float(region.mean()), "std": float(region.std()), "region": region})
    for s in stats:
        assert s["std"] > 8, f"{s['kind']} crop looks blank (std {s['std']:.1f})"
    frame_crop, template_crop = stats[0]["region"].astype(int), stats[1]["region"].astype(int)
    assert np.abs(frame_crop - template_crop).mean() > 1, "frame and template crops are identical"
    return stats


def test_operator_reviews_in_a_real_browser(tmp_path, frames, browser):
    from inspector.demo.runner import free_port

    config = {
        "station": "browserline", "state_dir": str(tmp_path / "state"),
        "bus": {"publish": f"tcp://127.0.0.1:{free_port()}", "replay": f"tcp://127.0.0.1:{free_port()}"},
        "detector": {"backend": "difference", "options": {"class_names": WEB_CLASSES}},
        "alarm_rules": [{"class": "*", "severity": "warning", "min_score": 0.5}],
        "cameras": [{"id": "cam1", "drop_folder": str(tmp_path / "drop")}],
    }
    path = tmp_path / "station.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    for name, image in frames.templates.items():
        file = tmp_path / f"{name}.png"
        cv2.imwrite(str(file), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        assert main(["templates", "add", "--config", str(path), "--camera", "cam1", "--position", name,
                     str(file)]) == 0
    daemon = Process(["run", "--config", str(path), "--log-level", "WARNING"], tmp_path / "daemon.log")
    page = Process(["serve", "--config", str(path), "--port", "0", "--log-level", "WARNING"], tmp_path / "serve.log")
    try:
        url = page.wait_for(r"review page for station 'browserline': (http://127\.0\.0\.1:\d+/)").group(1)
        drop = tmp_path / "drop"
        for i in range(6):
            frames.drop(drop, f"P{i % 2:02d}_b{i:03d}.jpg", i % 2, defective=i % 3 != 2, via_rename=bool(i % 2))
        cfg = load_station_config(path)
        engine, factory, _ = open_station_database(cfg)

        def committed() -> list[Frame]:
            with factory() as db:
                return list(db.scalars(select(Frame).order_by(Frame.id)))

        deadline = time.monotonic() + 90
        while len(committed()) < 6 and time.monotonic() < deadline:
            time.sleep(0.2)
        rows = committed()
        assert len(rows) == 6, daemon.output()
        defective = [f for f in rows if f.status == "defective"]
        assert len(defective) >= 2

        # filter: the Detections tab, then one position; no page reload from here on (window marker survives)
        browser.get(url)
        browser.execute_script("window.__stillHere = 'same page'")
        browser.find_element("css selector", '.tab[data-kind="defective"]').click()
        wait_js(browser, "return document.querySelector('.tab[data-kind=defective]').classList.contains('active') && "
                         f"document.querySelectorAll('#rows tr.row').length === {len(defective)}")
        position = defective[0].position
        from selenium.webdriver.support.ui import Select

        Select(browser.find_element("css selector", "#filters select[name=position]")).select_by_value(position)
        expected = [f.id for f in reversed(defective) if f.position == position]
        wait_js(browser, "return Array.from(document.querySelectorAll('#rows tr.row')).map(r => +r.dataset.id)"
                         f".join(',') === '{','.join(map(str, expected))}'")
        assert f"position={position}" in browser.current_url and "kind=defective" in browser.current_url

        # frame: click the first row; the panel shows the annotated frame and large crops
        browser.find_element("css selector", "#rows tr.row").click()
        wait_js(browser, f"return document.querySelector('#frame') && +document.querySelector('#frame').dataset.frameId === {expected[0]}")
        wait_js(browser, "return Array.from(document.querySelectorAll('#panel img')).every(i => i.complete && i.naturalWidth > 0)")
        shot = tmp_path / "frame.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        crop_regions_rendered(browser, shot)

        # review with the keyboard: c confirms the selected detection, f marks the next one a false call
        from selenium.webdriver.common.action_chains import ActionChains

        target = expected[0]
        with factory() as db:
            n_dets = len(db.get(Frame, target).detections)
        ActionChains(browser).send_keys("c").perform()
        wait_js(browser, "return document.querySelector('#toast').textContent.includes('confirm saved')")
        if n_dets > 1:
            ActionChains(browser).send_keys("f").perform()
            wait_js(browser, "return document.querySelector('#toast').textContent.includes('false call saved')")
        # a missed defect: m, drag a box on the image, 1 picks the first class
        browser.find_element("css selector", f'#rows tr.row[data-id="{target}"]').click()
        wait_js(browser, f"return +document.querySelector('#frame').dataset.frameId === {target} && "
                         "document.querySelector('#frame-image').complete")
        ActionChains(browser).send_keys("m").perform()
        image = browser.find_element("css selector", "#frame-image")
        ActionChains(browser).move_to_element_with_offset(image, -60, -60).click_and_hold() \
            .move_by_offset(50, 40).release().perform()
        wait_js(browser, "return !document.querySelector('#class-picker').hidden")
        ActionChains(browser).send_keys("1").perform()
        wait_js(browser, "return document.querySelector('#toast').textContent.includes('missed saved')")
        with factory() as db:
            events = db.scalars(select(ReviewEvent).order_by(ReviewEvent.id)).all()
        actions = [(e.frame_id, e.action, e.reviewer) for e in events]
        assert actions[0] == (target, "confirm", "local")
        assert (target, "missed", "local") in actions
        missed = next(e for e in events if e.action == "missed")
        assert missed.class_name == WEB_CLASSES[0] and missed.x2 - missed.x1 >= 2 and missed.y2 - missed.y1 >= 2
        shot2 = tmp_path / "reviewed.png"
        browser.save_screenshot(str(shot2))
        assert cv2.imread(str(shot2)) is not None

        # live: a new defective frame at this position shows at the top of the list, without a reload
        frames.drop(drop, f"{position}_blive.jpg", int(position[-1]), defective=True)
        wait_js(browser, f"return document.querySelector('#rows tr.row').dataset.id > {max(f.id for f in rows)}",
                timeout=60)
        assert browser.execute_script("return window.__stillHere") == "same page"

        # export: the link carries the filters; the downloaded CSV holds the reviewed verdicts
        browser.find_element("css selector", "#export").click()
        deadline = time.monotonic() + 30
        files: list[Path] = []
        while time.monotonic() < deadline and not files:
            files = [p for p in browser.downloads.glob("*.csv")]
            time.sleep(0.2)
        assert files, "no CSV downloaded"
        exported = list(csv.DictReader(io.StringIO(files[0].read_text())))
        assert {r["position"] for r in exported} == {position} and {r["status"] for r in exported} == {"defective"}
        assert {r["verdict"] for r in exported if int(r["frame_id"]) == target} >= {"confirmed", "missed"}
        assert browser.execute_script("return window.__stillHere") == "same page"
        engine.dispose()
    finally:
        page.stop()
        daemon.stop()
