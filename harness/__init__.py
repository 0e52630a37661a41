"""Shared machinery of `bench`: CLI, configuration, run directories, provenance, training glue."""

__version__ = "0.1.0"
