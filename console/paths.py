"""Where Redline keeps data, caches and its shipped resources."""

import os
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent
RESOURCES = REPO_ROOT / "resources"
SANDBOX_IMAGES = REPO_ROOT / "sandbox_images"


def data_dir() -> Path:
    """Records (SQLite index, transcripts); REDLINE_HOME overrides for tests and labs."""
    if os.environ.get("REDLINE_HOME"):
        path = Path(os.environ["REDLINE_HOME"])
    else:
        import platformdirs

        path = Path(platformdirs.user_data_dir("redline"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """Build caches (wheels, rootfs tarballs) shared by every clone on this machine."""
    if os.environ.get("REDLINE_CACHE"):
        path = Path(os.environ["REDLINE_CACHE"])
    else:
        path = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "redline"
    path.mkdir(parents=True, exist_ok=True)
    return path


def config_dir() -> Path:
    """User scenarios and models (scenarios/, models/)."""
    if os.environ.get("REDLINE_CONFIG"):
        path = Path(os.environ["REDLINE_CONFIG"])
    else:
        import platformdirs

        path = Path(platformdirs.user_config_dir("redline"))
    return path
