"""The judge: observes a sandbox from outside the agent's trust and returns a Verdict."""
