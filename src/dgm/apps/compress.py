"""Lossy compression with a trained model, written as real bytes: ``dgm compress`` and ``dgm decompress``.

The model's latent code of an image is turned into integer symbols, each with a probability table
from the model's prior, and entropy coded with asymmetric numeral systems (Duda 2013,
arXiv:1311.2540) by the ``constriction`` library (Bamler 2022, "Understanding Entropy Coding With
Asymmetric Numeral Systems (ANS): a Statistician's Perspective", arXiv:2201.01741). An ideal entropy
coder spends the information content of the symbols, so the payload of a file is the model's rate::

    R = - sum_i log2 P_i(s_i)      bits per image                                         (1)

plus a constant of at most ~2 words of coder state (ANS ends in a 32-bit word and keeps ~16 bits
of its initial state; we drop the zero bytes of the top word). Several images go into ONE stream
(their symbols one after the other, one header with their count), so that constant is paid once:
the payload of N images is sum_n R_n + ~16-24 bits. Three latent codes:

* a VAE with a standard normal prior (Kingma & Welling 2013, arXiv:1312.6114; Balle, Laparra &
  Simoncelli 2017, arXiv:1611.01704 for the quantised-latent view): the posterior mean mu(x) is
  quantised to a grid of step Delta, s_i = round(mu_i / Delta) (clamped to |s_i| <= S, S = ceil(B / Delta),
  B = 6), and each s_i is coded with the prior's mass of its bin::

      P(s) = Phi(Delta (s + 1/2)) - Phi(Delta (s - 1/2))     (end bins take the tails)      (2)

  the decoder shows E[x | z = Delta s]. A smaller step costs more bits and gives a closer image.
* a VQ-VAE (van den Oord et al. 2017, arXiv:1711.00937): the symbols are the code indices k(x) of
  the grid in raster order, each coded with the learned autoregressive prior of stage 2::

      P_t(k_t) = p(k_t | k_<t)                                                              (3)

  computed one position at a time with the prior's key-value cache, on the encoder's side from the
  known codes and on the decoder's side from the codes decoded so far: the same operations on the
  same inputs, so both sides get bit-identical tables (a full teacher-forced pass would not).
* a model with a fixed-length code, found by its capabilities ``quantize(x) -> (B, m)`` level indices
  and ``dequantize(symbols) -> images`` (e.g. ``dplc``, Tschannen et al. 2018, arXiv:1805.11057):
  each of the m symbols is coded with the uniform table P(s) = 1/L, L = ``config.levels``, so
  R = m log2 L bits per image, the model's own rate.
* a hierarchical VAE (the ladder VAE, Sonderby et al. 2016, arXiv:1602.02282), coded top-down: the top
  layer as the VAE's latent, then each layer below in the coordinates of its conditional prior given
  the DECODED layer above (the decoder can compute the same prior)::

      s_i = round((mu_{q,i} - mu_{p,i}) / (sigma_{p,i} Delta)),   z^_i = mu_{p,i} + sigma_{p,i} Delta s_i     (4)

  with (mu_{p,i}, sigma_{p,i}) of p(z_i | z^_{i+1}) and mu_{q,i} the mean of q(z_i | z^_{i+1}, x); the bins
  of width sigma_{p,i} Delta around mu_{p,i} have exactly the masses of eq. (2) under that prior, so every
  symbol is coded with the table of eq. (2) and R is the rate from the hierarchical prior. Coding only
  the top K layers (``layers=K``) and setting the others to their prior means is conceptual
  compression (Gregor et al. 2016): the picture from the top of the hierarchy alone, at its rate.

The entropy coding itself (:func:`encode_symbols`, :class:`SymbolDecoder`, :func:`rate_bits`) takes
symbols and per-symbol probability tables only, so any model with a discrete code plugs in.

A file is a 25-byte header then the payload (little endian)::

    b"DGMC" | version u8 | kind u8 (0 gaussian, 1 codes, 2 uniform, 3 ladder) | layers coded u8 (ladder)
            | C, H, W u16 | step f32 | weights crc32 u32 | number of images u32

The crc32 of the model's weights makes decompressing with another model one line of error rather
than a wrong picture; a corrupt payload is found because the coder is not back to its empty state
after the last symbol.

:func:`rate_distortion` sweeps the step (bits per image vs MSE of the 8-bit reconstruction, both on
real encoded bytes) and :func:`codec_points` measures PNG, WebP and JPEG (Pillow) on the same images,
also on pictures downscaled before coding and upscaled after (how a codec reaches the low rates and
high distortions of a small latent code); :func:`codec_bits_at` reads each codec's bits at a model's
distortion off its curve (equal distortion). ``dgm compress RUN --curve -o rd.png`` plots them on the
same axes (with ``--fid NET`` a rate-FID panel too), and the run's report shows the same chart.
"""
from __future__ import annotations

import argparse
import io
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from dgm.apps import App, register_app
from dgm.apps.options import POSITIVE, argument_type, output_path
from dgm.errors import DgmError
from dgm.io.images import figure_to_image
from dgm.settings import PositiveFloat

