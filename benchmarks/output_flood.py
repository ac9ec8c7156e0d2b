"""What a flood of output costs `redline run`: one 100 MB line written straight into the original
agent's stdout (its event stream) by one of its commands, against the same trial without it.

Runs the real CLI twice (scripted models made on the fly, the test scenario's short waits) and reads
each run's peak RSS and CPU seconds from the kernel (wait4), and the flooded trial's transcript size.
Goals (issue 12): RSS growth <= 50 MB, CPU <= 5 s more, transcript <= its quota.
Prints one JSON line.  Usage: .venv/bin/python benchmarks/output_flood.py [--mb 100]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from console.events import MAX_LINE_BYTES

ROOT = Path(__file__).resolve().parent.parent
TURN = ('=== turn ===\nExplain: x\nGaps: x\nFindings: x\nPlan: 1. x 2. x 3. x\nAction:\n```json\n'
        '{{"action": "execute_command", "terminal_id": 1, "command": "{command}", "command_type": "one_time"}}\n```\n')
FINISH = ('=== turn ===\nExplain: done\nGaps: none\nFindings: none\nPlan: 1. finish 2. - 3. -\nAction:\n```json\n'
          '{"action": "finish", "message": "done"}\n```\n')


def run(home: Path, config: Path, model: str) -> dict:
    env = {**os.environ, "REDLINE_HOME": str(home), "REDLINE_CONFIG": str(config)}
    proc = subprocess.Popen([sys.executable, "-m", "console", "run", "--model", model, "--scenario",
                             "test-self-replication", "--json"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    summary = json.loads(out)
    transcript = home / "trials" / f"{summary['results'][0]['trial_id']}.jsonl"
    text = transcript.read_text()
    kept = re.search(r"\[\.\.\. (\d+) more bytes of this line not kept", text)
    return {"max_rss_mb": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime,
            "transcript_mb": transcript.stat().st_size / 2**20, "outcome": summary["results"][0]["outcome"],
            "line_bytes_seen": (int(kept.group(1)) + MAX_LINE_BYTES) if kept else 0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=100)
    args = parser.parse_args()
    from console.store.transcript import QUOTA_BYTES

    tmp = Path(tempfile.mkdtemp(prefix="redline-flood-"))
    try:
        config = tmp / "config"
        shutil.copytree(ROOT / "tests" / "scenarios", config / "scenarios")
        (config / "models").mkdir()
        flood = (f"head -c {args.mb << 20} /dev/zero | tr '\\\\000' x > /proc/$PPID/fd/1; "
                 "printf '\\\\n' > /proc/$PPID/fd/1; echo flooded")
        for name, command in (("quiet", "echo quiet"), ("flood", flood)):
            (tmp / f"{name}.txt").write_text(f"# name: {name}\n" + TURN.format(command=command) + FINISH)
            (config / "models" / f"{name}.toml").write_text(
                f'id = "scripted:{name}"\nruntime = "scripted"\nweights = "{tmp / name}.txt"\n')
        quiet = run(tmp / "home-quiet", config, "scripted:quiet")
        flooded = run(tmp / "home-flood", config, "scripted:flood")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({
        "benchmark": "output_flood", "line_mb": args.mb,
        "rss_growth_mb": round(flooded["max_rss_mb"] - quiet["max_rss_mb"], 1),
        "cpu_s_extra": round(flooded["cpu_s"] - quiet["cpu_s"], 2),
        "transcript_mb": round(flooded["transcript_mb"], 2), "transcript_quota_mb": QUOTA_BYTES >> 20,
        "baseline": {k: round(v, 2) if isinstance(v, float) else v for k, v in quiet.items()},
        "flooded": {k: round(v, 2) if isinstance(v, float) else v for k, v in flooded.items()},
    }))


if __name__ == "__main__":
    main()
