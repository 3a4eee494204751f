"""Visual-token compressors under one contract (see `base.py`).

    from medvtc.common.compressors import create_compressor
    comp = create_compressor("divprune")
    out = comp(tokens, grid=(24, 24), budget=0.25)

Every module in this package that defines a method registers it on import; the modules are
discovered automatically, so adding a method touches one new file.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

from medvtc.common.compressors.base import COMPRESSORS, CompressorOutput, TokenCompressor, register

_INFRA = {"base", "utils", "metrics", "references"}
for _mod in pkgutil.iter_modules(__path__):
    if _mod.name not in _INFRA and not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")


def create_compressor(name: str, **kwargs: Any) -> TokenCompressor:
    """Build a registered compressor; keyword arguments a method does not take are dropped
    only if they are the shared context (`dim`, `text_dim`), so a config can pass them to any
    method, while a misspelt method argument is still an error."""
    cls = COMPRESSORS.get(name)
    params = inspect.signature(cls.__init__).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    shared = {"dim", "text_dim"}
    clean = {k: v for k, v in kwargs.items() if accepts_any or k in params or k not in shared}
    unknown = [k for k in clean if not accepts_any and k not in params]
    if unknown:
        from medvtc.common.errors import ConfigError

        valid = sorted(p for p in params if p not in ("self",))
        raise ConfigError(f"compressor {name!r} has no argument {unknown[0]!r}; valid: {', '.join(valid)}")
    return cls(**clean)


def list_compressors() -> list[str]:
    return COMPRESSORS.names()


__all__ = ["COMPRESSORS", "CompressorOutput", "TokenCompressor", "create_compressor", "list_compressors", "register"]
