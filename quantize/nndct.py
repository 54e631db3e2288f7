"""The ``nndct`` quantizer backend: Vitis AI's vai_q_pytorch (``pytorch_nndct``) behind one adapter.

pytorch_nndct is not on PyPI; it ships in the Vitis AI docker (research notes
``../shared/research/vitis_ai.md`` sections 1 and 5). Two ways to use it::

    # 1. in process, where pytorch_nndct imports (inside the Vitis AI docker):
    res = quantize_nndct(net, batches, "build/nndct/g_a", arch["dpu"]["fingerprint"], net_name="g_a")
    res.xmodel                        # build/nndct/g_a/g_a_int.xmodel, the input of vai_c_xir

    # 2. from the host, which cannot install it: a self-contained job for the VAI 2.5 docker
    job = render_docker_job("g_a", net, batches, "build/nndct/g_a", arch)
    # bash build/nndct/g_a/run.sh  ->  build/nndct/g_a/quantize_result/g_a_int.xmodel

Both run the two passes of the vai_q_pytorch README (VAI ``example/resnet18_quant.py``):

1. ``torch_quantizer("calib", ...)``, a forward of ``quant_model`` over every calibration
   batch, ``export_quant_config()`` (writes ``quant_info.json``);
2. ``torch_quantizer("test", ...)`` with batch size 1, ONE forward, then
   ``export_xmodel(output_dir, deploy_check=False)`` (writes ``<Class>_int.xmodel``, named
   after the module's class: nndct names its graph ``module._get_name()``).

API generations (detected by :func:`api_generation` from the signature, never from a version string):

- ``vai2.5``: ``torch_quantizer`` has no ``target`` argument (VAI 2.5
  ``pytorch_nndct/apis.py``). Quantization is not hardware-aware; the compiler applies
  the fingerprint later.
- ``vai3``: ``target`` exists (VAI 3.0 / 3.5 ``apis.py``; 3.5 also inserts ``input_kwargs``
  after ``input_args``, so every argument is passed by keyword). We pass the fingerprint
  string, never the name: from VAI 3.0 on the name ``DPUCZDX8G_ISA1_B1600`` means another
  feature code than the Ultra96 overlay's ``0x101000016010404`` (research notes section 0.2).
  Calib and test get the same target (a mismatch is ``QUANTIZER_TORCH_CALIB_RESULT_MISMATCH``,
  Vitis-AI #1206). The board runs VART 2.5, so the xmodel must still be compiled by the VAI 2.5
  ``vai_c_xir`` (``compile/vaic.py``).

The docker job is generated code (STYLE habit 13): only data is rendered (the layer list,
names, fingerprint) into ``templates/nndct_vai25.py.j2`` with ``jinja2.StrictUndefined``, so
an unfilled placeholder raises. The script must run under Python 3.7 / PyTorch 1.10, the
VAI 2.5 docker's env (research notes section 1); the tests parse it with
``ast.parse(..., feature_version=(3, 7))``. Its quantizer calls mirror :func:`quantizer_kwargs`
(same keywords, same ``target`` rule); the tests run it against a fake pytorch_nndct.

Layering: imports ``codec`` only (and torch, numpy, jinja2). Everything that imports
pytorch_nndct is in this file.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
import keyword
import os
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import jinja2
import numpy as np
import torch
from torch import Tensor, nn

from codec.errors import MedcodecError

__all__ = ["DOCKER_ENV", "DOCKER_REPOSITORY", "GEN_VAI25", "GEN_VAI3", "NNDCT_MODULE", "DockerJob",
           "NndctError", "NndctResult", "api_generation", "as_named_sequential", "available",
           "describe_sequential", "quantize_nndct", "quantizer_kwargs", "render_docker_job",
           "render_run_sh", "render_script", "template_env", "xmodel_name"]

NNDCT_MODULE = "pytorch_nndct"
GEN_VAI25 = "vai2.5"  #: torch_quantizer without ``target``
GEN_VAI3 = "vai3"  #: torch_quantizer with ``target`` (VAI 3.0, 3.5)

#: The Vitis AI 2.5 docker. 2.5 has one CPU image for every framework (``conda activate
#: vitis-ai-pytorch`` inside); the per-framework ``vitis-ai-pytorch-cpu`` images start at 3.0.
#: The tag follows the Vitis AI version in the arch file (``runtime.vitis_ai_version``).
DOCKER_REPOSITORY = "xilinx/vitis-ai-cpu"
#: An environment variable naming another image (a local build, a pinned digest).
DOCKER_ENV = "MEDCODEC_VITIS_DOCKER"
#: Template Vitis AI version -> template file.
TEMPLATES = {"2.5": "nndct_vai25.py.j2"}
RUN_TEMPLATE = "nndct_run.sh.j2"
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"

# file names inside a docker job folder
SCRIPT_NAME = "nndct_job.py"
RUN_NAME = "run.sh"
WEIGHTS_NAME = "weights.npz"
CALIB_NAME = "calib.npz"
RESULT_DIR = "quantize_result"
QUANT_INFO_NAME = "quant_info.json"
MANIFEST_NAME = "nndct.json"

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class NndctError(MedcodecError):
    """pytorch_nndct is missing, refused the network, or wrote no xmodel."""


# -- the vendor API ----------------------------------------------------------------------------------


def available() -> bool:
    """True when ``pytorch_nndct`` imports (inside the Vitis AI docker)."""
    try:
        importlib.import_module(NNDCT_MODULE)
    except ImportError:
        return False
    return True


def _torch_quantizer():
    try:
        apis = importlib.import_module(f"{NNDCT_MODULE}.apis")
    except ImportError as exc:
        raise NndctError(f"{NNDCT_MODULE} is not importable here ({exc}); it ships only in the Vitis AI "
                         "docker: use render_docker_job() to run it there") from None
    return apis.torch_quantizer


def api_generation(torch_quantizer) -> str:
    """:data:`GEN_VAI3` if ``torch_quantizer`` takes ``target``, else :data:`GEN_VAI25`."""
    try:
        params = inspect.signature(torch_quantizer).parameters
    except (TypeError, ValueError) as exc:
        raise NndctError(f"cannot read the signature of torch_quantizer: {exc}") from None
    for needed in ("quant_mode", "module", "input_args", "output_dir", "device"):
        if needed not in params:
            raise NndctError(f"torch_quantizer has no {needed!r} argument: not a vai_q_pytorch API this "
                             "adapter knows (VAI 2.5 or 3.x)")
    return GEN_VAI3 if "target" in params else GEN_VAI25


def quantizer_kwargs(generation: str, mode: str, module: nn.Module, example: Tensor, output_dir,
                     fingerprint: str) -> dict:
    """Keyword arguments of one ``torch_quantizer(...)`` call (all by keyword: 3.5 moved them)."""
    if mode not in ("calib", "test"):
        raise ValueError(f"quant_mode must be 'calib' or 'test', got {mode!r}")
    if generation not in (GEN_VAI25, GEN_VAI3):
        raise ValueError(f"unknown API generation {generation!r}")
    _check_fingerprint(fingerprint)
    kwargs = {"quant_mode": mode, "module": module, "input_args": (example,), "output_dir": str(output_dir),
              "device": torch.device("cpu")}
    if generation == GEN_VAI3:
        kwargs["target"] = fingerprint
    return kwargs


def _check_fingerprint(fingerprint: str) -> None:
    if not (isinstance(fingerprint, str) and re.fullmatch(r"0x[0-9a-fA-F]+", fingerprint)):
        raise NndctError(f"DPU fingerprint must be a hex string like '0x101000016010404', got {fingerprint!r}")


def xmodel_name(module: nn.Module) -> str:
    """The file ``export_xmodel`` writes: ``<module class name>_int.xmodel``."""
    return f"{type(module).__name__}_int.xmodel"


def as_named_sequential(net: nn.Sequential, name: str) -> nn.Sequential:
    """A deep copy of ``net`` as a Sequential subclass called ``name``, so that nndct names
    the graph, and the xmodel, after the network (``g_a_int.xmodel``)."""
    _check_name(name)
    if not isinstance(net, nn.Sequential):
        raise NndctError(f"{name}: expected an nn.Sequential, got {type(net).__name__}")
    cls = type(name, (nn.Sequential,), {"__module__": __name__})
    out = cls(OrderedDict(copy.deepcopy(net).named_children()))
    return out.train(net.training)


def _check_name(name: str) -> None:
    if not (isinstance(name, str) and _IDENT.match(name)) or keyword.iskeyword(name):
        raise NndctError(f"network name {name!r} must be a Python identifier (it names the class and the xmodel)")


def _batches(calib_batches: Sequence[Tensor]) -> list[Tensor]:
    out = []
    for i, b in enumerate(calib_batches):
        b = torch.as_tensor(b)
        if b.dim() == 3:
            b = b[None]
        if b.dim() != 4 or b.shape[0] < 1:
            raise NndctError(f"calibration batch {i}: expected (N, C, H, W), got shape {tuple(b.shape)}")
        out.append(b.detach().float().cpu())
    if not out:
        raise NndctError("no calibration batches")
    if len({tuple(b.shape[1:]) for b in out}) != 1:
        raise NndctError(f"calibration batches differ in (C, H, W): {sorted({tuple(b.shape[1:]) for b in out})}")
    return out


@dataclass(frozen=True)
class NndctResult:
    """What :func:`quantize_nndct` wrote (paths) and how."""

    output_dir: Path
    xmodel: Path
    quant_info: Path
    manifest: Path
    generation: str
    fingerprint: str
    calib_batches: int
    calib_samples: int

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


def quantize_nndct(module: nn.Module, calib_batches: Sequence[Tensor], out_dir, fingerprint: str, *,
                   net_name: str | None = None) -> NndctResult:
    """Calibrate ``module`` on ``calib_batches`` with vai_q_pytorch and export its xmodel.

    Args:
        module: one deployed network (g_a, h_a, g_s or h_s), float, not modified.
        calib_batches: tensors (N, C, H, W) (or (C, H, W)), the network's real inputs.
        out_dir: the quantizer's ``output_dir``; created. Holds ``quant_info.json``, nndct's
            generated ``<Class>.py``, the xmodel and our ``nndct.json``.
        fingerprint: the DPU's, ``arch["dpu"]["fingerprint"]``; passed as ``target`` on VAI 3.x.
        net_name: if given (an identifier) and ``module`` is an ``nn.Sequential``, the graph
            and the xmodel are named after it (:func:`as_named_sequential`).

    Raises :class:`NndctError` when pytorch_nndct is missing or no xmodel appears.
    """
    _check_fingerprint(fingerprint)
    batches = _batches(calib_batches)
    torch_quantizer = _torch_quantizer()
    generation = api_generation(torch_quantizer)
    net = as_named_sequential(module, net_name) if net_name is not None else copy.deepcopy(module)
    net = net.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    q = torch_quantizer(**quantizer_kwargs(generation, "calib", net, batches[0], out, fingerprint))
    qm = q.quant_model
    with torch.no_grad():
        for b in batches:
            qm(b)
    q.export_quant_config()

    x1 = batches[0][:1]  # export: batch size 1, one forward
    q = torch_quantizer(**quantizer_kwargs(generation, "test", net, x1, out, fingerprint))
    qm = q.quant_model
    with torch.no_grad():
        qm(x1)
    q.export_xmodel(output_dir=str(out), deploy_check=False)

    xmodel = _find_xmodel(out, xmodel_name(net))
    quant_info = out / QUANT_INFO_NAME
    if not quant_info.is_file():
        raise NndctError(f"{out}: export_quant_config wrote no {QUANT_INFO_NAME}")
    result = NndctResult(output_dir=out, xmodel=xmodel, quant_info=quant_info, manifest=out / MANIFEST_NAME,
                         generation=generation, fingerprint=fingerprint, calib_batches=len(batches),
                         calib_samples=sum(int(b.shape[0]) for b in batches))
    result.manifest.write_text(json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n")
    return result


def _find_xmodel(out: Path, expected: str) -> Path:
    path = out / expected
    if path.is_file():
        return path
    found = sorted(out.glob("*_int.xmodel"))
    if len(found) == 1:
        return found[0]
    raise NndctError(f"{out}: export_xmodel wrote no {expected}"
                     + (f" (found {', '.join(p.name for p in found)})" if found else ""))


# -- the docker job ----------------------------------------------------------------------------------


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def describe_sequential(net: nn.Sequential) -> list[dict]:
    """The architecture description rendered into the job: one dict per child, in order.

    Conv2d / ConvTranspose2d (zero padding, integer padding) and ReLU / ReLU6 / LeakyReLU /
    Identity; anything else raises :class:`NndctError` naming the child.
    """
    if not isinstance(net, nn.Sequential):
        raise NndctError(f"expected an nn.Sequential, got {type(net).__name__}")
    layers = []
    for name, m in net.named_children():
        if type(m) in (nn.Conv2d, nn.ConvTranspose2d):
            if isinstance(m.padding, str) or m.padding_mode != "zeros":
                raise NndctError(f"{name}: only integer zero padding (got padding={m.padding!r}, "
                                 f"padding_mode={m.padding_mode!r})")
            spec = {"name": name, "type": "conv2d" if type(m) is nn.Conv2d else "conv_transpose2d",
                    "in_channels": int(m.in_channels), "out_channels": int(m.out_channels),
                    "kernel_size": _pair(m.kernel_size), "stride": _pair(m.stride), "padding": _pair(m.padding),
                    "dilation": _pair(m.dilation), "groups": int(m.groups), "bias": m.bias is not None}
            if type(m) is nn.ConvTranspose2d:
                spec["output_padding"] = _pair(m.output_padding)
        elif type(m) is nn.ReLU:
            spec = {"name": name, "type": "relu"}
        elif type(m) is nn.ReLU6:
            spec = {"name": name, "type": "relu6"}
        elif type(m) is nn.LeakyReLU:
            spec = {"name": name, "type": "leaky_relu", "negative_slope": float(m.negative_slope)}
        elif type(m) is nn.Identity:
            spec = {"name": name, "type": "identity"}
        else:
            raise NndctError(f"{name}: {type(m).__name__} cannot be rebuilt by the nndct job "
                             "(Conv2d, ConvTranspose2d, ReLU, ReLU6, LeakyReLU, Identity only)")
        layers.append(spec)
    if not layers:
        raise NndctError("empty network")
    return layers


def template_env() -> jinja2.Environment:
    """The templates' jinja2 environment: ``StrictUndefined`` (an unfilled placeholder raises)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False, trim_blocks=True, lstrip_blocks=True)
    env.filters["py"] = repr  # a Python literal (str, int, float, tuple, dict of those)
    return env


