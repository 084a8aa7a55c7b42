"""FID's Inception-v3: the ``pt_inception-2015-12-05`` network, run as torch-fidelity runs it.

FID, KID, precision/recall and the Inception Score are only comparable across papers when they
use the same network with the same preprocessing. The de-facto standard is the TensorFlow graph
``inception-2015-12-05`` (TF1.x), ported to PyTorch as ``pt_inception-2015-12-05-6726825d.pth``
(used by pytorch-fid and torch-fidelity). This module is dgm's definition of that network:

* the parameter names and shapes are those of the ported weights file, so it loads unchanged;
* the blocks carry the port's TensorFlow-compatibility patches (average pooling that ignores
  zero padding; max pooling in the last block), BatchNorm eps 0.001;
* the input is preprocessed exactly as torch-fidelity does: uint8 values 0..255 -> float32 ->
  bilinear resize to 299x299 *as TF1.x computed it* -> ``(x - 128) / 128``.

The weights are never downloaded: :func:`load_inception` reads a file the user names (or
``$DGM_INCEPTION_WEIGHTS``), either the ``.pth`` (opened with ``torch.load(weights_only=True)``)
or a ``.safetensors`` copy (see :func:`convert_to_safetensors`).

Parity with torch-fidelity 0.4.0 is measured by ``benchmarks/parity_torch_fidelity.py``
(results in ``docs/parity.md``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.errors import DgmError

#: environment variable naming the weights file when no path is passed
WEIGHTS_ENV = "DGM_INCEPTION_WEIGHTS"
#: where the ported weights are published (torch-fidelity's release; the same file as pytorch-fid's)
WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
MISSING_WEIGHTS = (f"FID with Inception needs the pt_inception-2015-12-05 weights: download {WEIGHTS_URL} "
                   f"and pass --inception-weights FILE or set {WEIGHTS_ENV}=FILE")

INPUT_SIZE = 299  # the resolution the TF graph was built for
NUM_CLASSES = 1008  # 1000 ImageNet classes + background (index 0) + 7 unused outputs
POOL_DIM = 2048
MIN_SIZE = 16  # smaller images carry too little to resize meaningfully; refuse them clearly


# --- TF1.x bilinear resize ----------------------------------------------------------------------
def _tf1_source_grid(in_size: int, out_size: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Source indices (lo, hi) and weights of output pixels along one axis, TF1.x style.

    TF1.x's ``resize_bilinear(align_corners=False)`` maps output pixel ``i`` to source coordinate
    ``i * in/out`` -- *without* the half-pixel offset ``(i + 0.5) * in/out - 0.5`` that
    ``F.interpolate(align_corners=False)`` (and TF2) use. The result is shifted by up to half a
    source pixel, which changes FID noticeably, so we reproduce the old convention. Coordinates are
    computed in float32 like TF (and torch-fidelity), so the weights are bit-identical.
    """
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    src = torch.arange(out_size, dtype=torch.float32) * scale
    lo = src.long()  # src >= 0, so truncation is floor
    hi = (lo + 1).clamp_max(in_size - 1)  # the last row/column repeats the edge
    frac = src - lo.float()
    return lo.to(device), hi.to(device), frac.to(device)


