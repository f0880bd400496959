"""Build libferrohsm-pkcs11.so with cffi's embedding API.

    python -m pkcs11_shim.build [OUTPUT_DIR]     (default: the pkcs11_shim package dir)

The library is generated from functions.FUNCTIONS: every PY function gets an
`extern "Python"` callback `py_C_x` and an exported C entry point `C_x` that
boots Python once and calls it; NS functions get a C stub returning
CKR_FUNCTION_NOT_SUPPORTED; C_GetFunctionList / C_GetInterfaceList /
C_GetInterface are plain C over two static function lists.

Booting Python from a C host (pkcs11-tool dlopen()s us RTLD_LOCAL):
  1. a constructor re-opens libpython RTLD_NOLOAD|RTLD_GLOBAL, so C extensions
     (cffi's own _cffi_backend first) resolve Python's symbols;
  2. on the first call (pthread_once), if the host has no interpreter, start one
     with an isolated PyConfig whose home is the base Python this library was
     built with (the host's argv[0] and environment say nothing useful about
     Python), add the site-packages directory the library is installed in
     (<site-packages>/pkcs11_shim/lib...so, found with dladdr) through
     site.addsitedir so .pth files work, and release the GIL; register
     pthread_atfork handlers so a forked child has a sane interpreter
     (what os.fork does for Python hosts);
  3. in a Python host (python-pkcs11) the interpreter is reused: only step 2's
     path is added, under the GIL.
Only then does cffi's own embedding start-up (import _cffi_backend, run the
init code below) happen, inside the first py_C_x call.
"""

import os
import sys
import sysconfig
import tempfile

import cffi

from .cdefs import header
from .functions import FAST, FUNCTIONS, NS, PY, V240_COUNT, arg_names

MODULE = "_ferrohsm_pkcs11"
LIBNAME = "libferrohsm-pkcs11.so"
NATIVE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "native")


def _native_api() -> str:
    """What pkcs11_shim/native.py calls in native/: the declarations between the
    NATIVE_API markers of native/ferro_native.h, where they are written once."""
    with open(os.path.join(NATIVE_DIR, "ferro_native.h")) as f:
        text = f.read()
    begin, end = "/* NATIVE_API begin */", "/* NATIVE_API end */"
    start = text.index(begin) + len(begin)
    return text[start:text.index(end, start)]


# the engine reserves IV counter values for the native message path
RESERVE_IV_CDEF = """
extern "Python+C" CK_RV ferro_py_reserve_iv(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key,
                                            unsigned long long *start, unsigned long long *count);
"""

