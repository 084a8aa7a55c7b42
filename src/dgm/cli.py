"""The ``dgm`` command line: train, sample, eval, compare, report, list, demo.

Every command works for every registered model: the CLI asks models what they can do
(:func:`dgm.models.capabilities`) and never which family they are. User errors print one line
(``dgm: error: ...``) and exit with status 2; Ctrl-C during training saves the run and says how to
resume it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from dgm.apps.options import NON_NEGATIVE, POSITIVE, add_sampler_flags, output_path, sampler_options
from dgm.errors import DgmError

DEMO_SETTINGS = {  # the main job: a VAE on the bundled 8x8 digits, about a minute on 2 cores
    "model.latent_dim": 8, "model.likelihood": "logistic", "model.hidden": "256,128",
    "model.kl_warmup_steps": 500, "train.epochs": 100, "train.batch_size": 64, "train.lr": 2e-3,
    "train.schedule": "cosine", "train.sample_every": 10,
}


def _parse_set(pairs: Sequence[str]) -> list[tuple[str, str]]:
    out = []
    for pair in pairs:
        if "=" not in pair:
            raise DgmError(f"--set takes KEY=VALUE, got {pair!r} (e.g. --set model.latent_dim=32)")
        key, value = pair.split("=", 1)
        out.append((key.strip(), value.strip()))
    return out


def _read_yaml(path: str) -> list[tuple[str, object]]:
    import yaml

    file = Path(path)
    if not file.is_file():
        raise DgmError(f"config file {path} does not exist")
    try:
        content = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as e:
        raise DgmError(f"cannot parse {path} as YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(content, dict):
        raise DgmError(f"{path} must hold a mapping like 'model: {{latent_dim: 32}}' or 'train: {{epochs: 5}}'")
    items: list[tuple[str, object]] = []
    for key, value in content.items():
        if key in ("model", "train", "data") and isinstance(value, dict):
            items += [(f"{key}.{k}", v) for k, v in value.items()]
        else:
            items.append((str(key), value))
    return items


def _default_out(model: str, data: str) -> Path:
    stem = Path("runs") / f"{model}-{data.replace(':', '-').replace('/', '_')}"
    out, i = stem, 2
    while out.exists():
        out, i = Path(f"{stem}-{i}"), i + 1
    return out


# --- commands -------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from dgm import run

    if args.resume:
        config, _ = run.read_config(args.resume)
        # the run goes on as its config.json describes it: a setting that would change it mid-way
        # (data, batch size, model settings) is refused, not silently ignored
        changes = [flag for flag, given in [("--data", args.data), ("--batch-size", args.batch_size),
                                            ("--labels", args.labels),
                                            ("--set", args.set), ("--config", args.config), ("--out", args.out)]
                   if given] + ([f"model {args.model!r}"] if args.model not in (None, config.model) else [])
        if changes:
            raise DgmError(f"--resume continues {args.resume} with the settings of its config.json: drop "
                           f"{', '.join(changes)} (only --epochs and --quiet go with --resume)")
        out = Path(args.resume)
        if args.epochs is not None:
            config.train.epochs = args.epochs
        config.train.progress = not args.quiet
        _, out = _train_and_report(config, out, resume=True, quiet=args.quiet)
        return 0
    if not args.model:
        raise DgmError("name a model to train (see 'dgm list'), or pass --resume RUN")
    config = run.RunConfig(args.model)
    run.model_class(args.model)  # an unknown model name fails here, before anything else
    settings: list[tuple[str, object]] = _read_yaml(args.config) if args.config else []
    if args.data:
        settings.append(("data.name", args.data))
    if args.epochs is not None:
        settings.append(("train.epochs", args.epochs))
    if args.batch_size is not None:
        settings.append(("train.batch_size", args.batch_size))
    if args.labels is not None:
        settings.append(("data.labelled", args.labels))
    settings += _parse_set(args.set)
    for key, value in settings:
        config.set(key, value)
    if args.quiet:
        config.train.progress = False
    if not args.out and os.environ.get("WORLD_SIZE", "1") != "1":  # each process would pick its own folder
        from dgm.train.distributed import WorldError

        raise WorldError("under torchrun, name the run's folder with --out (every process must write to the same one)")
    out = Path(args.out) if args.out else _default_out(config.model, config.data.name)
    _train_and_report(config, out, resume=False, quiet=args.quiet)
    return 0


def _train_and_report(config, out: Path, *, resume: bool, quiet: bool):  # noqa: ANN001, ANN202
    from dgm import run
    from dgm.report import write_report

    from dgm.train import distributed

    start = time.perf_counter()
    model, out = run.train(config, out, resume=resume)
    seconds = time.perf_counter() - start
    if not distributed.launched().writes:  # one of several processes: rank 0 writes the report
        return model, out
    report = write_report(out, model, run.load_data(config, "test"), progress=not quiet)
    if not quiet:
        print(f"trained {config.model} on {config.data.name} in {seconds:.1f} s -> {out}")
        print(f"report: {report}")
    return model, out


def cmd_sample(args: argparse.Namespace) -> int:
    import inspect

    import torch

    from dgm import run
    from dgm.data.pictures import sample_picture
    from dgm.io.images import save

    out = output_path(args.output)  # a path we cannot write fails before minutes of sampling, not after
    if out.suffix.lower() not in (".npz", ".png", ".jpg", ".jpeg", ".txt", ".wav"):
        raise DgmError(f"cannot write samples to {out}: use a .png/.jpg picture, a .npz array file, .txt "
                       f"(text models) or .wav (audio models)")
    model = run.load(args.run)
    if out.suffix.lower() == ".txt" and model.spec.kind != "tokens":
        raise DgmError(f"samples of {model.spec.kind} data are not text: write them to a .png/.jpg picture or "
                       f"a .npz array file")
    if out.suffix.lower() == ".wav" and model.spec.kind != "audio":
        raise DgmError(f"samples of {model.spec.kind} data are not audio: write them to a .png/.jpg picture or "
                       f"a .npz array file")
    generator = torch.Generator().manual_seed(args.seed)
    condition = None if args.class_ is None else torch.tensor(args.class_)
    options = sampler_options(model, args)
    if "progress" in inspect.signature(model.sample).parameters:  # iterative samplers show their steps
        options["progress"] = not args.quiet
    x = model.sample(args.n, condition, generator=generator, **options)  # runs under inference_mode
    if out.suffix.lower() == ".npz":
        import numpy as np

        np.savez_compressed(out, x=x.cpu().numpy())
    elif out.suffix.lower() == ".txt":  # one sample a line, up to its end token (newlines and tabs shown as such)
        from dgm.data.pictures import decode_tokens

        out.write_text("".join(f"{line}\n" for line in decode_tokens(x)), encoding="utf-8")
    elif out.suffix.lower() == ".wav":  # the clips one after another, a short silence between them
        from dgm.data.audio import samples_wav

        out.write_bytes(samples_wav(x, model.spec, limit=len(x)))
    else:
        save(sample_picture(x, model.spec), out)
    print(f"{args.n} samples -> {out}")
    return 0


def cmd_app(app, args: argparse.Namespace) -> int:  # noqa: ANN001 (a dgm.apps.App)
    from dgm import run
    from dgm.models.base import iter_models

    model = run.load(args.run)
    if not app.supports(model):
        able = [cls.name for cls in iter_models() if app.supports(cls)]
        raise DgmError(f"model {model.name!r} cannot run {app.name!r}: it needs {app.needs()}"
                       + (f" ({', '.join(able)} can)" if able else ""))
    print(app.run(model, args))
    return 0


def run_model_class(argv: Sequence[str], command: str):  # noqa: ANN201
    """The model class of the run that ``argv`` names after ``command`` (the first word there that is
    a run folder: flag values come before it in ``dgm sample -n 16 RUN``), so that command's flags
    are the model's own; ``None`` when there is none (the command then says why)."""
    import json

    from dgm.models.base import model_class

    args = list(argv)
    if command not in args:
        return None
    for word in args[args.index(command) + 1:]:
        if word.startswith("-") or not (Path(word) / "config.json").is_file():
            continue
        try:
            config = json.loads((Path(word) / "config.json").read_text())
            return model_class(config["model"]) if isinstance(config, dict) else None
        except (OSError, ValueError, KeyError, TypeError, DgmError):
            return None
    return None


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a run; under torchrun the processes share the work (each computes its share of the
    bounds, samples and features: dgm.eval.EvalContext.spread) and rank 0 prints and records."""
    import json

    import torch

    from dgm import run
    from dgm.eval import evaluate, results_table
    from dgm.eval.core import record_results
    from dgm.report import write_report
    from dgm.train import distributed
    from dgm.train.checkpoint import save_json

    json_out = output_path(args.json) if args.json else None  # fail before the evaluation, not after
    world = distributed.launched()
    owned = world.active and not distributed.connected()
    if world.active:  # the model is evaluated on the CPU: gloo
        distributed.connect(world, torch.device("cpu"), "auto")
    try:  # a process that stops, for any reason, leaves the group cleanly and frees the others
        if world.active:
            given = {k: v for k, v in vars(args).items() if k != "fn"}
            distributed.check_same(world, "evaluation settings", json.dumps(given, sort_keys=True, default=str))
        model = run.load(args.run)
        config, _ = run.read_config(args.run)
        data = run.load_data(config, args.split)
        if args.max_examples:
            data = data.subset(args.max_examples)
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
        results = evaluate(model, data, metrics, train=run.load_data(config, "train"), k=args.k,
                           num_samples=args.num_samples, feature_net=args.feature_net,
                           inception_weights=args.inception_weights, kid_subset_size=args.kid_subset_size,
                           progress=not args.quiet and world.writes, world=world)
    finally:
        if owned:
            distributed.disconnect()
    if not world.writes:  # one of several processes: rank 0 prints and records the results
        return 0
    print(results_table(results))
    record_results(args.run, results)  # beside the run's earlier results of other metrics
    if json_out is not None:
        save_json([r.to_json() for r in results], json_out)
    test = data if args.split == "test" and not args.max_examples else run.load_data(config, "test")
    write_report(args.run, model, test, progress=not args.quiet)  # reuses the pictures of these weights
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from dgm import run
    from dgm.report import write_report

    config, _ = run.read_config(args.run)
    print(write_report(args.run, run.load(args.run), run.load_data(config, "test"), redraw=args.redraw,
                       progress=not args.quiet))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from dgm.report import compare

    rows = compare.collect(compare.expand(args.runs))
    print(compare.markdown(rows))
    if args.markdown:
        output_path(args.markdown).write_text(compare.markdown(rows) + "\n")
    if args.csv:
        output_path(args.csv).write_text(compare.to_csv(rows))
    if args.plot:
        print(f"plot: {compare.plot(rows, output_path(args.plot))}")
    if args.html:
        print(f"page: {compare.write_html(rows, output_path(args.html))}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from dgm.data import list_datasets
    from dgm.eval import METRICS
    from dgm.models.base import iter_models

    width = 22
    print("models:")
    for cls in iter_models():
        print(f"  {cls.name:<{width}}{cls.description}")
    print("datasets:")
    for name, description in list_datasets():
        print(f"  {name:<{width}}{description}")
    print("metrics:")
    for m in METRICS.values():
        print(f"  {m.name:<{width}}{m.description}")
    from dgm.apps import iter_apps

    print("apps (dgm NAME RUN ...):")
    for app in iter_apps():
        print(f"  {app.name:<{width}}{app.description} (needs {app.needs()})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Train a VAE on the bundled digits, sample, evaluate (IWAE k=1000, FID/KID/PR with digits-net,
    probes), write the report."""
    from dgm import run
    from dgm.eval import evaluate, results_table
    from dgm.eval.core import record_results
    from dgm.report import write_report

    out = Path(args.out)
    if (out / "config.json").exists():
        raise DgmError(f"{out} already holds a run: pass another --out, or delete it to run the demo again")
    config = run.RunConfig("vae", data=run.DataConfig("digits"))
    for key, value in DEMO_SETTINGS.items():
        config.set(key, value)
    config.train.progress = not args.quiet
    print("dgm demo: a VAE (discretized-logistic decoder, latent 8) on scikit-learn's 8x8 digits")
    start = time.perf_counter()
    model, out = run.train(config, out)
    print(f"trained {config.train.epochs} epochs in {time.perf_counter() - start:.1f} s")
    test = run.load_data(config, "test")
    results = evaluate(model, test, ["nll", "elbo", "posterior_collapse", "fid", "kid", "precision_recall",
                                     "linear_probe", "knn"], train=run.load_data(config, "train"), k=1000,
                       progress=not args.quiet)
    record_results(out, results)
    print(results_table(results))
    report = write_report(out, model, test, progress=not args.quiet)
    print(f"report: {report.resolve()}")
    return 0