def _template_for(arch: dict) -> tuple[str, str]:
    version = str(arch["runtime"]["vitis_ai_version"])
    if version not in TEMPLATES:
        raise NndctError(f"no nndct job template for Vitis AI {version} (have: {', '.join(sorted(TEMPLATES))})")
    return version, TEMPLATES[version]


def render_script(net_name: str, layers: list[dict], input_shape: Sequence[int], arch: dict) -> str:
    """The job script's text (deterministic: no paths, no dates; golden-tested)."""
    _check_name(net_name)
    version, template = _template_for(arch)
    return template_env().get_template(template).render(
        net_name=net_name, vai_version=version, fingerprint=arch["dpu"]["fingerprint"],
        target_name=arch["dpu"]["target_name"], layers=layers, input_shape=tuple(int(v) for v in input_shape),
        weights_file=WEIGHTS_NAME, calib_file=CALIB_NAME, result_dir=RESULT_DIR, quant_info=QUANT_INFO_NAME,
        script_name=SCRIPT_NAME, template=template)


def render_run_sh(net_name: str, arch: dict) -> str:
    """The ``docker run`` wrapper's text (golden-tested)."""
    _check_name(net_name)
    version, _ = _template_for(arch)
    return template_env().get_template(RUN_TEMPLATE).render(
        net_name=net_name, vai_version=version, docker_env=DOCKER_ENV,
        image_expr="${" + f"{DOCKER_ENV}:-{DOCKER_REPOSITORY}:{version}" + "}",
        script_name=SCRIPT_NAME, result_dir=RESULT_DIR, template=RUN_TEMPLATE)


