"""Compiled kernels (see _engine.pyx for the design)."""
