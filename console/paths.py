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
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from console.errors import UsageError

        raise UsageError(f"cannot use the records folder {path} ({exc.strerror or exc}); make it a writable "
                         "folder or set REDLINE_HOME to one") from None
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


def sandbox_module(relative: str):
    """A module of the in-sandbox code (stdlib only), imported on the host from this checkout, e.g.
    the agent's settings parser for the judge or the scripted runtime's trajectory parser for the
    model catalogue: the same code as in the image, so both sides read things alike."""
    import importlib.util
    import sys

    path = SANDBOX_IMAGES / relative
    name = "redline_sandbox_" + path.stem
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


def write_atomically(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of it (`<name>.partial`, then a rename)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
