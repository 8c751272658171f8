# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The compiled core built for x86-64-v4 (see _engine.pyx; fastnn/_core/__init__.py picks the build
the CPU runs)."""
include "_engine.pyx"
