"""A records and config folder of a benchmark's own, with one scripted model in it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def scripted_home(prefix: str, name: str, trajectory: str) -> Path:
    """Points REDLINE_HOME and REDLINE_CONFIG at a new temporary folder whose catalogue holds
    `scripted:<name>` replaying `trajectory`; returns the folder."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["REDLINE_HOME"], os.environ["REDLINE_CONFIG"] = str(root / "home"), str(root / "config")
    (root / "config" / "models").mkdir(parents=True)
    (root / f"{name}.txt").write_text(trajectory)
    (root / "config" / "models" / f"{name}.toml").write_text(
        f'id = "scripted:{name}"\nruntime = "scripted"\nweights = "{root / f"{name}.txt"}"\n')
    return root
