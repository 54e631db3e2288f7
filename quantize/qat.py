"""Quantization-aware fine-tuning of the int8 codec (straight-through estimator, fixed fix positions).

Post-training int8 of the codec loses several dB (README, "Where int8 stands"): per-tensor power-of-two
scales saturate g_s's activations on high-dynamic-range images. Here g_a and g_s run through their
int8 arithmetic during training, with the fix positions of the calibrate stage held fixed, so the
weights learn to live with them::

    qmodel = qat_model(model, specs)      # g_a, g_s: QATChain (fake int8, STE); h_a, h_s, entropy models float
    ... rate-distortion training of qmodel ...
    model = deployable(qmodel)            # the fine-tuned deployable networks back in a GDNHyperprior

``QATChain`` computes what ``quantize.builtin.FakeQuant`` (and the DPU) computes, except that rounding
passes gradients straight through and the LeakyReLU slope is applied before the output rounding (the
DPU rounds twice); values are saturated as on the DPU. The package built afterwards
(``quantize.codec_int8.build_int8_package`` with the same specs) is exact integer arithmetic again.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from quantize.builtin import LEAKY_SLOPE, QuantSpec, parse_chain

__all__ = ["QATChain", "deployable", "fake_quant", "finetune", "fix_positions_sha256", "qat_model"]


def fix_positions_sha256(specs: dict[str, QuantSpec]) -> str:
    """A digest of the fix positions alone (not the measured SQNR floats, which vary with thread count):
    what a QAT run depends on, recorded in the package's meta."""
    import hashlib
    import json

    doc = {n: {"fp_in": s.fp_in, "layers": [[ls.name, ls.fp_w, ls.fp_b, ls.fp_out] for ls in s.layers]}
           for n, s in sorted(specs.items())}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def fake_quant(x: Tensor, fp: int, lo: int = -128, hi: int = 127) -> Tensor:
    """Saturate to the int8 range at ``2^-fp`` and round (half up), with a straight-through gradient
    inside the range (zero outside it, as the saturation has)."""
    s = 2.0**fp
    y = torch.clamp(x, lo / s, hi / s)
    return y + (torch.floor(y * s + 0.5) / s - y).detach()


class QATChain(nn.Module):
    """A conv / deconv + activation chain computed in fake int8 with the fix positions of ``spec``."""

    def __init__(self, net: nn.Sequential, spec: QuantSpec):
        super().__init__()
        chain = parse_chain(net)
        if [c[0] for c in chain] != [ls.name for ls in spec.layers]:
            raise ValueError("spec does not match the network")
        self.net = net
        self.spec = spec
        self.acts = [act for _, _, act in chain]
        self.names = [name for name, _, _ in chain]

    def forward(self, x: Tensor) -> Tensor:
        x = fake_quant(x, self.spec.fp_in)
        for name, act, ls in zip(self.names, self.acts, self.spec.layers, strict=True):
            m = getattr(self.net, name)
            w = fake_quant(m.weight, ls.fp_w)
            b = None if m.bias is None else fake_quant(m.bias, ls.fp_b)
            if isinstance(m, nn.Conv2d):
                x = F.conv2d(x, w, b, m.stride, m.padding)
            else:
                x = F.conv_transpose2d(x, w, b, m.stride, m.padding, m.output_padding)
            if act == "relu":
                x = F.relu(x)
            elif act == "leaky_relu":
                x = F.leaky_relu(x, LEAKY_SLOPE)
            x = fake_quant(x, ls.fp_out)
        return x


def qat_model(model: nn.Module, specs: dict[str, QuantSpec]) -> nn.Module:
    """A copy of ``model`` whose g_a and g_s are their deployable forms in fake int8."""
    from quantize.codec_int8 import dpu_networks

    new = copy.deepcopy(model)
    nets, _ = dpu_networks(new)
    new.g_a = QATChain(nets["g_a"], specs["g_a"])
    new.g_s = QATChain(nets["g_s"], specs["g_s"])
    return new


def deployable(qmodel: nn.Module) -> nn.Module:
    """The fine-tuned model with plain (float) deployable g_a / g_s: what ``build_int8_package`` takes."""
    new = copy.deepcopy(qmodel)
    for name in ("g_a", "g_s"):
        m = getattr(new, name)
        if isinstance(m, QATChain):
            setattr(new, name, m.net)
    return new


def finetune(model: nn.Module, specs: dict[str, QuantSpec], sampler, *, lmbda: float, steps: int = 600,
             batch: int = 8, lr: float = 3e-5, aux_lr: float = 1e-3, clip: float = 1.0, seed: int = 0,
             log=None) -> nn.Module:
    """Rate-distortion fine-tuning of ``model`` with g_a and g_s in fake int8 (``specs`` fixed).

    ``sampler.sample(batch)`` gives training crops [B, 1, H, W] in [0, 1]. Returns the deployable
    model (plain float g_a / g_s in their rewritten form, fine-tuned entropy models): hand it to
    ``quantize.codec_int8.build_int8_package`` with the same ``specs``.
    """
    import math

    from models.train import rd_terms

    torch.manual_seed(seed)
    qm = qat_model(model, specs).train()
    main = [p for n, p in qm.named_parameters() if not n.endswith("quantiles")]
    aux = [p for n, p in qm.named_parameters() if n.endswith("quantiles")]
    opt = torch.optim.Adam(main, lr=lr)
    aux_opt = torch.optim.Adam(aux, lr=aux_lr)
    recent: list[tuple[float, float]] = []
    for step in range(steps):
        x = sampler.sample(batch)
        opt.zero_grad(set_to_none=True)
        aux_opt.zero_grad(set_to_none=True)
        terms = rd_terms(qm(x), x)
        loss = lmbda * terms["mse"] + terms["bpp"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(main, clip)
        opt.step()
        a = qm.aux_loss()
        a.backward()
        aux_opt.step()
        recent = (recent + [(terms["mse"].item(), terms["bpp"].item())])[-100:]
        if log is not None and (step + 1) % 100 == 0:
            mse = sum(r[0] for r in recent) / len(recent)
            bpp = sum(r[1] for r in recent) / len(recent)
            log(f"step {step + 1}: {10 * math.log10(1 / max(mse, 1e-20)):.2f} dB, {bpp:.3f} bpp (fake int8)")
    return deployable(qm.eval())
