"""The chunked float32 nearest-code search agrees with cdist + argmin."""

from __future__ import annotations

import pytest
import torch

from model import quantizer
from model.quantizer import VectorQuantizer


def _quantizer(codes: int, dim: int, seed: int = 0) -> VectorQuantizer:
    torch.manual_seed(seed)
    vq = VectorQuantizer(codes, dim)
    with torch.no_grad():
        vq.embedding.weight.normal_()
    return vq


@pytest.mark.parametrize(("codes", "dim"), [(16, 3), (512, 4), (4096, 64), (16384, 4)])
def test_argmin_equals_cdist(codes: int, dim: int) -> None:
    vq = _quantizer(codes, dim)
    z = torch.randn(3000, dim)
    expected = torch.cdist(z, vq.embedding.weight).argmin(dim=1)
    assert torch.equal(vq.nearest(z), expected)


def test_chunks_cover_every_row(monkeypatch: pytest.MonkeyPatch) -> None:
    vq = _quantizer(100, 8)
    z = torch.randn(1037, 8)
    whole = vq.nearest(z)
    monkeypatch.setitem(quantizer._CHUNK_ELEMENTS, "cpu", 100 * 7)  # 7 rows per chunk, a ragged last chunk
    assert torch.equal(vq.nearest(z), whole)
    monkeypatch.setitem(quantizer._CHUNK_ELEMENTS, "cpu", 1 << 30)  # one chunk for everything
    assert torch.equal(vq.nearest(z), whole)
    assert vq.nearest(z[:0]).shape == (0,)  # no rows: no chunk


def test_ties_go_to_the_first_code_as_with_argmin() -> None:
    """Duplicated codes make exact ties: the first of them is chosen, as `torch.argmin` (and diffusers) choose."""
    vq = _quantizer(64, 4)
    with torch.no_grad():
        vq.embedding.weight[40:] = vq.embedding.weight[:24].clone()  # codes 40..63 duplicate codes 0..23
    z = vq.embedding.weight.detach()[:24] + 1e-3
    expected = torch.cdist(z, vq.embedding.weight.detach()).argmin(dim=1)
    assert torch.equal(vq.nearest(z), expected)
    assert int(vq.nearest(z).max()) < 24


def test_half_precision_model_uses_float32_distances() -> None:
    """Codes a half-precision model picks equal the float32 search on the same (half-rounded) values."""
    vq = _quantizer(2048, 4)
    z = torch.randn(2, 4, 16, 16)
    half = VectorQuantizer(2048, 4).to(torch.bfloat16)
    half.load_state_dict(vq.state_dict())
    quantized, indices = half(z.to(torch.bfloat16))
    assert quantized.dtype == torch.bfloat16
    flat = z.to(torch.bfloat16).float().permute(0, 2, 3, 1).reshape(-1, 4)
    expected = torch.cdist(flat, half.embedding.weight.float()).argmin(dim=1).view(2, 16, 16)
    assert torch.equal(indices, expected)


def test_forward_shapes_and_lookup_round_trip() -> None:
    vq = _quantizer(64, 8)
    z = torch.randn(2, 8, 5, 7)
    quantized, indices = vq(z)
    assert quantized.shape == z.shape
    assert indices.shape == (2, 5, 7)
    assert indices.dtype == torch.long
    assert torch.equal(vq.lookup(indices), quantized)
    # quantizing a codebook vector returns it unchanged
    again, again_idx = vq(quantized)
    assert torch.equal(again_idx, indices)
    assert torch.equal(again, quantized)


def test_wrong_channel_count_is_rejected() -> None:
    with pytest.raises(ValueError, match="channels"):
        _quantizer(64, 8)(torch.randn(1, 4, 2, 2))


def test_frozen_codebook_is_reused_and_follows_new_weights() -> None:
    vq = _quantizer(256, 8)
    z = torch.randn(500, 8)
    vq.freeze()
    first = vq.nearest(z)
    assert vq._augmented_codebook_t() is vq._augmented_codebook_t()  # built once while frozen
    assert torch.equal(first, torch.cdist(z, vq.embedding.weight).argmin(dim=1))

    # new weights after freezing (as load_state_dict writes them) are still honoured
    permutation = torch.randperm(256)
    vq.load_state_dict({"embedding.weight": vq.embedding.weight.detach()[permutation].clone()})
    assert torch.equal(permutation[vq.nearest(z)], first)
