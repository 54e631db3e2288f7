"""Entropy models: the factorized prior of z and the fixed-table Gaussian of y.

Both export INTEGER probability tables for the numpy entropy coder in ``codec/``.
A table row is a pmf of non-negative integers summing to ``2**precision`` (16 bits)
with every entry >= 1, so every symbol of the row's range is codable. The tables
are computed ONCE on the host from the trained weights (float maths) and shipped
as data; neither side ever recomputes them, so their float arithmetic cannot make
the encoder and the decoder disagree.

Out-of-range convention (both models): there is no escape/overflow bin. The
compress-side helpers (``EntropyBottleneck.symbols``, ``GaussianConditional.symbols``)
CLIP each symbol into its row's range ``[offset, offset + length - 1]`` and the
tail mass beyond the range is folded into the two end bins. The clip changes a
latent only when it lies beyond the 1e-9 tail quantiles, and the encoder uses the
clipped value for everything downstream (h_s input, reconstruction), so encoder
and decoder stay in step.

Scale-index determinism (GaussianConditional). h_s does not predict a scale; it
predicts t, a real number in "scale-index space". Training uses the continuous
``sigma(t) = exp(log(0.11) + clamp(t, 0, 63) * STEP)``; inference uses the integer
index ``k = scale_index(t) = clip(floor(t + 0.5), 0, 63)`` and row k of the fixed
table ``sigma_k = exp(log(0.11) + k * STEP)``, ``STEP = (log 256 - log 0.11) / 63``.
``scale_index`` is the ONE place where a real number becomes a CDF index; the
board and the host will both compute it in integer arithmetic on the int8 output
of the quantised h_s (with the same fix_point), which makes the index bit-exact.
The torch version here is the float reference.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.layers import lower_bound

__all__ = [
    "LIKELIHOOD_BOUND",
    "SCALE_LEVELS",
    "SCALE_MAX",
    "SCALE_MIN",
    "SCALE_STEP",
    "EntropyBottleneck",
    "GaussianConditional",
    "quantize_pmf",
    "scale_index",
    "scale_table",
]

LIKELIHOOD_BOUND = 1e-9
SCALE_MIN = 0.11
SCALE_MAX = 256.0
SCALE_LEVELS = 64
SCALE_STEP = (math.log(SCALE_MAX) - math.log(SCALE_MIN)) / (SCALE_LEVELS - 1)
PRECISION = 16


def quantize_pmf(pmf, precision: int = PRECISION) -> np.ndarray:
    """Float pmf (any non-negative weights) -> int64 frequencies summing to 2**precision, all >= 1.

    Deterministic: ``f_i = 1 + floor(p_i * (T - L))`` with ``T = 2**precision`` and
    L the length, then the remaining ``T - sum(f) < L`` units go one each to the bins
    with the largest fractional parts (ties to the lower index).
    """
    p = np.asarray(pmf, dtype=np.float64).ravel()
    total = 1 << int(precision)
    n = p.size
    if n == 0 or n > total:
        raise ValueError(f"pmf length {n} does not fit {precision}-bit precision")
    p = np.where(np.isfinite(p) & (p > 0), p, 0.0)
    s = p.sum()
    p = p / s if s > 0 else np.full(n, 1.0 / n)
    scaled = p * (total - n)
    base = np.floor(scaled)
    freq = 1 + base.astype(np.int64)
    rest = total - int(freq.sum())
    if rest > 0:
        order = np.lexsort((np.arange(n), -(scaled - base)))  # largest fraction first, then index
        freq[order[:rest]] += 1
    assert int(freq.sum()) == total and int(freq.min()) >= 1
    return freq


def _bounded(x: Tensor, lo: float, hi: float) -> Tensor:
    """clamp(x, lo, hi) whose gradient still flows where it would move x back into range."""
    return -lower_bound(-lower_bound(x, lo), -hi)


class EntropyBottleneck(nn.Module):
    """Balle et al. 2018 factorized density, one per channel (CompressAI ``EntropyBottleneck``).

    Training: z + U(-1/2, 1/2). Eval: ``round(z - median) + median`` (medians =
    ``quantiles[:, 0, 1]``). The ``quantiles`` parameter is trained only by
    :meth:`loss` (the aux loss, its own optimizer), which pulls quantiles[:, 0, 0/2]
    to the ``tail_mass/2`` quantiles of the density.

    Parameters are named ``matrix{i}``, ``bias{i}``, ``factor{i}`` (no ParameterList,
    so state-dict keys carry no bare integers).
    """

    def __init__(self, channels: int, tail_mass: float = 1e-9, init_scale: float = 10.0,
                 filters: tuple[int, ...] = (3, 3, 3, 3), likelihood_bound: float = LIKELIHOOD_BOUND):
        super().__init__()
        self.channels = int(channels)
        self.filters = tuple(int(f) for f in filters)
        self.init_scale = float(init_scale)
        self.tail_mass = float(tail_mass)
        self.likelihood_bound = float(likelihood_bound)
        dims = (1,) + self.filters + (1,)
        scale = self.init_scale ** (1.0 / (len(self.filters) + 1))
        for i in range(len(self.filters) + 1):
            init = math.log(math.expm1(1.0 / scale / dims[i + 1]))
            self.register_parameter(f"matrix{i}", nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            bias = torch.empty(channels, dims[i + 1], 1)
            nn.init.uniform_(bias, -0.5, 0.5)
            self.register_parameter(f"bias{i}", nn.Parameter(bias))
            if i < len(self.filters):
                self.register_parameter(f"factor{i}", nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))
        q = torch.tensor([-self.init_scale, 0.0, self.init_scale])
        self.quantiles = nn.Parameter(q.repeat(channels, 1, 1))
        target = math.log(2.0 / self.tail_mass - 1.0)
        self.register_buffer("target", torch.tensor([-target, 0.0, target]), persistent=False)

    # -- density -------------------------------------------------------------------------
    def _logits_cumulative(self, inputs: Tensor, stop_gradient: bool) -> Tensor:
        logits = inputs
        for i in range(len(self.filters) + 1):
            matrix = getattr(self, f"matrix{i}")
            bias = getattr(self, f"bias{i}")
            if stop_gradient:
                matrix, bias = matrix.detach(), bias.detach()
            logits = torch.matmul(F.softplus(matrix), logits) + bias
            if i < len(self.filters):
                factor = getattr(self, f"factor{i}")
                if stop_gradient:
                    factor = factor.detach()
                logits = logits + torch.tanh(factor) * torch.tanh(logits)
        return logits

    def _likelihood(self, values: Tensor, stop_gradient: bool = False) -> Tensor:
        """P(value - 1/2 < Z < value + 1/2) for values of shape [C, 1, n]."""
        lower = self._logits_cumulative(values - 0.5, stop_gradient)
        upper = self._logits_cumulative(values + 0.5, stop_gradient)
        sign = -torch.sign(lower + upper).detach()  # evaluate in the far tail where it is accurate
        return torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))

    @property
    def medians(self) -> Tensor:
        """Per-channel medians, shape [C] (the rounding centres)."""
        return self.quantiles[:, 0, 1]

    def loss(self) -> Tensor:
        """Aux loss: pulls the quantiles to the tail_mass/2, 1/2, 1 - tail_mass/2 points."""
        logits = self._logits_cumulative(self.quantiles, stop_gradient=True)
        return torch.abs(logits - self.target).sum()

    def forward(self, z: Tensor, training: bool | None = None) -> tuple[Tensor, Tensor]:
        """z [B, C, H, W] -> (z_hat or z_tilde, likelihoods), both [B, C, H, W]."""
        if training is None:
            training = self.training
        medians = self.medians.detach().reshape(1, -1, 1, 1)
        if training:
            z_hat = z + torch.empty_like(z).uniform_(-0.5, 0.5)
        else:
            z_hat = torch.round(z - medians) + medians
        values = z_hat.transpose(0, 1).reshape(self.channels, 1, -1)
        lik = self._likelihood(values)
        if self.likelihood_bound > 0:
            lik = lower_bound(lik, self.likelihood_bound)
        lik = lik.reshape(self.channels, z.shape[0], *z.shape[2:]).transpose(0, 1)
        return z_hat, lik

    # -- integer coding helpers ---------------------------------------------------------
    def symbol_range(self, max_length: int = 4095) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (offset = min symbol, length), from the current quantiles.

        Symbol s of channel c stands for ``z_hat = s + median[c]``; the range is
        ``[-ceil(median - q_lo), ceil(q_hi - median)]``, each side capped at
        ``(max_length - 1) // 2`` (only reached by an untrained model).
        """
        with torch.no_grad():
            q = self.quantiles[:, 0, :].double()
            med = q[:, 1]
            cap = (int(max_length) - 1) // 2
            minima = torch.ceil(med - q[:, 0]).clamp(0, cap).long()
            maxima = torch.ceil(q[:, 2] - med).clamp(0, cap).long()
        offsets = (-minima).numpy().astype(np.int64)
        lengths = (minima + maxima + 1).numpy().astype(np.int64)
        return offsets, lengths

    def symbols(self, z: Tensor, max_length: int = 4095) -> Tensor:
        """z [B, C, H, W] -> int32 symbols ``clip(round(z - median), offset, offset + length - 1)``."""
        offsets, lengths = self.symbol_range(max_length)
        lo = torch.as_tensor(offsets, device=z.device).reshape(1, -1, 1, 1)
        hi = lo + torch.as_tensor(lengths, device=z.device).reshape(1, -1, 1, 1) - 1
        s = torch.round(z - self.medians.detach().reshape(1, -1, 1, 1))
        return torch.max(torch.min(s, hi.to(s.dtype)), lo.to(s.dtype)).to(torch.int32)

    def dequantize(self, symbols: Tensor) -> Tensor:
        """int symbols -> z_hat = symbols + median (one float32 add)."""
        med = self.medians.detach().to(torch.float32).reshape(1, -1, 1, 1)
        return symbols.to(torch.float32) + med

    def pmf_table(self, precision: int = PRECISION, max_length: int = 4095) -> dict[str, np.ndarray]:
        """Integer pmf rows for the entropy coder.

        Returns ``{"pmf": int32 [C, Lmax] (row c valid in [:length[c]], zero after),
        "offset": int32 [C] (symbol of column 0), "length": int32 [C],
        "median": float32 [C], "precision": int}``. Tails beyond the range are
        folded into the end bins (see the module docstring: symbols are clipped).
        """
        offsets, lengths = self.symbol_range(max_length)
        lmax = int(lengths.max())
        pmf = np.zeros((self.channels, lmax), dtype=np.int32)
        with torch.no_grad():
            med = self.medians.detach().double()
            for c in range(self.channels):
                n = int(lengths[c])
                sym = torch.arange(n, dtype=torch.float64) + float(offsets[c])
                values = (sym + med[c]).reshape(1, 1, -1)
                # evaluate channel c only: slice the parameters to that channel
                lik = self._channel_likelihood(c, values)
                lower_tail = torch.sigmoid(self._channel_logits(c, values[..., :1] - 0.5))
                upper_tail = torch.sigmoid(-self._channel_logits(c, values[..., -1:] + 0.5))
                p = lik.reshape(-1).clone()
                p[0] += lower_tail.reshape(())
                p[-1] += upper_tail.reshape(())
                pmf[c, :n] = quantize_pmf(p.numpy(), precision)
        return {
            "pmf": pmf,
            "offset": offsets.astype(np.int32),
            "length": lengths.astype(np.int32),
            "median": self.medians.detach().float().numpy().copy(),
            "precision": int(precision),
        }

    def _channel_logits(self, c: int, values: Tensor) -> Tensor:
        logits = values
        for i in range(len(self.filters) + 1):
            matrix = getattr(self, f"matrix{i}")[c : c + 1].double()
            bias = getattr(self, f"bias{i}")[c : c + 1].double()
            logits = torch.matmul(F.softplus(matrix), logits) + bias
            if i < len(self.filters):
                factor = getattr(self, f"factor{i}")[c : c + 1].double()
                logits = logits + torch.tanh(factor) * torch.tanh(logits)
        return logits

    def _channel_likelihood(self, c: int, values: Tensor) -> Tensor:
        lower = self._channel_logits(c, values - 0.5)
        upper = self._channel_logits(c, values + 0.5)
        sign = -torch.sign(lower + upper)
        return torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))


