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
     Python), put the site-packages directory the library is installed in
     (<site-packages>/pkcs11_shim/lib...so, found with dladdr) FIRST on sys.path
     through site.addsitedir (so .pth files work; addsitedir appends, so what it
     added is moved to the front: the module runs on the cryptography and cffi
     it was installed with, not the interpreter's), and release the GIL;
     register pthread_atfork handlers so a forked child has a sane interpreter
     (what os.fork does for Python hosts);
  3. in a Python host (python-pkcs11, PyKCS11, ctypes) the interpreter is
     reused: only step 2's path is added, under the GIL - unless the host has
     already imported other versions of cryptography or _cffi_backend than the
     ones installed with us (their dist-info in that directory): then the start
     fails with one line on stderr naming them and the versions needed, and
     every call (C_Initialize first) answers CKR_GENERAL_ERROR, rather than an
     engine half-working on the host's packages (BOOT_PY).
Then, still inside that first call, cffi's own embedding start-up runs
(cffi_start_python: import _cffi_backend, run INIT_CODE with this copy's ffi
and lib). All of step 2/3 and cffi's start-up run with the host's garbage
collector disabled (its previous setting restored after): a collection there
would run the host's finalisers, which may need a lock the host holds while it
loads us (PyKCS11 does), and the load would hang. gc.freeze()+unfreeze() then
zero the allocation count the start-up ran up, so the host's next allocation
does not collect at once either. (Imports still pass through the host's import
hooks; nothing else of the host's runs.)

Python hosts share one interpreter with every loaded copy of this library:
  - each copy (the same file from another directory is another copy) runs
    INIT_CODE once with its own ffi and lib, and handlers.install gives it its
    own State (handlers_common) and native binding: its own initialisation,
    sessions, logins and native tables. C_Finalize of one copy never touches
    another.
  - After dlclose nothing may point into unmapped memory: cffi's lib and ffi
    objects, the ctypes they realised and the def_extern callbacks stay
    reachable from the host's garbage collector (the callbacks are referenced
    from the .so's own data, so they can never be freed), and a host that walks
    gc.get_objects() or sys.modules would touch them. We cannot remove them all,
    so each copy keeps itself mapped for the life of the process: its
    constructor dlopen()s it once more with RTLD_NOLOAD|RTLD_NODELETE. A host
    that loads the same path again gets the same copy back; C_Finalize has
    already reset it (engine, sessions, native tables), so it behaves as a
    fresh library for a host that finalized before unloading, as the spec asks
    (C_Finalize is the last call). A host that unloads without C_Finalize finds
    it still initialized (CKR_CRYPTOKI_ALREADY_INITIALIZED), as with a library
    it never unloaded. INIT_CODE also takes its cffi module out of sys.modules.
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


# what native/ asks the engine (pkcs11_shim/native.py `bind`): IV counter values for the
# message path, and a recheck of the key when an armed operation's lease ran out
CALLBACKS_CDEF = """
extern "Python+C" CK_RV ferro_py_reserve_iv(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key,
                                            unsigned long long *start, unsigned long long *count,
                                            unsigned long long *salt);
extern "Python+C" CK_RV ferro_py_recheck(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key);
"""

# Run by BOOT_C before cffi's start-up, in the host's interpreter, GIL held.
BOOT_PY = r"""
import os, site, sys

def ferro_boot(site_dir):
    if not site_dir:
        return ""
    installed = {}                           # the versions installed with us
    for entry in os.listdir(site_dir):
        name, _, rest = entry.partition("-")
        if name in DEPENDENCIES and rest.endswith(".dist-info"):
            installed[name] = rest[:-len(".dist-info")]
    wrong = []
    for name, module in DEPENDENCIES.items():
        loaded = sys.modules.get(module)
        version = getattr(loaded, "__version__", None)
        if loaded is not None and name in installed and version != installed[name]:
            wrong.append(f"{name} {version} ({getattr(loaded, '__file__', '?')})")
    if wrong:
        need = ", ".join(f"{name} {version}" for name, version in sorted(installed.items()))
        return (f"ferrohsm: cannot start: this process already imported {', '.join(wrong)}; "
                f"the module runs only on the versions installed with it ({need}, in {site_dir}): "
                "load it before importing those, or run the program in that environment")
    if site_dir not in sys.path:             # addsitedir appends: move what it added to the front
        before = list(sys.path)
        site.addsitedir(site_dir)
        added = [p for p in sys.path if p not in before]
        sys.path[:] = added + before
    return ""

DEPENDENCIES = {"cffi": "_cffi_backend", "cryptography": "cryptography"}
"""


def _c_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n\"\n\"") + '"'


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
    /* this copy stays mapped until the process exits (see the docstring) */
    if (dladdr((void *)&ferro_global_python, &info) && info.dli_fname)
        dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
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

/* FERRO_BOOT_PY (build.py's BOOT_PY) defines ferro_boot(site_dir): "" once the
   install's site-packages is first on sys.path, or the one line refusing a host
   that already imported other versions of our dependencies. Then cffi's start-up.
   GIL held. */
static int ferro_start_python_side(const char *dir)
{
    PyObject *globals, *res = NULL;
    int ok = 0;
    globals = PyDict_New();
    if (!globals || PyDict_SetItemString(globals, "__builtins__", PyEval_GetBuiltins()) < 0)
        goto out;
    res = PyRun_String(FERRO_BOOT_PY, Py_file_input, globals, globals);
    if (!res)
        goto out;
    Py_DECREF(res);
    res = PyObject_CallFunction(PyDict_GetItemString(globals, "ferro_boot"), "s", dir);
    if (!res || !PyUnicode_Check(res))
        goto out;
    if (PyUnicode_GetLength(res)) {
        fprintf(stderr, "%s\n", PyUnicode_AsUTF8(res));
        goto out;
    }
    ok = cffi_start_python() == 0;     /* cffi's own start-up: our INIT_CODE */
out:
    if (PyErr_Occurred())
        PyErr_Print();
    Py_XDECREF(res);
    Py_XDECREF(globals);
    return ok;
}

/* The host's garbage collector stays off while we start (a collection would run
   the host's finalisers, which may need a lock the host holds while loading us);
   afterwards gc.freeze()+gc.unfreeze() zero the allocation count our start-up
   ran up, so the host's next allocation does not collect either (its young
   objects move to the oldest generation; skipped if the host froze objects). */
static int ferro_start_quietly(const char *dir)    /* GIL held */
{
    int was_enabled = PyGC_Disable(), ok = ferro_start_python_side(dir);
    PyObject *gc = PyImport_ImportModule("gc"), *n = NULL, *r;
    if (gc && (n = PyObject_CallMethod(gc, "get_freeze_count", NULL)) && PyLong_AsLong(n) == 0) {
        r = PyObject_CallMethod(gc, "freeze", NULL);
        Py_XDECREF(r);
        r = PyObject_CallMethod(gc, "unfreeze", NULL);
        Py_XDECREF(r);
    }
    Py_XDECREF(n);
    Py_XDECREF(gc);
    PyErr_Clear();
    if (was_enabled)
        PyGC_Enable();
    return ok;
}

/* fork() with Python's own fork hooks around it (what os.fork does). The
   forking thread may be one that never called us and has no Python thread
   state (`ferro_fork_foreign`): PyGILState_Ensure makes it one. In the child,
   PyOS_AfterFork_Child deletes every other thread state, the interpreter's
   first one included; releasing the made one there would delete the last
   thread state too, and the next one made would reuse the interpreter's
   built-in first state, which CPython 3.11 then refuses as "already
   initialized" (a fatal error at the child's first call). So the child keeps
   the made state and only lets go of the GIL; the parent releases it as usual. */
static int ferro_fork_foreign;
static void ferro_prefork(void)
{
    ferro_fork_foreign = PyGILState_GetThisThreadState() == NULL;
    ferro_fork_gil = PyGILState_Ensure();
    PyOS_BeforeFork();
}
static void ferro_postfork_parent(void) { PyOS_AfterFork_Parent(); PyGILState_Release(ferro_fork_gil); }
static void ferro_postfork_child(void)
{
    PyOS_AfterFork_Child();
    if (ferro_fork_foreign)
        PyEval_SaveThread();          /* this thread's state stays: one per child, never freed */
    else
        PyGILState_Release(ferro_fork_gil);
}

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
        ferro_python_ok = ferro_start_quietly(dir);
        PyEval_SaveThread();
        pthread_atfork(ferro_prefork, ferro_postfork_parent, ferro_postfork_child);
    } else {
        PyGILState_STATE gil = PyGILState_Ensure();
        ferro_python_ok = ferro_start_quietly(dir);
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


# Runs once per loaded copy, with that copy's own ffi and lib. Every copy registers
# itself as sys.modules["{MODULE}"]; nothing imports it again, so it goes.
INIT_CODE = f"""
from {MODULE} import ffi, lib
import sys
sys.modules.pop("{MODULE}", None)
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
    ffi.cdef(native_api + CALLBACKS_CDEF)
    ffi.cdef("".join(f'extern "Python" CK_RV py_{name}({params});\n'
                     for name, how, params in FUNCTIONS if how == PY))
    libdir = sysconfig.get_config_var("LIBDIR")
    home = sys.base_prefix.replace("\\", "\\\\").replace('"', '\\"')
    ffi.set_source(
        MODULE,
        decls + f"static const char FERRO_BOOT_PY[] = {_c_string(BOOT_PY)};\n" + BOOT_C
        + native_api + _entry_points() + _function_lists() + INTERFACES_C,
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
