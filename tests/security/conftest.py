"""Attacks on the built module (issue 11): each test performs one attack through the C ABI
(or on the token files) and shows it fail with the spec's return code. The fixtures are
the end-to-end ones: the installed libferrohsm-pkcs11.so, a token directory per test."""

from tests.e2e.conftest import c_build, hsm, module, token  # noqa: F401  (fixtures)
