"""lacoot: Layer Collapse through Optimal Transport."""

__version__ = "0.1.0"
