"""The plait version: the one place it is written (pyproject.toml reads it from here).

A literal rather than ``importlib.metadata.version()``: that import costs every executor process
about 40 ms and 2.7 MB.
"""

__version__ = "0.1.0"
