"""GDNHyperprior: the bmshj2018 scale hyperprior with GDN for one-channel medical images.

Dataflow (x in [0, 1], one channel, H and W multiples of 64)::

    x [B,1,H,W]
      |
     g_a   conv5s2(1->N)-GDN, conv5s2(N->N)-GDN, conv5s2(N->N)-GDN, conv5s2(N->M)
      |
      y [B,M,H/16,W/16] ----------------------------.
      |                                             |
     abs                                            |
      |                                             |
     h_a   conv3s1(M->N)-ReLU, conv5s2-ReLU, conv5s2 |
      |                                             |
      z [B,N,H/64,W/64]                             |
      |                                             |
     EntropyBottleneck: z_hat = round(z - med) + med  (factorized, static int pmf table)
      |                                             |
     h_s   deconv5s2-ReLU, deconv5s2-ReLU, conv3s1(N->M)
      |                                             |
      t [B,M,H/16,W/16]  (scale-index space)        |
      |                                             v
      '-> k = scale_index(t) -------------> GaussianConditional: y_hat = round(y),
                                             p(y_hat | sigma_k), sigma_k from a FIXED 64-entry table
                                                    |
     g_s   deconv5s2(M->N)-IGDN, deconv5s2-IGDN, deconv5s2-IGDN, deconv5s2(N->1)
                                                    |
                                                 x_hat [B,1,H,W]

Contract (CompressAI): ``forward(x) -> {"x_hat", "likelihoods": {"y", "z"}, "t", "y"}`` (y: the latent, for distillation).
The compress-side helpers return tensors only (symbols and scale indices);
entropy coding, tiling and the container live in ``codec/`` (numpy):

- :meth:`GDNHyperprior.quantize_latents` (encoder): x -> z symbols, y symbols, k.
- :meth:`GDNHyperprior.scale_indexes` (both sides): z symbols -> k.
- :meth:`GDNHyperprior.reconstruct` (decoder): y symbols -> x_hat.

All submodules are named (``g_a.conv0.weight``, ``g_a.gdn0.beta``, ``h_s.deconv1.bias``,
``entropy_bottleneck.matrix0`` ...): no integer path components in the state dict.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import Tensor, nn

from models.entropy import SCALE_MIN, SCALE_STEP, EntropyBottleneck, GaussianConditional, scale_index
from models.layers import GDN, conv, deconv

__all__ = ["LEAKY_SLOPE", "TRANSFORMS", "GDNHyperprior", "complexity"]

#: H and W of the input must be multiples of this (4 stride-2 in g_a, 2 more in h_a).
ALIGN = 64

#: the nonlinearity of g_a / g_s: "gdn" (GDN / inverse GDN, the founding document's model) or
#: "leaky" (LeakyReLU(26/256), the DPU-native replacement; model ``dpu-hyperprior``)
TRANSFORMS = ("gdn", "leaky")

#: the DPU's only LeakyReLU slope (arch/ULTRA96.json, codec/fixednet.py)
LEAKY_SLOPE = 26 / 256


def _named(*items: tuple[str, nn.Module]) -> nn.Sequential:
    return nn.Sequential(OrderedDict(items))


class GDNHyperprior(nn.Module):
    """Scale hyperprior (Balle et al. 2018) with GDN; h_s predicts scale indices t.

    Args:
        N: channels of the hidden layers and of z.
        M: channels of y (and of t).
        decoder_input: what g_s sees in training. ``"noise"`` (default, CompressAI's
            bmshj2018): y + U(-1/2, 1/2), the same tensor the likelihood sees.
            ``"ste"``: round(y) with a straight-through gradient (Minnen & Singh 2020),
            so g_s trains on exactly what it decodes; the likelihood still uses the
            noisy y. (A short A/B fine-tune showed no gain yet, hence not the default.)
    """

    def __init__(self, N: int = 64, M: int = 128, decoder_input: str = "noise", transform: str = "gdn"):
        super().__init__()
        if decoder_input not in ("ste", "noise"):
            raise ValueError(f"decoder_input must be 'ste' or 'noise', got {decoder_input!r}")
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
        self.N, self.M = int(N), int(M)
        self.decoder_input = decoder_input
        self.transform = transform

        def act(name: str, inverse: bool) -> tuple[str, nn.Module]:
            # "leaky": the DPU-native block (conv + LeakyReLU at the DPU's only slope, 26/256) that
            # replaces GDN; trained by fine-tuning from the GDN model (models/weights/README.md)
            if transform == "leaky":
                return f"act{name[-1]}", nn.LeakyReLU(LEAKY_SLOPE)
            return name, GDN(N, inverse=inverse)

        self.g_a = _named(
            ("conv0", conv(1, N)), act("gdn0", False),
            ("conv1", conv(N, N)), act("gdn1", False),
            ("conv2", conv(N, N)), act("gdn2", False),
            ("conv3", conv(N, M)),
        )
        self.g_s = _named(
            ("deconv0", deconv(M, N)), act("igdn0", True),
            ("deconv1", deconv(N, N)), act("igdn1", True),
            ("deconv2", deconv(N, N)), act("igdn2", True),
            ("deconv3", deconv(N, 1)),
        )
        self.h_a = _named(
            ("conv0", conv(M, N, kernel_size=3, stride=1)), ("relu0", nn.ReLU()),
            ("conv1", conv(N, N)), ("relu1", nn.ReLU()),
            ("conv2", conv(N, N)),
        )
        self.h_s = _named(
            ("deconv0", deconv(N, N)), ("relu0", nn.ReLU()),
            ("deconv1", deconv(N, N)), ("relu1", nn.ReLU()),
            ("conv2", conv(N, M, kernel_size=3, stride=1)),
        )
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.gaussian_conditional = GaussianConditional()
        # Start t near sigma = 1 so every element gets a useful rate gradient at once.
        with torch.no_grad():
            self.h_s.conv2.bias.fill_((0.0 - math.log(SCALE_MIN)) / SCALE_STEP)

    # -- training / evaluation ------------------------------------------------------------
    def forward(self, x: Tensor) -> dict:
        _check_input(x)
        y = self.g_a(x)
        z = self.h_a(torch.abs(y))
        z_hat, z_lik = self.entropy_bottleneck(z)
        t = self.h_s(z_hat)
        y_hat, y_lik = self.gaussian_conditional(y, t)
        if self.training and self.decoder_input == "ste":
            y_hat = y + (torch.round(y) - y).detach()
        x_hat = self.g_s(y_hat)
        return {"x_hat": x_hat, "likelihoods": {"y": y_lik, "z": z_lik}, "t": t, "y": y}

    def aux_loss(self) -> Tensor:
        """The EntropyBottleneck quantile loss (own optimizer; CompressAI ``aux_loss``)."""
        return self.entropy_bottleneck.loss()

    # -- compress-side helpers (tensors only; coding lives in codec/) ---------------------
    @torch.no_grad()
    def quantize_latents(self, x: Tensor) -> dict:
        """Encoder: x -> {"z": int32 symbols [B,N,h,w], "y": int32 symbols [B,M,4h,4w],
        "k": int64 scale indices (same shape as y)}.

        z symbols are relative to the channel medians (see ``EntropyBottleneck.symbols``);
        y symbols are ``clip(round(y), -h_k, h_k)``. k is computed from the CLIPPED,
        dequantised z exactly as the decoder will (:meth:`scale_indexes`).
        """
        _check_input(x)
        y = self.g_a(x)
        z = self.h_a(torch.abs(y))
        z_sym = self.entropy_bottleneck.symbols(z)
        k = self.scale_indexes(z_sym)
        y_sym = self.gaussian_conditional.symbols(y, k)
        return {"z": z_sym, "y": y_sym, "k": k}

    @torch.no_grad()
    def scale_indexes(self, z_symbols: Tensor) -> Tensor:
        """Both sides: z symbols -> z_hat = symbols + median -> t = h_s(z_hat) -> k = scale_index(t)."""
        z_hat = self.entropy_bottleneck.dequantize(z_symbols)
        return scale_index(self.h_s(z_hat))

    @torch.no_grad()
    def reconstruct(self, y_symbols: Tensor) -> Tensor:
        """Decoder: int y symbols -> x_hat = g_s(y_hat), clamped to [0, 1]."""
        return self.g_s(y_symbols.to(torch.float32)).clamp_(0.0, 1.0)

    def entropy_tables(self) -> dict:
        """Integer pmf tables for codec/: {"z": EntropyBottleneck.pmf_table(), "y": GaussianConditional.pmf_table()}."""
        return {"z": self.entropy_bottleneck.pmf_table(), "y": self.gaussian_conditional.pmf_table()}


def _check_input(x: Tensor) -> None:
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"expected input [B, 1, H, W], got {tuple(x.shape)}")
    if x.shape[2] % ALIGN or x.shape[3] % ALIGN:
        raise ValueError(f"H and W must be multiples of {ALIGN}, got {tuple(x.shape[2:])}")


def _layer_macs(module: nn.Module, c: int, h: int, w: int) -> tuple[int, int, int, int]:
    """(MACs, out channels, out h, out w) of one layer, counted analytically."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        sh, sw = module.stride
        ph, pw = module.padding
        ho = (h + 2 * ph - kh) // sh + 1
        wo = (w + 2 * pw - kw) // sw + 1
        co = module.out_channels
        return co * (c // module.groups) * kh * kw * ho * wo, co, ho, wo
    if isinstance(module, nn.ConvTranspose2d):
        kh, kw = module.kernel_size
        sh, sw = module.stride
        ph, pw = module.padding
        oph, opw = module.output_padding
        ho = (h - 1) * sh - 2 * ph + kh + oph
        wo = (w - 1) * sw - 2 * pw + kw + opw
        co = module.out_channels
        return c * (co // module.groups) * kh * kw * h * w, co, ho, wo  # every input pixel scatters k*k*co
    if isinstance(module, GDN):
        return c * c * h * w, c, h, w  # the 1x1 conv on x^2 (plus c*h*w squares/rsqrt/multiplies, not counted)
    return 0, c, h, w


def complexity(model: GDNHyperprior, height: int = 512, width: int = 512) -> dict:
    """Parameters and multiply-accumulates per slice of each network, counted analytically.

    Returns ``{"g_a": {"params", "macs"}, "g_s": ..., "h_a": ..., "h_s": ...,
    "entropy_bottleneck": {"params"}, "total": ...}``. Conv/deconv MACs are
    ``Cout*Cin*k*k`` per output (conv) or per input (deconv) pixel; GDN counts its
    1x1 conv (C*C per pixel).
    """
    shapes = {"g_a": (1, height, width)}
    y_shape = _chain_shape(model.g_a, *shapes["g_a"])
    shapes["h_a"] = y_shape
    shapes["h_s"] = _chain_shape(model.h_a, *y_shape)
    shapes["g_s"] = y_shape
    out = {}
    for name in ("g_a", "g_s", "h_a", "h_s"):
        net = getattr(model, name)
        c, h, w = shapes[name]
        macs = 0
        for layer in net.children():
            m, c, h, w = _layer_macs(layer, c, h, w)
            macs += m
        out[name] = {"params": sum(p.numel() for p in net.parameters()), "macs": macs}
    out["entropy_bottleneck"] = {"params": sum(p.numel() for p in model.entropy_bottleneck.parameters()), "macs": 0}
    out["total"] = {k: sum(v[k] for v in out.values()) for k in ("params", "macs")}
    return out


def _chain_shape(net: nn.Module, c: int, h: int, w: int) -> tuple[int, int, int]:
    for layer in net.children():
        _, c, h, w = _layer_macs(layer, c, h, w)
    return c, h, w

