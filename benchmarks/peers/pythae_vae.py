"""pythae's VAE on its own default MLP (829,232 parameters at latent 16), trained by pythae's own
TrainingPipeline, timed the way ``benchmarks/vae_pythae.py`` times dgm's Trainer on the same network.
Run in a separate environment (``bash benchmarks/peers/setup.sh /tmp/pythae pythae==0.1.2``: pythae 0.1.2 next to torch
2.13.0+cpu, no torchvision); needs only pythae, torch and numpy.

    python benchmarks/peers/pythae_vae.py --data DATA.npz --epochs 3 --out WEIGHTS.npz

DATA.npz holds ``x_train`` (N, 1, 28, 28) float32 in {0, 1} (the driver writes dgm's binarized
Fashion-MNIST, so both libraries see the same pixels). The model: pythae's ``VAE`` with
``reconstruction_loss="bce"`` (the Bernoulli likelihood dgm's VAE uses), latent 16, Adam at
``--lr``, batch ``--batch-size``. pythae's mixed precision (``amp``) is CUDA-only, so on a CPU it
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
from pythae.pipelines import TrainingPipeline
from pythae.trainers import BaseTrainerConfig


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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    x_train = np.load(args.data, allow_pickle=False)["x_train"]
    torch.manual_seed(args.seed)
    model = VAE(VAEConfig(input_dim=tuple(x_train.shape[1:]), latent_dim=args.latent_dim, reconstruction_loss="bce"))
    with tempfile.TemporaryDirectory() as tmp:
        config = BaseTrainerConfig(output_dir=tmp, num_epochs=args.epochs, learning_rate=args.lr,
                                   per_device_train_batch_size=args.batch_size,
                                   per_device_eval_batch_size=args.batch_size, optimizer_cls="Adam",
                                   no_cuda=True, seed=args.seed, train_dataloader_num_workers=0)
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
