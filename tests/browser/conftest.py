"""Browser tests: a JupyterLab server and a headless Chromium, both started by the tests themselves.

Session fixtures:
- `lab_server`: JupyterLab on 127.0.0.1, a free port, a random token, root_dir = the repository root, with
  news, update checks and autosave off and every Jupyter/IPython directory isolated in a temporary folder
  (so a user's kernels, settings or workspaces never leak in, and notebooks on disk are never rewritten).
- `chromium`: a Playwright persistent context on Debian's chromium (`CHROMIUM` overrides the path), headless,
  with a fresh user-data dir.
- `lab`: a function-scoped `LabDriver` (see labdriver.py) on a new page.

Skip rule: these tests skip, with a printed reason, only where no Chromium or no playwright can be had.
With WORKBENCH_REQUIRE_BROWSER=1 (CI sets it) that skip becomes a failure. Anything else that goes wrong
(JupyterLab missing, a server that never answers, a browser that cannot start) is a failure.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from labdriver import LabDriver

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "artifacts" / "browser"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1400, "height": 1000}
SERVER_START_S = 90.0

# JupyterLab user settings written into the isolated settings dir: no network toasts, no autosave (running
# a notebook must not write its outputs back to the repository), every cell attached to the DOM (so the
# tests can query plots that are scrolled out of view).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {
        "fetchNews": "false",
        "checkForUpdates": False,
        "doNotDisturbMode": True,
    },
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
}
LAB_CONFIG = {
    "ServerApp": {"open_browser": False},
    "LabApp": {
        "news_url": None,
        "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
        "expose_app_in_browser": True,
    },
}


def pytest_collection_modifyitems(config, items) -> None:
    """Every test under tests/browser carries the `browser` marker (select with `-m browser`)."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)


def unavailable(reason: str) -> None:
    """Skip for a missing browser, or fail when WORKBENCH_REQUIRE_BROWSER=1 demands one."""
    if os.environ.get("WORKBENCH_REQUIRE_BROWSER") == "1":
        pytest.fail(f"WORKBENCH_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    print(f"browser tests skipped: {reason}", file=sys.stderr)
    pytest.skip(reason)


def chromium_path() -> str:
    """The chromium executable: $CHROMIUM, else Debian's /usr/bin/chromium."""
    return os.environ.get("CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="session")
def browser_requirements() -> str:
    """Check for playwright and a Chromium binary before anything expensive starts."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        unavailable("the playwright package is not installed (pip install -e '.[dev]')")
    path = chromium_path()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        unavailable(f"no Chromium executable at {path} (apt-get install chromium, or set CHROMIUM=/path)")
    for module in ("jupyterlab", "ipykernel"):
        try:
            __import__(module)
        except ImportError:
            pytest.fail(f"{module} is not installed in {sys.executable}: pip install -e '.[dev]'", pytrace=False)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class LabServer:
    """Where the test JupyterLab listens; `url(path)` adds the token."""

    port: int
    token: str
    root: Path
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        sep = "&" if "?" in path else "?"
        return f"{self.base}/{path.lstrip('/')}{sep}token={self.token}"

    def api(self, path: str, method: str = "GET"):
        """JSON from the server's REST API (for example 'api/kernels')."""
        req = urllib.request.Request(self.url(path), method=method)
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else None


def _isolated_env(home: Path) -> dict[str, str]:
    """Environment with Jupyter's config/data/runtime/settings dirs and IPython's dir inside `home`."""
    dirs = {
        "JUPYTER_CONFIG_DIR": home / "config",
        "JUPYTER_DATA_DIR": home / "data",
        "JUPYTER_RUNTIME_DIR": home / "runtime",
        "JUPYTERLAB_SETTINGS_DIR": home / "lab-settings",
        "JUPYTERLAB_WORKSPACES_DIR": home / "lab-workspaces",
        "IPYTHONDIR": home / "ipython",
    }
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    (dirs["JUPYTER_CONFIG_DIR"] / "jupyter_lab_config.json").write_text(json.dumps(LAB_CONFIG))
    for plugin, values in LAB_SETTINGS.items():
        target = dirs["JUPYTERLAB_SETTINGS_DIR"] / f"{plugin}.jupyterlab-settings"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(values))
    env = {**os.environ, **{k: str(v) for k, v in dirs.items()}}
    env["PYTHONHASHSEED"] = "0"
    env.pop("JUPYTER_PATH", None)
    return env


def _wait_for_server(server: LabServer, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited with code {proc.returncode}; log:\n{server.log.read_text()[-3000:]}")
        try:
            server.api("api/status")
            return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"JupyterLab did not answer at {server.base} in {SERVER_START_S:.0f}s; "
                f"log:\n{server.log.read_text()[-3000:]}")


def _stop_server(server: LabServer, proc: subprocess.Popen) -> None:
    """Shut kernels down through the API, then SIGTERM the server (SIGKILL its group if it hangs)."""
    try:
        for kernel in server.api("api/kernels") or []:
            server.api(f"api/kernels/{kernel['id']}", method="DELETE")
    except OSError:
        pass
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


@pytest.fixture(scope="session")
def lab_server(browser_requirements, tmp_path_factory) -> LabServer:
    """A JupyterLab server serving the repository root, stopped (kernels included) after the session."""
    home = tmp_path_factory.mktemp("jupyter-home")
    server = LabServer(port=free_port(), token=secrets.token_hex(16), root=REPO_ROOT, log=home / "lab.log")
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={server.port}", "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={server.token}", f"--ServerApp.root_dir={REPO_ROOT}",
    ]  # fmt: skip
    with open(server.log, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=_isolated_env(home), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_server(server, proc)
        yield server
    finally:
        _stop_server(server, proc)


@pytest.fixture(scope="session")
def chromium(browser_requirements, tmp_path_factory):
    """A headless Chromium (Playwright persistent context on a fresh user-data dir)."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    pw = sync_playwright().start()
    try:
        try:
            context = pw.chromium.launch_persistent_context(
                str(profile), executable_path=browser_requirements, headless=True, args=CHROMIUM_ARGS,
                viewport=VIEWPORT,
            )
        except PlaywrightError as err:
            pytest.fail(f"Chromium at {browser_requirements} did not start: {err}", pytrace=False)
        yield context
        context.close()
    finally:
        pw.stop()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """artifacts/browser/ (git-ignored): screenshots of every step."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def lab(lab_server, chromium, artifacts_dir, request):
    """A `LabDriver` on a new page; its notebook's kernel is shut down after the test."""
    page = chromium.new_page()
    driver = LabDriver(page, lab_server, artifacts_dir, prefix=request.node.name)
    try:
        yield driver
    finally:
        driver.close()
