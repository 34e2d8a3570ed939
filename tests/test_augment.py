"""dmx.data.augment: batched crop+flip equals a naive per-image crop, and normalisation."""

import pytest
import torch

from dmx.data.augment import normalize, random_crop_flip


def _naive(images, padding, hflip, seed):
    """Per-image reference: same draws (dy, dx, flip in that order) on the same generator."""
    g = torch.Generator().manual_seed(seed)
    b, _, h, w = images.shape
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=g)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=g)
    flip = torch.rand(b, generator=g) < 0.5 if hflip else torch.zeros(b, dtype=torch.bool)
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    out = []
    for i in range(b):
        crop = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
        out.append(crop.flip(-1) if flip[i] else crop)
    return torch.stack(out), dy, dx, flip


@pytest.mark.parametrize("padding,hflip", [(4, True), (1, False), (0, True), (2, True)])
def test_matches_naive_per_image_crop(padding, hflip):
    images = torch.randint(0, 256, (64, 3, 8, 6), dtype=torch.uint8)
    out = random_crop_flip(
        images, padding=padding, hflip=hflip, generator=torch.Generator().manual_seed(3)
    )
    expected, *_ = _naive(images, padding, hflip, 3)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert torch.equal(out, expected)


def test_offsets_and_flips_are_distributed_like_torchvision():
    padding = 2
    _, dy, dx, flip = _naive(torch.zeros(4000, 1, 4, 4, dtype=torch.uint8), padding, True, 0)
    # every offset 0..2p is reachable, none outside
    assert set(dy.tolist()) == set(range(2 * padding + 1)) == set(dx.tolist())
    assert 0.45 < flip.float().mean().item() < 0.55
    # and the batched op really produces flips: a ramp image comes back reversed about half the time
    ramp = torch.arange(4, dtype=torch.uint8).expand(2000, 1, 4, 4).contiguous()
    out = random_crop_flip(ramp, padding=0, hflip=True, generator=torch.Generator().manual_seed(1))
    reversed_ = (out[:, 0, 0] == torch.tensor([3, 2, 1, 0], dtype=torch.uint8)).all(1)
    assert 0.45 < reversed_.float().mean().item() < 0.55


def test_no_flip_when_disabled_and_zero_fill():
    images = torch.full((200, 1, 5, 5), 7, dtype=torch.uint8)
    out = random_crop_flip(
        images, padding=1, hflip=False, generator=torch.Generator().manual_seed(0)
    )
    assert set(out.unique().tolist()) <= {0, 7}  # padding is zeros, content untouched
    assert (out == 0).any()


def test_same_seed_same_output_and_device_kept():
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    a = random_crop_flip(images, padding=4, hflip=True, generator=torch.Generator().manual_seed(5))
    b = random_crop_flip(images, padding=4, hflip=True, generator=torch.Generator().manual_seed(5))
    c = random_crop_flip(images, padding=4, hflip=True, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.device == images.device
    if torch.cuda.is_available():
        d = random_crop_flip(
            images.cuda(), padding=4, hflip=True, generator=torch.Generator().manual_seed(5)
        )
        assert d.device.type == "cuda" and torch.equal(d.cpu(), a)


def test_normalize():
    images = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)  # (1, 2, 1, 2)
    out = normalize(images, (0.5, 0.2), (0.5, 0.1))
    assert out.dtype == torch.float32 and out.shape == images.shape
    expected = torch.tensor([[[[-1.0, 1.0]], [[0.0, 2.0]]]])
    assert torch.allclose(out, expected, atol=1e-6)
    with pytest.raises(ValueError, match="one per channel"):
        normalize(images, (0.5,), (0.5,))
