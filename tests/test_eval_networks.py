"""The metric networks against PyTorch, through the converters, and `emotivetalk evaluate` end to end.

Each PyTorch reference below is written from the original repository's definition (cited
at each class) because none of them is importable here: pytorch-fid needs torchvision,
which has no build for this project's CPU torch. Random weights, batch norms calibrated on
one batch (so activations keep unit scale through 50 layers) and perturbed; each state
dict is saved as safetensors, loaded with `load_metric_network` and run through the very
jitted functions `emotivetalk evaluate` calls, at the shapes the end-to-end run below
uses (64 x 64 clips of 9 frames, --batch 4), so the two share their compiles when one
worker runs both. The end-to-end run itself writes JAX-random weights through the tables
backwards (export), so it needs no torch reference.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import threadpoolctl
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from emotivetalk_jax import cli
from safetensors.numpy import save_file as save_numpy

from emotivetalk_jax.convert.engine import export_tensors, fill_params
from emotivetalk_jax.convert.metric_nets import NETWORKS, abstract_network, load_metric_network
from emotivetalk_jax.data.video import write_mp4
from emotivetalk_jax.eval import evaluate

pytestmark = [pytest.mark.torch, pytest.mark.slow]

TOL = 1e-4
BATCH, FRAMES, SIDE = 4, 9, 64  # 9 frames: the fewest I3D accepts


# ----------------------------------------------------------------------------- references

class BasicConv2d(nn.Module):  # torchvision/models/inception.py
    def __init__(self, cin, cout, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _fid_pool(x):  # pytorch_fid/inception.py: TF's average pool ignores the padding
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class FIDInceptionA(nn.Module):  # torchvision InceptionA + pytorch-fid FIDInceptionA.forward
    def __init__(self, cin, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_fid_pool(x))], 1)


class InceptionB(nn.Module):  # torchvision InceptionB
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, 2)], 1)


class FIDInceptionC(nn.Module):  # torchvision InceptionC + pytorch-fid FIDInceptionC.forward
    def __init__(self, cin, c7):
        super().__init__()
        row, col = dict(kernel_size=(1, 7), padding=(0, 3)), dict(kernel_size=(7, 1), padding=(3, 0))
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, **row)
        self.branch7x7_3 = BasicConv2d(c7, 192, **col)
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, **row)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, **row)
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))), d,
                          self.branch_pool(_fid_pool(x))], 1)


class InceptionD(nn.Module):  # torchvision InceptionD
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, 2)], 1)


class FIDInceptionE(nn.Module):  # torchvision InceptionE + pytorch-fid FIDInceptionE_1 / _2.forward
    def __init__(self, cin, max_pool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, 1, 1) if self.max_pool else _fid_pool(x)
        return torch.cat([self.branch1x1(x), torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1),
                          torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1),
                          self.branch_pool(pooled)], 1)


class FIDInception(nn.Module):
    """pytorch_fid/inception.py `InceptionV3()` (fid_inception_v3 + blocks 0-3), keys as pt_inception-2015-12-05."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = FIDInceptionA(192, 32), FIDInceptionA(256, 64), FIDInceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b, self.Mixed_6c = FIDInceptionC(768, 128), FIDInceptionC(768, 160)
        self.Mixed_6d, self.Mixed_6e = FIDInceptionC(768, 160), FIDInceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b, self.Mixed_7c = FIDInceptionE(1280, False), FIDInceptionE(2048, True)
        self.fc = nn.Linear(2048, 1008)  # in the weight file, unused by FID

    def forward(self, x):  # (B, 3, H, W) in [0, 1]
        x = 2 * F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1
        x = F.max_pool2d(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))), 3, 2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, 2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def _same_pad(x, kernel, stride):  # pytorch_i3d.py compute_pad
    pads = []
    for n, k, s in zip(x.shape[2:], kernel, stride):
        p = max(k - s, 0) if n % s == 0 else max(k - n % s, 0)
        pads.append((p // 2, p - p // 2))
    return F.pad(x, [v for p in reversed(pads) for v in p])


class Unit3D(nn.Module):  # github.com/piergiaj/pytorch-i3d pytorch_i3d.py
    def __init__(self, cin, cout, kernel=(1, 1, 1), stride=(1, 1, 1), bn=True, bias=False, relu=True):
        super().__init__()
        self.kernel, self.stride, self.relu = kernel, stride, relu
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=0.001, momentum=0.01) if bn else None

    def forward(self, x):
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        x = self.bn(x) if self.bn is not None else x
        return F.relu(x) if self.relu else x


def _pool3d(x, k, s):  # MaxPool3dSamePadding: zero padding
    return F.max_pool3d(_same_pad(x, k, s), k, s)


class InceptionModule(nn.Module):
    def __init__(self, cin, c):
        super().__init__()
        self.b0, self.b1a, self.b1b = Unit3D(cin, c[0]), Unit3D(cin, c[1]), Unit3D(c[1], c[2], (3, 3, 3))
        self.b2a, self.b2b, self.b3b = Unit3D(cin, c[3]), Unit3D(c[3], c[4], (3, 3, 3)), Unit3D(cin, c[5])

    def forward(self, x):
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)),
                          self.b3b(_pool3d(x, (3, 3, 3), (1, 1, 1)))], 1)


