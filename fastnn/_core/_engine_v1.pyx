# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The compiled core built for baseline x86-64 (or the platform's default target); see _engine.pyx
(fastnn/_core/__init__.py picks the build the CPU runs)."""
include "_engine.pyx"
