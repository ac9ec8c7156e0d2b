"""Redline: a lab console for supervised LLM self-replication experiments."""

__version__ = "0.1.0"