MAGIC = b"DGMC"
VERSION = 3  # 2: the number of images in the header, kind "uniform"; 3: kind "ladder", layers coded
KINDS = ("gaussian", "codes", "uniform", "ladder")  # the byte in the header is the index
HEADER = struct.Struct("<4sBBBHHHfII")  # magic, version, kind, layers, C, H, W, step, crc32 of the weights, images
MAX_IMAGES = 2 ** 32 - 1
BOUND = 6.0  # B: posterior means beyond +-B prior standard deviations are clamped (prior mass < 2e-9)
MIN_STEP = 1e-3  # a smaller step makes tables of more than 12,001 entries per coordinate
STEPS = (2.0, 1.0, 0.5, 0.25, 0.1, 0.05)  # the default sweep of --curve
REPORT_STEPS = (2.0, 0.5, 0.1)  # the rows of the report's figure (a VAE)
REPORT_IMAGES = 8  # test examples in the report's figure
STEPPED = ("gaussian", "ladder")  # the kinds whose rate is set by the quantisation step
# (format, quality, downscaling factor): each format at full size, and at 1/2 and 1/4 of the side
# before coding (LANCZOS down, BICUBIC back up), which carries it to the distortions of small codes
CODECS = (("PNG", None, 1), *(("WebP", q, 1) for q in (0, 5, 25, 50, 75, 95)),
          *(("WebP", q, f) for f in (2, 4) for q in (0, 5, 50)), *(("JPEG", q, 1) for q in (1, 5, 25, 50, 75, 95)),
          *(("JPEG", q, f) for f in (2, 4) for q in (5, 50)))


# --- entropy coding of symbols with per-symbol tables (any model) -------------------------------------
def _tables(probabilities: np.ndarray | Tensor) -> np.ndarray:
    p = probabilities.detach().cpu().double().numpy() if isinstance(probabilities, Tensor) else probabilities
    return np.ascontiguousarray(np.atleast_2d(p), dtype=np.float64)


def rate_bits(symbols: np.ndarray | Tensor, probabilities: np.ndarray | Tensor) -> float:
    """R of eq. (1): the information content of ``symbols (N,)`` under their tables ``(N, K)`` (rows
    normalised, as the coder normalises them), in bits."""
    p = _tables(probabilities)
    s = np.asarray(symbols, dtype=np.int64).reshape(-1)
    return float(-np.log2(p[np.arange(len(s)), s] / p.sum(1)).sum())


def encode_symbols(symbols: np.ndarray | Tensor, probabilities: np.ndarray | Tensor) -> bytes:
    """ANS-code ``symbols (N,)`` (integers in 0..K-1), symbol i with the table ``probabilities[i] (K,)``,
    into bytes that :class:`SymbolDecoder` reads back in the same order (0 first)."""
    import constriction

    p = _tables(probabilities)
    s = np.ascontiguousarray(np.asarray(symbols).reshape(-1), dtype=np.int32)
    if len(s) != len(p) or (s < 0).any() or (s >= p.shape[1]).any():
        raise ValueError(f"{len(s)} symbols for {len(p)} tables of {p.shape[1]} entries")
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(s, constriction.stream.model.Categorical(perfect=False), p)  # a stack: decoded 0 first
    data = coder.get_compressed().astype("<u4").tobytes()
    top = len(data) - 3  # the last word is the top of the stack: its high (trailing) zero bytes carry nothing
    return data[:max(top, 0)] + data[max(top, 0):].rstrip(b"\0") if data else data


class SymbolDecoder:
    """Reads back what :func:`encode_symbols` wrote, one symbol (or a run of them) at a time, each with
    its table: an autoregressive model computes the next table from the symbols decoded so far."""

    def __init__(self, payload: bytes) -> None:
        import constriction

        words = np.frombuffer(payload + b"\0" * (-len(payload) % 4), dtype="<u4").astype(np.uint32)
        self._coder = constriction.stream.stack.AnsCoder(words)
        self._family = constriction.stream.model.Categorical(perfect=False)

    def decode(self, probabilities: np.ndarray | Tensor) -> np.ndarray:
        """The next ``len(probabilities)`` symbols, ``(N,)`` int64, for their tables ``(N, K)``."""
        p = _tables(probabilities)
        try:
            return np.asarray(self._coder.decode(self._family, p), dtype=np.int64)
        except Exception as e:  # noqa: BLE001 (the coder's own errors on data it did not write)
            raise DgmError(f"the compressed data is corrupt ({e}): compress the picture again") from None

    def finished(self) -> bool:
        """True when every word was consumed: the coder is back in the state it started encoding in."""
        return bool(self._coder.is_empty())


def decode_symbols(payload: bytes, probabilities: np.ndarray | Tensor) -> np.ndarray:
    """The symbols ``(N,)`` of a payload coded with the known tables ``(N, K)`` (no autoregression)."""
    decoder = SymbolDecoder(payload)
    symbols = decoder.decode(probabilities)
    if not decoder.finished():
        raise DgmError("the compressed data is corrupt (bytes left after the last symbol): compress the picture again")
    return symbols


# --- the latent codes of the models -------------------------------------------------------------
def gaussian_table(step: float, dtype: torch.dtype = torch.float64) -> Tensor:
    """P(s) of eq. (2) for s = -S..S, ``(2S + 1,)``: the N(0, 1) mass of each bin of width ``step``,
    the end bins with the tails."""
    S = math.ceil(BOUND / step)
    edges = torch.arange(-S, S + 1, dtype=dtype)[1:] * step - step / 2  # (2S,) the inner bin edges
    cdf = torch.cat([torch.zeros(1, dtype=dtype), torch.special.ndtr(edges), torch.ones(1, dtype=dtype)])
    return cdf.diff()


def has_fixed_code(model) -> bool:  # noqa: ANN001
    """True for a model (or class) whose code is ``quantize``/``dequantize`` level indices of
    ``config.levels`` levels each (coded with uniform tables)."""
    from dgm.models.base import capabilities

    return {"quantize", "dequantize"} <= capabilities(model)


