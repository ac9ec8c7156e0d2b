"""The console on the screens it meets: a laptop on a projector (1366x768), a desktop (1920x1080) and
a 4K screen at 200% scale (1920x1080 logical pixels, device pixel ratio 2). On each, the window opens
fitted to the screen and stays so through a live trial (long commands, many ports, a replica's tab),
with Launch and KILL wholly in sight."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SCREENS = {"1366x768": (1366, 768, 1), "1920x1080": (1920, 1080, 1), "4k-200pct": (1920, 1080, 2)}


@pytest.mark.parametrize("name", SCREENS)
def test_launch_and_kill_are_in_sight_on_every_screen(name, tmp_path):
    width, height, dpr = SCREENS[name]
    config = tmp_path / "screen.json"
    config.write_text(json.dumps({"screens": [{"name": name, "x": 0, "y": 0, "width": width, "height": height,
                                               "logicalDpi": 96, "logicalBaseDpi": 96, "dpr": dpr}]}))
    shot = Path(os.environ["REDLINE_SCREENSHOTS"]) / f"screen_{name}.png" if os.environ.get("REDLINE_SCREENSHOTS") \
        else tmp_path / "shot.png"
    env = {**os.environ, "QT_QPA_PLATFORM": f"offscreen:configfile={config}", "REDLINE_HOME": str(tmp_path / "home"),
           "REDLINE_CONFIG": str(tmp_path / "config"), "PYTHONPATH": str(HERE)}
    done = subprocess.run([sys.executable, str(HERE / "screen_check.py"), str(shot)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["screen"] == [width, height] and seen["dpr"] == dpr, seen
    assert seen["window"][0] <= width and seen["window"][1] <= height, f"the window does not fit: {seen}"
    assert seen["launch"], f"Launch is not wholly in sight: {seen}"
    assert seen["kill"], f"KILL is not wholly in sight: {seen}"
    assert shot.stat().st_size > 0
