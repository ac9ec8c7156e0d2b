"""The emergency stop: SIGKILL every sandbox of a session (or all), confirm, escalate.

It opens its own engine connections for every call, so a UI thread or a client busy with a stream
can never hold it up. Each container is killed on its own thread. Where we may (root on the engine's
host) the container's host pids are SIGKILLed directly first, which takes effect at once even when
the engine is slow (benchmarks/kill_latency.py: ~10x faster than `docker kill` under load); the
engine's SIGKILL follows in any case. If the engine has not confirmed death within
ESCALATE_AFTER_S, the host pids are killed again and death is confirmed once more.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import docker
import docker.errors

from console.sandbox import client, host
from console.sandbox.base import ContainerKill, KillReport
from console.sandbox.errors import EngineUnavailable
from console.sandbox.spec import LABEL_SESSION, LABEL_TRIAL

ESCALATE_AFTER_S = 2.0
CONFIRM_POLL_S = 0.01
log = logging.getLogger("redline.killswitch")


class KillSwitch:
    def __init__(self, base_url: str | None = None, on_killed=None, timeout_s: int = 10):
        """on_killed(trial_id): called once per killed sandbox that has a trial, right after the kill
        took effect (its processes SIGKILLed, or the engine took the kill of a running container) and
        never for one that was already dead, so a record never blames someone for what they did not
        do; a runner still alive reads the note when its sandbox dies. timeout_s bounds each engine
        call (the watchdogs use a short one: a frozen engine must not hold them)."""
        self.base_url, self.on_killed, self.timeout_s = base_url, on_killed, timeout_s

    def _api(self) -> docker.APIClient:
        """A fresh connection per call: never queue behind a busy client."""
        return client.new_api(self.base_url, timeout=self.timeout_s)

    def _list(self, label: str) -> list[dict]:
        api = self._api()
        try:
            return api.containers(filters={"label": [label]})  # running and paused
        except docker.errors.DockerException as exc:
            raise EngineUnavailable.of(exc, client.engine_url(self.base_url)) from None
        finally:
            api.close()

    def kill_all(self) -> KillReport:
        return self._kill(self._list(LABEL_SESSION))

    def kill_session(self, session_id: str) -> KillReport:
        return self._kill(self._list(f"{LABEL_SESSION}={session_id}"))

    def kill_ids(self, container_ids: list[str]) -> KillReport:
        return self._kill([{"Id": cid, "Names": [cid[:12]]} for cid in container_ids])

    def _kill(self, containers: list[dict]) -> KillReport:
        started = time.monotonic()
        report = KillReport()
        if containers:
            with ThreadPoolExecutor(max_workers=min(16, len(containers))) as pool:
                report.containers = list(pool.map(lambda c: self._kill_one(c, started), containers))
        report.total_ms = (time.monotonic() - started) * 1000
        return report

    def _kill_one(self, container: dict, started: float) -> ContainerKill:
        cid = container["Id"]
        result = ContainerKill(cid, container["Names"][0].lstrip("/"),
                               trial_id=(container.get("Labels") or {}).get(LABEL_TRIAL, ""))
        api = self._api()
        try:
            # Where we may (root on the engine's host), SIGKILL the processes first: it takes
            # effect at once, whatever the engine is busy with; the engine's kill follows.
            result.escalated = self.kill_host_pids(cid) > 0
            took_effect = result.escalated
            try:
                api.kill(cid)
                took_effect = True
            except docker.errors.NotFound:
                result.signal_ms = result.confirmed_ms = (time.monotonic() - started) * 1000
                return result
            except docker.errors.APIError as exc:
                if "is not running" not in str(exc):
                    result.error = str(exc.explanation or exc)
            finally:
                if took_effect:
                    self._note(result.trial_id)
            result.signal_ms = (time.monotonic() - started) * 1000
            if self._wait_dead(api, cid, ESCALATE_AFTER_S):
                result.confirmed_ms = (time.monotonic() - started) * 1000
                return result
            result.escalated = self.kill_host_pids(cid) > 0 or result.escalated
            if self._wait_dead(api, cid, ESCALATE_AFTER_S):
                result.confirmed_ms = (time.monotonic() - started) * 1000
            else:
                result.error = "still running after SIGKILL and host-pid escalation"
            return result
        finally:
            api.close()

    def _note(self, trial_id: str) -> None:
        if self.on_killed is not None and trial_id:
            try:
                self.on_killed(trial_id)
            except Exception as exc:  # the kill matters more than its note
                log.warning("could not note the kill of trial %s: %s", trial_id, exc)

    @staticmethod
    def kill_host_pids(cid: str) -> int:  # also the watchdog's way when the engine is down
        """SIGKILL every process of the container from the host, then thaw what the judge froze (a
        task frozen by cgroup v1 cannot die until thawed)."""
        killed = 0
        for pid in host.host_pids(cid):
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except (ProcessLookupError, PermissionError):
                pass
        host.thaw_all(cid)
        return killed

    @staticmethod
    def _wait_dead(api: docker.APIClient, cid: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                state = api.inspect_container(cid)["State"]
            except docker.errors.NotFound:
                return True
            if not state.get("Running"):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(CONFIRM_POLL_S)
