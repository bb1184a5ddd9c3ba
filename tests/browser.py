"""Helpers for checks in a real headless browser: what a page shows (text, images, console errors)
and an MLflow UI server started over a test's tracking store."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from conftest import free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
    "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
)

# Per <img>: its src and whether it loaded (complete with a non-zero natural width).
_IMAGES_JS = """
return Array.from(document.images).map(img => ({
    src: img.currentSrc || img.src || img.getAttribute('src') || '',
    ok: img.complete && img.naturalWidth > 0,
}));
"""


def page_report(driver, url: str, timeout: float = 30.0) -> dict:
    """Open ``url`` and report what the page shows once the document is complete: its title, the
    body's visible text, how many <img> it has, the src of those that did not load (80 characters
    at most each), and the browser console's SEVERE entries (empty where the driver keeps no log)."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script("return document.readyState") == "complete")
    return current_page_report(driver)


def current_page_report(driver) -> dict:
    """The same report as `page_report` for the page the browser shows now, without reloading it."""
    images = driver.execute_script(_IMAGES_JS) or []
    return {
        "title": driver.title,
        "text": driver.execute_script("return document.body ? document.body.innerText : ''") or "",
        "images": len(images),
        "broken_images": [img["src"][:80] for img in images if not img["ok"]],
        "console_errors": console_errors(driver),
    }


def console_errors(driver) -> list[str]:
    """SEVERE entries of the browser console since the last call (the driver drains its log)."""
    try:
        entries = driver.get_log("browser")
    except Exception:  # a driver without the log endpoint, or logging not enabled for the session
        return []
    return [e.get("message", "") for e in entries if e.get("level") == "SEVERE"]


def chromium_options(user_data_dir: str):
    """Options for headless Chromium from Debian's package, with the console log kept."""
    from selenium.webdriver.chrome.options import Options

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    options.add_argument("--window-size=1600,1000")  # wide enough for MLflow's run tables and side panels
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return options


def start_chromium(user_data_dir: str):
    """A selenium driver for headless Chromium through Debian's chromedriver; both paths are given
    explicitly, so selenium-manager neither looks for nor downloads anything."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    service = Service(executable_path=str(CHROMEDRIVER))
    return webdriver.Chrome(service=service, options=chromium_options(user_data_dir))


def start_mlflow_ui(tracking_uri: str, artifacts_dir: str | Path | None = None,
                    timeout: float = 60.0, app_name: str | None = "uqflow") -> tuple[subprocess.Popen, str]:
    """Start ``mlflow ui`` over ``tracking_uri`` on a free loopback port; returns the process and
    its base URL once ``GET /health`` answers OK. The caller terminates the process.

    Runs keep the artifact location they were logged with (for a SQLite store, a local folder), so
    the server needs no artifact option to show them; ``artifacts_dir`` only sets where experiments
    created through the server would keep theirs. The server runs in a temporary folder so that
    its default local folders (``./mlartifacts``) land there. Fails with the server's output when
    it does not come up within ``timeout`` seconds. ``app_name`` is MLflow's ``--app-name``: by
    default uqflow's (uqflow/mlflow_app.py), as README starts the UI; None for MLflow's plain app.
    """
    mlflow_exe = Path(sys.executable).parent / "mlflow"
    port = free_port()
    cmd = [str(mlflow_exe), "ui", "--backend-store-uri", tracking_uri, "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]  # one uvicorn worker: enough for one browser
    if app_name:
        cmd += ["--app-name", app_name]
    if artifacts_dir is not None:
        cmd += ["--default-artifact-root", Path(artifacts_dir).resolve().as_uri()]
    workdir = tempfile.mkdtemp(prefix="uqflow-mlflow-ui-")
    log = open(Path(workdir) / "server.log", "w+b")  # noqa: SIM115 (read back on failure)
    # Its own process group: `mlflow ui` runs the web server (uvicorn) as a child process, and
    # stopping the group stops both.
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_path = Path(workdir) / "server.log"  # type: ignore[attr-defined]
    proc.log_file = log  # type: ignore[attr-defined]
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=2) as resp:
                if resp.status == 200 and resp.read().strip() == b"OK":
                    return proc, base_url
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.25)
    exited = proc.poll()
    stop_process(proc, remove_log=False)
    output = server_output(proc)
    shutil.rmtree(workdir, ignore_errors=True)
    what = (f"exited with code {exited} before {base_url}/health answered" if exited is not None
            else f"did not answer {base_url}/health within {timeout:.0f} s")
    raise RuntimeError(f"mlflow ui {what}; command: {' '.join(cmd)}\n--- server output ---\n{output}")


def server_output(proc: subprocess.Popen, limit: int = 20000) -> str:
    """The last ``limit`` characters of what a server from `start_mlflow_ui` printed."""
    path = getattr(proc, "log_path", None)
    if path is None or not Path(path).exists():
        return ""
    return Path(path).read_text(errors="replace")[-limit:]


def stop_process(proc: subprocess.Popen, timeout: float = 15.0, remove_log: bool = True) -> None:
    """Stop a server from `start_mlflow_ui` and the workers it started: SIGTERM to its process
    group, SIGKILL after ``timeout`` seconds. Its temporary folder (with the output) is removed
    unless ``remove_log`` is false."""
    def signal_group(sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)  # the group `start_new_session` made, led by proc
        except (ProcessLookupError, PermissionError):
            pass

    signal_group(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        signal_group(signal.SIGKILL)
        proc.wait()
    else:
        signal_group(signal.SIGKILL)  # any worker left behind by a leader that already exited
    log = getattr(proc, "log_file", None)
    if log is not None:
        log.close()
    path = getattr(proc, "log_path", None)
    if remove_log and path is not None:
        shutil.rmtree(Path(path).parent, ignore_errors=True)


def set_viewport(driver, width: int, height: int) -> tuple[int, int]:
    """Size the window so that the page's viewport (window.innerWidth x innerHeight) is ``width`` x
    ``height``: the window's frame is measured once and added. Returns the viewport then."""
    driver.set_window_size(width, height)
    inner_w, inner_h = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    driver.set_window_size(width + (width - inner_w), height + (height - inner_h))
    return tuple(driver.execute_script("return [window.innerWidth, window.innerHeight]"))


def keep_screenshots(folder: Path, names) -> None:
    """Copy the named screenshots of a test's folder into ``$UQFLOW_SCREENSHOTS``, when set, for a
    person to look at."""
    if target := os.environ.get("UQFLOW_SCREENSHOTS"):
        Path(target).mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copy(Path(folder) / name, target)
