"""Fixtures of the browser test: a throw-away JupyterLab server and Debian's Chromium.

* ``jupyter_lab``: ``jupyter lab`` on 127.0.0.1 (a free port, no token, no password) with
  HOME and every Jupyter directory in a temporary folder, serving a temporary root with the
  test notebook copied in. The kernel is the server's own Python (the project's venv) as
  ``python3`` (``KernelSpecManager.ensure_native_kernel``). The server, and so its kernels,
  are always shut down at the end.
* ``chromium_page``: a Playwright page in ``/usr/bin/chromium`` (Playwright's own browser
  download is not used). Without Chromium or Playwright the test is skipped with the reason,
  except in CI (the ``CI`` environment variable set), where it fails: run
  ``tests/browser/setup.sh`` there first.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CHROMIUM = os.environ.get("UNIFIEDCTX_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SERVER_START_TIMEOUT = 60.0


def _missing(reason: str):
    """Skip on a developer's machine, fail in CI (where setup.sh must have installed it)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is an error: run tests/browser/setup.sh)")
    pytest.skip(f"{reason}; install it with tests/browser/setup.sh")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (localhost only)
        return json.loads(response.read().decode())


class LabServer:
    """A running ``jupyter lab``: its base ``url``, root folder and log file."""

    def __init__(self, url: str, root: Path, log: Path, process: subprocess.Popen):
        self.url, self.root, self.log, self.process = url, root, log, process

    def kernels(self) -> list[dict]:
        """The server's kernels (``/api/kernels``), with their ``execution_state``."""
        return _get_json(f"{self.url}/api/kernels")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self) -> None:
        """Shut the server down (it stops its kernels); kill it if it does not go in 15 s."""
        if self.process.poll() is not None:
            return
        try:
            request = urllib.request.Request(f"{self.url}/api/shutdown", method="POST")
            urllib.request.urlopen(request, timeout=5).close()  # noqa: S310 (localhost only)
        except OSError:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)  # the server's own process group
            self.process.wait(timeout=5)


def _user_settings(config_dir: Path) -> None:
    """No news or update checks (no network), no windowing (every output rendered)."""
    settings = config_dir / "lab" / "user-settings" / "@jupyterlab"
    files = {
        "apputils-extension/notification.jupyterlab-settings":
            {"fetchNews": "false", "checkForUpdates": False},
        "notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    }
    for name, value in files.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


@pytest.fixture(scope="module")
def jupyter_lab(tmp_path_factory):
    """Start JupyterLab in a temporary Jupyter home; yield a :class:`LabServer`; stop it."""
    base = tmp_path_factory.mktemp("jupyter")
    home, root = base / "home", base / "root"
    dirs = {name: base / name for name in ("config", "data", "runtime", "ipython")}
    for path in (home, root, *dirs.values()):
        path.mkdir(parents=True, exist_ok=True)
    _user_settings(dirs["config"])
    for notebook in HERE.glob("*.ipynb"):  # explorer_test, training_test
        shutil.copy(notebook, root / notebook.name)
    env = {
        **os.environ,
        "HOME": str(home),
        "JUPYTER_CONFIG_DIR": str(dirs["config"]),
        "JUPYTER_DATA_DIR": str(dirs["data"]),
        "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
        "IPYTHONDIR": str(dirs["ipython"]),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",  # a small shared CPU: one thread for torch in the kernel
        "JUPYTER_PLATFORM_DIRS": "1",
    }
    env.pop("JUPYTER_PATH", None)
    env.pop("JUPYTER_CONFIG_PATH", None)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = base / "jupyter.log"
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        "--IdentityProvider.token=", "--ServerApp.password=", "--allow-root",
        f"--ServerApp.root_dir={root}", "--KernelSpecManager.ensure_native_kernel=True",
        "--MappingKernelManager.default_kernel_name=python3",
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    server = LabServer(url, root, log, process)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"jupyter lab exited with {process.returncode}:\n{server.log_tail()}")
            try:
                _get_json(f"{url}/api/status", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not answer /api/status in {SERVER_START_TIMEOUT:.0f} s:"
                                f"\n{server.log_tail()}")
                time.sleep(0.3)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def chromium_page():
    """A Playwright page in Debian's Chromium, 1400x1200; closed at the end."""
    if not Path(CHROMIUM).exists():
        _missing(f"Chromium not found at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the Python package playwright is not installed")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            yield page
        finally:
            browser.close()
