"""``torch.compile`` for a backbone, in place, or one line saying why this platform cannot.

The backbone is compiled with :meth:`torch.nn.Module.compile`, which compiles its call in
place: parameter names stay as they are (``torch.compile(net)`` would wrap it and prefix
every checkpoint key with ``_orig_mod.``), so checkpoints from a compiled run load into an
uncompiled model, for export or prediction, and the other way round.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

#: ``torch.compile`` modes: "default" balances compile time and speed; "reduce-overhead"
#: adds CUDA graphs (fewer kernel launches; fixed shapes, more memory); "max-autotune"
#: benchmarks kernel choices (long compile), "-no-cudagraphs" without the graphs.
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


def compile_problem(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot run on ``device`` here (no compiler, unsupported Python, ...), or None.

    Compiles and runs a two-operation function, which needs everything a backbone needs
    (Dynamo for this Python, Inductor's C++ compiler on a CPU or Triton on a GPU).
    """
    try:
        probe = torch.compile(lambda x: x * 2 + 1)
        probe(torch.ones(8, device=device))
    except Exception as err:  # noqa: BLE001 (any failure means: run uncompiled)
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return f"{type(err).__name__}: {first}"[:300]
    return None


def compile_backbone(net: nn.Module, mode: CompileMode, device: torch.device) -> str | None:
    """Compile ``net`` in place for ``device``; the reason when it was skipped instead, else None."""
    problem = compile_problem(device)
    if problem is None:
        net.compile(mode=mode)
    return problem
