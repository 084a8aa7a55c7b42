"""dgm: every family of deep generative model, trained, sampled and evaluated through one interface.

Example:
    >>> import dgm
    >>> config = dgm.RunConfig("vae", {"latent_dim": 8}, dgm.DataConfig("digits"), dgm.TrainConfig(epochs=5))
    >>> model, run_dir = dgm.train(config, "runs/vae-digits")
    >>> test = dgm.run.load_data(config, "test")
    >>> print(dgm.results_table(dgm.evaluate(model, test, ["nll"], k=1000)))
"""
__version__ = "0.2.0"

from dgm import data  # noqa: E402
from dgm.errors import DgmError  # noqa: E402
from dgm.eval import evaluate, results_table  # noqa: E402
from dgm.models import GenerativeModel, capabilities, create, register  # noqa: E402
from dgm.run import DataConfig, RunConfig, load, train  # noqa: E402
from dgm.train import TrainConfig, Trainer  # noqa: E402
from dgm import run  # noqa: E402
from dgm.report import write_report  # noqa: E402

__all__ = ["DataConfig", "DgmError", "GenerativeModel", "RunConfig", "TrainConfig", "Trainer", "capabilities",
           "create", "data", "evaluate", "load", "register", "results_table", "run", "train", "write_report"]
