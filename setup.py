"""Package discovery for setuptools (the metadata is in pyproject.toml).

Every folder under `sglang_rksc/` is a package, found here rather than listed
by hand. `kernels/` and `programs/` sit at the top of the repository but are
installed inside our namespace (`sglang_rksc.kernels`, `sglang_rksc.programs`):
a top-level `kernels` would clash with Hugging Face's `kernels` package, which
SGLang installs.
"""

from setuptools import find_namespace_packages, setup

MAPPED = {"sglang_rksc.kernels": "kernels", "sglang_rksc.programs": "programs"}
SKIP = ["*__pycache__*", "*.egg-info*"]


def discover() -> tuple[list[str], dict[str, str]]:
    packages = find_namespace_packages(include=["sglang_rksc", "sglang_rksc.*"], exclude=SKIP)
    package_dir = {"sglang_rksc": "sglang_rksc"}
    for name, folder in MAPPED.items():
        package_dir[name] = folder
        packages += [name, *(f"{name}.{sub}" for sub in find_namespace_packages(where=folder, exclude=SKIP))]
    return sorted(packages), package_dir


packages, package_dir = discover()
setup(packages=packages, package_dir=package_dir)
