"""The rewrite-pass framework: rules over ``nn.Module`` trees, a registry, a fixed-point runner.

A pass is one small rule (onnxscript rewriter style; house habit 8)::

    match(root)      -> [Site, ...]        every place the rule could apply
    check(site)      -> None | "reason"    None: rewrite it; a string: why not (logged)
    rewrite(site)    -> "what was done"    replaces submodules *by name* in the site's parent

The tree is walked through named children (``nn.Sequential`` entries and module
attributes alike), and a rewrite swaps the child under the same name, so state-dict keys
stay readable (``g_s.deconv0.weight`` before and after). No ``torch.fx`` is needed: the
rules that depend on dataflow (``fold_batchnorm``) only trust ``nn.Sequential``, whose
child order *is* the dataflow.

Running passes::

    new, log = run_passes(model, ["fold_batchnorm", "deconv_output_padding"], max_iters=10)

- ``model`` is never modified: it is deep-copied once, and every pass works on the copy
  (qonnx's ``transform`` copies the same way).
- Each pass is swept to a fixed point: sweep after sweep until a sweep rewrites nothing,
  at most ``max_iters`` sweeps (qonnx has no cap). A pass still rewriting after
  ``max_iters`` sweeps is a bug in the pass: :class:`PassNotConverged` is raised,
  carrying the log so far.
- The log is JSON-able: per pass its name, ``exact`` flag, number of rewrites, what each
  rewrite did (path, detail), the refusals (path, module type, reason) left at the fixed
  point (less the sites the pass rewrote itself), and the sweeps it took. Given a ``probe`` input, it also records the measured
  ``max_abs_change`` of the module's output over each pass (near 0 for exact passes; the
  size of the approximation for the others).

A pass that is not ``exact`` changes the function (e.g. forcing LeakyReLU's slope to
26/256); callers that promise equivalence (``quantize.rewrite.rewrite_for_dpu``) reject
those unless asked.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from codec.errors import MedcodecError

__all__ = [
    "PASSES",
    "Pass",
    "PassError",
    "PassNotConverged",
    "PassResult",
    "Refusal",
    "Site",
    "get_pass",
    "iter_sites",
    "max_abs_change",
    "register_pass",
    "resolve_passes",
    "run_passes",
]


class PassError(MedcodecError):
    """A pass or a pass list that cannot be run (unknown name, wrong kind of pass)."""


class PassNotConverged(PassError):
    """A pass still rewrote something in its ``max_iters``-th sweep; ``log`` holds the runs so far."""

    def __init__(self, message: str, log: list[dict]):
        super().__init__(message)
        self.log = log


@dataclass(frozen=True)
class Site:
    """One named child in the tree: ``parent.<name>`` is ``module``; ``path`` is its dotted path."""

    parent: nn.Module
    name: str
    path: str
    module: nn.Module

    def attached(self, root: nn.Module) -> bool:
        """Still at ``path`` under ``root`` (an earlier rewrite of the same sweep may have removed
        or replaced it, or one of its ancestors)."""
        try:
            return root.get_submodule(self.path) is self.module and (
                root.get_submodule(self.path.rpartition(".")[0]) is self.parent)
        except AttributeError:
            return False

    def replace(self, new: nn.Module) -> None:
        """Put ``new`` under the same name (state-dict keys keep their path)."""
        setattr(self.parent, self.name, new)

    def remove(self) -> None:
        """Drop the child from its parent (for ``nn.Sequential``: one stage less)."""
        delattr(self.parent, self.name)

    def previous(self) -> Site | None:
        """The child just before this one in an ``nn.Sequential`` parent, else None.

        Only a Sequential's order is its dataflow; for any other parent the producer of a
        child's input is unknown without tracing, so there is no "previous".
        """
        if not isinstance(self.parent, nn.Sequential):
            return None
        names = list(self.parent._modules)
        i = names.index(self.name)
        if i == 0:
            return None
        prev = names[i - 1]
        prefix = self.path.rpartition(".")[0]
        return Site(self.parent, prev, f"{prefix}.{prev}" if prefix else prev, self.parent._modules[prev])


def iter_sites(root: nn.Module, types: type | tuple[type, ...] = nn.Module) -> Iterator[Site]:
    """Every named descendant of ``root`` that is an instance of ``types``, in pre-order
    (a child before its own children, siblings in order: the order of ``state_dict``)."""

    def walk(parent: nn.Module, prefix: str) -> Iterator[Site]:
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            path = f"{prefix}.{name}" if prefix else name
            if isinstance(child, types):
                yield Site(parent, name, path, child)
            yield from walk(child, path)

    return walk(root, "")


@dataclass(frozen=True)
class Refusal:
    """A matched site the pass left alone, and why."""

    path: str
    type: str
    reason: str

    def to_dict(self) -> dict:
        return {"path": self.path, "type": self.type, "reason": self.reason}


@dataclass
class PassResult:
    """What one pass did: the new module, the rewrites, and the refusals left at the end."""

    module: nn.Module
    name: str
    exact: bool
    count: int = 0
    #: one ``{"path": ..., "detail": ...}`` per rewrite, in order
    rewrites: list[dict] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    iterations: int = 0
    converged: bool = True
    max_abs_change: float | None = None

    def to_log(self) -> dict:
        """JSON-able record (everything but the module)."""
        entry = {"pass": self.name, "exact": self.exact, "count": self.count,
                 "rewrites": [dict(r) for r in self.rewrites], "refusals": [r.to_dict() for r in self.refusals],
                 "iterations": self.iterations, "converged": self.converged}
        if self.max_abs_change is not None:
            entry["max_abs_change"] = self.max_abs_change
        return entry


class Pass:
    """Base of every rewrite rule; a subclass sets ``name``, ``exact`` and ``types`` and
    overrides :meth:`check` and :meth:`rewrite` (and :meth:`match` if a type test is not
    enough). The class docstring is the rule's ``doc``.
    """

    name: ClassVar[str] = ""
    exact: ClassVar[bool] = True
    #: module types that :meth:`match` collects
    types: ClassVar[tuple[type, ...]] = ()

    @property
    def doc(self) -> str:
        return (type(self).__doc__ or "").strip()

    def match(self, root: nn.Module) -> list[Site]:
        """Candidate sites: by default every descendant whose type is in ``types``."""
        return list(iter_sites(root, self.types))

    def check(self, site: Site) -> str | None:
        """None when ``site`` can be rewritten, else the reason it is refused."""
        raise NotImplementedError

    def rewrite(self, site: Site) -> str:
        """Rewrite ``site`` in place (in the already copied tree); returns a one-line detail for the log."""
        raise NotImplementedError

    # -- running ------------------------------------------------------------------------------
    def sweep(self, root: nn.Module) -> tuple[list[dict], list[Refusal]]:
        """One pass over ``root`` IN PLACE: match, then check-and-rewrite each site in turn.

        A site is checked just before its rewrite, on the tree as the earlier rewrites of
        this sweep left it; sites that those rewrites removed are skipped.
        """
        done: list[dict] = []
        refused: list[Refusal] = []
        for site in self.match(root):
            if not site.attached(root):
                continue
            reason = self.check(site)
            if reason is None:
                done.append({"path": site.path, "detail": self.rewrite(site)})
            else:
                refused.append(Refusal(site.path, type(site.module).__name__, reason))
        return done, refused

    def apply(self, module: nn.Module, max_iters: int = 10) -> PassResult:
        """This pass alone to a fixed point on a deep copy of ``module`` (raises like :func:`run_passes`)."""
        result = _to_fixed_point(self, copy.deepcopy(module), max_iters)
        if not result.converged:
            raise PassNotConverged(f"pass {self.name!r} had not reached a fixed point after "
                                   f"max_iters={max_iters} sweeps", [result.to_log()])
        return result


def _to_fixed_point(p: Pass, root: nn.Module, max_iters: int) -> PassResult:
    if max_iters < 1:
        raise PassError(f"max_iters must be >= 1, got {max_iters}")
    result = PassResult(module=root, name=p.name, exact=p.exact)
    for i in range(1, max_iters + 1):
        done, refused = p.sweep(root)
        result.iterations = i
        result.count += len(done)
        result.rewrites.extend(done)
        # the refusals of the last sweep, less the sites this run rewrote itself ("nothing to do" now)
        mine = {r["path"] for r in result.rewrites}
        result.refusals = [r for r in refused if r.path not in mine]
        if not done:
            return result
    result.converged = False  # the last allowed sweep still rewrote something
    return result


# -- the registry ------------------------------------------------------------------------------

#: pass name -> pass class; filled by ``@register_pass`` in the rule modules.
PASSES: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: add ``cls`` to :data:`PASSES` under ``cls.name``; a name taken twice raises."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no pass name")
    if cls.name in PASSES:
        raise ValueError(f"a pass named {cls.name!r} is already registered ({PASSES[cls.name].__qualname__})")
    PASSES[cls.name] = cls
    return cls


def get_pass(name: str) -> Pass:
    """A fresh instance of the registered pass ``name``."""
    try:
        return PASSES[name]()
    except KeyError:
        raise PassError(f"unknown pass {name!r}; registered: {sorted(PASSES)}") from None


def resolve_passes(passes: Sequence[str | Pass]) -> list[Pass]:
    """Pass instances for a list of registered names and/or instances."""
    if isinstance(passes, str):
        raise PassError("give a list of pass names, not one string")
    return [get_pass(p) if isinstance(p, str) else p for p in passes]


@torch.no_grad()
def max_abs_change(before: nn.Module, after: nn.Module, probe: Tensor) -> float:
    """max |after(probe) - before(probe)|, each run on its own deep copy (so a BatchNorm in
    training mode cannot update the modules' running statistics)."""
    a = copy.deepcopy(before)(probe)
    b = copy.deepcopy(after)(probe)
    return float((b - a).abs().max())


def run_passes(module: nn.Module, passes: Sequence[str | Pass], max_iters: int = 10,
               probe: Tensor | None = None) -> tuple[nn.Module, list[dict]]:
    """Apply ``passes`` in order, each to a fixed point, on ONE deep copy of ``module``.

    Args:
        module: not modified.
        passes: registered pass names, or :class:`Pass` instances.
        max_iters: the most sweeps per pass; a pass that still rewrites in its last
            sweep raises :class:`PassNotConverged`.
        probe: optional example input; the log then gives each pass's measured
            ``max_abs_change`` of the output.

    Returns:
        (the rewritten copy, the JSON-able log: one :meth:`PassResult.to_log` dict per pass).
    """
    resolved = resolve_passes(passes)
    root = copy.deepcopy(module)
    log: list[dict] = []
    for p in resolved:
        before = copy.deepcopy(root) if probe is not None else None
        result = _to_fixed_point(p, root, max_iters)
        if before is not None:
            result.max_abs_change = max_abs_change(before, root, probe)
        log.append(result.to_log())
        if not result.converged:
            raise PassNotConverged(f"pass {p.name!r} had not reached a fixed point after max_iters={max_iters} "
                                   f"sweeps ({result.count} rewrites so far)", log)
    return root, log