class I3D(nn.Module):
    """pytorch_i3d.py InceptionI3d(400) forward in eval mode (VideoGPT's: logits averaged over time)."""

    MIXED = {"3b": (192, [64, 96, 128, 16, 32, 32]), "3c": (256, [128, 128, 192, 32, 96, 64]),
             "4b": (480, [192, 96, 208, 16, 48, 64]), "4c": (512, [160, 112, 224, 24, 64, 64]),
             "4d": (512, [128, 128, 256, 24, 64, 64]), "4e": (512, [112, 144, 288, 32, 64, 64]),
             "4f": (528, [256, 160, 320, 32, 128, 128]), "5b": (832, [256, 160, 320, 32, 128, 128]),
             "5c": (832, [384, 192, 384, 48, 128, 128])}
    POOLS = {"3b": ((1, 3, 3), (1, 2, 2)), "4b": ((3, 3, 3), (2, 2, 2)), "5b": ((2, 2, 2), (2, 2, 2))}

    def __init__(self):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        for name, (cin, c) in self.MIXED.items():
            setattr(self, f"Mixed_{name}", InceptionModule(cin, c))
        self.logits = Unit3D(1024, 400, bn=False, bias=True, relu=False)

    def forward(self, x):  # (B, 3, T, 224, 224) in [-1, 1]
        x = _pool3d(self.Conv3d_1a_7x7(x), (1, 3, 3), (1, 2, 2))
        x = self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x))
        for name in self.MIXED:
            if name in self.POOLS:
                x = _pool3d(x, *self.POOLS[name])
            x = getattr(self, f"Mixed_{name}")(x)
        return self.logits(F.avg_pool3d(x, (2, 7, 7), 1)).squeeze(3).squeeze(3).mean(2)


def i3d_preprocess(video):  # VideoGPT videogpt/data.py preprocess (T, H, W, C uint8), then [-1, 1]
    x = torch.from_numpy(video).permute(0, 3, 1, 2).float() / 255.0
    h, w = x.shape[2:]
    scale = 224 / min(h, w)
    size = (224, int(np.ceil(w * scale))) if h < w else (int(np.ceil(h * scale)), 224)
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    top, left = (x.shape[2] - 224) // 2, (x.shape[3] - 224) // 2
    return (x[:, :, top:top + 224, left:left + 224].permute(1, 0, 2, 3) * 2 - 1)[None]


