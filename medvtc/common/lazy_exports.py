"""Lazy package exports (PEP 562): a package names what it exports and from which submodule,
and the submodule is imported only when a name is first used, so `import medvtc...` stays fast
and MONAI / transformers load only when needed."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`exports` maps a name to its submodule (relative to `package`). Returns the module-level
    `__getattr__` and `__dir__` for the package:

        __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
    """

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(importlib.import_module(package))) | set(exports))

    return __getattr__, __dir__


__all__ = ["lazy_exports"]
