"""Visual-token compressors under one contract (see `base.py`).

    from medvtc.common.compressors import create_compressor
    comp = create_compressor("divprune")
    out = comp(tokens, grid=(24, 24), budget=0.25)

Every module in this package that defines a method registers it on import; the modules are
discovered automatically, so adding a method touches one new file, named after the method's
registry name (`perceiver.py` defines "perceiver"), with its tests in
`tests/compressors/test_<name>.py`.

Applications build their compressor with `resolve_compressor` (resolve.py): name, budget and
arguments plus the caller's setting (grid, widths, heads) -> module, the per-method defaults
declared by each method's class (`TokenCompressor.default_args`).
"""

from __future__ import annotations

import importlib
import pkgutil

from medvtc.common.compressors.base import COMPRESSORS, CompressorOutput, TokenCompressor, register
from medvtc.common.compressors.resolve import (
    accepted_args,
    create_compressor,
    resolve_compressor,
    resolve_compressor_args,
)

_INFRA = {"base", "utils", "metrics", "references", "resolve"}
for _mod in pkgutil.iter_modules(__path__):
    if _mod.name not in _INFRA and not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")


def list_compressors() -> list[str]:
    return COMPRESSORS.names()


__all__ = [
    "COMPRESSORS",
    "CompressorOutput",
    "TokenCompressor",
    "accepted_args",
    "create_compressor",
    "list_compressors",
    "register",
    "resolve_compressor",
    "resolve_compressor_args",
]
