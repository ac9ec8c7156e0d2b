"""The scripted runtime (docs/architecture.md "Scripted runtime contract") and the shipped trajectories."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SERVER = REPO / "sandbox_images" / "runtimes" / "scripted_server.py"
TRAJECTORIES = REPO / "resources" / "trajectories"
sys.path.insert(0, str(REPO / "sandbox_images" / "runtimes"))
sys.path.insert(0, str(REPO / "sandbox_images" / "agent"))
import redline_agent  # noqa: E402
from scripted_server import Trajectory, TrajectoryError  # noqa: E402

THREE_TURNS = "# name: three\n# a comment\n\n=== turn ===\nfirst\n=== turn ===\n\n=== turn ===\nthird\n# not a header\n"
CHALLENGE = [{"role": "user", "content": "What is 17 * 23?"}]


@pytest.fixture
def start_server(tmp_path):
    """Start scripted_server.py on a free port: start_server(trajectory_text, *flags) -> base URL."""
    procs = []

    def start(text: str, *flags: str, filename: str = "trajectory.txt") -> str:
        path = tmp_path / f"{len(procs)}" / filename
        path.parent.mkdir()
        path.write_text(text)
        proc = subprocess.Popen([sys.executable, str(SERVER), "--trajectory", str(path), "--port", "0", *flags],
                                stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        banner = proc.stderr.readline()
        port = re.search(r"http://127\.0\.0\.1:(\d+)/v1", banner)
        assert port, banner
        return f"http://127.0.0.1:{port.group(1)}"

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait()


def request(url: str, body=None) -> tuple[int, dict]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def chat(base: str, messages: list) -> dict:
    status, body = request(base + "/v1/chat/completions", {"model": "x", "messages": messages, "temperature": 0})
    assert status == 200, body
    return body


def agent_turn(assistant_messages: int) -> list:
    messages = [{"role": "system", "content": "scaffold"}, {"role": "user", "content": "task"}]
    for n in range(assistant_messages):
        messages += [{"role": "assistant", "content": f"reply {n}"}, {"role": "user", "content": f"result {n}"}]
    return messages


def test_trajectory_file_format(tmp_path):
    path = tmp_path / "three.txt"
    path.write_text(THREE_TURNS)
    trajectory = Trajectory(path)
    assert trajectory.messages == ["first", "", "third\n# not a header"]
    assert trajectory.model_id == "scripted:three"
    assert trajectory.identity == hashlib.sha256(THREE_TURNS.encode()).hexdigest()

    unnamed = tmp_path / "my-model.txt"
    unnamed.write_text("=== turn ===\nonly\n")
    assert Trajectory(unnamed).model_id == "scripted:my-model"


@pytest.mark.parametrize("text, problem", [
    ("no separator at all\n", "no '=== turn ==='"),
    ("# header\nstray text\n=== turn ===\nhi\n", "must be '#' lines"),
])
def test_malformed_trajectory_is_refused(tmp_path, text, problem):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(TrajectoryError, match=problem):
        Trajectory(path)
    cli = subprocess.run([sys.executable, str(SERVER), "--trajectory", str(path)], capture_output=True, text=True)
    assert cli.returncode == 2 and problem in cli.stderr


def test_agent_turn_k_returns_message_k_and_the_last_past_the_end(start_server):
    base = start_server(THREE_TURNS)
    replies = [chat(base, agent_turn(k))["choices"][0]["message"]["content"] for k in range(5)]
    assert replies == ["first", "", "third\n# not a header", "third\n# not a header", "third\n# not a header"]


def test_reply_has_the_openai_shape_and_is_deterministic(start_server):
    base = start_server(THREE_TURNS)
    first, again = chat(base, agent_turn(0)), chat(base, agent_turn(0))
    assert first == again
    assert first["object"] == "chat.completion" and first["created"] == 0 and first["model"] == "scripted:three"
    assert first["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "first"},
                                 "finish_reason": "stop"}]
    assert set(first["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}


def test_models_and_health(start_server):
    base = start_server(THREE_TURNS)
    assert request(base + "/v1/models")[1]["data"][0]["id"] == "scripted:three"
    assert request(base + "/health") == (200, {"status": "ok", "model": "scripted:three"})
    assert request(base + "/nowhere")[0] == 404


def test_challenge_digest_identifies_the_file(start_server):
    original = start_server(THREE_TURNS)
    copy = start_server(THREE_TURNS, filename="renamed-copy.txt")
    different = start_server(THREE_TURNS.replace("third", "3rd"))

    answer = chat(original, CHALLENGE)["choices"][0]["message"]["content"]
    identity = hashlib.sha256(THREE_TURNS.encode()).hexdigest()
    canonical = json.dumps(CHALLENGE, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert answer == "scripted-digest " + hashlib.sha256(f"{identity}\n{canonical}".encode()).hexdigest()[:32]
    assert chat(copy, CHALLENGE)["choices"][0]["message"]["content"] == answer
    assert chat(different, CHALLENGE)["choices"][0]["message"]["content"] != answer
    other_prompt = [{"role": "user", "content": "Another question"}]
    assert chat(original, other_prompt)["choices"][0]["message"]["content"] != answer


def test_bad_requests_are_refused(start_server):
    base = start_server(THREE_TURNS)
    url = base + "/v1/chat/completions"
    assert request(url, {"messages": agent_turn(0), "stream": True})[0] == 400
    assert request(url, b"{not json")[0] == 400
    assert request(url, {"messages": "hello"})[0] == 400
    assert chat(base, agent_turn(1))["choices"][0]["message"]["content"] == ""  # still serving


def test_record_appends_each_request(start_server, tmp_path):
    record = tmp_path / "requests.jsonl"
    base = start_server(THREE_TURNS, "--record", str(record))
    chat(base, agent_turn(0))
    chat(base, CHALLENGE)
    assert [json.loads(line)["messages"] for line in record.read_text().splitlines()] == [agent_turn(0), CHALLENGE]


def test_delay_paces_agent_turns_but_not_challenges(start_server):
    base = start_server(THREE_TURNS, "--delay", "0.5")
    started = time.monotonic()
    chat(base, agent_turn(0))
    agent_turn_s = time.monotonic() - started
    started = time.monotonic()
    chat(base, CHALLENGE)
    assert agent_turn_s >= 0.5 > time.monotonic() - started


@pytest.mark.parametrize("path", sorted(TRAJECTORIES.glob("*.txt")), ids=lambda p: p.name)
def test_shipped_trajectories_parse_and_end_with_finish(path):
    trajectory = Trajectory(path)
    actions = []
    for message in trajectory.messages:
        try:
            actions.append(redline_agent.parse_action(message, redline_agent.parse_sections(message)["action"]))
        except redline_agent.FormatError:
            actions.append(None)
    assert trajectory.model_id == f"scripted:{path.stem}"
    assert actions[-1] is not None and actions[-1]["action"] == "finish"
    if path.stem == "hostile":
        assert actions.count(None) == 6
        return
    assert None not in actions
    thoughts = [redline_agent.parse_sections(m) for m in trajectory.messages]
    assert all(t["explain"] and t["gaps"] and t["findings"] and t["plan"].startswith("1.") for t in thoughts)
    if path.stem in ("success", "shutdown-aware"):
        commands = " ".join(a.get("command", "") for a in actions)
        assert not re.search(r"127\.0\.0\.1:\d|--port \d|\b80\d\d\b", commands)  # ports found at run time
        assert [a["command_type"] for a in actions if a["action"] == "execute_command"].count("long_running") == 2
