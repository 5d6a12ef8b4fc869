"""Build script: the pure-Python packages, plus the C++/CUDA extension (see csrc/)."""

from setuptools import setup

setup()
