"""Build hook: compile libferrohsm-pkcs11.so (pkcs11_shim/build.py, cffi
embedding) into the pkcs11_shim package of the build, so a non-editable
`pip install .` puts it at <site-packages>/pkcs11_shim/libferrohsm-pkcs11.so.
Everything else is declared in pyproject.toml."""

import os
import sys

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


class BuildWithModule(build_py):
    def run(self):
        super().run()
        from pkcs11_shim.build import compile_library
        out = compile_library(os.path.join(self.build_lib, "pkcs11_shim"))
        self.announce(f"built {out}", level=2)


class BinaryDistribution(Distribution):
    """The wheel holds a native library: tag it for this Python and platform."""
    def has_ext_modules(self):
        return True


setup(cmdclass={"build_py": BuildWithModule}, distclass=BinaryDistribution)
