"""Networks of a discrete code grid: the vector quantizer, the grid encoder and decoder around it,
and the autoregressive prior network over the codes.

van den Oord, Vinyals & Kavukcuoglu 2017, "Neural Discrete Representation Learning" (VQ-VAE),
arXiv:1711.00937. An encoder maps an image to a grid of vectors z_e(x) (B, D, h, w); each is
replaced by its nearest code of a codebook e_1 .. e_K (eqs. 1, 2)::

    k(x) = argmin_j ||z_e(x) - e_j||^2,    z_q(x) = e_k(x)                                (eqs. 1, 2)
    L = -log p(x | z_q(x)) + ||sg[z_e(x)] - e||^2 + beta ||z_e(x) - sg[e]||^2             (eq. 3)

The decoder's gradient reaches the encoder by the straight-through estimator,
``z_q = z_e + sg[e_k - z_e]`` (forward: e_k; backward: identity). The second term of eq. 3 (the
codebook loss) trains the codebook by gradients; with ``ema`` it is replaced by exponential moving
averages of the cluster sizes N_i and sums m_i (appendix A.1), with Laplace smoothing of N_i as in
the authors' Sonnet code::

    N_i <- gamma N_i + (1 - gamma) n_i,      n_i = #{positions assigned to code i}        (A.1)
    m_i <- gamma m_i + (1 - gamma) sum_{j: k_j = i} z_e,j                                  (A.1)
    N~_i = (N_i + epsilon) / (n + K epsilon) n,   n = sum_i N_i                            (Laplace)
    e_i = m_i / N~_i                                                                       (A.1)

Dead codes (Dhariwal et al. 2020, "Jukebox", arXiv:2005.00341, sec. 3.2: random restarts): a code
whose N_i falls below ``restart_threshold`` (an EMA count of assignments per batch) is moved onto an
encoder output of the current batch drawn at random, counted as one assignment (N_i = 1, m_i = e_i).
N_i is tracked without ``ema`` too, for the restarts. The codebook, N and m are buffers: saved with
the weights, never seen by an optimiser, updated only in training mode.

The prior network (Razavi, van den Oord & Vinyals 2019, "Generating Diverse High-Fidelity Images
with VQ-VAE-2", arXiv:1906.00446, sec. 3.2: an autoregressive prior over the code grid; here a
causal transformer, :class:`~dgm.nn.transformer.CausalTransformer`, in raster order) maps the
codes to the logits of each position given the ones before it. Shapes in, shapes out: the
probabilities are the model's (:mod:`dgm.models.vqvae`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.nn.blocks import ResidualBlock
from dgm.nn.transformer import INIT_STD, CausalTransformer, KVCache, init_weights


@dataclass
class Quantized:
    """What :class:`VectorQuantizer` gives for encoder outputs ``z_e`` of ``B`` examples."""

    indices: Tensor  # (B, h, w) int64: k(x), the nearest code of each position (eq. 1)
    z_q: Tensor  # (B, D, h, w): e_k(x) forward, the identity to z_e backward (straight-through)
    commitment: Tensor  # (B,) ||z_e - sg[e]||^2 summed over the grid and D (eq. 3, third term, without beta)
    codebook: Tensor  # (B,) ||sg[z_e] - e||^2 likewise (eq. 3, second term); zeros with the EMA codebook
    perplexity: Tensor  # () exp(H) of the batch's average one-hot assignment: K for uniform use, 1 for one code
    used: Tensor  # () the fraction of the K codes assigned at least once in the batch


def perplexity(counts: Tensor) -> Tensor:
    """``exp(-sum_i p_i log p_i)`` with ``p = counts / sum(counts)`` (``0 log 0 = 0``), for counts
    ``(K,)`` of each code: the number of codes a uniform use of the same entropy would need."""
    p = counts.double() / counts.sum().clamp_min(1)
    return torch.exp(-torch.special.xlogy(p, p).sum()).float()


class VectorQuantizer(nn.Module):
    """The nearest-code bottleneck of the VQ-VAE, with a gradient or an EMA codebook (module docstring).

    Args:
        num_codes: K, the codebook size.
        code_dim: D, the size of each code vector (the encoder's output channels).
        ema: update the codebook by moving averages (appendix A.1) instead of the codebook loss.
        decay: gamma of the moving averages (of N_i always, of m_i with ``ema``).
        epsilon: the Laplace smoothing of the cluster sizes.
        restart_threshold: a code whose EMA assignment count N_i (per batch) falls below this is
            restarted on a random encoder output of the batch; 0: never.

    Example::

        vq = VectorQuantizer(16, 4)
        out = vq(torch.randn(8, 4, 3, 3), generator=torch.Generator().manual_seed(0))
        out.indices.shape, out.z_q.shape           # (8, 3, 3), (8, 4, 3, 3)
    """

    def __init__(self, num_codes: int, code_dim: int, *, ema: bool = True, decay: float = 0.99,
                 epsilon: float = 1e-5, restart_threshold: float = 0.0) -> None:
        super().__init__()
        self.num_codes, self.code_dim, self.ema = num_codes, code_dim, ema
        self.decay, self.epsilon, self.restart_threshold = decay, epsilon, restart_threshold
        # the original code's initialisation: uniform in [-1/K, 1/K]; codes no encoder output comes
        # near die and are restarted on the data (restart_threshold)
        init = torch.empty(num_codes, code_dim).uniform_(-1.0 / num_codes, 1.0 / num_codes)
        if ema:
            self.register_buffer("embedding", init)  # e_i, (K, D)
            self.register_buffer("embed_sum", init.clone())  # m_i, (K, D): as if each code had been assigned itself
        else:
            self.embedding = nn.Parameter(init)  # e_i, (K, D), trained by the codebook loss
        self.register_buffer("cluster_size", torch.ones(num_codes))  # N_i, (K,): one assignment each so far

    # --- the nearest code ------------------------------------------------------------------------
    @staticmethod
    def flatten(z: Tensor) -> Tensor:
        """``(B, D, h, w)`` to the ``(B h w, D)`` vectors of its positions in raster order, float32."""
        return z.float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])

    def nearest(self, z_e: Tensor) -> Tensor:
        """k(x) = argmin_j ||z_e - e_j||^2 (eq. 1) for each position of ``z_e (B, D, h, w)``: ``(B, h, w)``."""
        B, _, h, w = z_e.shape
        flat = self.flatten(z_e)  # (N, D)
        e = self.embedding.float()
        with torch.autocast(flat.device.type, enabled=False):  # distances in float32 even under bf16 autocast
            # ||z||^2 - 2 z.e + ||e||^2 without the (N, K, D) differences
            distances = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.T + e.pow(2).sum(1)  # (N, K)
        return distances.argmin(1).view(B, h, w)

    def lookup(self, indices: Tensor) -> Tensor:
        """The codes ``e_k`` of an index grid ``(B, h, w)``: ``(B, D, h, w)``."""
        return F.embedding(indices, self.embedding).permute(0, 3, 1, 2)

    # --- the bottleneck in training --------------------------------------------------------------
    def forward(self, z_e: Tensor, *, generator: torch.Generator | None = None) -> Quantized:
        """Quantize ``z_e (B, D, h, w)`` with the current codebook; in training mode, then update it
        (EMA, restarts, drawn from ``generator``)."""
        indices = self.nearest(z_e)  # (B, h, w)
        e_k = self.lookup(indices)  # (B, D, h, w), in the codebook's dtype (float32)
        one_hot = F.one_hot(indices.flatten(), self.num_codes).float()  # (N, K)
        counts = one_hot.sum(0)  # n_i, (K,)
        if self.training:
            with torch.autocast(z_e.device.type, enabled=False):  # the sums in float32 even under bf16 autocast
                self.update(self.flatten(z_e.detach()), one_hot, generator)
        z = z_e.float()
        commitment = (z - e_k.detach()).pow(2).flatten(1).sum(1)  # (B,)
        codebook = (z.detach() - e_k).pow(2).flatten(1).sum(1) if not self.ema else torch.zeros_like(commitment)
        z_q = z + (e_k - z).detach()  # straight-through: e_k forward, identity backward
        return Quantized(indices, z_q.to(z_e.dtype), commitment, codebook, perplexity(counts),
                         (counts > 0).float().mean())

    @torch.no_grad()
    def update(self, flat: Tensor, one_hot: Tensor, generator: torch.Generator | None) -> None:
        """One step of the moving averages (appendix A.1) and the restarts, for the batch's vectors
        ``flat (N, D)`` and their assignments ``one_hot (N, K)``."""
        gamma = self.decay
        counts, sums = one_hot.sum(0), (one_hot.T @ flat if self.ema else None)
        if dist.is_available() and dist.is_initialized():  # data-parallel: the statistics of the global batch
            dist.all_reduce(counts)
            if sums is not None:
                dist.all_reduce(sums)
            if self.restart_threshold > 0:  # the restarts pick from all of it, as one process would
                flat = _gather_rows(flat)
        self.cluster_size.mul_(gamma).add_(counts, alpha=1 - gamma)  # N_i
        if self.ema:
            self.embed_sum.mul_(gamma).add_(sums, alpha=1 - gamma)  # m_i
            n = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.epsilon) / (n + self.num_codes * self.epsilon) * n  # N~_i
            self.embedding.copy_(self.embed_sum / smoothed[:, None])  # e_i = m_i / N~_i
        if self.restart_threshold > 0:
            # a random batch vector for every code, kept where the code is dead: fixed shapes, no
            # host synchronisation, and the same draws from the generator every step
            device = generator.device if generator is not None else flat.device
            pick = torch.randint(len(flat), (self.num_codes,), generator=generator, device=device).to(flat.device)
            dead = (self.cluster_size < self.restart_threshold)[:, None]  # (K, 1)
            fresh = flat[pick].to(self.embedding.dtype)  # (K, D)
            self.embedding.data.copy_(torch.where(dead, fresh, self.embedding.data))
            self.cluster_size.copy_(torch.where(dead[:, 0], torch.ones_like(self.cluster_size), self.cluster_size))
            if self.ema:
                self.embed_sum.copy_(torch.where(dead, fresh, self.embed_sum))  # m_i = e_i N_i with N_i = 1


def _gather_rows(t: Tensor) -> Tensor:
    """The rows of ``t`` from every process, in rank order: a data-parallel process's share of a batch
    becomes the whole batch (shards are contiguous, so this is the single process's order)."""
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


# --- the networks around it ------------------------------------------------------------------------
class GridEncoder(nn.Module):
    """Image to a grid of code vectors (the VQ-VAE paper's encoder, with SiLU and pre-activation
    residual blocks): a 3x3 conv to ``width`` channels, ``downsamplings`` stride-2 4x4 convs, residual
    blocks, and a 1x1 conv to ``code_dim``. Input ``(B, C, H, W)``, output ``(B, code_dim, H / 2^n, W / 2^n)``."""

    def __init__(self, in_channels: int, code_dim: int, *, width: int = 64, downsamplings: int = 2,
                 num_res_blocks: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1)]
        for _ in range(downsamplings):
            layers += [nn.SiLU(), nn.Conv2d(width, width, 4, stride=2, padding=1)]
        layers += [ResidualBlock(width) for _ in range(num_res_blocks)]
        layers += [nn.SiLU(), nn.Conv2d(width, code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, code_dim, h, w)


class GridDecoder(nn.Module):
    """The mirror of :class:`GridEncoder`: a 3x3 conv from ``code_dim`` to ``width``, residual blocks,
    ``upsamplings`` stride-2 transposed convs, a 3x3 conv to ``out_channels`` (the likelihood's
    parameters). Input ``(B, code_dim, h, w)``, output ``(B, out_channels, h 2^n, w 2^n)``."""

    def __init__(self, code_dim: int, out_channels: int, *, width: int = 64, upsamplings: int = 2,
                 num_res_blocks: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(code_dim, width, 3, padding=1)]
        layers += [ResidualBlock(width) for _ in range(num_res_blocks)]
        for _ in range(upsamplings):
            layers += [nn.SiLU(), nn.ConvTranspose2d(width, width, 4, stride=2, padding=1)]
        layers += [nn.SiLU(), nn.Conv2d(width, out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)  # (B, out_channels, H, W)


class CodePriorNetwork(nn.Module):
    """An autoregressive network over sequences of ``length`` codes in ``{0 .. K-1}``: the logits of
    each code from the codes before it. The transformer reads ``[start, E[c_0], .., E[c_{L-2}]]``
    (a learned start vector, then the code embeddings), so output ``t`` sees ``c_0 .. c_{t-1}``
    only; a linear head maps it to K logits.

    Example::

        net = CodePriorNetwork(16, 9)
        logits = net(codes)                             # codes (B, 9) -> (B, 9, 16), one pass
        with torch.inference_mode():                    # generation, one code at a time
            logits, cache = net.begin(4)                # (4, 16): code 0
            for t in range(9):
                c = draw(logits)                        # (4,)
                if t + 1 < 9:
                    logits = net.extend(c, cache)       # code t + 1
    """

    def __init__(self, num_codes: int, length: int, *, width: int = 128, depth: int = 4, heads: int = 4,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.num_codes, self.length = num_codes, length
        self.embedding = nn.Embedding(num_codes, width)
        self.start = nn.Parameter(torch.zeros(width))
        self.transformer = CausalTransformer(width, depth, heads, max_length=length, dropout=dropout)
        self.head = nn.Linear(width, num_codes)
        for module in (self.embedding, self.head):
            init_weights(module)
        nn.init.normal_(self.start, std=INIT_STD)

    def forward(self, codes: Tensor) -> Tensor:
        """``codes (B, L)`` to the logits ``(B, L, K)`` of every position given the ones before it."""
        B = codes.shape[0]
        tokens = torch.cat([self.start.expand(B, 1, -1), self.embedding(codes[:, :-1])], dim=1)  # (B, L, width)
        return self.head(self.transformer(tokens))  # (B, L, K)

    def begin(self, batch: int) -> tuple[Tensor, KVCache]:
        """The logits ``(B, K)`` of code 0 and a cache holding the start token."""
        cache = self.transformer.new_cache(batch)
        return self.head(self.transformer(self.start.expand(batch, 1, -1), cache=cache))[:, 0], cache

    def extend(self, code: Tensor, cache: KVCache) -> Tensor:
        """Feed ``code (B,)``, the code at position ``cache.length - 1``; the logits ``(B, K)`` of the next."""
        return self.head(self.transformer(self.embedding(code[:, None]), cache=cache))[:, 0]
