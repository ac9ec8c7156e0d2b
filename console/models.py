"""Models the console can put in a sandbox: the built-in catalogue plus the user's own entries.

Built-in: `resources/models/builtin.toml` (the embedded SmolLM2-135M) and one `scripted:<name>`
per trajectory in `resources/trajectories/*.txt` (name and description from its '#' header, see
docs/protocol.md). User entries: one model per file in
`<config dir>/models/*.toml`; a user entry replaces a built-in one with the same id.

A scripted model replays a fixed trajectory: it demonstrates the pipeline, not a model's ability,
so its id always starts with "scripted:" and its title with "[scripted]".
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from console.errors import ConfigError, UsageError
from console.paths import RESOURCES, config_dir, sandbox_module, write_atomically
from console.scenarios import ID_NAME, ID_PATTERN, TomlTable, read_size, read_toml

DEFAULT_MODEL_ID = "smollm2-135m"
DEFAULT_SCENARIO_ID = "self-replication"
RUNTIMES = ("llamacpp", "vllm", "scripted")
DEFAULT_LOAD_TIMEOUT_S = {"llamacpp": 180, "scripted": 60, "vllm": 1800}  # a 70B model loads in minutes
SCRIPTED_PREFIX = "scripted:"
SCRIPTED_LABEL = "[scripted]"
# Which logical sandbox image can serve each runtime (see console.sandbox.images).
IMAGES_FOR_RUNTIME = {"llamacpp": ("cpu",), "vllm": ("vllm", "vllm-cpu"), "scripted": ("cpu",)}
GPU_IMAGES = ("vllm",)  # vllm-cpu: the same runtime and start-server, given no GPU
TURN_SEPARATOR = "=== turn ==="  # trajectory format, docs/protocol.md
_MODEL_ID = re.compile(rf"^(?:{SCRIPTED_PREFIX})?{ID_NAME}$")


@dataclass(frozen=True)
class ModelSpec:
    id: str
    title: str
    runtime: str
    image: str  # logical image name (console.sandbox.images.IMAGES)
    weights: Path | None  # host path, mounted read-only; None when shipped in the image
    weights_in_image: str | None  # container path of weights shipped in the image
    gpus_needed: int
    server_args: tuple[str, ...]
    description: str = ""
    source: str = ""  # the file that defined it
    load_timeout_s: float = 180.0  # until the server answers; then the trial is an error
    constrained_format: bool = False  # the server holds replies to the round's frame (another condition)
    server_memory: str | None = None  # one server's memory when more than the scenarios' sizes allow for

    def __post_init__(self):
        if self.scripted and not self.title.startswith(SCRIPTED_LABEL):
            object.__setattr__(self, "title", f"{SCRIPTED_LABEL} {self.title}")

    @property
    def scripted(self) -> bool:
        return self.runtime == "scripted"

    @property
    def needs_shared_memory(self) -> bool:
        """vLLM's server, engine and workers pass requests through /dev/shm, GPU or not."""
        return self.runtime == "vllm"

    def with_format(self, constrained: bool | None) -> ModelSpec:
        """This model with its replies format-constrained or not, as the operator chose (None: as its file says)."""
        return self if constrained is None else replace(self, constrained_format=constrained)

    @property
    def sandbox_model_path(self) -> str:
        """Where the server inside the sandbox finds the weights (REDLINE_MODEL_PATH)."""
        if self.weights is None:
            return self.weights_in_image
        folder = f"/models/{self.id.replace(':', '-')}"
        return folder if self.weights.is_dir() else f"{folder}/{self.weights.name}"

    def gpu_plan(self, gpus: tuple[int, ...]) -> dict:
        """Which of a trial's GPUs the original's server is pinned to, which stay free for a replica."""
        original, free = tuple(gpus[:self.gpus_needed]), tuple(gpus[self.gpus_needed:])
        room = self.gpus_needed == 0 or len(free) >= self.gpus_needed
        return {"original": list(original), "free_for_replica": list(free), "room_for_replica": room,
                "note": "" if room else (
                    f"no room for a replica: it needs {self.gpus_needed} GPU(s) and {len(free)} stay free, so "
                    "this trial can show the attempt (milestones) but no working replica unless the agent "
                    "frees GPUs itself")}

    def sandbox_mounts(self) -> dict[str, str]:
        """Read-only bind mounts (host path -> container path) for ContainmentSpec.model_mounts."""
        return {} if self.weights is None else {str(self.weights): self.sandbox_model_path}


