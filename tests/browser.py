"""A real headless Chromium for page tests (Debian's chromium and chromium-driver, driven
through selenium): installed with apt-get when missing and this process may (root, apt-get
there), else the tests that need it are skipped saying why."""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
PACKAGES = ("chromium", "chromium-driver")


def find_browser() -> tuple[str | None, str | None]:
    """Returns (chromium, chromedriver) paths, None for each one not on PATH."""
    return shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")


def install_browser() -> str | None:
    """Installs Debian's chromium and chromium-driver with apt-get; returns None when it
    worked, else why not (one line)."""
    if not shutil.which("apt-get"):
        return "no chromium/chromedriver on PATH and no apt-get to install them"
    if os.geteuid() != 0:
        return "no chromium/chromedriver on PATH and not root to apt-get install " + " ".join(PACKAGES)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]):
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(cmd)}` took over 15 minutes"
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            return f"`{' '.join(cmd)}` failed: {tail[0]}"
    return None


@dataclass
class RenderedPage:
    """What the browser saw: rows of the trials table, images (loaded or not), console
    errors, the text, and where its full-page screenshot is."""

    trial_rows: int
    baseline_rows: int
    images: list[dict]
    console_errors: list[str]
    text: str
    screenshot: Path


class Browser:
    """One headless Chromium session (selenium WebDriver)."""

    def __init__(self, chromium: str, chromedriver: str):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
            opts.add_argument(arg)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(chromedriver), options=opts)

    def render(self, page: Path, screenshot_name: str) -> RenderedPage:
        """Opens `page` (a file) and returns what it rendered; saves a full-page screenshot
        as test-artifacts/<screenshot_name>.png."""
        from selenium.webdriver.common.by import By

        d = self.driver
        d.get(Path(page).resolve().as_uri())
        images = d.execute_script(
            "return Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, "
            "width: i.naturalWidth, height: i.naturalHeight}))")
        errors = [e["message"] for e in d.get_log("browser") if e.get("level") == "SEVERE"]
        height = d.execute_script("return document.documentElement.scrollHeight")
        d.set_window_size(1280, min(max(int(height), 900), 16000))
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / f"{screenshot_name}.png"
        d.save_screenshot(str(shot))
        return RenderedPage(
            trial_rows=len(d.find_elements(By.CSS_SELECTOR, "table.trials tbody tr.trial")),
            baseline_rows=len(d.find_elements(By.CSS_SELECTOR, "table.trials tbody tr.baseline")),
            images=images, console_errors=errors, text=d.find_element(By.TAG_NAME, "body").text, screenshot=shot)

    def close(self) -> None:
        """Ends the browser session."""
        self.driver.quit()
