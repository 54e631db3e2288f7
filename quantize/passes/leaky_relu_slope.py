"""leaky_relu_slope (APPROXIMATE): LeakyReLU(a) with a != 26/256 becomes LeakyReLU(26/256).

Why the DPU needs it
--------------------
The DPU's LeakyReLU multiplies by the fixed-point constant 26/256 = 0.1015625. The
Inspector rejects any other slope ("DPU only support 26/256", ``dpu_op_filter.py``
``filter_leaky_relu``), and vai_q_pytorch silently forces the slope to 26/256 when it
quantises (``pytorch_nndct/nn/modules/leaky_relu.py``, ``leaky_relu_approximate=True``;
Quark does the same); research/vitis_ai.md sections 2 and 3. Doing it here makes the
change visible and measurable (and lets the model be fine-tuned with the DPU's slope)
instead of happening inside the quantiser.

Algebra and error bound
-----------------------
``LeakyReLU_a(x) = max(x, 0) + a * min(x, 0)``, so with ``b = 26/256``::

    LeakyReLU_b(x) - LeakyReLU_a(x) = (b - a) * min(x, 0)

elementwise: the output changes by at most ``|a - b| * |min(x, 0)|`` at each element
(0 where x >= 0), and by exactly that at the LeakyReLU itself; later layers carry the
change on. It is therefore NOT exact: ``exact = False``, and callers that promise
equivalence refuse it unless asked. ``run_passes(..., probe=x)`` logs the measured
``max_abs_change`` of the whole module's output; each rewrite's log line gives the
slopes.

Refused (with the reason in the log): a slope that is 26/256 already (nothing to do);
a slope further than ``max_slope_change`` from 26/256 when that limit is set (default:
no limit, as nndct); subclasses of LeakyReLU (their forward may differ).
"""

from __future__ import annotations

from torch import nn

from quantize.passes.base import Pass, Site, register_pass

__all__ = ["DPU_LEAKY_SLOPE", "LeakyReluSlope"]

#: the one LeakyReLU slope the DPU computes (26/256 = 0.1015625, exact in binary)
DPU_LEAKY_SLOPE = 26 / 256


@register_pass
class LeakyReluSlope(Pass):
    """LeakyReLU(a != 26/256) -> LeakyReLU(26/256); the output moves by (26/256 - a) * min(x, 0)."""

    name = "leaky_relu_slope"
    exact = False
    types = (nn.LeakyReLU,)

    def __init__(self, max_slope_change: float | None = None):
        self.max_slope_change = max_slope_change

    def check(self, site: Site) -> str | None:
        m = site.module
        if type(m) is not nn.LeakyReLU:
            return f"a {type(m).__name__} (subclass of LeakyReLU whose forward may differ)"
        a = float(m.negative_slope)
        if a == DPU_LEAKY_SLOPE:
            return "slope is 26/256 already (nothing to do)"
        if self.max_slope_change is not None and abs(a - DPU_LEAKY_SLOPE) > self.max_slope_change:
            return (f"slope {a:g} is {abs(a - DPU_LEAKY_SLOPE):.4g} from 26/256, more than "
                    f"max_slope_change={self.max_slope_change:g}")
        return None

    def rewrite(self, site: Site) -> str:
        a = float(site.module.negative_slope)
        new = nn.LeakyReLU(DPU_LEAKY_SLOPE, inplace=site.module.inplace)
        new.train(site.module.training)
        site.replace(new)
        return (f"slope {a:g} -> 26/256; output change |{DPU_LEAKY_SLOPE - a:+.6g} * min(x, 0)| "
                "per element")