class SyncNetS(nn.Module):
    """github.com/joonson/syncnet_python SyncNetModel.py `S(num_layers_in_fc_layers=1024)`."""

    def __init__(self):
        super().__init__()

        def fc():
            return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 1024))

        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, 64, 3, 1, 1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(1, 1),
            nn.Conv2d(64, 192, 3, 1, 1), nn.BatchNorm2d(192), nn.ReLU(), nn.MaxPool2d(3, (1, 2)),
            nn.Conv2d(192, 384, 3, padding=1), nn.BatchNorm2d(384), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.BatchNorm2d(256), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.BatchNorm2d(256), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(256, 512, (5, 4)), nn.BatchNorm2d(512), nn.ReLU())
        self.netfcaud, self.netfclip = fc(), fc()
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, 96, (5, 7, 7), (1, 2, 2)), nn.BatchNorm3d(96), nn.ReLU(), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            nn.Conv3d(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(),
            nn.Conv3d(256, 256, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(256), nn.ReLU(),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            nn.Conv3d(256, 512, (1, 6, 6)), nn.BatchNorm3d(512), nn.ReLU())

    def forward_aud(self, x):
        return self.netfcaud(self.netcnnaud(x).flatten(1))

    def forward_lip(self, x):
        return self.netfclip(self.netcnnlip(x).flatten(1))


class Bottleneck(nn.Module):  # github.com/sicxu/Deep3DFaceRecon_pytorch models/networks.py (torchvision v1.5)
    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))
                           if stride != 1 or cin != planes * 4 else None)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(h)))))
        return F.relu(h + (self.downsample(x) if self.downsample is not None else x))


class ReconNet(nn.Module):
    """Deep3DFaceRecon `ReconNetWrapper("resnet50", use_last_fc=False)`: backbone + 7 final 1x1 convs."""

    def __init__(self):
        super().__init__()
        backbone = nn.Module()
        backbone.conv1, backbone.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        cin = 64
        for i, (planes, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))):
            layer = []
            for b in range(blocks):
                layer.append(Bottleneck(cin, planes, stride if b == 0 else 1))
                cin = planes * 4
            setattr(backbone, f"layer{i + 1}", nn.Sequential(*layer))
        self.backbone = backbone
        self.final_layers = nn.ModuleList([nn.Conv2d(2048, n, 1) for n in (80, 64, 80, 3, 27, 2, 1)])

    def forward(self, x):  # (B, 3, 224, 224) RGB in [0, 1]
        b = self.backbone
        x = F.max_pool2d(F.relu(b.bn1(b.conv1(x))), 3, 2, 1)
        x = b.layer4(b.layer3(b.layer2(b.layer1(x))))
        x = F.adaptive_avg_pool2d(x, 1)
        return torch.cat([layer(x) for layer in self.final_layers], 1).flatten(1)


# ----------------------------------------------------------------------------- fixtures


def _randomise(model, calibrate):
    """Perturb every batch norm's affine, set its running statistics from one batch
    (`calibrate(model)` in train mode), then eval mode."""
    torch.manual_seed(0)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in bns:
            m.weight.add_(0.1 * torch.randn_like(m.weight))
            m.bias.add_(0.1 * torch.randn_like(m.bias))
            m.momentum = None  # cumulative average: one batch sets the statistics
        model.train()
        calibrate(model)
        model.eval()
        for m in bns:
            m.running_mean.add_(0.05 * torch.randn_like(m.running_mean))
            m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.8, 1.25))
    return model


def _clip(seed, frames=FRAMES):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (1, SIDE, SIDE, 3))
    return np.clip(base + rng.integers(-30, 30, (frames, SIDE, SIDE, 3)), 0, 255).astype(np.uint8)