BOOT_C = r"""
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CKR_OK 0x0UL
#define CKR_GENERAL_ERROR 0x5UL
#define CKR_ARGUMENTS_BAD 0x7UL
#define CKR_FUNCTION_NOT_SUPPORTED 0x54UL
#define CKR_BUFFER_TOO_SMALL 0x150UL
#define FERRO_PASS (~(CK_RV)0)          /* native/ferro_native.h: "not mine, ask Python" */

int ferro_python_ready = 0;        /* set by the init code once handlers exist */
static int ferro_python_ok = 0;
static pthread_once_t ferro_once = PTHREAD_ONCE_INIT;
static PyGILState_STATE ferro_fork_gil;

__attribute__((constructor)) static void ferro_global_python(void)
{
    Dl_info info;
    if (dladdr((void *)&Py_IsInitialized, &info) && info.dli_fname)
        dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_GLOBAL);
}

static void ferro_site_dir(char *out, size_t size)
{
    Dl_info info;
    char *real, *slash;
    int i;
    out[0] = 0;
    if (!dladdr((void *)&ferro_site_dir, &info) || !info.dli_fname)
        return;
    real = realpath(info.dli_fname, NULL);
    if (!real)
        return;
    for (i = 0; i < 2; i++) {                 /* .../site-packages/pkcs11_shim/lib.so */
        slash = strrchr(real, '/');
        if (slash)
            *slash = 0;
    }
    if (strlen(real) < size)
        strcpy(out, real);
    free(real);
}

static int ferro_add_site_dir(const char *dir, int first)    /* GIL held */
{
    PyObject *site, *res, *path;
    Py_ssize_t before;
    if (!dir[0])
        return 1;
    site = PyImport_ImportModule("site");
    if (!site) {
        PyErr_Print();
        return 0;
    }
    path = PySys_GetObject("path");                   /* borrowed */
    before = path && PyList_Check(path) ? PyList_GET_SIZE(path) : 0;
    res = PyObject_CallMethod(site, "addsitedir", "s", dir);
    Py_DECREF(site);
    /* C host: the install's own packages (what addsitedir appended) go before
       the interpreter's (Debian's dist-packages holds an older cryptography) */
    if (res && first && path && PyList_Check(path)) {
        PyObject *added = PyList_GetSlice(path, before, PyList_GET_SIZE(path));
        Py_ssize_t at = 0;                            /* after the standard library */
        while (at < before) {
            const char *p = PyUnicode_Check(PyList_GET_ITEM(path, at))
                            ? PyUnicode_AsUTF8(PyList_GET_ITEM(path, at)) : NULL;
            if (p && strstr(p, "-packages"))
                break;
            at++;
        }
        if (!added || PyList_SetSlice(path, before, PyList_GET_SIZE(path), NULL) < 0
                || PyList_SetSlice(path, at, at, added) < 0)
            PyErr_Print();
        Py_XDECREF(added);
    }
    if (!res) {
        PyErr_Print();
        return 0;
    }
    Py_DECREF(res);
    return 1;
}

static void ferro_prefork(void) { ferro_fork_gil = PyGILState_Ensure(); PyOS_BeforeFork(); }
static void ferro_postfork_parent(void) { PyOS_AfterFork_Parent(); PyGILState_Release(ferro_fork_gil); }
static void ferro_postfork_child(void) { PyOS_AfterFork_Child(); PyGILState_Release(ferro_fork_gil); }

static void ferro_boot_once(void)
{
    char dir[PATH_MAX];
    ferro_site_dir(dir, sizeof dir);
    if (!Py_IsInitialized()) {
        PyConfig config;
        PyStatus status;
        if (access(FERRO_PYTHON_HOME, R_OK | X_OK) != 0) {   /* e.g. a pyenv under /root */
            fprintf(stderr, "ferrohsm: this user cannot read the embedded Python's home %s; "
                    "rebuild the module from an interpreter every user can read "
                    "(scripts/setup.sh uses /usr/bin/python3)\n", FERRO_PYTHON_HOME);
            return;
        }
        PyConfig_InitIsolatedConfig(&config);
        config.install_signal_handlers = 0;
        config.site_import = 1;
        status = PyConfig_SetBytesString(&config, &config.home, FERRO_PYTHON_HOME);
        if (!PyStatus_Exception(status))
            status = Py_InitializeFromConfig(&config);
        PyConfig_Clear(&config);
        if (PyStatus_Exception(status)) {
            fprintf(stderr, "ferrohsm: cannot start Python (home %s): %s\n", FERRO_PYTHON_HOME,
                    status.err_msg ? status.err_msg : "?");
            return;
        }
        ferro_python_ok = ferro_add_site_dir(dir, 1);
        PyEval_SaveThread();
        pthread_atfork(ferro_prefork, ferro_postfork_parent, ferro_postfork_child);
    } else {
        PyGILState_STATE gil = PyGILState_Ensure();
        ferro_python_ok = ferro_add_site_dir(dir, 0);
        PyGILState_Release(gil);
    }
}

static int ferro_boot(void)
{
    pthread_once(&ferro_once, ferro_boot_once);
    return ferro_python_ok;
}
"""

INTERFACES_C = r"""
static CK_INTERFACE ferro_interfaces[] = {
    { (CK_CHAR *)"PKCS 11", &ferro_list_30, 0 },
    { (CK_CHAR *)"PKCS 11", &ferro_list_240, 0 },
};
#define FERRO_N_INTERFACES (sizeof ferro_interfaces / sizeof ferro_interfaces[0])

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList)
{
    if (!ppFunctionList)
        return CKR_ARGUMENTS_BAD;
    *ppFunctionList = &ferro_list_240;
    return CKR_OK;
}

CK_RV C_GetInterfaceList(CK_INTERFACE_PTR pInterfacesList, CK_ULONG_PTR pulCount)
{
    CK_ULONG i;
    if (!pulCount)
        return CKR_ARGUMENTS_BAD;
    if (!pInterfacesList) {
        *pulCount = FERRO_N_INTERFACES;
        return CKR_OK;
    }
    if (*pulCount < FERRO_N_INTERFACES) {
        *pulCount = FERRO_N_INTERFACES;
        return CKR_BUFFER_TOO_SMALL;
    }
    for (i = 0; i < FERRO_N_INTERFACES; i++)
        pInterfacesList[i] = ferro_interfaces[i];
    *pulCount = FERRO_N_INTERFACES;
    return CKR_OK;
}

/* NULL name: the default (first, 3.0) interface. A name, version or flags no
   offered interface has: CKR_ARGUMENTS_BAD (as SoftHSM2 2.6 does). */
CK_RV C_GetInterface(CK_UTF8CHAR_PTR pInterfaceName, CK_VERSION_PTR pVersion,
                     CK_INTERFACE_PTR_PTR ppInterface, CK_FLAGS flags)
{
    CK_ULONG i;
    if (!ppInterface)
        return CKR_ARGUMENTS_BAD;
    for (i = 0; i < FERRO_N_INTERFACES; i++) {
        CK_INTERFACE *it = &ferro_interfaces[i];
        CK_VERSION *v = (CK_VERSION *)it->pFunctionList;
        if (pInterfaceName && strcmp((const char *)pInterfaceName, (const char *)it->pInterfaceName))
            continue;
        if (pVersion && (pVersion->major != v->major || pVersion->minor != v->minor))
            continue;
        if (flags & ~it->flags)
            continue;
        *ppInterface = it;
        return CKR_OK;
    }
    return CKR_ARGUMENTS_BAD;
}
"""


