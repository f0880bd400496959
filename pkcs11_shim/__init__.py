"""FerroHSM's PKCS#11 C ABI: libferrohsm-pkcs11.so, built by pkcs11_shim.build
with cffi's embedding API and installed inside this package.

Importing this package does not load the library; `module_path()` names it for
PKCS#11 clients (pkcs11-tool --module, python-pkcs11's lib=...).
"""

from pathlib import Path

LIBNAME = "libferrohsm-pkcs11.so"


def module_path() -> str:
    """Absolute path of the installed libferrohsm-pkcs11.so."""
    path = Path(__file__).resolve().parent / LIBNAME
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: build it with `pip install .` "
                                "or `python -m pkcs11_shim.build`")
    return str(path)