# --- parser ---------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    parser = _Parser(prog="dgm", description="Train, sample and evaluate deep generative models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train a model")
    p.add_argument("model", nargs="?", help="model name (see 'dgm list')")
    p.add_argument("--data", help="dataset name, folder:PATH or npz:PATH")
    p.add_argument("--epochs", type=POSITIVE)
    p.add_argument("--batch-size", type=POSITIVE)
    p.add_argument("--labels", type=POSITIVE, metavar="N",
                   help="keep the labels of N training examples, the same number per class (semi-supervised models)")
    p.add_argument("--out", help="run directory (default runs/MODEL-DATA)")
    p.add_argument("--config", help="YAML file with model:, train:, data: sections")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting, e.g. model.latent_dim=32, train.lr=3e-4, data.representation=binary-dynamic")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("sample", help="draw samples from a trained run")
    p.add_argument("run")
    p.add_argument("-n", type=POSITIVE, default=64, help="samples to draw")
    p.add_argument("-o", "--output", default="samples.png", help=".png grid or .npz array")
    p.add_argument("--seed", type=NON_NEGATIVE, default=0)
    p.add_argument("--class", dest="class_", type=NON_NEGATIVE, help="class label, for class-conditional models")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_sampler_flags(p, run_model_class(argv, "sample"))
    p.set_defaults(fn=cmd_sample)

    p = sub.add_parser("eval", help="evaluate a trained run")
    p.add_argument("run")
    p.add_argument("--metrics", help="comma-separated metric names (default: all the model supports)")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--k", type=POSITIVE, default=1000, help="importance samples of IWAE bounds")
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--max-examples", type=POSITIVE, help="evaluate on the first N examples only")
    p.add_argument("--num-samples", type=POSITIVE, default=10000, help="samples for FID/KID/IS/PR/mode coverage")
    p.add_argument("--feature-net", help="fmnist-net, digits-net or inception (default: by image size)")
    p.add_argument("--inception-weights", help="pt_inception-2015-12-05 weights file (or $DGM_INCEPTION_WEIGHTS)")
    p.add_argument("--kid-subset-size", type=POSITIVE, help="KID subset size (default: min(1000, the smaller set))")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("compare", help="one table of the metrics of several runs (a leaderboard)")
    p.add_argument("runs", nargs="+", help="run directories or quoted globs, e.g. 'runs/*'")
    p.add_argument("--markdown", help="also write the table to this file")
    p.add_argument("--csv", help="also write the table as CSV")
    p.add_argument("--plot", help="bar charts of every metric, as a PNG")
    p.add_argument("--html", help="also write a page: the table, the runs' training curves overlaid, their samples")
    p.set_defaults(fn=cmd_compare)

    p = sub.add_parser("report", help="(re)write RUN/report.html")
    p.add_argument("run")
    p.add_argument("--redraw", action="store_true",
                   help="draw the pictures of the model again (default: reuse RUN/figures while the weights are unchanged)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("list", help="models, datasets and metrics")
    p.set_defaults(fn=cmd_list)

    from dgm.apps import iter_apps

    for app in iter_apps():  # each use of a model brings its own subcommand
        if app.name in sub.choices:
            raise RuntimeError(f"app {app.name!r} clashes with the dgm command of that name")
        p = sub.add_parser(app.name, help=app.description)
        p.add_argument("run")
        p.add_argument("--seed", type=NON_NEGATIVE, default=0)
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        app.add_arguments(p, run_model_class(argv, app.name))
        p.set_defaults(fn=lambda args, app=app: cmd_app(app, args))

    p = sub.add_parser("demo", help="the main job: VAE on digits, train, sample, evaluate, report")
    p.add_argument("--out", default="dgm-demo")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_demo)
    return parser


#: with $DGM_TINY set (:data:`dgm.run.TINY`), the counts of sample/eval/restore are capped too
TINY_CAPS = {"n": 4, "k": 10, "num_samples": 200, "max_examples": 8}


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    from dgm.run import tiny

    if tiny():
        for name, cap in TINY_CAPS.items():
            if getattr(args, name, None) is not None:
                setattr(args, name, min(getattr(args, name), cap))
    try:
        return args.fn(args)
    except DgmError as e:
        rank = int(os.environ.get("RANK", "0") or 0) if os.environ.get("WORLD_SIZE", "1") != "1" else 0
        if rank == 0 or not e.every_process:  # a check every process fails alike: one line
            print(f"dgm: error: {e}" + (f" (process {rank})" if rank else ""), file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("dgm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head, less, ... (an OSError: caught before the others)
        return 0
    except OSError as e:  # a full disk, a read-only or vanished folder: say which file, not a traceback
        where = f" {e.filename}" if e.filename else ""
        print(f"dgm: error: cannot write or read{where}: {e.strerror or e} (check the path, its permissions "
              "and the free disk space)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