_CALIBRATE = {  # network -> (torch reference class, one calibration batch as small as it takes)
    "fid": (FIDInception, lambda m: m(torch.rand(2, 3, SIDE, SIDE))),
    "fvd": (I3D, lambda m: m(i3d_preprocess(_clip(9)))),
    "sync": (SyncNetS, lambda m: (m.forward_lip(torch.rand(2, 3, 5, 224, 224) * 255),
                                  m.forward_aud(torch.randn(2, 1, 13, 20) * 10))),
    "face3d": (ReconNet, lambda m: m(torch.rand(2, 3, 128, 128))),
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """weights(network) -> (torch reference, safetensors path), built on first use (xdist workers
    that run one parity test build one network); the e2e run loads the same files."""
    folder = tmp_path_factory.mktemp("metric_weights")
    built = {}

    def get(name):
        if name not in built:
            torch.manual_seed(0)
            cls, calibrate = _CALIBRATE[name]
            ref = _randomise(cls(), calibrate)
            path = folder / f"{name}.safetensors"
            save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
            built[name] = ref, path
        return built[name]

    return get


def _check(ours, ref, what):
    ref = np.asarray(ref, np.float64)
    assert ref.std() > 1e-3, f"{what}: reference output is nearly constant; the check would be weak"
    err = np.abs(np.asarray(ours, np.float64) - ref).max() / np.abs(ref).max()
    assert err <= TOL, f"{what}: max |jax - torch| / max |torch| = {err:.3g} > {TOL}"


def _roundtrip(name, model, ref):
    """Export runs the table backwards: the reference state dict comes back (less what FID drops)."""
    exported = export_tensors(model, NETWORKS[name][2])
    state = {k: v.numpy() for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")
             and not k.startswith("fc.")}
    assert sorted(exported) == sorted(state)
    for k, v in state.items():
        np.testing.assert_array_equal(exported[k], v, err_msg=k)


# ----------------------------------------------------------------------------- parity


def test_fid_inception_parity(weights):
    ref, path = weights("fid")
    model = load_metric_network("fid", path)
    frames = np.concatenate([_clip(1, 2), _clip(2, 2)])  # one chunk (the e2e run below pads its last one)
    with torch.no_grad():
        want = ref(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0).numpy()
    _check(evaluate.fid_features(model, frames, BATCH), want, "InceptionV3 pool features")
    _roundtrip("fid", model, ref)


def test_fvd_i3d_parity(weights):
    ref, path = weights("fvd")
    model = load_metric_network("fvd", path)
    clip = _clip(3, FRAMES + 2)  # FVD reads only the first FRAMES frames
    with torch.no_grad():
        want = ref(i3d_preprocess(clip[:FRAMES])).numpy()
    _check(evaluate.fvd_features(model, clip, FRAMES), want, "I3D logits")
    _roundtrip("fvd", model, ref)


def test_syncnet_parity(weights):
    ref, path = weights("sync")
    model = load_metric_network("sync", path)
    rng = np.random.default_rng(4)
    windows = rng.uniform(0, 255, (BATCH, 5, 224, 224, 3)).astype(np.float32)
    mfcc = (rng.standard_normal((BATCH, 13, 20, 1)) * 10).astype(np.float32)
    with torch.no_grad():
        lip = ref.forward_lip(torch.from_numpy(windows).permute(0, 4, 1, 2, 3)).numpy()
        aud = ref.forward_aud(torch.from_numpy(mfcc).permute(0, 3, 1, 2)).numpy()
    _check(evaluate.batched(evaluate._lip_forward, model, windows, BATCH), lip, "SyncNet lip embedding")
    _check(evaluate.batched(evaluate._aud_forward, model, mfcc, BATCH), aud, "SyncNet audio embedding")
    _roundtrip("sync", model, ref)


def test_face3d_resnet50_parity(weights):
    ref, path = weights("face3d")
    model = load_metric_network("face3d", path)
    faces = np.random.default_rng(5).integers(0, 256, (3, 224, 224, 3)).astype(np.uint8)
    with torch.no_grad():
        want = ref(torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 255.0).numpy()
    _check(evaluate.face3d_coefficients(model, faces, BATCH), want, "Deep3DFaceRecon coefficients")
    _roundtrip("face3d", model, ref)


# ----------------------------------------------------------------------------- end to end


def _jax_random_weights(name, folder):
    """A random-weight network written through the table backwards (export -> safetensors): no torch
    needed, so an xdist worker that runs only this test builds no reference."""
    def draw(leaf, shape, rng):
        if leaf == "var":
            return rng.uniform(0.5, 1.5, shape)
        if leaf == "kernel":
            return rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
        return (1.0 if leaf == "scale" else 0.0) + 0.1 * rng.standard_normal(shape)

    path = folder / f"{name}.safetensors"
    save_numpy(export_tensors(fill_params(abstract_network(name), 0, draw), NETWORKS[name][2]), str(path))
    return path


def test_evaluate_end_to_end(tmp_path, capsys):
    gen, ref = tmp_path / "generated", tmp_path / "reference"
    paths = {name: _jax_random_weights(name, tmp_path) for name in NETWORKS}
    t = np.arange(FRAMES * 640) / 16000
    for i in range(2):
        speech = (0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) * np.sin(2 * np.pi * 3 * t)).astype(np.float32)
        write_mp4(gen / f"clip{i}.mp4", _clip(10 + i), audio=speech)
        write_mp4(ref / f"clip{i}.mp4", _clip(20 + i))
    flags = {"--fid-weights": "fid", "--fvd-weights": "fvd", "--syncnet-weights": "sync", "--face3d-weights": "face3d"}
    argv = ["evaluate", str(gen), str(ref), "--crop", "none", "--batch", str(BATCH), "--fvd-frames", str(FRAMES),
            "--per-video"]
    for flag, name in flags.items():
        argv += [flag, str(paths[name])]
    # one BLAS thread: FID's 2048 x 2048 eigendecompositions crawl when two busy cores are oversubscribed
    with threadpoolctl.threadpool_limits(1):
        assert cli.main(argv) == 0
    out = capsys.readouterr()
    result = json.loads(out.out)
    for key in ("fid", "fvd", "efid", "sync_c", "sync_d"):
        assert np.isfinite(result[key]), key
    assert result["fid"] > 0 and result["fvd"] > 0 and result["efid"] > 0
    rows = result["per_video"]
    assert [r["video"] for r in rows if r["set"] == "generated"] == ["clip0.mp4", "clip1.mp4"]
    assert all(abs(r["offset"]) <= 15 and r["frames"] == FRAMES for r in rows if r["set"] == "generated")
    assert "evaluate" in out.err  # the progress bar

    # a weight file that is not there: that metric is skipped with a line, the others run
    argv = ["evaluate", str(gen), str(ref), "--crop", "none", "--batch", str(BATCH), "--fvd-frames", str(FRAMES),
            "--syncnet-weights", str(paths["sync"]), "--fvd-weights", str(tmp_path / "absent.safetensors")]
    assert cli.main(argv) == 0
    out = capsys.readouterr()
    result = json.loads(out.out)
    assert result["sync_c"] == pytest.approx(np.mean([r["sync_c"] for r in rows if r["set"] == "generated"]))
    assert "fvd" not in result and "fvd" in result["skipped"] and "fid" in result["skipped"]
    assert "skipping fvd" in out.err


@pytest.mark.parametrize("shape,size", [((2, 512, 400, 3), (299, 299)), ((1, 60, 90, 3), (224, 336))])
def test_resize_matches_torch_bilinear(shape, size):
    """Real frames shrink (512 -> 299 for FID, -> 224 for I3D / SyncNet): torch's bilinear, no antialiasing."""
    from emotivetalk_jax.models.metrics.layers import resize_bilinear

    x = np.random.default_rng(6).uniform(0, 1, shape).astype(np.float32)
    want = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False)
    np.testing.assert_allclose(np.asarray(resize_bilinear(x, size)), want.permute(0, 2, 3, 1).numpy(), atol=1e-5)
