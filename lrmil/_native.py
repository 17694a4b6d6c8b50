"""The one loader of lrmil's compiled core `lrmil._C` (torch-free, so that torch-free paths
such as `lrmil synth` can use it): a clear error when the package was installed without it."""

from __future__ import annotations

from types import ModuleType

from lrmil.errors import EnvironmentMissingError

try:
    from lrmil import _C as _core
except ImportError as _exc:  # only in a broken or source-only install
    _core, _missing = None, str(_exc)
else:
    _missing = ""


def lib() -> ModuleType:
    """The compiled module, or EnvironmentMissingError saying how to get it."""
    if _core is None:
        raise EnvironmentMissingError(
            f"lrmil's compiled core (lrmil._C) is not built: run `make build` in the source "
            f"tree or reinstall lrmil ({_missing})"
        )
    return _core