@dataclass(frozen=True)
class DockerJob:
    """The files :func:`render_docker_job` wrote, and where the job will write its results."""

    job_dir: Path
    weights: Path
    calib: Path
    script: Path
    run_sh: Path
    result_dir: Path
    xmodel: Path  #: written by the job, not by the render
    quant_info: Path  #: written by the job

    def to_dict(self) -> dict:
        return {k: str(v) for k, v in asdict(self).items()}


def render_docker_job(net_name: str, net: nn.Sequential, calib_batches: Sequence[Tensor], out_dir,
                      arch: dict) -> DockerJob:
    """Write a self-contained vai_q_pytorch job for the Vitis AI docker into ``out_dir``.

    Files: ``weights.npz`` (the state dict, float32, PyTorch keys), ``calib.npz``
    (``batch_000``, ``batch_001`` ... float32 NCHW), ``nndct_job.py`` (the rendered script)
    and ``run.sh`` (``docker run`` of the image ``xilinx/vitis-ai-cpu:<version>`` or
    ``$MEDCODEC_VITIS_DOCKER``, with this folder mounted as ``/workspace``). Running
    ``run.sh`` writes ``quantize_result/<net_name>_int.xmodel`` and ``quant_info.json``.
    """
    layers = describe_sequential(net)
    batches = _batches(calib_batches)
    script = render_script(net_name, layers, tuple(batches[0].shape[1:]), arch)
    run_sh = render_run_sh(net_name, arch)
    state = net.state_dict()
    expected = {f"{spec['name']}.{p}" for spec in layers if spec["type"].startswith("conv")
                for p in (("weight", "bias") if spec["bias"] else ("weight",))}
    if set(state) != expected:
        raise NndctError(f"{net_name}: state dict keys {sorted(state)} do not match the layer list {sorted(expected)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    job = DockerJob(job_dir=out, weights=out / WEIGHTS_NAME, calib=out / CALIB_NAME, script=out / SCRIPT_NAME,
                    run_sh=out / RUN_NAME, result_dir=out / RESULT_DIR,
                    xmodel=out / RESULT_DIR / f"{net_name}_int.xmodel", quant_info=out / RESULT_DIR / QUANT_INFO_NAME)
    np.savez(job.weights, **{k: v.detach().cpu().numpy().astype(np.float32) for k, v in state.items()})
    np.savez(job.calib, **{f"batch_{i:03d}": b.numpy().astype(np.float32) for i, b in enumerate(batches)})
    job.script.write_text(script)
    job.run_sh.write_text(run_sh)
    os.chmod(job.run_sh, 0o755)
    return job
