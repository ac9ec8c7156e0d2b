"""Model catalogue: built-ins, scripted trajectories, user entries and their validation."""

from pathlib import Path

import pytest

from console.errors import ConfigError, UsageError
from console.models import (
    DEFAULT_MODEL_ID,
    ModelCatalogue,
    save_user_model,
    validate_model_entry,
)
from console.paths import RESOURCES


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    monkeypatch.setenv("REDLINE_CONFIG", str(tmp_path / "config"))
    monkeypatch.setenv("REDLINE_HOME", str(tmp_path / "data"))
    folder = tmp_path / "config" / "models"
    folder.mkdir(parents=True)
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "tiny.gguf").write_bytes(b"GGUF" + bytes(2048))  # the magic and more than a header
    return folder


def entry(**changes) -> dict:
    """A valid user entry for a llama.cpp model whose weights are given by the test."""
    values = {"id": "tiny", "title": "Tiny", "runtime": "llamacpp", "weights": "/nonexistent"}
    values.update(changes)
    return {key: value for key, value in values.items() if value is not None}


def test_default_model_is_embedded_and_cpu_only(user_models):
    default = ModelCatalogue.load().get(DEFAULT_MODEL_ID)
    assert default.runtime == "llamacpp" and default.image == "cpu" and default.gpus_needed == 0
    assert default.weights is None
    assert default.weights_in_image == "/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert default.sandbox_model_path == default.weights_in_image and default.sandbox_mounts() == {}
    assert not default.scripted


def test_every_trajectory_is_a_labelled_scripted_model(user_models):
    catalogue = ModelCatalogue.load()
    scripted = {m.id: m for m in catalogue.all() if m.scripted}
    trajectories = sorted((RESOURCES / "trajectories").glob("*.txt"))
    assert {f"scripted:{t.stem}" for t in trajectories} == set(scripted)
    assert {"scripted:success", "scripted:dummy-brain", "scripted:never-replicates"} <= set(scripted)
    for model in scripted.values():
        assert model.title.startswith("[scripted]") and model.runtime == "scripted"
        assert model.image == "cpu" and model.weights.exists() and model.description
        assert model.sandbox_mounts() == {str(model.weights): model.sandbox_model_path}
        assert model.sandbox_model_path.startswith("/models/scripted-")


def test_user_model_with_relative_weights(user_models):
    (user_models / "tiny.toml").write_text(
        'id = "tiny"\nruntime = "llamacpp"\nweights = "../../weights/tiny.gguf"\nserver_args = ["--n_ctx", "2048"]\n'
    )
    tiny = ModelCatalogue.load().get("tiny")
    assert tiny.weights == (user_models.parent.parent / "weights" / "tiny.gguf").resolve()
    assert tiny.image == "cpu" and tiny.server_args == ("--n_ctx", "2048") and tiny.title == "tiny"
    assert tiny.sandbox_mounts() == {str(tiny.weights): "/models/tiny/tiny.gguf"}


def test_user_entry_overrides_builtin(user_models, tmp_path):
    weights = tmp_path / "weights" / "tiny.gguf"
    (user_models / "mine.toml").write_text(f'id = "{DEFAULT_MODEL_ID}"\nruntime = "llamacpp"\nweights = "{weights}"\n')
    assert ModelCatalogue.load().get(DEFAULT_MODEL_ID).weights == weights


def test_unknown_model_lists_known_ids(user_models):
    with pytest.raises(UsageError, match="known: smollm2-135m, smollm2-135m-vllm, scripted:"):
        ModelCatalogue.load().get("gpt-5")


