"""The vLLM image, built here from PyPI (about 2 GB of wheels, 6 GB image, 10+ minutes): only with
`pytest --vllm`. There is no GPU here, so the test checks what can be checked without one: the image
builds on Redline's own base with no network, the pinned vLLM is what runs, and vLLM's own command
line accepts exactly the flags `start-server --runtime vllm` passes (a renamed flag fails here, not
in a lab), with a model's server_args passed through. Loading a model needs a GPU: not run here."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from console.sandbox.spec import AGENT_USER, ContainmentSpec

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(3600)]  # the build alone takes 10+ minutes

# A minimal model folder: vLLM reads config.json only after it has parsed its arguments.
CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
          "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 1, "vocab_size": 256,
          "max_position_embeddings": 512}
PARSE_ERRORS = ("unrecognized arguments", "invalid choice", "expected one argument", "the following arguments "
                "are required", "invalid int value", "invalid float value")


@pytest.fixture(scope="module")
def vllm_image(engine):
    from console.sandbox.images import ImageBuilder

    lines = []
    return ImageBuilder(engine, progress=lines.append).ensure("vllm")


def test_vllm_accepts_the_flags_redline_passes(engine, vllm_image, session_id):
    from console.sandbox.images import VLLM_VERSION

    box = engine.create(ContainmentSpec(image=vllm_image, session_id=session_id, trial_id=uuid.uuid4().hex[:10],
                                        deadline_unix=time.time() + 900, mem_limit="8g", cpus=2.0))
    try:
        version = box.exec(["/opt/redline/venv/bin/python", "-c", "import vllm; print(vllm.__version__)"],
                           timeout=300)
        assert version.stdout.strip() == VLLM_VERSION, version.stderr[-2000:]
        setup = box.exec(["sh", "-c", f"mkdir -p /home/agent/m && printf '%s' '{json.dumps(CONFIG)}' > "
                                      "/home/agent/m/config.json"], user=AGENT_USER, timeout=30)
        assert setup.exit_code == 0, setup.stderr
        started = box.exec(["timeout", "240", "/opt/redline/bin/start-server", "--runtime", "vllm", "--model",
                            "/home/agent/m", "--port", "8000", "--max-model-len", "512"],  # a model's server_args
                           user=AGENT_USER, env={"REDLINE_MODEL": "probe", "CUDA_VISIBLE_DEVICES": "0"},  # the GPU plan
                           timeout=300, max_output=16 << 20)
        output = started.stdout + started.stderr
        command = next(line for line in output.splitlines() if line.startswith("start-server: exec "))
        for flag in ("serve /home/agent/m", "--served-model-name probe", "--host 127.0.0.1", "--port 8000",
                     "--tensor-parallel-size 1", "--gpu-memory-utilization 0.90", "--max-model-len 512"):
            assert flag in command, (flag, command)
        assert not [error for error in PARSE_ERRORS if error in output], output[-4000:]
        assert started.exit_code not in (0, 2), output[-4000:]  # it got past parsing, then found no GPU
    finally:
        box.remove()


FRAME_PROBE = r"""
import sys
sys.path.insert(0, "/opt/redline/agent")
import redline_agent as agent
import xgrammar
from xgrammar.testing import _is_grammar_accept_string as accepts
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

# The request the agent sends in constrained mode is one vLLM's own request model takes.
request = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=64,
                                grammar=agent.GRAMMARS["paper"], structured_outputs={"grammar": agent.GRAMMARS["paper"]})
assert request.structured_outputs.grammar == agent.GRAMMARS["paper"]
# vLLM's default grammar back end compiles the default (paper) frame, takes a well-formed round, refuses the rest.
grammar = xgrammar.Grammar.from_ebnf(agent.GRAMMARS["paper"])
good = ("Explain: I start.\n\nGaps: None.\n\nFindings: None yet.\n\nPlan:\n1) ls\n2) read\n3) act\n\nAction:\n```json\n"
        '{\n  "action": "execute_command_in_terminal",\n  "action_input": {\n    "terminal_id": "1",\n'
        '    "command": "ls -la",\n    "command_type": "one_time"\n  }\n}\n```')
print(accepts(grammar, good), accepts(grammar, "Sure! Here is a poem."),
      accepts(grammar, good.replace('"terminal_id": "1"', '"terminal_id": "9"')))
"""


def test_vllm_takes_the_agents_constrained_format_request(engine, vllm_image, session_id):
    box = engine.create(ContainmentSpec(image=vllm_image, session_id=session_id, trial_id=uuid.uuid4().hex[:10],
                                        deadline_unix=time.time() + 600, mem_limit="8g", cpus=2.0))
    try:
        probe = box.exec(["/opt/redline/venv/bin/python", "-c", FRAME_PROBE], user=AGENT_USER, timeout=300)
    finally:
        box.remove()
    assert probe.exit_code == 0, probe.stderr[-3000:]
    assert probe.stdout.split()[-3:] == ["True", "False", "False"], probe.stdout[-2000:]
