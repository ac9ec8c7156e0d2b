"""Experiment subcommands of `redline`: run, models, scenarios, trials, report."""


def add_subcommands(sub) -> None:
    """Registered by console.cli; filled in as the trial layer lands."""