def kind_of(model) -> str:  # noqa: ANN001
    """``"gaussian"`` for a VAE with a standard normal prior, ``"codes"`` for a VQ-VAE with its prior,
    ``"uniform"`` for a model with ``quantize``/``dequantize`` (a fixed-length code), ``"ladder"`` for a
    ladder VAE (a hierarchy of Gaussian latents)."""
    from dgm.models.ladder_vae import LadderVAE
    from dgm.models.vae import VAE
    from dgm.models.vqvae import VQVAE

    if not model.spec.is_image or model.spec.levels is None:
        raise DgmError(f"compression is for images, and this model was trained on {model.spec.name!r} "
                       f"{model.spec.shape}")
    if has_fixed_code(model) and isinstance(getattr(model.config, "levels", None), int):
        return "uniform"
    if isinstance(model, VQVAE) and model.prior is not None:
        return "codes"
    if isinstance(model, VAE):
        return "gaussian"
    if isinstance(model, LadderVAE):
        return "ladder"
    raise DgmError(f"model {model.name!r} has no entropy model for its latents here: compress with a vae "
                   "(Gaussian latent), a ladder-vae (a hierarchy of them), a vqvae (code grid and its prior) "
                   "or a dplc (fixed-length code)")


def fingerprint(model) -> int:  # noqa: ANN001
    """crc32 of the model's weights (the header's check that the decoder is the encoder's model)."""
    crc = 0
    for name, value in model.state_dict().items():
        crc = zlib.crc32(name.encode(), crc)
        crc = zlib.crc32(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes(), crc)
    return crc


def _prior_tables(model, codes: Tensor | None, decoder: SymbolDecoder | None) -> tuple[Tensor, Tensor]:  # noqa: ANN001
    """The VQ-VAE's tables of eq. (3), ``(L, K)`` float64, one position at a time with the key-value
    cache; with ``codes (L,)`` known (encoding), else each code decoded by ``decoder`` as its table
    is known. Returns the codes ``(L,)`` and the tables."""
    L = model.grid[0] * model.grid[1]
    out = torch.zeros(L, dtype=torch.long)
    tables = []
    logits, cache = model.prior.begin(1)  # (1, K): position 0
    for t in range(L):
        table = logits.double().softmax(-1)[0]  # (K,)
        tables.append(table)
        out[t] = codes[t] if codes is not None else int(decoder.decode(table[None])[0])
        if t + 1 < L:
            logits = model.prior.extend(out[t:t + 1].to(model.device), cache)
    return out, torch.stack(tables)


