"""Rewrite a codec's networks into their DPU-friendly form with the registered passes.

::

    new_model, log = rewrite_for_dpu(model)          # exact passes on g_a, g_s, h_a, h_s
    delta = partition_delta(model, new_model, partial(partition_hyperprior, tile=256))

``rewrite_for_dpu`` deep-copies the model once and runs the passes (by default the exact
ones, :data:`quantize.passes.EXACT_DPU_PASSES`) on each of the four networks of a
``GDNHyperprior``, each pass to a fixed point. ``model`` is not modified; the copy keeps
its submodule names, so its state dict has the same keys (with new shapes where a pass
changed a kernel). The log is JSON-able: ``{network: [one entry per pass]}`` (see
:func:`quantize.passes.run_passes`).

Layering: ``quantize/`` sits below ``compile/`` and must not import it, so
:func:`partition_delta` takes the partition function as an argument.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

from torch import nn

from quantize.passes import EXACT_DPU_PASSES, Pass, PassError, resolve_passes, run_passes

__all__ = ["NETWORKS", "partition_delta", "rewrite_for_dpu"]

#: the deployed networks of a GDNHyperprior (``models/hyperprior.py``)
NETWORKS: tuple[str, ...] = ("g_a", "g_s", "h_a", "h_s")


def rewrite_for_dpu(model: nn.Module, passes: Sequence[str | Pass] = EXACT_DPU_PASSES, *,
                    networks: Sequence[str] = NETWORKS, max_iters: int = 10,
                    allow_approximate: bool = False) -> tuple[nn.Module, dict[str, list[dict]]]:
    """Run ``passes`` on each of ``networks`` of a deep copy of ``model``.

    Raises :class:`PassError` for an approximate pass unless ``allow_approximate`` (the
    default promise is that the new model computes what the old one did, up to float
    rounding), and for a network the model does not have.
    """
    resolved = resolve_passes(passes)
    approx = [p.name for p in resolved if not p.exact]
    if approx and not allow_approximate:
        raise PassError(f"approximate pass(es) {approx} need allow_approximate=True")
    missing = [n for n in networks if not isinstance(getattr(model, n, None), nn.Module)]
    if missing:
        raise PassError(f"{type(model).__name__} has no network(s) {missing}")
    new = copy.deepcopy(model)
    log: dict[str, list[dict]] = {}
    for net in networks:
        # run_passes copies the network again (cheap, and keeps its no-mutation contract simple)
        rewritten, log[net] = run_passes(getattr(new, net), resolved, max_iters=max_iters)
        setattr(new, net, rewritten)
    return new, log


def partition_delta(before: nn.Module, after: nn.Module, partition_fn: Callable[[nn.Module], dict]) -> dict:
    """Per network, the partition summary of ``before`` and ``after``.

    ``partition_fn(model) -> {network: report}`` (e.g. ``compile.partition.partition_hyperprior``
    with the tile bound); a report needs ``n_dpu_subgraphs``, ``n_cpu_ops`` and ``deployable``.
    Returns ``{network: {"before": {...}, "after": {...}}}``, JSON-able.
    """

    def summary(report) -> dict:
        return {"n_dpu_subgraphs": report.n_dpu_subgraphs, "n_cpu_ops": report.n_cpu_ops,
                "deployable": bool(report.deployable)}

    b, a = partition_fn(before), partition_fn(after)
    return {net: {"before": summary(b[net]), "after": summary(a[net])} for net in b}