def scale_table() -> Tensor:
    """The 64 fixed scales ``sigma_k = exp(log(0.11) + k * SCALE_STEP)``, float32 [64]."""
    k = torch.arange(SCALE_LEVELS, dtype=torch.float64)
    return torch.exp(math.log(SCALE_MIN) + k * SCALE_STEP).to(torch.float32)


def scale_index(t: Tensor) -> Tensor:
    """THE float -> CDF-index step: ``k = clip(floor(t + 0.5), 0, 63)`` as int64.

    Halves go up (t = k + 0.5 gives k + 1), negatives give 0, anything >= 62.5
    gives 63; NaN gives 0. The deployed codec computes the same function in integer
    arithmetic on the int8 h_s output (``floor((q + 2^(f-1)) / 2^f)`` for
    fix_point f), identically on host and board; this is the float reference.
    """
    k = torch.floor(t + 0.5)
    k = torch.nan_to_num(k, nan=0.0)
    return k.clamp(0, SCALE_LEVELS - 1).to(torch.int64)


def _std_cdf(x: Tensor) -> Tensor:
    return 0.5 * torch.erfc(-x * (2.0**-0.5))


class GaussianConditional(nn.Module):
    """Zero-mean Gaussian for y with a FIXED table of 64 scales, indexed by t from h_s.

    forward(y, t): training -> (y + U(-1/2, 1/2), likelihood with the continuous
    ``sigma(t)``); eval -> (round(y), likelihood with the table row ``scale_index(t)``),
    so the eval bpp estimate is what the entropy coder will spend.
    """

    sigmas: Tensor

    def __init__(self, likelihood_bound: float = LIKELIHOOD_BOUND, tail_mass: float = 1e-9):
        super().__init__()
        self.likelihood_bound = float(likelihood_bound)
        self.tail_mass = float(tail_mass)
        self.register_buffer("sigmas", scale_table(), persistent=False)

    @staticmethod
    def sigma(t: Tensor) -> Tensor:
        """Continuous training scale ``exp(log 0.11 + clamp(t, 0, 63) * STEP)`` (gradient-friendly clamp)."""
        return torch.exp(math.log(SCALE_MIN) + _bounded(t, 0.0, SCALE_LEVELS - 1.0) * SCALE_STEP)

    scale_index = staticmethod(scale_index)

    def likelihood(self, y_hat: Tensor, sigma: Tensor) -> Tensor:
        v = torch.abs(y_hat)
        upper = _std_cdf((0.5 - v) / sigma)
        lower = _std_cdf((-0.5 - v) / sigma)
        lik = upper - lower
        if self.likelihood_bound > 0:
            lik = lower_bound(lik, self.likelihood_bound)
        return lik

    def forward(self, y: Tensor, t: Tensor, training: bool | None = None) -> tuple[Tensor, Tensor]:
        if training is None:
            training = self.training
        if training:
            y_hat = y + torch.empty_like(y).uniform_(-0.5, 0.5)
            sigma = self.sigma(t)
        else:
            y_hat = torch.round(y)
            sigma = self.sigmas[scale_index(t)]
        return y_hat, self.likelihood(y_hat, sigma)

    # -- integer coding helpers ---------------------------------------------------------
    def half_widths(self) -> np.ndarray:
        """Per-level symbol half-range h_k = ceil(sigma_k * z), z = -Phi^-1(tail_mass / 2); int64 [64]."""
        z = -float(torch.special.ndtri(torch.tensor(self.tail_mass / 2, dtype=torch.float64)))
        return np.ceil(scale_table().double().numpy() * z).astype(np.int64)

    def symbols(self, y: Tensor, index: Tensor) -> Tensor:
        """y, k (same shape) -> int32 symbols ``clip(round(y), -h_k, h_k)``."""
        h = torch.as_tensor(self.half_widths(), device=y.device)[index].to(y.dtype)
        return torch.max(torch.min(torch.round(y), h), -h).to(torch.int32)

    def pmf_table(self, precision: int = PRECISION) -> dict[str, np.ndarray]:
        """Integer pmf rows, one per scale level: ``{"pmf": int32 [64, Lmax], "offset": int32 [64]
        (= -h_k), "length": int32 [64] (= 2 h_k + 1), "sigma": float32 [64], "precision": int}``.
        Tails folded into the end bins (symbols are clipped, see the module docstring)."""
        halves = self.half_widths()
        lengths = 2 * halves + 1
        lmax = int(lengths.max())
        pmf = np.zeros((SCALE_LEVELS, lmax), dtype=np.int32)
        sig = scale_table().double()
        for k in range(SCALE_LEVELS):
            h = int(halves[k])
            s = torch.arange(-h, h + 1, dtype=torch.float64)
            p = _std_cdf((s + 0.5) / sig[k]) - _std_cdf((s - 0.5) / sig[k])
            p[0] += _std_cdf((-h - 0.5) / sig[k])
            p[-1] += _std_cdf((-h - 0.5) / sig[k])
            pmf[k, : 2 * h + 1] = quantize_pmf(p.numpy(), precision)
        return {
            "pmf": pmf,
            "offset": (-halves).astype(np.int32),
            "length": lengths.astype(np.int32),
            "sigma": scale_table().numpy().copy(),
            "precision": int(precision),
        }
