"""Rewrite passes over ``nn.Module`` trees: one small documented rule per file (house habit 8).

The framework (``Pass``, ``Site``, ``PassResult``, the registry and ``run_passes``) lives
in :mod:`quantize.passes.base` and is re-exported here; importing this package registers
every rule:

============================  =====  ==================================================
pass                          exact  what it does (why the DPU needs it: its docstring)
============================  =====  ==================================================
``fold_batchnorm``            yes    conv -> BatchNorm2d (eval) becomes one conv
``deconv_output_padding``     yes    ConvTranspose2d output_padding q -> 0, kernel +q zeros
``leaky_relu_slope``          no     LeakyReLU slope -> 26/256
``gdn_polynomial``            no     GDN/IGDN -> PolyGDN: rsqrt by polynomial + Newton steps
                                     on the calibrated range of s (needs ``ranges``)
``gdn_simplified``            no     GDN/IGDN -> simplified GDN x / (beta + gamma|x|):
                                     a different function, needs fine-tuning
``instance_norm``             no     InstanceNorm2d -> BatchNorm2d with calibrated statistics
                                     (then ``fold_batchnorm``)
``conv5x5_to_3x3``            no     opt-in: a named 5x5 conv -> two 3x3 convs (least squares)
============================  =====  ==================================================

The approximate passes that need data take it as constructor arguments (instances, not
names, in the pass list): ``GdnPolynomial(ranges=gdn_s_ranges(model, tiles))``; the
registered default instance refuses every site with the reason.

Usage::

    from quantize.passes import run_passes
    new, log = run_passes(model, ["fold_batchnorm", "deconv_output_padding"])
"""

from __future__ import annotations

from quantize.passes import (
    conv5x5_to_3x3,
    deconv_output_padding,
    fold_batchnorm,
    gdn_polynomial,
    gdn_simplified,
    instance_norm,
    leaky_relu_slope,
)
from quantize.passes.base import (
    PASSES,
    Pass,
    PassError,
    PassNotConverged,
    PassResult,
    Refusal,
    Site,
    get_pass,
    iter_sites,
    max_abs_change,
    register_pass,
    resolve_passes,
    run_passes,
)

#: the exact passes, in the order :func:`quantize.rewrite.rewrite_for_dpu` runs them
#: (BatchNorm first: a BN after a transposed conv folds the same before or after the padding rewrite)
EXACT_DPU_PASSES: tuple[str, ...] = ("fold_batchnorm", "deconv_output_padding")

__all__ = [
    "EXACT_DPU_PASSES",
    "PASSES",
    "Pass",
    "PassError",
    "PassNotConverged",
    "PassResult",
    "Refusal",
    "Site",
    "conv5x5_to_3x3",
    "deconv_output_padding",
    "fold_batchnorm",
    "gdn_polynomial",
    "gdn_simplified",
    "get_pass",
    "instance_norm",
    "iter_sites",
    "leaky_relu_slope",
    "max_abs_change",
    "register_pass",
    "resolve_passes",
    "run_passes",
]
