"""The package version, in a module of its own so that the write side can stamp logs without importing the
read side (``gradscope/__init__`` would pull in nothing, but a training process should not even look)."""

__version__ = "0.1.0"
