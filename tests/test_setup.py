"""Set-up and versions: what the README and the requirements promise is what is installed.

CI runs these on Python 3.11 (``make test``) and on Python 3.10 (``make unit``).
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
SUPPORTED = ("3.10", "3.11", "3.12")
DEV_TOOLS = {
    "pytest",
    "pytest-timeout",
    "nbval",
    "hypothesis",
    "ruff",
    "playwright",
    "nbgrader",
    "sphinx",
    "myst-nb",
    "sphinx-book-theme",
    "sphinx-mathjax-offline",
}


def _requirements(name: str) -> list[Requirement]:
    lines = (ROOT / name).read_text().splitlines()
    reqs = [line.split("#")[0].strip() for line in lines]
    return [Requirement(r) for r in reqs if r and not r.startswith("-r")]


def _applies(req: Requirement, python: str) -> bool:
    return req.marker is None or req.marker.evaluate({"python_version": python})


def test_learners_get_no_development_tools():
    learner = {r.name.lower() for r in _requirements("requirements.txt")}
    dev = {r.name.lower() for r in _requirements("requirements-dev.txt")}
    assert not learner & DEV_TOOLS, learner & DEV_TOOLS
    assert DEV_TOOLS <= dev
    assert "-r requirements.txt" in (ROOT / "requirements-dev.txt").read_text().splitlines()


@pytest.mark.parametrize("name", ["requirements.txt", "requirements-dev.txt"])
@pytest.mark.parametrize("python", SUPPORTED)
def test_each_supported_python_gets_exactly_one_pin_of_each_package(name, python):
    reqs = _requirements(name)
    for package in {r.name for r in reqs}:
        pins = [r for r in reqs if r.name == package and _applies(r, python)]
        assert len(pins) == 1, f"{name}: {package} on Python {python}: {pins}"
        assert str(pins[0].specifier).startswith("=="), f"{name}: {pins[0]} is not exact"


def test_this_environment_is_the_pinned_one():
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    pyproject = (ROOT / "pyproject.toml").read_text()  # (tomllib is Python 3.11+)
    requires = re.search(r'^requires-python = "([^"]+)"', pyproject, re.M).group(1)
    assert python in SpecifierSet(requires)
    assert f'"Programming Language :: Python :: {python}"' in pyproject
    wrong = []
    for req in _requirements("requirements.txt") + _requirements("requirements-dev.txt"):
        if not _applies(req, python):
            continue
        try:
            installed = version(req.name)
        except PackageNotFoundError:
            wrong.append(f"{req.name} is not installed")
            continue
        # a local build tag (torch's "+cpu") is the same release
        if installed.split("+")[0] not in req.specifier:
            wrong.append(f"{req.name} {installed}, pinned {req.specifier}")
    assert not wrong, wrong


def test_jupyterlab_settings_use_names_jupyterlab_knows():
    from jupyterlab.handlers.announcements import NeverCheckForUpdate
    from jupyterlab.labapp import LabApp

    server = json.loads((ROOT / "jupyter-config/etc/jupyter/jupyter_lab_config.json").read_text())[
        "LabApp"
    ]
    assert server["news_url"] is None
    assert set(server) <= set(LabApp.class_traits(config=True))
    assert server["check_for_updates_class"] == "jupyterlab.NeverCheckForUpdate"
    assert NeverCheckForUpdate is not None
    overrides = json.loads(
        (ROOT / "jupyter-config/share/jupyter/lab/settings/overrides.json").read_text()
    )
    import jupyterlab

    schemas = Path(jupyterlab.__file__).parent / "schemas"
    for plugin, values in overrides.items():
        package, name = plugin.split(":")
        schema = json.loads((schemas / package / f"{name}.json").read_text())["properties"]
        for key, value in values.items():
            allowed = [c["const"] for c in schema[key].get("oneOf", [])]
            assert key in schema and (not allowed or value in allowed), (plugin, key, value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, wait: float = 30.0) -> str:
    """GET from the server this test started (it logs its URL a moment before it listens)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                return response.read().decode()
        except urllib.error.URLError as e:
            if not isinstance(e.reason, ConnectionRefusedError) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.slow
def test_make_lab_prints_the_url_of_lesson_00_and_keeps_the_news_off():
    if shutil.which("make") is None:
        pytest.skip("no make here")
    prefix = Path(sys.prefix)
    if not (prefix / "bin" / "jupyter").exists():
        pytest.skip(f"JupyterLab is not installed in {prefix}")
    if not (prefix / "share/jupyter/lab/settings/overrides.json").exists():
        pytest.fail(f"{prefix} lacks the course's JupyterLab settings: run make setup")
    port = _free_port()
    args = f"--no-browser --ip=127.0.0.1 --port={port} --ServerApp.port_retries=0"
    proc = subprocess.Popen(
        ["make", "-o", f"{prefix}/.installed", "lab", f"VENV={prefix}", f"LAB_ARGS={args}"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: make, and the server it starts
    )
    try:
        url, seen, deadline = None, [], time.monotonic() + 90
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            seen.append(line)
            m = re.search(r"(http://127\.0\.0\.1:\d+/\S+)", line)
            if m:
                url = m.group(1)
        assert url, "".join(seen)
        assert re.fullmatch(
            rf"http://127\.0\.0\.1:{port}/lab/tree/lessons/00_start_here\.ipynb\?token=\w+", url
        ), url
        token = url.split("token=")[1]
        page = _get(url)
        config = json.loads(
            re.search(r'id="jupyter-config-data"[^>]*>(.*?)</script>', page, re.S).group(1)
        )
        assert config["news"] == {"disabled": True}
        base = f"http://127.0.0.1:{port}/lab/api"
        notification = json.loads(
            _get(f"{base}/settings/@jupyterlab/apputils-extension:notification?token={token}")
        )
        # overrides.json sets the defaults every learner starts from
        defaults = {k: v.get("default") for k, v in notification["schema"]["properties"].items()}
        assert defaults["fetchNews"] == "false" and defaults["checkForUpdates"] is False
        assert "fetchNews" not in notification["settings"]  # no user setting overrides them
        assert json.loads(_get(f"{base}/update?token={token}"))["notification"] is None
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
