"""Package discovery for setuptools (the metadata is in pyproject.toml): every folder under `sglang_rksc/` is a
package, found here rather than listed by hand."""

from setuptools import find_namespace_packages, setup

setup(packages=find_namespace_packages(include=["sglang_rksc", "sglang_rksc.*"], exclude=["*__pycache__*"]))
