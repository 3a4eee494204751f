"""CTViTEncoder reads compact (float16) channels slab by slab (issue 18 item 5): the tokens are
those of the whole input cast to float32, the conv stem's slabs carry the halo its receptive
field needs, and no slab (nor the whole input) is ever cast to float32 at once; a float32
input still goes through MONAI's block as one tensor."""

from __future__ import annotations

import pytest
import torch

from medvtc.medical.ct_report import vision_encoder
from medvtc.medical.ct_report.vision_encoder import CTViTEncoder

pytestmark = pytest.mark.usefixtures("one_thread")

IMG, PATCH, C = (48, 16, 8), (8, 4, 4), 10  # a 6 x 4 x 2 token grid


def _encoder(stem: str, seed: int = 0, patch=PATCH) -> CTViTEncoder:
    torch.manual_seed(seed)
    enc = CTViTEncoder(
        in_channels=C, img_size=IMG, patch_size=patch, hidden_size=32, num_layers=1, num_heads=2, mlp_dim=64, stem=stem
    )
    if stem == "conv":  # non-trivial BatchNorm statistics, so eval mode is not the identity
        for m in enc.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return enc.eval()


def _channels(b: int = 2, seed: int = 1) -> torch.Tensor:
    """Float16 channels in [0, 1] as the preprocessing stores them (window + interval fractions)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, C, *IMG, generator=g).half()


def _stem_inputs(enc: CTViTEncoder) -> tuple[list[tuple[tuple[int, ...], torch.dtype]], object]:
    seen: list[tuple[tuple[int, ...], torch.dtype]] = []
    hook = enc.patch_embedding.patch_embeddings.register_forward_pre_hook(
        lambda _m, args: seen.append((tuple(args[0].shape), args[0].dtype))
    )
    return seen, hook


@pytest.mark.parametrize(
    "stem, patch, halo",
    [
        ("patch", PATCH, (0, 0)),
        ("conv", PATCH, (8, 0)),
        # X's patch is the smallest: the third convolution has stride 1 along X and reads after the patch too
        ("conv", (4, 8, 4), (8, 4)),
    ],
)
def test_float16_input_gives_the_tokens_of_the_input_cast_whole(stem, patch, halo, monkeypatch):
    enc, x = _encoder(stem, patch=patch), _channels()
    assert enc._halo() == halo
    with torch.no_grad():
        reference = enc(x.float())
        monkeypatch.setattr(vision_encoder, "_SLAB_ELEMENTS", 1)  # one patch row per slab
        tokens = enc(x)
    assert tokens.dtype == torch.float32 and tokens.shape == reference.shape == (2, enc.num_patches, 32)
    torch.testing.assert_close(tokens, reference, rtol=1e-5, atol=1e-6)


def test_the_conv_stem_needs_its_halo(monkeypatch):
    """Without the halo the conv stem's zero padding at the slab edges changes the tokens there,
    so the equivalence above checks the halo (3 stride-2 convolutions along X: a token reads 7 rows
    before its patch, rounded up to one patch, and none after it)."""
    enc, x = _encoder("conv"), _channels()
    assert enc._halo() == (8, 0) and _encoder("patch")._halo() == (0, 0)
    monkeypatch.setattr(vision_encoder, "_SLAB_ELEMENTS", 1)
    with torch.no_grad():
        reference = enc(x.float())
        monkeypatch.setattr(CTViTEncoder, "_halo", lambda self: (0, 0))
        assert (enc(x) - reference).abs().max() > 1e-3


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_no_float32_copy_of_the_whole_input(stem, monkeypatch):
    """Memory structure: with float16 input the stem sees float32 slabs of whole patch rows, each
    one patch row plus the halo, never the whole volume; with float32 input it sees the input
    itself, once."""
    enc, x = _encoder(stem), _channels()
    monkeypatch.setattr(vision_encoder, "_SLAB_ELEMENTS", 1)
    seen, hook = _stem_inputs(enc)
    with torch.no_grad():
        enc(x)
    px, halo = PATCH[0], sum(enc._halo())
    assert len(seen) == IMG[0] // px
    for shape, dtype in seen:
        assert dtype == torch.float32 and shape[:2] == (2, C) and shape[3:] == IMG[1:]
        assert shape[2] % px == 0 and shape[2] <= px + halo < IMG[0]
    # a larger slab budget groups patch rows: 2 rows per slab here
    seen.clear()
    monkeypatch.setattr(vision_encoder, "_SLAB_ELEMENTS", 2 * C * IMG[1] * IMG[2] * 2 * px)
    with torch.no_grad():
        enc(x)
    assert len(seen) == 3
    seen.clear()
    with torch.no_grad():
        enc(x.float())
    assert seen == [((2, C, *IMG), torch.float32)]
    hook.remove()


def test_float16_input_trains_the_patch_embedding_as_float32_does(monkeypatch):
    """Training mode, plain patch stem: same loss and gradients as the input cast whole."""
    monkeypatch.setattr(vision_encoder, "_SLAB_ELEMENTS", 1)
    x = _channels()
    grads = []
    for inp in (x.float(), x):
        enc = _encoder("patch").train()
        enc(inp).square().mean().backward()
        grads.append(enc.patch_embedding.patch_embeddings.weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


def test_conv_stem_batchnorm_in_training_mode_gets_the_whole_input(monkeypatch):
    """Training-mode BatchNorm normalises with the batch's statistics, which slabs would change:
    the stem is then given the whole input, cast once, and its statistics move as with float32."""
    monkeypatch.setattr(vision_encoder, "_SLAB_ELEMENTS", 1)
    x = _channels()
    outs, stats = [], []
    for inp in (x.float(), x):
        enc = _encoder("conv").train()
        seen, hook = _stem_inputs(enc)
        outs.append(enc(inp))
        hook.remove()
        assert seen == [((2, C, *IMG), torch.float32)]
        stats.append(next(m for m in enc.modules() if isinstance(m, torch.nn.BatchNorm3d)).running_mean.clone())
    torch.testing.assert_close(outs[1], outs[0])
    torch.testing.assert_close(stats[1], stats[0])


def test_other_dtypes_are_cast_whole_and_shapes_still_checked():
    enc, x = _encoder("patch"), _channels()
    with torch.no_grad():
        torch.testing.assert_close(enc(x.double()), enc(x.float()))
    with pytest.raises(ValueError, match=r"expects \[B, 10, 48, 16, 8\]"):
        enc(x[:, :, :16])


def test_channel_standardizer_fits_each_channel_over_every_voxel():
    from medvtc.medical.ct_report.channel_standardizer import ChannelStandardizer

    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 4, 5, 2, generator=g) * torch.tensor([1.0, 10.0, 0.001]).view(1, 3, 1, 1, 1)
    std = ChannelStandardizer(3, min_std=0.01)
    torch.testing.assert_close(std(x), x)  # the identity until fitted
    std.fit([x[:4], x[4:]])
    per_channel = x.transpose(0, 1).reshape(3, -1).double()
    torch.testing.assert_close(std.mean, per_channel.mean(1).float())
    assert std.std[0] == pytest.approx(float(per_channel[0].std()), rel=1e-5)
    assert std.std[2] == pytest.approx(0.01)  # the floor: a near-constant channel is not blown up
    y = std(x)
    assert abs(float(y[:, 1].mean())) < 1e-5 and float(y[:, 1].std()) == pytest.approx(1.0, rel=1e-3)
    with pytest.raises(ValueError, match=r"expects \[B, 3, ...\]"):
        std(x[:, :2])


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_standardized_input_is_the_encoders_input_in_every_path(stem, monkeypatch):
    """With a fitted input standardizer the encoder gives the tokens of the plain encoder on the
    standardised input: float32 whole, and float16 slab by slab."""
    enc, x = _encoder(stem), _channels()
    torch.manual_seed(0)
    std_enc = CTViTEncoder(in_channels=C, img_size=IMG, patch_size=PATCH, hidden_size=32, num_layers=1, num_heads=2,
                           mlp_dim=64, stem=stem, standardize_input=True).eval()
    std_enc.load_state_dict(enc.state_dict(), strict=False)
    std_enc.input_standardizer.fit([x.float()])
    assert set(std_enc.state_dict()) - set(enc.state_dict()) == {
        "input_standardizer.mean", "input_standardizer.std", "input_standardizer.fitted"}
    with torch.no_grad():
        reference = enc(std_enc.input_standardizer(x.float()))
        torch.testing.assert_close(std_enc(x.float()), reference, rtol=1e-5, atol=1e-5)
        monkeypatch.setattr(vision_encoder, "_SLAB_ELEMENTS", 1)
        torch.testing.assert_close(std_enc(x), reference, rtol=1e-4, atol=1e-4)