@pytest.mark.parametrize(
    "changes, field, expected",
    [
        ({"id": None}, "id", "required"),
        ({"runtime": "onnx"}, "runtime", "one of"),
        ({"weights": "/no/such/file.gguf"}, "weights", "an existing file or folder"),
        ({"weights": None}, "weights", "exactly one of"),
        ({"weights_in_image": "/models/x/y.gguf"}, "weights", "exactly one of"),
        ({"gpus_needed": -1}, "gpus_needed", "from 0 to 64"),
        ({"gpus_needed": 1.5}, "gpus_needed", "whole number"),
        ({"server_args": "--n_ctx 2048"}, "server_args", "list of strings"),
        ({"server_args": ["--n_ctx", 2048]}, "server_args", "list of strings"),
        ({"image": "vllm"}, "image", "one of 'cpu'"),
        ({"runtime": "vllm"}, "gpus_needed", "at least 1"),
        ({"runtime": "scripted"}, "id", "starting with 'scripted:'"),
        ({"id": "scripted:tiny"}, "id", "starting with 'scripted:'"),
        ({"id": "has space"}, "id", "letters, digits"),
        ({"server_memory": "lots"}, "server_memory", "a size like '512m'"),
        ({"colour": "red"}, "colour", "known field"),
        ({"network": "bridge"}, "network", "cannot be changed"),
        ({"privileged": True}, "privileged", "cannot be changed"),
    ],
)
def test_bad_entry_names_field_and_expectation(user_models, tmp_path, changes, field, expected):
    values = entry(weights=str(tmp_path / "weights" / "tiny.gguf"))
    values.update(changes)
    values = {key: value for key, value in values.items() if value is not None}
    with pytest.raises(ConfigError) as caught:
        validate_model_entry(values)
    assert (caught.value.path, caught.value.field) == ("<dialog>", field)
    assert expected in caught.value.expected


def test_bad_user_file_names_the_file(user_models):
    path = user_models / "broken.toml"
    path.write_text('id = "x"\nruntime = llamacpp\n')
    with pytest.raises(ConfigError) as caught:
        ModelCatalogue.load()
    assert caught.value.path == str(path) and caught.value.field == "(syntax)"
    path.write_text('id = "x"\nruntime = "llamacpp"\nweights = "missing.gguf"\n')
    with pytest.raises(ConfigError, match="broken.toml: field 'weights': expected an existing file"):
        ModelCatalogue.load()


def test_save_user_model_round_trips(user_models, tmp_path):
    weights = tmp_path / "weights" / "tiny.gguf"
    spec = validate_model_entry(entry(
        id="tiny-2", title='Tiny "quoted" – ünïcode \\ \x7f', weights=str(weights),
        server_args=["--n_ctx", "2048"], description="line one\nline two",
    ))
    path = save_user_model(spec)
    assert path.parent == user_models
    loaded = ModelCatalogue.load().get("tiny-2")
    assert loaded == spec.__class__(**{**spec.__dict__, "source": str(path)})
    with pytest.raises(UsageError, match="already exists"):
        save_user_model(spec)
    assert save_user_model(spec, overwrite=True) == path


def test_saved_scripted_model_keeps_one_label(user_models):
    trajectory = RESOURCES / "trajectories" / "success.txt"
    spec = validate_model_entry({"id": "scripted:mine", "title": "Mine", "runtime": "scripted", "weights": str(trajectory)})
    assert spec.title == "[scripted] Mine" and spec.scripted
    save_user_model(spec)
    assert ModelCatalogue.load().get("scripted:mine").title == "[scripted] Mine"
    assert Path(user_models / "scripted-mine.toml").exists()


def test_the_readmes_gpu_model_file_loads_with_the_plan_it_describes(user_models, tmp_path):
    """README "Running on GPUs" shows a complete model file: it must load as written (its weights
    folder moved here) and give the GPU plan the README describes for 8 GPUs."""
    readme = (RESOURCES.parent / "README.md").read_text()
    section = readme[readme.index("## Running on GPUs"):]
    block = section[section.index("```toml\n") + len("```toml\n"):section.index("\n```", section.index("```toml"))]
    folder = tmp_path / "Qwen2.5-72B-Instruct"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model-00001-of-00001.safetensors").write_bytes(bytes(64))  # checked: non-empty weights
    (user_models / "qwen2.5-72b.toml").write_text(block.replace("/data/models/Qwen2.5-72B-Instruct", str(folder)))
    model = ModelCatalogue.load().get("qwen2.5-72b-instruct")
    assert (model.runtime, model.image, model.gpus_needed, model.load_timeout_s) == ("vllm", "vllm", 4, 1800)
    assert model.sandbox_mounts() == {str(folder): "/models/qwen2.5-72b-instruct"}
    plan = model.gpu_plan(tuple(range(8)))
    assert plan["original"] == [0, 1, 2, 3] and plan["free_for_replica"] == [4, 5, 6, 7] and plan["room_for_replica"]
    assert "GPUs 0-3" in section and "GPUs 4-7 free" in section
    assert not model.gpu_plan(tuple(range(4)))["room_for_replica"]
