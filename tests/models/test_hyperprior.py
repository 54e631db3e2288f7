"""GDNHyperprior: shapes, likelihoods, helpers, complexity, state-dict keys, registry, zoo."""

from __future__ import annotations

import re

import pytest
import torch

from codec.errors import MedcodecError
from models import registry, zoo
from models.hyperprior import GDNHyperprior, complexity


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return GDNHyperprior(N=8, M=12)


@pytest.mark.parametrize(("h", "w"), [(256, 256), (64, 64), (128, 192), (320, 64)])
def test_forward_shapes_and_likelihoods(tiny, h, w):
    x = torch.rand(2, 1, h, w)
    for training in (True, False):
        tiny.train(training)
        out = tiny(x)
        assert set(out) == {"x_hat", "likelihoods", "t", "y"} and set(out["likelihoods"]) == {"y", "z"}
        assert out["x_hat"].shape == x.shape
        assert out["likelihoods"]["y"].shape == (2, 12, h // 16, w // 16)
        assert out["t"].shape == (2, 12, h // 16, w // 16)
        assert out["likelihoods"]["z"].shape == (2, 8, h // 64, w // 64)
        for lik in out["likelihoods"].values():
            assert bool((lik > 0).all()) and bool((lik <= 1).all())
    tiny.train()


def test_256_tile_latent_sizes_default_channels():
    m = GDNHyperprior()
    m.eval()
    with torch.no_grad():
        out = m(torch.rand(1, 1, 256, 256))
    assert out["likelihoods"]["y"].shape == (1, 128, 16, 16)
    assert out["likelihoods"]["z"].shape == (1, 64, 4, 4)


def test_ste_decoder_input_sees_rounded_latents():
    torch.manual_seed(0)
    m = GDNHyperprior(N=8, M=12, decoder_input="ste").train()
    x = torch.rand(1, 1, 64, 64, requires_grad=True)
    out = m(x)
    with torch.no_grad():
        expected = m.g_s(torch.round(m.g_a(x)))
    torch.testing.assert_close(out["x_hat"], expected)
    out["x_hat"].sum().backward()  # the straight-through path lets gradients reach g_a
    assert m.g_a.conv0.weight.grad is not None and float(m.g_a.conv0.weight.grad.abs().sum()) > 0
    with pytest.raises(ValueError):
        GDNHyperprior(N=8, M=12, decoder_input="bogus")


def test_bad_input_raises(tiny):
    with pytest.raises(ValueError):
        tiny(torch.rand(1, 1, 100, 64))
    with pytest.raises(ValueError):
        tiny(torch.rand(1, 3, 64, 64))


def test_compress_helpers_agree_with_eval_forward(tiny):
    tiny.eval()
    x = torch.rand(1, 1, 128, 128)
    q = tiny.quantize_latents(x)
    assert q["z"].dtype == torch.int32 and q["y"].dtype == torch.int32 and q["k"].dtype == torch.int64
    assert q["k"].shape == q["y"].shape and int(q["k"].min()) >= 0 and int(q["k"].max()) <= 63
    # the decoder side recomputes the same indices from the z symbols alone
    assert torch.equal(tiny.scale_indexes(q["z"]), q["k"])
    x_hat = tiny.reconstruct(q["y"])
    assert x_hat.shape == x.shape and float(x_hat.min()) >= 0 and float(x_hat.max()) <= 1
    tables = tiny.entropy_tables()
    assert tables["z"]["pmf"].shape[0] == 8 and tables["y"]["pmf"].shape[0] == 64
    tiny.train()


def test_state_dict_keys_are_named():
    keys = list(GDNHyperprior(8, 12).state_dict())
    assert "g_a.conv0.weight" in keys and "g_a.gdn0.beta" in keys and "h_s.conv2.bias" in keys
    assert "entropy_bottleneck.matrix0" in keys and "entropy_bottleneck.quantiles" in keys
    for k in keys:
        assert not any(re.fullmatch(r"\d+", part) for part in k.split(".")), k


def test_complexity_counts():
    c = complexity(GDNHyperprior(64, 128), 512, 512)
    # g_a conv0: 64*1*25 per output px at 256x256
    conv0 = 64 * 25 * 256 * 256
    gdn0 = 64 * 64 * 256 * 256
    conv1 = 64 * 64 * 25 * 128 * 128
    gdn1 = 64 * 64 * 128 * 128
    conv2 = 64 * 64 * 25 * 64 * 64
    gdn2 = 64 * 64 * 64 * 64
    conv3 = 128 * 64 * 25 * 32 * 32
    assert c["g_a"]["macs"] == conv0 + gdn0 + conv1 + gdn1 + conv2 + gdn2 + conv3
    assert c["g_s"]["macs"] == c["g_a"]["macs"]  # the mirror image
    m = GDNHyperprior(64, 128)
    assert c["total"]["params"] == sum(p.numel() for p in m.parameters())


def test_registry():
    assert "gdn-hyperprior" in registry.names()
    m = registry.create("gdn-hyperprior", N=8, M=12)
    assert isinstance(m, GDNHyperprior) and m.N == 8
    with pytest.raises(KeyError):
        registry.register("gdn-hyperprior", GDNHyperprior, {})
    with pytest.raises(KeyError):
        registry.get("nope")


def test_zoo_keys_match_registry():
    assert set(zoo.ZOO) <= set(registry.names())
    assert sorted(zoo.ZOO["gdn-hyperprior"]) == [1, 2, 3, 4]


def test_zoo_verifies_sha256(tmp_path):
    m = GDNHyperprior(64, 128)
    name = zoo.ZOO["gdn-hyperprior"][1]["checkpoint"]
    path = tmp_path / name
    torch.save(m.state_dict(), path)
    good = zoo.sha256_file(path)
    loaded = zoo.load_model("gdn-hyperprior", 1, weights_dir=tmp_path, sha256=good)
    assert not loaded.training
    with pytest.raises(zoo.ZooError, match="sha256 mismatch") as exc:
        zoo.load_model("gdn-hyperprior", 1, weights_dir=tmp_path, sha256="0" * 64)
    assert isinstance(exc.value, MedcodecError)
    with pytest.raises(zoo.ZooError, match="missing"):
        zoo.load_model("gdn-hyperprior", 2, weights_dir=tmp_path, sha256=good)
    with pytest.raises(zoo.ZooError):
        zoo.load_model("gdn-hyperprior", 9)
