"""The one place a compressor name, a budget and arguments become a module.

    from medvtc.common.compressors import resolve_compressor
    comp = resolve_compressor("perceiver", 64, {"depth": 1}, grid=(8, 8, 8), dim=192, heads=4)
    # PerceiverResampler(dim=192, budget=64, num_latents=64, heads=4, depth=1)

Every application (CT report model, LIBERO policy, compressors benchmark) builds its compressor
here. The per-method defaults are declared by each method's own class
(`TokenCompressor.default_args`: pixel shuffle's group factors from the grid and K, the
resamplers' K latents / queries and head count, ...); the caller's `args` override them;
`create_compressor` (the plain registry constructor, also here) builds the module.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

from medvtc.common.compressors.base import COMPRESSORS, TokenCompressor

# Names that mean "no compressor": the resolver gives None (callers keep every token).
NO_COMPRESSION = ("none",)
# Arguments every caller passes from its own setting; not part of a method's own `args`.
CONTEXT_ARGS = ("dim", "text_dim", "budget")


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


def budget_tokens(budget: int | float | None, grid: Sequence[int] | None) -> int | None:
    """K as a token count: an int is K, a keep-ratio in (0, 1] needs the grid (K = round(ratio
    * N), at least 1). None where K is unknown or the budget invalid: the module refuses an
    invalid budget where it is used, with the caller's context."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        return None
    if isinstance(budget, int):
        return budget if budget > 0 else None
    if grid is None or not 0.0 < budget <= 1.0:
        return None
    n = math.prod(int(g) for g in grid)
    return max(1, min(n, int(round(budget * n))))


def resolve_compressor_args(
    name: str,
    budget: int | float | None = None,
    args: Mapping[str, Any] | None = None,
    *,
    grid: Sequence[int] | None = None,
    dim: int | None = None,
    text_dim: int | None = None,
    heads: int | None = None,
    per_call: bool = False,
) -> dict[str, Any]:
    """The keyword arguments `resolve_compressor` builds method `name` with (see there):
    the context (dim, text_dim given, and the budget unless per_call), the class's
    `default_args`, then `args` over them. {} for "none". Unknown names are a `ConfigError`
    listing the valid ones; a budget the method cannot be built for a ValueError."""
    if name in NO_COMPRESSION:
        return {}
    cls = COMPRESSORS.get(name)
    grid_t = None if grid is None else tuple(int(g) for g in grid)
    context: dict[str, Any] = {k: v for k, v in (("dim", dim), ("text_dim", text_dim)) if v is not None}
    if not per_call and budget is not None:
        context["budget"] = budget
    defaults = cls.default_args(
        budget=budget_tokens(budget, grid_t), grid=grid_t, dim=dim, text_dim=text_dim, heads=heads, per_call=per_call
    )
    return {**context, **defaults, **dict(args or {})}


def resolve_compressor(
    name: str,
    budget: int | float | None = None,
    args: Mapping[str, Any] | None = None,
    *,
    grid: Sequence[int] | None = None,
    dim: int | None = None,
    text_dim: int | None = None,
    heads: int | None = None,
    per_call: bool = False,
) -> TokenCompressor | None:
    """Method `name` built for `budget` in the caller's setting; None for "none".

    name      a registry name ("identity" is the registered keep-everything module)
    budget    K (int) or a keep-ratio (float in (0, 1], resolved on `grid`); None: the method's own
    args      the caller's constructor arguments; they override the method's defaults
    grid      the token layout the module will see (pixel shuffle's group factors need it)
    dim, text_dim
              token and instruction widths (dropped for methods that do not take them)
    heads     the caller's attention head count (the resamplers use it by default)
    per_call  False (default): built for this one budget (passed to the constructor too), as a
              trained model's checkpoint needs: e.g. a perceiver gets exactly K latents, pixel
              shuffle fixed factors. True: budget is only the largest K the caller passes per
              call: the module is sized to serve it (query counts raised to K where the method's
              default is smaller) and chooses the rest per call.
    """
    if name in NO_COMPRESSION:
        return None
    kwargs = resolve_compressor_args(
        name, budget, args, grid=grid, dim=dim, text_dim=text_dim, heads=heads, per_call=per_call
    )
    return create_compressor(name, **kwargs)


def accepted_args(name: str, args: Mapping[str, Any] | None) -> dict[str, Any]:
    """The entries of `args` that method `name`'s constructor takes, less the context
    (dim, text_dim, budget: the resolver passes those itself); {} for "none". For carrying one
    method's arguments over to another (e.g. compressor_vla's num_queries to stc)."""
    if name in NO_COMPRESSION:
        return {}
    params = inspect.signature(COMPRESSORS.get(name).__init__).parameters
    return {k: v for k, v in (args or {}).items() if k in params and k != "self" and k not in CONTEXT_ARGS}


__all__ = [
    "NO_COMPRESSION",
    "accepted_args",
    "budget_tokens",
    "create_compressor",
    "resolve_compressor",
    "resolve_compressor_args",
]
