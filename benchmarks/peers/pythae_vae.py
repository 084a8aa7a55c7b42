"""pythae's VAE on its own default MLP (829,232 parameters at latent 16), or on dgm's conv networks
declared here in plain PyTorch (``--network conv``), trained by pythae's own TrainingPipeline, timed
the way ``benchmarks/vae_pythae.py`` times dgm's Trainer on the same network.
Run in a separate environment (``bash benchmarks/peers/setup.sh /tmp/pythae pythae==0.1.2``: pythae 0.1.2 next to torch
2.13.0+cpu, no torchvision); needs only pythae, torch and numpy.

    python benchmarks/peers/pythae_vae.py --data DATA.npz --epochs 3 --out WEIGHTS.npz

DATA.npz holds ``x_train`` (N, 1, 28, 28) float32 in {0, 1} (the driver writes dgm's binarized
Fashion-MNIST, so both libraries see the same pixels). The model: pythae's ``VAE`` with
``reconstruction_loss="bce"`` (the Bernoulli likelihood dgm's VAE uses), latent 16, Adam at
``--lr``, batch ``--batch-size``. With ``--network conv`` the encoder and decoder are dgm's
``ConvEncoder`` / ``ConvDecoder`` at ``--width`` (a stem conv, per downsampling a SiLU, a stride-2
conv and a pre-activation residual block whose last conv starts at zero; the decoder mirrors it),
layer for layer and under dgm's module names, given to pythae as its ``BaseEncoder`` /
``BaseDecoder`` as a pythae user brings a custom network. pythae's mixed precision (``amp``) is CUDA-only, so on a CPU it
trains in fp32. Prints one JSON line (seconds of the pipeline call: data checks, training, the
final save) and writes the trained weights under pythae's names to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch
from pythae.models import VAE, VAEConfig
from pythae.models.base.base_utils import ModelOutput
from pythae.models.nn import BaseDecoder, BaseEncoder
from pythae.pipelines import TrainingPipeline
from pythae.trainers import BaseTrainerConfig
from torch import nn


class Residual(nn.Module):
    """dgm's ResidualBlock: x + conv3x3(SiLU(conv3x3(SiLU(x)))), the last conv zero at the start."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class ConvEncoder(BaseEncoder):
    """dgm's ConvEncoder for 28x28 (two downsamplings, one residual block each), mean and log-variance."""

    def __init__(self, latent: int, width: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, width, 3, padding=1),
                                  nn.SiLU(), nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), Residual(2 * width),
                                  nn.SiLU(), nn.Conv2d(2 * width, 4 * width, 4, stride=2, padding=1), Residual(4 * width))
        self.out = nn.Sequential(nn.SiLU(), nn.Flatten(), nn.Linear(4 * width * 7 * 7, 2 * latent))

    def forward(self, x: torch.Tensor) -> ModelOutput:
        mean, log_var = self.out(self.conv(x)).chunk(2, dim=1)
        return ModelOutput(embedding=mean, log_covariance=log_var)


class ConvDecoder(BaseDecoder):
    """dgm's ConvDecoder, the mirror; pythae's BCE loss takes probabilities, so a sigmoid ends it."""

    def __init__(self, latent: int, width: int) -> None:
        super().__init__()
        self.inp = nn.Sequential(nn.Linear(latent, 4 * width * 7 * 7), nn.Unflatten(1, (4 * width, 7, 7)))
        self.conv = nn.Sequential(Residual(4 * width), nn.SiLU(), nn.ConvTranspose2d(4 * width, 2 * width, 4, stride=2, padding=1),
                                  Residual(2 * width), nn.SiLU(), nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),
                                  nn.SiLU(), nn.Conv2d(width, 1, 3, padding=1))

    def forward(self, z: torch.Tensor) -> ModelOutput:
        return ModelOutput(reconstruction=torch.sigmoid(self.conv(self.inp(z))))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--network", choices=["mlp", "conv"], default="mlp")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (pythae takes the first GPU)")
    parser.add_argument("--width", type=int, default=32, help="conv channels at full resolution")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x_train = np.load(args.data, allow_pickle=False)["x_train"]
    torch.manual_seed(args.seed)
    config = VAEConfig(input_dim=tuple(x_train.shape[1:]), latent_dim=args.latent_dim, reconstruction_loss="bce")
    nets = {} if args.network == "mlp" else {"encoder": ConvEncoder(args.latent_dim, args.width),
                                             "decoder": ConvDecoder(args.latent_dim, args.width)}
    model = VAE(config, **nets)
    with tempfile.TemporaryDirectory() as tmp:
        config = BaseTrainerConfig(output_dir=tmp, num_epochs=args.epochs, learning_rate=args.lr,
                                   per_device_train_batch_size=args.batch_size,
                                   per_device_eval_batch_size=args.batch_size, optimizer_cls="Adam",
                                   no_cuda=args.device == "cpu", seed=args.seed, train_dataloader_num_workers=0)
        pipeline = TrainingPipeline(model=model, training_config=config)
        start = time.perf_counter()
        pipeline(train_data=x_train, eval_data=None)
        seconds = time.perf_counter() - start
    np.savez(args.out, **{k: v.detach().cpu().numpy() for k, v in model.state_dict().items()})
    print(json.dumps({"library": "pythae", "precision": "fp32", "params": sum(p.numel() for p in model.parameters()),
                      "epochs": args.epochs, "seconds": seconds,
                      "examples_per_s": args.epochs * len(x_train) / seconds, "threads": torch.get_num_threads(),
                      "pid": os.getpid()}))


if __name__ == "__main__":
    main()
