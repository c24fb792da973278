"""The version of lacoot, defined here once (read by pyproject.toml and every record)."""

__version__ = "0.1.0"