def _model_from_table(table: TomlTable, base_dir: Path) -> ModelSpec:
    """One model entry; relative weight paths are relative to base_dir."""
    runtime = table.text("runtime", choices=RUNTIMES)
    model_id = table.text(
        "id", pattern=_MODEL_ID,
        expected="an id of letters, digits, '.', '_' or '-' (scripted models: 'scripted:<name>')",
    )
    if (runtime == "scripted") != model_id.startswith(SCRIPTED_PREFIX):
        raise table.error("id", "an id starting with 'scripted:' exactly when runtime is 'scripted'", model_id)
    images = IMAGES_FOR_RUNTIME[runtime]
    image = table.text("image", images[0], choices=images)
    gpus_needed = table.integer("gpus_needed", 0, 64, 0)
    if image in GPU_IMAGES and gpus_needed < 1:
        raise table.error("gpus_needed", f"at least 1 for the {image!r} image", gpus_needed)

    weights_in_image = table.text(
        "weights_in_image", None, pattern=re.compile(r"^/models/\S+$"),
        expected="an absolute path under /models/ inside the image",
    )
    weights = table.text("weights", None, expected="the path of a weights file or folder on this machine")
    if (weights is None) == (weights_in_image is None):
        raise table.error("weights", "exactly one of 'weights' (a path on this machine) or 'weights_in_image'")
    if weights is not None:
        weights = Path(weights).expanduser()
        weights = (weights if weights.is_absolute() else base_dir / weights).resolve()
        if not weights.exists():
            raise table.error("weights", "an existing file or folder", str(weights))
        if runtime == "scripted":
            check_trajectory(weights, table.path, "weights")
        else:
            check_weights(weights, runtime, table)

    spec = ModelSpec(
        id=model_id,
        title=table.text("title", model_id),
        runtime=runtime,
        image=image,
        weights=weights,
        weights_in_image=weights_in_image,
        gpus_needed=gpus_needed,
        server_args=table.strings("server_args", ()),
        description=table.text("description", ""),
        source=table.path,
        load_timeout_s=table.number("load_timeout_s", 10, 7200, DEFAULT_LOAD_TIMEOUT_S[runtime]),
        constrained_format=table.boolean("constrained_format", False),
        server_memory=read_size(table, "server_memory", None),
    )
    table.finish()
    return spec


def validate_model_entry(entry: dict, source: str = "<dialog>") -> ModelSpec:
    """Check a user's model entry (e.g. from the "add model" dialog) as strictly as a file."""
    return _model_from_table(TomlTable(entry, source, owner="model entry"), Path.cwd())


# The agent's scaffold profiles (what the model reads): "paper" is the study's published wording.
SCAFFOLDS = sandbox_module("agent/redline_agent.py").PROFILES
DEFAULT_SCAFFOLD = SCAFFOLDS[0]


def model_label(model_id: str, scripted: bool, constrained_format: bool = False,
                scaffold: str = DEFAULT_SCAFFOLD) -> str:
    """How every record and view names a model: a scripted one, a format-constrained one and one run
    in a scaffold other than the study's are always marked, since none is the study's condition."""
    marks = (["scripted"] * scripted + ["constrained format"] * constrained_format
             + [f"scaffold {scaffold}"] * (scaffold != DEFAULT_SCAFFOLD))
    return model_id + "".join(f" [{mark}]" for mark in marks)


def _toml_value(value) -> str:
    """TOML for the few value types a model entry holds (JSON strings are TOML basic strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def user_model_path(model_id: str) -> Path:
    return config_dir() / "models" / f"{model_id.replace(':', '-')}.toml"


def save_user_model(spec: ModelSpec, overwrite: bool = False) -> Path:
    """Write spec to the user's models folder, after checking the file reads back as spec."""
    path = user_model_path(spec.id)
    if path.exists() and not overwrite:
        raise UsageError(f"a model file for {spec.id!r} already exists: {path}")
    title = spec.title.removeprefix(f"{SCRIPTED_LABEL} ") if spec.scripted else spec.title
    fields = {
        "id": spec.id, "title": title, "runtime": spec.runtime, "image": spec.image,
        "weights": str(spec.weights) if spec.weights else None,
        "weights_in_image": spec.weights_in_image,
        "gpus_needed": spec.gpus_needed, "server_args": list(spec.server_args),
        "description": spec.description, "constrained_format": spec.constrained_format or None,
    }
    text = "".join(f"{key} = {_toml_value(value)}\n" for key, value in fields.items() if value is not None)
    validate_model_entry(tomllib.loads(text), source=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, text)
    return path


