"""A FAKE ``pytorch_nndct`` for the argument-shape tests of ``quantize/nndct.py``.

It is NOT vai_q_pytorch: it quantizes nothing. It mimics only the public surface the
adapter uses, as documented in VAI ``pytorch_nndct/apis.py`` (2.5 and 3.x):
``torch_quantizer(quant_mode, module, input_args, ..., output_dir, ..., device, ...[, target])``,
``.quant_model``, ``.export_quant_config()`` (writes ``quant_info.json``) and
``.export_xmodel(output_dir, deploy_check)`` (writes ``<Class>_int.xmodel``), and it refuses
the misuses the README names (export without a forward, xmodel export outside test mode or
with a batch other than 1). Tests install it into ``sys.modules`` with :func:`install`.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import torch
from torch import nn

#: vai_q_pytorch's default device (the adapter always passes cpu)
_CUDA = torch.device("cuda")
FAKE_XMODEL_BYTES = b"FAKE xmodel written by tests/quantize/fake_nndct.py\n"


class FakeQuantModel:
    def __init__(self, quantizer):
        self.quantizer = quantizer

    def __call__(self, x):
        self.quantizer.forward_batches.append(int(x.shape[0]))
        return self.quantizer.module(x)


class _FakeQuantizerBase:
    log: list  # set per generation by make_fake

    def _init(self, kwargs: dict):
        if kwargs["quant_mode"] not in ("calib", "test"):
            raise ValueError(kwargs["quant_mode"])
        if not isinstance(kwargs["module"], nn.Module):
            raise TypeError("module must be an nn.Module")
        if not isinstance(kwargs["input_args"], tuple):
            raise TypeError("the adapter passes input_args as a tuple")
        self.kwargs = kwargs
        self.mode = kwargs["quant_mode"]
        self.module = kwargs["module"]
        self.output_dir = Path(kwargs["output_dir"])
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.forward_batches: list[int] = []
        self.log.append(("init", dict(kwargs)))

    @property
    def quant_model(self):
        return FakeQuantModel(self)

    def export_quant_config(self):
        if self.mode != "calib" or not self.forward_batches:
            raise RuntimeError("FAKE nndct: export_quant_config needs calib mode and a forward")
        self.log.append(("export_quant_config", list(self.forward_batches)))
        (self.output_dir / "quant_info.json").write_text(json.dumps({"fake": True}) + "\n")

    def export_xmodel(self, output_dir="quantize_result", deploy_check=False):
        if self.mode != "test" or self.forward_batches != [1]:
            raise RuntimeError(f"FAKE nndct: export_xmodel needs test mode and one batch-1 forward, "
                               f"got {self.mode} {self.forward_batches}")
        self.log.append(("export_xmodel", {"output_dir": output_dir, "deploy_check": deploy_check}))
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / f"{self.module._get_name()}_int.xmodel").write_bytes(FAKE_XMODEL_BYTES)


class FakeQuantizer25(_FakeQuantizerBase):
    """The VAI 2.5 signature: no ``target``."""

    def __init__(self, quant_mode, module, input_args=None, state_dict_file=None, output_dir="quantize_result",
                 bitwidth=None, mix_bit=False, device=_CUDA, lstm=False, app_deploy="CV",
                 qat_proc=False, custom_quant_ops=None, quant_config_file=None):
        self._init({"quant_mode": quant_mode, "module": module, "input_args": input_args,
                    "output_dir": output_dir, "device": device})


class FakeQuantizer35(_FakeQuantizerBase):
    """The VAI 3.5 signature: ``input_kwargs`` after ``input_args``, ``target`` and ``dynamo`` at the end."""

    def __init__(self, quant_mode, module, input_args=None, input_kwargs=None, state_dict_file=None,
                 output_dir="quantize_result", bitwidth=None, mix_bit=False, device=_CUDA,
                 lstm=False, app_deploy="CV", qat_proc=False, custom_quant_ops=None, quant_config_file=None,
                 target=None, dynamo=False):
        self._init({"quant_mode": quant_mode, "module": module, "input_args": input_args,
                    "output_dir": output_dir, "device": device, "target": target})

    def export_xmodel(self, output_dir="quantize_result", deploy_check=False, dynamic_batch=False):
        super().export_xmodel(output_dir, deploy_check)


def make_fake(generation: str) -> tuple[types.ModuleType, types.ModuleType, list]:
    """(package, apis submodule, call log) of a fake pytorch_nndct of ``generation`` ("2.5" or "3.5")."""
    base = {"2.5": FakeQuantizer25, "3.5": FakeQuantizer35}[generation]
    log: list = []
    quantizer = type(f"torch_quantizer_fake_{generation.replace('.', '')}", (base,), {"log": log})
    pkg = types.ModuleType("pytorch_nndct")
    pkg.__version__ = f"FAKE-{generation}"
    pkg.__path__ = []  # a package, so that "pytorch_nndct.apis" resolves through sys.modules
    apis = types.ModuleType("pytorch_nndct.apis")
    apis.torch_quantizer = quantizer
    pkg.apis = apis
    return pkg, apis, log


def install(monkeypatch, generation: str) -> list:
    """Put a fake pytorch_nndct into ``sys.modules`` for one test; returns its call log."""
    pkg, apis, log = make_fake(generation)
    monkeypatch.setitem(sys.modules, "pytorch_nndct", pkg)
    monkeypatch.setitem(sys.modules, "pytorch_nndct.apis", apis)
    return log