def ladder_code(model, step: float, layers: int, *, x: Tensor | None = None,  # noqa: ANN001
                symbols: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Eq. (4) top-down through a ladder VAE: from images ``x (N, C, H, W)`` (encoding) or from their
    ``symbols (N, m)`` (decoding), the symbols ``(N, m)`` in 0..2S (the top ``layers`` layers, top
    first, m their summed sizes) and the decoder means E[x | z^_1] ``(N, C, H, W)``. Both sides run the
    same operations on the same decoded z^_{i+1}, so they make the same pictures."""
    from dgm.models.ladder_vae import precision_weighted

    S, dims, L = math.ceil(BOUND / step), model.config.latent_dims, model.num_layers
    n = len(x) if x is not None else len(symbols)
    with model.evaluating():
        terms = model.bottom_up(x) if x is not None else None
        z, coded, offset = None, [], 0
        for i in reversed(range(L)):
            if z is None:  # the top layer: p(z_L) = N(0, I)
                mu_p = torch.zeros(n, dims[i], device=model.device)
                logvar_p = torch.zeros_like(mu_p)
            else:
                mu_p, logvar_p = model.prior(i, z)
            if i < L - layers:  # not coded: the prior's mean (conceptual compression)
                z = mu_p
                continue
            scale = (0.5 * logvar_p).exp().double() * step  # sigma_{p,i} Delta
            if x is not None:
                mu_q = terms[i][0] if i == L - 1 else precision_weighted(*terms[i], mu_p, logvar_p)[0]
                s = ((mu_q.double() - mu_p.double()) / scale).round().clamp(-S, S).long()
            else:
                s = symbols[:, offset:offset + dims[i]].to(model.device) - S
                offset += dims[i]
            coded.append(s + S)
            z = (mu_p.double() + scale * s).float()
        return torch.cat(coded, 1).cpu(), model.likelihood.mean(model.decoder_params(z))


def _check_layers(model, layers: int | None) -> int:  # noqa: ANN001
    """The number of top layers a ladder VAE codes (None: all), checked."""
    L = model.num_layers
    if layers is None:
        return L
    if not 1 <= layers <= L:
        raise DgmError(f"--layers takes how many of the model's {L} latent layers to code, from the top: 1..{L}, "
                       f"got {layers}")
    return layers


@dataclass
class Compressed:
    """What :func:`compress` made: the file's bytes, the coded symbols ``(N * per image,)``, the rate R
    of eq. (1) in bits (summed over the images), and the decoded images ``(N, C, H, W)`` in the
    model's representation."""

    data: bytes
    symbols: Tensor
    rate: float
    reconstruction: Tensor

    @property
    def payload_bits(self) -> int:
        return 8 * (len(self.data) - HEADER.size)


def _check_step(step: float) -> float:
    step = float(np.float32(step))  # the value the header holds, so both sides use the same grid
    if not math.isfinite(step) or step < MIN_STEP:
        raise DgmError(f"--step must be a number >= {MIN_STEP} (the quantisation step of the latent), got {step}")
    return step


def _uniform_shape(model) -> tuple[int, int]:  # noqa: ANN001
    """(m, L) of a fixed-length code: symbols per image (from the code of one blank image) and levels."""
    m = model.quantize(torch.zeros(1, *model.spec.shape, device=model.device)).shape[1]
    return m, model.config.levels


@torch.inference_mode()
def compress(model, x: Tensor, *, step: float = 0.25, layers: int | None = None) -> Compressed:  # noqa: ANN001
    """Compress images ``x (N, C, H, W)`` (in the model's representation) with ``model`` into one stream
    with one header (module docstring); the symbols of image 0 come first. ``layers``: a ladder VAE
    codes its top ``layers`` latent layers (default all), the others are their prior means."""
    kind = kind_of(model)
    if x.dim() != 4 or tuple(x.shape[1:]) != tuple(model.spec.shape) or not 1 <= len(x) <= MAX_IMAGES:
        raise DgmError(f"compress takes images of shape (N, {', '.join(map(str, model.spec.shape))}), "
                       f"got {tuple(x.shape)}")
    x = x.to(model.device)
    coded = 0  # the header's layers: a ladder VAE's coded layers
    if kind == "ladder":
        step, coded = _check_step(step), _check_layers(model, layers)
        symbols = ladder_code(model, step, coded, x=x)[0].flatten()  # (N m,) 0..2S, image 0 first
        tables = gaussian_table(step).expand(len(symbols), -1)
    elif kind == "gaussian":
        step = _check_step(step)
        table = gaussian_table(step)  # (K,)
        S = (len(table) - 1) // 2
        mu = model.encode(x).double()  # (N, d) the posterior means
        symbols = (mu / step).round().clamp(-S, S).long().cpu().flatten() + S  # (N d,) 0..2S
        tables = table.expand(len(symbols), -1)
    elif kind == "uniform":
        step = 0.0
        symbols = model.quantize(x).long().cpu().flatten()  # (N m,) 0..L-1
        tables = torch.ones(len(symbols), model.config.levels, dtype=torch.float64)  # P(s) = 1/L
    else:
        step = 0.0
        codes = model.codes(x).flatten(1).cpu()  # (N, L) the code grids in raster order
        pieces = [_prior_tables(model, codes[n], None) for n in range(len(x))]
        symbols, tables = torch.cat([p[0] for p in pieces]), torch.cat([p[1] for p in pieces])
    data = HEADER.pack(MAGIC, VERSION, KINDS.index(kind), coded, *model.spec.shape, step, fingerprint(model),
                       len(x)) + encode_symbols(symbols, tables)
    return Compressed(data, symbols, rate_bits(symbols, tables),
                      reconstruct(model, kind, symbols, step, len(x), layers=coded))


def reconstruct(model, kind: str, symbols: Tensor, step: float, n: int = 1, *, layers: int = 0) -> Tensor:  # noqa: ANN001
    """The decoder means ``(n, C, H, W)`` of the coded ``symbols (n * per image,)``: E[x | z = Delta s],
    E[x | z_q = e_k], the model's ``dequantize``, or a ladder VAE's E[x | z^_1] from its top ``layers``."""
    symbols = symbols.view(n, -1)
    if kind == "ladder":
        return ladder_code(model, step, layers, symbols=symbols)[1]
    if kind == "gaussian":
        S = math.ceil(BOUND / step)
        return model.decode(((symbols.double() - S) * step).float().to(model.device))  # z (n, d)
    if kind == "uniform":
        return model.dequantize(symbols.to(model.device))
    return model.decode(symbols.view(n, *model.grid).to(model.device))


@torch.inference_mode()
def decompress(model, data: bytes, *, name: str = "the file") -> tuple[Tensor, Tensor]:  # noqa: ANN001
    """The symbols ``(N * per image,)`` and the decoded images ``(N, C, H, W)`` of bytes written by
    :func:`compress`."""
    if len(data) < HEADER.size or data[:4] != MAGIC:
        raise DgmError(f"{name} is not a file written by dgm compress (no {MAGIC.decode()} header)")
    _, version, kind_index, layers, C, H, W, step, crc, n = HEADER.unpack_from(data)
    if version != VERSION or kind_index >= len(KINDS):
        raise DgmError(f"{name} was written by another version of dgm compress (format {version}): use that version")
    kind = KINDS[kind_index]
    if (C, H, W) != tuple(model.spec.shape) or kind != kind_of(model):
        raise DgmError(f"{name} holds a {kind} code of {C}x{H}x{W} images, and this model codes {kind_of(model)} "
                       f"of {'x'.join(map(str, model.spec.shape))} images: decompress with the run that compressed it")
    if crc != fingerprint(model):
        raise DgmError(f"{name} was compressed with other weights: decompress with the run that compressed it")
    if n < 1:
        raise DgmError(f"{name} is corrupt (it says it holds no image): compress the pictures again")
    if kind == "ladder" and not 1 <= layers <= model.num_layers:
        raise DgmError(f"{name} is corrupt (it says {layers} latent layers coded, the model has "
                       f"{model.num_layers}): compress the pictures again")
    decoder = SymbolDecoder(data[HEADER.size:])
    if kind == "gaussian":
        step = _check_step(step)
        tables = gaussian_table(step).expand(model.config.latent_dim, -1)  # (d, K) the tables of one image
    elif kind == "ladder":  # the top `layers` layers' units, each with the table of eq. (2)
        step = _check_step(step)
        tables = gaussian_table(step).expand(sum(model.config.latent_dims[-layers:]), -1)
    elif kind == "uniform":
        tables = torch.ones(*_uniform_shape(model), dtype=torch.float64)  # (m, L)
    pieces = []
    for _ in range(n):
        # every image costs bits (no table gives a symbol probability 1), so a coder already back in its
        # empty state with images still to read means a wrong count: stop rather than decode 2^32 images
        if decoder.finished():
            raise DgmError(f"{name} is corrupt (it says {n} images, the data ends after {len(pieces)}): "
                           "compress the pictures again")
        pieces.append(_prior_tables(model, None, decoder)[0] if kind == "codes" else
                      torch.from_numpy(decoder.decode(tables)))
    symbols = torch.cat(pieces)
    if not decoder.finished():
        raise DgmError(f"{name} is corrupt (bytes left after the last symbol): compress the pictures again")
    return symbols, reconstruct(model, kind, symbols, step, n, layers=layers)


# --- pictures, distortion and the codecs --------------------------------------------------------------
def to_8bit(x: Tensor, spec) -> np.ndarray:  # noqa: ANN001
    """Images ``(N, C, H, W)`` in ``spec``'s representation as 8-bit arrays ``(N, H, W)`` or ``(N, H, W, 3)``."""
    from dgm.data.core import to_unit

    a = (to_unit(x.detach().cpu(), spec) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return a[:, 0] if a.shape[1] == 1 else a.transpose(0, 2, 3, 1)


def from_8bit(a: np.ndarray) -> Tensor:
    """8-bit pictures ``(N, H, W)`` or ``(N, H, W, 3)`` as images ``(N, C, H, W)`` in [0, 1] (for a feature network)."""
    t = torch.from_numpy(np.ascontiguousarray(a)).float() / 255
    return t[:, None] if t.dim() == 3 else t.permute(0, 3, 1, 2)


def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared error of 8-bit pictures, on the [0, 1] scale."""
    return float(((a.astype(np.float64) - b.astype(np.float64)) / 255).__pow__(2).mean())


def codec_label(fmt: str, quality: int | None, factor: int = 1) -> str:
    """``"PNG"``, ``"WebP q5"``, ``"JPEG q50 @1/2"`` (coded at half the side)."""
    return fmt + ("" if quality is None else f" q{quality}") + ("" if factor == 1 else f" @1/{factor}")


def codec_points(images: np.ndarray, codecs=CODECS, *, fid=None) -> list[tuple]:  # noqa: ANN001
    """``(codec label, mean file bits per image, MSE)`` of Pillow's codecs ``(format, quality[, factor])``
    on 8-bit ``images`` ``(N, H, W)`` or ``(N, H, W, 3)``, each image a file of its own (headers
    included); a ``factor`` > 1 codes the picture downscaled that many times (LANCZOS) and upscales the
    decoded one back (BICUBIC). With ``fid`` (images in [0, 1] -> FID, e.g.
    :class:`dgm.eval.features.FrechetReference`) each tuple gets a fourth element: the FID of the
    decoded pictures."""
    points = []
    for fmt, quality, *rest in codecs:
        factor = rest[0] if rest else 1
        bits, errors, decoded = 0.0, 0.0, []
        for a in images:
            buffer = io.BytesIO()
            options = {"lossless": False} if fmt == "WebP" else {}
            im = Image.fromarray(a)
            if factor > 1:
                im = im.resize((max(1, im.width // factor), max(1, im.height // factor)), Image.Resampling.LANCZOS)
            im.save(buffer, format=fmt, **({} if quality is None else {"quality": quality}), **options)
            bits += 8 * buffer.tell()
            with Image.open(io.BytesIO(buffer.getvalue())) as back:
                back = back.convert("L" if a.ndim == 2 else "RGB")
                if factor > 1:
                    back = back.resize((a.shape[1], a.shape[0]), Image.Resampling.BICUBIC)
                back = np.asarray(back)
            errors += mse(back, a)
            decoded.append(back)
        point = (codec_label(fmt, quality, factor), bits / len(images), errors / len(images))
        points.append(point if fid is None else (*point, fid(from_8bit(np.stack(decoded)))))
    return points


def codec_bits_at(codecs: list[tuple], fmt: str, distortion: float, column: int = 2) -> float | None:
    """The file bits per image codec ``fmt`` (``"WebP"``, ``"JPEG"``, every quality and factor of it in
    ``codecs``) needs for an MSE (``column`` 2; 3: FID) of ``distortion``: along its lower frontier (each
    point better than every cheaper one), log bits interpolated linearly in log distortion between the
    two points around ``distortion``; None outside the frontier's range (no point that bad or that good)."""
    mine = sorted((c[1], c[column]) for c in codecs if c[0].split()[0] == fmt and len(c) > column)
    frontier: list[tuple[float, float]] = []
    for bits, value in mine:
        if value > 0 and (not frontier or value < frontier[-1][1]):
            frontier.append((bits, value))
    for (b0, v0), (b1, v1) in zip(frontier, frontier[1:]):
        if v1 <= distortion <= v0:
            t = math.log(v0 / distortion) / math.log(v0 / v1)
            return math.exp(math.log(b0) + t * math.log(b1 / b0))
    if len(frontier) == 1 and frontier[0][1] == distortion:
        return frontier[0][0]
    return None


def rate_distortion(model, x: Tensor, steps=STEPS, *, fid=None, layers: int | None = None) -> list[dict[str, float]]:  # noqa: ANN001
    """One point per step (a VQ-VAE or dplc: one point) on images ``x (N, C, H, W)``, each compressed to
    real bytes: ``{"step", "rate" (mean R, bits), "payload" and "file" (mean bits of the payload and of
    the whole file), "mse" (of the 8-bit reconstruction, [0, 1] scale)}``, and ``"fid"`` of the 8-bit
    reconstructions when ``fid`` (images in [0, 1] -> FID, e.g. :class:`dgm.eval.features.FrechetReference`)
    is given. ``layers``: a ladder VAE's coded layers (:func:`compress`)."""
    kind = kind_of(model)
    original = to_8bit(x, model.spec)
    points = []
    for step in (steps if kind in STEPPED else (0.0,)):
        rate = payload = file = error = 0.0
        decoded = []
        for i in range(len(x)):
            c = compress(model, x[i:i + 1], step=step or 1.0, layers=layers)
            rate, payload, file = rate + c.rate, payload + c.payload_bits, file + 8 * len(c.data)
            decoded.append(to_8bit(c.reconstruction, model.spec)[0])
            error += mse(decoded[-1], original[i])
        n = len(x)
        points.append({"step": step, "rate": rate / n, "payload": payload / n, "file": file / n, "mse": error / n})
        if fid is not None:
            points[-1]["fid"] = fid(from_8bit(np.stack(decoded)))
    return points


def plot_curves(curves: dict[str, list[dict[str, float]]], codecs: list[tuple],
                out: str | Path, *, title: str = "", fid_name: str = "FID") -> Path:
    """:func:`rd_figure` written to ``out`` (PNG)."""
    fig = rd_figure(curves, codecs, title=title, fid_name=fid_name)
    out = Path(out)
    fig.savefig(out, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return out


def rd_figure(curves: dict[str, list[dict[str, float]]], codecs: list[tuple], *, title: str = "",
              fid_name: str = "FID", dpi: int = 100):  # noqa: ANN201 (a matplotlib figure)
    """Bits per image (log scale) against MSE: a line per model sweep (through its file sizes when its
    points have ``"file"``, and through its rates R), each codec's points (full size, and each downscaling
    factor its own line). When every point has an FID (``"fid"`` in the sweeps' points, a fourth element
    in the codecs' tuples) a second panel plots it, its axis named ``fid_name`` (which should name the
    feature network, e.g. ``FID[fmnist-net]``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_fid = all("fid" in p for points in curves.values() for p in points) and all(len(c) > 3 for c in codecs)
    panels = (("mse", 2, "MSE (pixels in [0, 1])"),) + ((("fid", 3, f"{fid_name} of the decoded images"),)
                                                       if with_fid else ())
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False, dpi=dpi)
    for ax, (key, column, label) in zip(axes[0], panels):
        for name, points in curves.items():
            style = {}
            if all("file" in p for p in points):
                ax.plot([p["file"] for p in points], [p[key] for p in points], "o-", label=f"{name} (file)")
                style = {"color": ax.lines[-1].get_color()}
            ax.plot([p["rate"] for p in points], [p[key] for p in points], "x:", label=f"{name} (rate R)", **style)
        for fmt, marker in (("PNG", "s"), ("WebP", "^"), ("JPEG", "v")):
            for scale in sorted({c[0].partition("@")[2] for c in codecs if c[0].split()[0] == fmt}):
                mine = [(c[1], c[column]) for c in codecs if c[0].split()[0] == fmt and c[0].partition("@")[2] == scale]
                what = " (lossless)" if fmt == "PNG" else f" (quality sweep{', coded at ' + scale + ' size' if scale else ''})"
                ax.plot(*zip(*mine), marker + ("--" if not scale else ":"), label=fmt + what)
        ax.set_xscale("log")
        ax.set_xlabel("bits per image")
        ax.set_yscale("symlog", linthresh=1e-4 if key == "mse" else 1.0)  # lossless PNG at 0, the rest over decades
        ax.set_ylim(bottom=0)
        ax.set_ylabel(label)
        ax.set_title(title or "rate-distortion")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the plots, hiding no point
    fig.tight_layout()
    return fig


def read_images(path: str, model, run_dir: str | None = None) -> Tensor:  # noqa: ANN001
    """Pictures as ``(N, C, H, W)`` in the model's representation; each must be the model's size.
    ``PATH``: one picture file; a folder: its ``*.png`` files in name order; ``test:K`` or ``test:A-B``
    (A to B inclusive): test examples of the run's dataset, as picture files of them would be read."""
    from dgm.apps.restoration import picture_of, read_picture

    if path.startswith("test:") and run_dir is not None:
        from dgm import run
        from dgm.data import load as load_dataset

        config, _ = run.read_config(run_dir)
        test = load_dataset(config.data.name, "test", size=config.data.size, channels=config.data.channels)
        first, _, last = path[5:].partition("-")
        last = last or first
        if not (first.isdigit() and last.isdigit()) or not int(first) <= int(last) < len(test):
            raise DgmError(f"test:K takes the index of a test example, 0..{len(test) - 1}, or test:A-B a range "
                           f"A <= B of them, got {path!r}")
        named = [(f"{path[:5]}{k}", picture_of("inpaint", test.raw[k].float() * 255 / (test.spec.levels - 1)))
                 for k in range(int(first), int(last) + 1)]  # the images themselves
    elif Path(path).is_dir():
        files = sorted(Path(path).glob("*.png"))
        if not files:
            raise DgmError(f"folder {path} has no .png pictures: give a picture, a folder of PNGs or test:A-B")
        named = [(str(f), read_picture(f)) for f in files]
    else:
        named = [(path, read_picture(path))]
    return torch.cat([_model_values(name, im, model) for name, im in named])


def _model_values(path: str, im, model) -> Tensor:  # noqa: ANN001
    from dgm.apps.restoration import has_colour, to_model_values

    C, H, W = model.spec.shape
    if (im.width, im.height) != (W, H):
        raise DgmError(f"{path} is {im.width}x{im.height}, the model makes {W}x{H} images: give a {W}x{H} picture")
    if C == 1 and has_colour(im):
        raise DgmError(f"{path} has colour, the model makes grey images: convert it to greyscale")
    return to_model_values(im, C, model.spec)


def picture_paths(output: Path, n: int) -> list[Path]:
    """Where :class:`Decompress` writes ``n`` pictures: ``output`` itself for one, else
    ``STEM-0000.png``, ``STEM-0001.png``, ... beside it (numbered in stream order from 0)."""
    return [output] if n == 1 else [output.with_name(f"{output.stem}-{i:04d}{output.suffix}") for i in range(n)]


def first_test_images(run_dir: str, n: int) -> Tensor:
    """The first ``n`` test images of a run's dataset, in the model's representation."""
    from dgm import run

    config, _ = run.read_config(run_dir)
    test = run.load_data(config, "test")
    return test.tensors(min(n, len(test))).x


# --- the two subcommands ------------------------------------------------------------------------------
STEP = argument_type(PositiveFloat, "--step")


class CodingApp(App):
    """What both subcommands run on: a model whose latent code has an entropy model here (:func:`kind_of`)."""

    requires = frozenset({"encode", "decode"})

    def supports(self, model) -> bool:  # noqa: ANN001
        from dgm.models.vae import VAE
        from dgm.models.vqvae import VQVAE

        from dgm.models.ladder_vae import LadderVAE

        cls = model if isinstance(model, type) else type(model)
        images = isinstance(model, type) or (model.spec.is_image and model.spec.levels is not None)
        return ((issubclass(cls, (VAE, VQVAE, LadderVAE)) or has_fixed_code(model)) and images
                and super().supports(model))

    def needs(self) -> str:
        return ("a Gaussian latent with a standard normal prior (a VAE) or a hierarchy of them (a ladder VAE), "
                "a code grid with its prior (a VQ-VAE) or a fixed-length code (quantize and dequantize)")


@register_app
class Compress(CodingApp):
    """``dgm compress RUN PICTURES -o FILE.dgm`` (one picture, a folder of PNGs or ``test:A-B``: one
    stream), and ``dgm compress RUN --curve -o rd.png``."""

    name = "compress"
    description = "compress a picture to real bytes with the model's latent code and prior (or plot rate-distortion)"

    def add_arguments(self, parser: argparse.ArgumentParser, model_class) -> None:  # noqa: ANN001
        parser.add_argument("picture", nargs="?", help="the picture to compress (the model's size), a folder of "
                            "PNGs, test:K (test example K of the run's data) or test:A-B (examples A to B); "
                            "several pictures go into one stream")
        parser.add_argument("-o", "--output", help="the file to write (default: PICTURE.dgm; rd.png with --curve)")
        parser.add_argument("--step", type=STEP, default=0.25, help="a VAE: the quantisation step of the latent "
                            f"(prior standard deviations; >= {MIN_STEP}); smaller: more bits, closer image")
        parser.add_argument("--layers", type=POSITIVE, help="a ladder VAE: code only its top K latent layers, "
                            "the others from their prior means (conceptual compression; default all)")
        parser.add_argument("--curve", action="store_true", help="instead: plot bits per image against MSE on "
                            "test images for several steps, with PNG, WebP and JPEG")
        parser.add_argument("--steps", default=",".join(map(str, STEPS)), help="--curve: the steps, comma-separated")
        parser.add_argument("-n", type=POSITIVE, default=100, help="--curve: test images")
        parser.add_argument("--fid", metavar="NET", help="--curve: a rate-FID panel too, the FID of the decoded "
                            "pictures against the originals in the features of NET (e.g. fmnist-net, inception)")

    def run(self, model, args: argparse.Namespace) -> str:  # noqa: ANN001
        if args.curve:
            return self.curve(model, args)
        if args.picture is None:
            raise DgmError("give the picture to compress (dgm compress RUN PICTURE -o FILE.dgm), or --curve")
        x = read_images(args.picture, model, args.run)
        c = compress(model, x, step=args.step, layers=self.layers(model, args))
        out = output_path(args.output or str(Path(args.picture.replace(":", "")).with_suffix(".dgm")))
        out.write_bytes(c.data)
        return (f"{len(x)} picture{'s' * (len(x) > 1)}, {len(c.symbols)} symbols, {len(c.data)} bytes ({c.payload_bits} payload bits, model rate "
                f"{c.rate:.1f} bits) -> {out}")

    def curve(self, model, args: argparse.Namespace) -> str:  # noqa: ANN001
        try:
            steps = tuple(_check_step(float(s)) for s in args.steps.split(","))
        except ValueError:
            raise DgmError(f"--steps takes numbers separated by commas, e.g. 1,0.5,0.25, got {args.steps!r}") from None
        out = output_path(args.output or "rd.png")
        layers = self.layers(model, args)
        x = first_test_images(args.run, args.n)
        fid = None
        if args.fid:
            from dgm.eval.features import FrechetReference, feature_extractor

            fid = FrechetReference(feature_extractor(args.fid, model.spec), from_8bit(to_8bit(x, model.spec)))
        points = rate_distortion(model, x, steps, fid=fid, layers=layers)
        codecs = codec_points(to_8bit(x, model.spec), fid=fid)
        plot_curves({model.name: points}, codecs, out, title=f"{model.name}, {len(x)} test images",
                    fid_name=f"FID[{fid.extractor.name}]" if fid else "FID")
        best = min(points, key=lambda p: p["mse"])
        return (f"{len(points)} points of {model.name} (lowest MSE {best['mse']:.4f} at {best['file']:.0f} bits; "
                f"{equal_distortion(best, codecs)}) and {len(codecs)} codec points on {len(x)} test images -> {out}")

    @staticmethod
    def layers(model, args: argparse.Namespace) -> int | None:  # noqa: ANN001
        if args.layers is None:
            return None
        if kind_of(model) != "ladder":
            raise DgmError(f"--layers is for a hierarchical VAE (ladder-vae); {model.name!r} has one latent code: "
                           "drop --layers")
        return _check_layers(model, args.layers)

    def report_figures(self, model, examples: Tensor, *, labels: Tensor | None = None,  # noqa: ANN001
                       generator: torch.Generator | None = None) -> list[tuple[str, Tensor, int, str]]:
        """Rate-distortion as pictures: the first test examples, then their decodes from real bytes, one row
        per step (coarse to fine; a VQ-VAE or dplc: its one code), with each row's rate and MSE in the caption."""
        x = examples[:REPORT_IMAGES]
        original = to_8bit(x, model.spec)
        stepped = kind_of(model) in STEPPED
        rows, notes = [x], []
        for step in (REPORT_STEPS if stepped else (1.0,)):
            c = compress(model, x, step=step)  # one stream of the row's images
            rows.append(c.reconstruction.to(x.device))
            where = f"step {step:g}: " if stepped else ""
            error = mse(to_8bit(c.reconstruction, model.spec), original)
            notes.append(f"{where}R {c.rate / len(x):.0f} bits/image, MSE {error:.4f}")
        points = rate_distortion(model, examples, STEPS)
        codecs = codec_points(to_8bit(examples, model.spec))
        chart = figure_to_image(rd_figure({model.name: points}, codecs, title=f"{model.name}, {len(examples)} test "
                                          "images, each a file of its own", dpi=70))
        best = min(points, key=lambda p: p["mse"])
        return [("Compression (rate-distortion)", torch.cat(rows), len(x),
                 f"top: {len(x)} test examples; below, decoded from dgm compress's bytes, row by row: "
                 f"{'; '.join(notes)} (one stream per row: {8 * HEADER.size} header bits per file besides R)"),
                ("Rate-distortion against PNG, WebP and JPEG", chart, 0,
                 f"bits per image (each image a file of its own, headers included; x: the model's rate R) against "
                 f"MSE on {len(examples)} test examples; at the model's lowest MSE ({best['mse']:.4f}, "
                 f"{best['file']:.0f} bits) {equal_distortion(best, codecs)}; dgm compress RUN --curve -o rd.png "
                 "draws it on more images (--fid NET: with a rate-FID panel)")]


def equal_distortion(point: dict[str, float], codecs: list[tuple]) -> str:
    """The codecs' bits at ``point``'s MSE, in words: ``"WebP needs 533 bits, JPEG 2,990 for the same MSE"``."""
    parts = []
    for fmt in ("WebP", "JPEG"):
        bits = codec_bits_at(codecs, fmt, point["mse"])
        parts.append(f"{fmt} {'no point at that MSE' if bits is None else f'{bits:,.0f} bits'}")
    return f"at the same MSE: {', '.join(parts)}"


@register_app
class Decompress(CodingApp):
    """``dgm decompress RUN FILE.dgm -o PICTURE.png``."""

    name = "decompress"
    description = "decode a file written by dgm compress back to a picture"

    def add_arguments(self, parser: argparse.ArgumentParser, model_class) -> None:  # noqa: ANN001
        parser.add_argument("file", help="a file written by dgm compress with this run")
        parser.add_argument("-o", "--output", help="the picture to write (default: FILE.png); a file of N > 1 "
                            "pictures: STEM-0000.png ... STEM-(N-1).png beside it")

    def run(self, model, args: argparse.Namespace) -> str:  # noqa: ANN001
        path = Path(args.file)
        if not path.is_file():
            raise DgmError(f"{path} does not exist: give a file written by dgm compress")
        symbols, x = decompress(model, path.read_bytes(), name=str(path))
        outs = picture_paths(Path(args.output or path.with_suffix(".png")), len(x))
        for out, a in zip(outs, to_8bit(x, model.spec)):
            Image.fromarray(a).save(output_path(str(out)))
        where = outs[0] if len(outs) == 1 else f"{outs[0]} .. {outs[-1].name}"
        return f"{len(x)} picture{'s' * (len(x) > 1)}, {len(symbols)} symbols -> {where}"


__all__ = ["Compressed", "SymbolDecoder", "codec_bits_at", "codec_points", "compress", "decode_symbols", "decompress",
           "encode_symbols", "gaussian_table", "ladder_code", "plot_curves", "rd_figure", "rate_bits", "rate_distortion", "read_images"]
