"""How the optional compiled kernels are built (numba, from the ``fast`` extra). Importing this module imports numba;
only kernel modules import it, and only ``common.compiled.load`` imports those (never ``import protocol``)."""
from __future__ import annotations

import numba


def jit(**options):
    """``numba.njit(cache=True, **options)``; compiled in memory instead where no cache folder is writable.

    Kernel modules state every option (and define every helper their kernels call) in their own file: numba keys
    its disk cache by the stamp of the kernel's own source file, so a change made elsewhere would keep serving the
    old compiled code.
    """
    def decorate(fn):
        try:  # cached next to the module, or in the user's cache folder
            return numba.njit(cache=True, **options)(fn)
        except RuntimeError:  # no writable cache location: compiled in memory by each process
            return numba.njit(**options)(fn)
    return decorate