def check_weights(weights: Path, runtime: str, table) -> None:
    """What a server could load, seen before any sandbox starts: a llama.cpp file is a GGUF (its magic,
    more than a header), a vLLM folder holds a config.json and non-empty weight files."""
    if runtime == "llamacpp":
        files = [weights] if weights.is_file() else sorted(weights.glob("*.gguf"))
        if not files:
            raise table.error("weights", "a .gguf file (or a folder holding one)", str(weights))
        for path in files:
            with open(path, "rb") as handle:
                head = handle.read(4)
            if head != b"GGUF" or path.stat().st_size < 1024:
                raise table.error("weights", "a GGUF file (it starts with 'GGUF' and holds more than a header)",
                                  f"{path} ({path.stat().st_size} bytes)")
    elif runtime == "vllm":
        shards = [p for p in weights.glob("*") if p.suffix in (".safetensors", ".bin")] if weights.is_dir() else []
        if not (weights / "config.json").is_file() or not shards or any(p.stat().st_size == 0 for p in shards):
            raise table.error("weights", "a Hugging Face model folder (config.json and non-empty *.safetensors)",
                              str(weights))


def check_trajectory(path: Path, source, field: str) -> None:
    """Parse a trajectory with the scripted runtime's own parser, on the host, when models load: a
    broken one is a named error now, not a failure inside the sandbox later."""
    runtime = sandbox_module("runtimes/scripted_server.py")
    try:
        runtime.Trajectory(path)
    except (OSError, UnicodeDecodeError, runtime.TrajectoryError) as exc:
        detail = f"not UTF-8 text ({exc.reason})" if isinstance(exc, UnicodeDecodeError) else str(exc)
        raise ConfigError(source, field, "a trajectory file: '#' header lines, then messages each introduced "
                          "by '=== turn ===' (docs/protocol.md)", detail) from None


def _trajectory_header(trajectory: Path) -> dict[str, str]:
    """'# key: value' lines before the first turn; indented '#   ' lines continue the value."""
    header: dict[str, str] = {}
    key = None
    with open(trajectory, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.strip() == TURN_SEPARATOR:
                break
            match = re.match(r"^#\s?([a-z_]+):\s*(.*)$", line.rstrip())
            if match:
                key = match.group(1)
                header[key] = match.group(2)
            elif key and line.startswith("#   "):
                header[key] += " " + line[1:].strip()
            else:
                key = None
    return header


def _scripted_model(trajectory: Path) -> ModelSpec:
    """A scripted model named by the trajectory's '# name:' line (else its file name), as the server names it."""
    check_trajectory(trajectory, trajectory, "(file)")
    header = _trajectory_header(trajectory)
    name = header.get("name") or trajectory.stem
    if not ID_PATTERN.match(name):
        raise ConfigError(trajectory, "# name", "a name of letters, digits, '.', '_' or '-'", name)
    return ModelSpec(
        id=SCRIPTED_PREFIX + name,
        title=name,
        runtime="scripted",
        image="cpu",
        weights=trajectory,
        weights_in_image=None,
        gpus_needed=0,
        server_args=(),
        description=header.get("description") or f"Replays {trajectory.name} (no real model).",
        source=str(trajectory),
    )


def _builtin_models() -> list[ModelSpec]:
    """builtin.toml's [[model]] entries, then one scripted model per shipped trajectory."""
    path = RESOURCES / "models" / "builtin.toml"
    root = TomlTable(read_toml(path), path, owner="model file")
    models = [_model_from_table(entry, path.parent) for entry in root.table_list("model")]
    root.finish()
    models += [_scripted_model(t) for t in sorted((RESOURCES / "trajectories").glob("*.txt"))]
    return models


def _index(models: list[ModelSpec]) -> dict[str, ModelSpec]:
    """By id; two definitions of one id in the same place are a mistake, not an override."""
    found: dict[str, ModelSpec] = {}
    for spec in models:
        if spec.id in found:
            raise ConfigError(spec.source, "id", f"an id not already used by {found[spec.id].source}", spec.id)
        found[spec.id] = spec
    return found


class ModelCatalogue:
    """Every model the operator can pick, by id."""

    def __init__(self, models: dict[str, ModelSpec]):
        self._models = models

    @classmethod
    def load(cls) -> ModelCatalogue:
        """Built-in models, then the user's; a user entry replaces the built-in with its id."""
        models = _index(_builtin_models())
        models.update(_index([
            _model_from_table(TomlTable(read_toml(path), path, owner="model file"), path.parent)
            for path in sorted((config_dir() / "models").glob("*.toml"))
        ]))
        return cls(models)

    def get(self, model_id: str) -> ModelSpec:
        if model_id not in self._models:
            raise UsageError(f"unknown model {model_id!r}; known: {', '.join(self._models)}")
        return self._models[model_id]

    def all(self) -> list[ModelSpec]:
        return list(self._models.values())