def _entry_points() -> str:
    """Forward declarations of the callbacks, then the exported C_* functions."""
    decls, defs = [], []
    for name, how, params in FUNCTIONS:
        if how == PY:
            args = ", ".join(arg_names(params))
            decls.append(f"static CK_RV py_{name}({params});")
            fast = ""
            if name in FAST:
                decls.append(f"CK_RV ferro_fast_{name}({params});")
                fast = (f"    if ((rv = ferro_fast_{name}({args})) != FERRO_PASS)\n"
                        f"        return rv;\n")
            defs.append(f"CK_RV {name}({params})\n{{\n    CK_RV rv;\n{fast}"
                        f"    if (!ferro_boot())\n        return CKR_GENERAL_ERROR;\n"
                        f"    rv = py_{name}({args});\n"
                        f"    return ferro_python_ready ? rv : CKR_GENERAL_ERROR;\n}}")
        elif how == NS:
            defs.append(f"CK_RV {name}({params})\n{{\n    return CKR_FUNCTION_NOT_SUPPORTED;\n}}")
    return "\n".join(decls) + "\n\n" + "\n\n".join(defs) + "\n"


def _function_lists() -> str:
    def table(ctype: str, var: str, version: str, rows) -> str:
        body = ",\n    ".join(name for name, _, _ in rows)
        return f"static {ctype} {var} = {{\n    {version},\n    {body}\n}};\n"
    protos = "".join(f"CK_RV {name}({params});\n" for name, _, params in FUNCTIONS)
    return (protos + table("CK_FUNCTION_LIST", "ferro_list_240", "{2, 40}", FUNCTIONS[:V240_COUNT])
            + table("CK_FUNCTION_LIST_3_0", "ferro_list_30", "{3, 0}", FUNCTIONS))


INIT_CODE = f"""
from {MODULE} import ffi, lib
try:
    import pkcs11_shim.handlers as _handlers
    _handlers.install(ffi, lib)
except BaseException:
    import traceback, sys
    sys.stderr.write("ferrohsm: the PKCS#11 module could not start its Python part:\\n")
    traceback.print_exc()
"""


def native_header() -> str:
    """ferro_pkcs11.h for native/*.c: the shim's declarations and every CK* constant."""
    from provider import constants as C
    defines = "".join(f"#define {name} ((CK_ULONG)0x{value:x}UL)\n" for name, value in vars(C).items()
                      if name.startswith("CK") and "_" in name and isinstance(value, int))
    return ("#ifndef FERRO_PKCS11_H\n#define FERRO_PKCS11_H\n" + header()
            + "#define CK_TRUE 1\n#define CK_FALSE 0\n" + defines + "#endif\n")


def make_ffi(include_dir: str) -> cffi.FFI:
    """`include_dir` receives the generated ferro_pkcs11.h the native sources include."""
    with open(os.path.join(include_dir, "ferro_pkcs11.h"), "w") as f:
        f.write(native_header())
    ffi = cffi.FFI()
    decls = header()
    native_api = _native_api()
    ffi.embedding_api("")      # no Python-implemented exports: the C_* are C
    ffi.cdef(decls)
    ffi.cdef("extern int ferro_python_ready;")
    ffi.cdef(native_api + RESERVE_IV_CDEF)
    ffi.cdef("".join(f'extern "Python" CK_RV py_{name}({params});\n'
                     for name, how, params in FUNCTIONS if how == PY))
    libdir = sysconfig.get_config_var("LIBDIR")
    home = sys.base_prefix.replace("\\", "\\\\").replace('"', '\\"')
    ffi.set_source(
        MODULE,
        decls + BOOT_C + native_api + _entry_points() + _function_lists() + INTERFACES_C,
        sources=sorted(os.path.join(NATIVE_DIR, f) for f in os.listdir(NATIVE_DIR) if f.endswith(".c")),
        include_dirs=[include_dir, NATIVE_DIR],
        define_macros=[("_GNU_SOURCE", None), ("FERRO_PYTHON_HOME", f'"{home}"')],
        library_dirs=[libdir],
        runtime_library_dirs=[libdir],
        libraries=["crypto", "dl", "pthread"],
        extra_compile_args=["-Wno-unused-parameter", "-O2"],
        # our own C_* win over same-named symbols of other modules in the process
        extra_link_args=["-Wl,-Bsymbolic"],
    )
    ffi.embedding_init_code(INIT_CODE)
    return ffi


def compile_library(out_dir: str, verbose: bool = False) -> str:
    """Build the library into `out_dir`; returns its path."""
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ferrohsm-build-") as tmp:
        ffi = make_ffi(tmp)
        built = ffi.compile(tmpdir=tmp, target=LIBNAME, verbose=verbose)
        dest = os.path.join(out_dir, LIBNAME)
        tmp_dest = dest + ".tmp"
        with open(built, "rb") as src, open(tmp_dest, "wb") as dst:
            dst.write(src.read())
        os.chmod(tmp_dest, 0o755)
        os.replace(tmp_dest, dest)    # atomic: a process using the old one keeps it
    return dest


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    print(compile_library(target, verbose="-v" in sys.argv))