def resize_bilinear_tf1(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize float images ``(B, C, H, W)`` to ``size = (h, w)`` as TF1.x's bilinear resize did.

    Interpolates along the width first, then the height, in the input's dtype -- the same order of
    operations as torch-fidelity's reference, so float32 results on CPU are bit-identical to it.
    """
    out_h, out_w = size
    ylo, yhi, dy = _tf1_source_grid(x.shape[2], out_h, x.device)
    xlo, xhi, dx = _tf1_source_grid(x.shape[3], out_w, x.device)
    dx, dy = dx.to(x.dtype).view(1, 1, 1, out_w), dy.to(x.dtype).view(1, 1, out_h, 1)
    top, bottom = x.index_select(2, ylo), x.index_select(2, yhi)
    top = top.index_select(3, xlo) + (top.index_select(3, xhi) - top.index_select(3, xlo)) * dx
    bottom = bottom.index_select(3, xlo) + (bottom.index_select(3, xhi) - bottom.index_select(3, xlo)) * dx
    return top + (bottom - top) * dy


# --- the network ---------------------------------------------------------------------------------
class ConvBN(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 0.001, TF's default) -> ReLU: every layer of the graph."""

    def __init__(self, c_in: int, c_out: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: Tensor) -> Tensor:
    # TF's 3x3 'SAME' average pooling divides by the number of *real* pixels under the window;
    # torchvision's Inception counts the zero padding. The port needs TF's behaviour.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class Mixed35(nn.Module):
    """35x35 block (torchvision's InceptionA): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1."""

    def __init__(self, c_in: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = ConvBN(c_in, 64, 1)
        self.branch5x5_1 = ConvBN(c_in, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(c_in, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_tf_avg_pool(x)),
        ], 1)


class Reduce35(nn.Module):
    """35x35 -> 17x17 (InceptionB): strided 3x3 | 1x1-3x3-strided 3x3 | max pool."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3 = ConvBN(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], 1)


class Mixed17(nn.Module):
    """17x17 block (InceptionC) with factorised 7x7 convolutions (1x7 and 7x1)."""

    def __init__(self, c_in: int, c7: int) -> None:
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = ConvBN(c_in, 192, 1)
        self.branch7x7_1 = ConvBN(c_in, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, **row)
        self.branch7x7_3 = ConvBN(c7, 192, **col)
        self.branch7x7dbl_1 = ConvBN(c_in, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, **col)
        self.branch7x7dbl_3 = ConvBN(c7, c7, **row)
        self.branch7x7dbl_4 = ConvBN(c7, c7, **col)
        self.branch7x7dbl_5 = ConvBN(c7, 192, **row)
        self.branch_pool = ConvBN(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        dbl = self.branch7x7dbl_2(self.branch7x7dbl_1(x))
        dbl = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(dbl)))
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            dbl,
            self.branch_pool(_tf_avg_pool(x)),
        ], 1)


class Reduce17(nn.Module):
    """17x17 -> 8x8 (InceptionD): 1x1-strided 3x3 | 1x1-1x7-7x1-strided 3x3 | max pool."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3_1 = ConvBN(c_in, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(c_in, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7x3_2(self.branch7x7x3_1(x))
        return torch.cat([
            self.branch3x3_2(self.branch3x3_1(x)),
            self.branch7x7x3_4(self.branch7x7x3_3(b7)),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], 1)


class Mixed8(nn.Module):
    """8x8 block (InceptionE) whose 3x3 branches split into parallel 1x3 and 3x1 convolutions.

    ``max_pool``: the graph's *last* block pools with a 3x3 max instead of an average (most likely
    a slip in the original graph, but it is what the weights were trained with).
    """

    def __init__(self, c_in: int, *, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = ConvBN(c_in, 320, 1)
        self.branch3x3_1 = ConvBN(c_in, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(c_in, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl),
            self.branch_pool(pooled),
        ], 1)


@dataclass
class InceptionOutput:
    """What :class:`FIDInceptionV3` computes for a batch; also readable as ``out["pool"]``.

    Attributes:
        pool: ``(B, 2048)`` float32 global-average-pooled features (FID, KID, precision/recall).
        logits_unbiased: ``(B, 1008)`` float32 ``pool @ fc.weight.T`` *without* the bias: what the
            original Inception Score code (and torch-fidelity's ISC) feeds to the softmax.
        logits: ``(B, 1008)`` float32 classifier logits with the bias.
    """

    pool: Tensor
    logits_unbiased: Tensor
    logits: Tensor

    @property
    def probs(self) -> Tensor:
        """``(B, 1008)`` float64 class probabilities for the Inception Score, as torch-fidelity
        computes them: a softmax over *all* 1008 outputs of ``logits_unbiased`` (the background
        class 0 and the 7 unused outputs are kept, not dropped), in float64."""
        return torch.softmax(self.logits_unbiased.double(), dim=1)

    def __getitem__(self, key: str) -> Tensor:
        if key not in ("pool", "logits_unbiased", "logits", "probs"):
            raise KeyError(key)
        return getattr(self, key)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3 (``pt_inception-2015-12-05``); build it with :func:`load_inception`.

    ``forward(x)`` takes images ``(B, C, H, W)``:

    * ``uint8`` with values 0..255, or floating point in [0, 1] (small excursions are clamped,
      values outside [-0.5, 1.5] are refused as a range mistake). Floats are quantised to
      0..255 as when saving a PNG (``floor(255 x + 0.5)``, like ``torchvision.utils.save_image``),
      because torch-fidelity only takes uint8 images: this makes a float batch give the same
      features as the same images written to disk and measured from there;
    * ``C = 3`` (RGB) or ``C = 1`` (grayscale: repeated to 3 identical channels, which is what
      converting a gray image to RGB does);
    * any ``H, W >= 16``: resized to 299x299 with TF1.x's bilinear resize (see
      :func:`resize_bilinear_tf1`), then normalised to ``(x - 128) / 128``.

    It returns an :class:`InceptionOutput`. The network is always in eval mode (BatchNorm uses
    the stored statistics) and computes no gradients.
    """

    def __init__(self) -> None:
        super().__init__()
        # The attribute names are the keys of the ported weights file; do not rename them.
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = Mixed35(192, pool_features=32)
        self.Mixed_5c = Mixed35(256, pool_features=64)
        self.Mixed_5d = Mixed35(288, pool_features=64)
        self.Mixed_6a = Reduce35(288)
        self.Mixed_6b = Mixed17(768, c7=128)
        self.Mixed_6c = Mixed17(768, c7=160)
        self.Mixed_6d = Mixed17(768, c7=160)
        self.Mixed_6e = Mixed17(768, c7=192)
        self.Mixed_7a = Reduce17(768)
        self.Mixed_7b = Mixed8(1280, max_pool=False)
        self.Mixed_7c = Mixed8(2048, max_pool=True)
        self.fc = nn.Linear(POOL_DIM, NUM_CLASSES)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FIDInceptionV3:
        # Training mode would make BatchNorm normalise with batch statistics and silently change
        # every feature; this network is a fixed measuring instrument, so it stays in eval mode.
        return super().train(False)

    def preprocess(self, x: Tensor) -> Tensor:
        """Images as :meth:`forward` takes them -> ``(B, 3, 299, 299)`` network input."""
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise DgmError(f"the Inception network takes a batch of images (B, C, H, W), got {shape}")
        if x.shape[1] not in (1, 3):
            raise DgmError(f"the Inception network takes RGB (3 channels) or grayscale (1 channel) images, "
                           f"got {x.shape[1]} channels")
        if min(x.shape[2], x.shape[3]) < MIN_SIZE:
            raise DgmError(f"the Inception network needs images of at least {MIN_SIZE}x{MIN_SIZE} pixels, "
                           f"got {x.shape[2]}x{x.shape[3]}")
        dtype = self.fc.weight.dtype  # float32 normally; float64 after .double()
        x = x.to(self.fc.weight.device)
        if x.dtype == torch.uint8:
            x = x.to(dtype)
        elif x.is_floating_point():
            # Small excursions (a decoder's samples) are clamped; a batch far outside [0, 1] is a
            # range mistake (0..255 floats, [-1, 1] tanh outputs) that clamping would hide.
            lo, hi = x.min().item(), x.max().item()
            if lo < -0.5 or hi > 1.5:
                raise DgmError(f"the Inception network takes float images in [0, 1], got values in "
                               f"[{lo:.3g}, {hi:.3g}]: rescale them (or pass uint8 0..255)")
            x = torch.floor(x.to(dtype).clamp(0, 1) * 255 + 0.5)
        else:
            raise DgmError(f"the Inception network takes uint8 images (0..255) or floats in [0, 1], got {x.dtype}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = resize_bilinear_tf1(x, (INPUT_SIZE, INPUT_SIZE))
        return (x - 128) / 128  # the graph's (x - 128) * 0.0078125, exactly

    @torch.no_grad()
    def forward(self, x: Tensor) -> InceptionOutput:
        x = self.preprocess(x)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # 147x147
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # 73x73
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # 71x71
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # 35x35
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        x = self.Mixed_6a(x)  # 17x17
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))
        x = self.Mixed_7a(x)  # 8x8
        x = self.Mixed_7c(self.Mixed_7b(x))
        pool = F.adaptive_avg_pool2d(x, 1).flatten(1)  # (B, 2048)
        logits_unbiased = pool.mm(self.fc.weight.T)
        logits = logits_unbiased + self.fc.bias.unsqueeze(0)
        return InceptionOutput(pool.float(), logits_unbiased.float(), logits.float())


# --- weights --------------------------------------------------------------------------------------
def _is_optional(key: str) -> bool:
    # The ported file holds no BatchNorm step counters (they play no role in eval mode).
    return key.endswith("num_batches_tracked")


def _examples(keys: list[str]) -> str:
    return ", ".join(keys[:2]) + (", ..." if len(keys) > 2 else "")


def _read_weights(path: Path) -> dict[str, Tensor]:
    """The tensors of a ``.safetensors`` or ``.pth`` file, or one DgmError saying what is wrong."""
    hint = f"expected the pt_inception-2015-12-05 weights (.pth or .safetensors) from {WEIGHTS_URL}"
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            # weights_only=True: PyTorch's restricted unpickler, which only rebuilds tensors and
            # plain containers and refuses anything else -- a downloaded file can never run code.
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt zip, truncated pickle, refused object, bad header, ...
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DgmError(f"cannot read {path}: {reason}; {hint}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise DgmError(f"{path} holds a {type(state).__name__}, not a dict of named tensors; {hint}")
    return state


def _check_keys(model: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in want if k not in state and not _is_optional(k)]
    unexpected = [k for k in state if k not in want]
    wrong = [f"{k} {tuple(state[k].shape)} instead of {want[k]}" for k in want
             if k in state and tuple(state[k].shape) != want[k]]
    if missing or unexpected or wrong:
        parts = [f"{len(v)} {what} ({_examples(v)})" for what, v in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)) if v]
        raise DgmError(f"{path} is not the pt_inception-2015-12-05 weights: {'; '.join(parts)}; "
                       f"download {WEIGHTS_URL}")


def load_inception(path: str | Path | None = None, device: str | torch.device = "cpu") -> FIDInceptionV3:
    """The FID Inception-v3 with the weights of the file ``path`` (else ``$DGM_INCEPTION_WEIGHTS``).

    Never downloads. Accepts the ported ``.pth`` (read with ``torch.load(weights_only=True)``) or a
    ``.safetensors`` copy; raises one :class:`DgmError` line when the file is not named, missing,
    unreadable or holds other weights.
    """
    source = path if path not in (None, "") else os.environ.get(WEIGHTS_ENV, "")
    if not source:
        raise DgmError(MISSING_WEIGHTS)
    file = Path(source).expanduser()
    if not file.is_file():
        raise DgmError(f"no Inception weights file at {file}. {MISSING_WEIGHTS}")
    state = _read_weights(file)
    with torch.device("meta"):  # no time spent on a random initialisation that is overwritten anyway
        model = FIDInceptionV3()
    _check_keys(model, state, file)
    # The step counters are absent from the ported file (and unused in eval mode): zeros.
    full = {k: torch.zeros((), dtype=torch.long) for k in model.state_dict() if _is_optional(k)}
    full.update({k: v.to(torch.float32) for k, v in state.items()})
    model.load_state_dict(full, assign=True)  # assign: adopt the loaded tensors (meta has no storage)
    return model.to(device).eval()


def convert_to_safetensors(pth: str | Path, out: str | Path) -> Path:
    """Write a ``.safetensors`` copy of the weights file ``pth`` (checked first) to ``out``.

    The copy has the same keys as the ported file and loads with :func:`load_inception`; it is
    faster to open and, unlike any pickle, cannot carry code.
    """
    from safetensors.torch import save_file

    model = load_inception(pth)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items() if not _is_optional(k)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata={"source": Path(pth).name, "network": "pt_inception-2015-12-05"})
    return out


def random_inception_weights(seed: int = 0) -> dict[str, Tensor]:
    """Random weights with the keys and shapes of the ported file, for tests and benchmarks only.

    Scaled so activations stay O(1) through the 94 layers (He-normal convolutions, BatchNorm
    statistics near identity), which keeps the features informative enough to compare
    implementations; they mean nothing as image features.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        layout = FIDInceptionV3().state_dict()
    out: dict[str, Tensor] = {}
    for key, ref in layout.items():
        shape = ref.shape
        if _is_optional(key):
            continue
        if key.endswith("conv.weight"):
            fan_in = shape[1] * shape[2] * shape[3]
            out[key] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        elif key.endswith("bn.weight") or key.endswith("running_var"):
            out[key] = 0.5 + torch.rand(shape, generator=g)
        elif key.endswith("bn.bias") or key.endswith("running_mean"):
            out[key] = 0.1 * torch.randn(shape, generator=g)
        else:  # fc.weight, fc.bias
            out[key] = 0.05 * torch.randn(shape, generator=g)
    return out
