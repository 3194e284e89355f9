"""Convert a client's update from any PyTorch code into an update folder that attack.py reads.

    python convert.py --model torchvision.models:resnet18 --model-kwargs '{num_classes: 2}' --in-chans 3 \\
        --image-size 64 --num-classes 2 --global global.pt --local client_after.pt \\
        --optimizer sgd --lr 0.01 --num-images 1 --batch-size 1 --out my_update

The worked example, from a plain-PyTorch client to a reconstruction: docs/update-format.md.
"""
from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")

from common.errors import UserError, run_cli  # noqa: E402


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="convert.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    m = p.add_argument_group("the model and its input path")
    m.add_argument("--model", required=True, help="timm name, bn_convnet, or import path package.module:callable")
    m.add_argument("--model-kwargs", default="{}", help="YAML/JSON keyword arguments of the model (all of them for an import path)")
    m.add_argument("--in-chans", type=int, required=True, help="channels of the client's images")
    m.add_argument("--image-size", type=int, required=True, help="height = width of the client's images (before the input path)")
    m.add_argument("--num-classes", type=int, required=True, help="classes of the classifier")
    m.add_argument("--norm-mean", type=_floats, default=[0.0], help="normalisation mean per channel (one value = all), applied to [0, 1] images")
    m.add_argument("--norm-std", type=_floats, default=[1.0], help="normalisation std per channel")
    m.add_argument("--resize-to", type=int, default=0, help="bilinear resize after normalising (align_corners=False); 0 = none")
    m.add_argument("--bn-momentum", type=float, default=0.1, help="BatchNorm momentum (PyTorch convention)")
    s = p.add_argument_group("the models (safetensors or torch.save state dicts, loaded weights-only)")
    s.add_argument("--global", dest="global_path", required=True, help="the global model the client started from")
    s.add_argument("--local", default=None, help="the client's model after local training")
    s.add_argument("--delta", default=None, help="or: the client's update (after - before)")
    s.add_argument("--strip-prefix", default="", metavar="PREFIX", help="drop this prefix from every key of the given models "
                   "(e.g. net. when your model sits in a wrapper's attribute 'net'); 'module.' (DDP) is always dropped")
    f = p.add_argument_group("the client's local round")
    f.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    f.add_argument("--lr", type=float, required=True)
    f.add_argument("--momentum", type=float, default=0.0)
    f.add_argument("--dampening", type=float, default=0.0)
    f.add_argument("--nesterov", action="store_true")
    f.add_argument("--weight-decay", type=float, default=0.0)
    f.add_argument("--betas", type=_floats, default=[0.9, 0.999], help="adam")
    f.add_argument("--eps", type=float, default=1e-8, help="adam")
    f.add_argument("--num-images", type=int, required=True)
    f.add_argument("--batch-size", type=int, required=True)
    f.add_argument("--epochs", type=int, default=1)
    f.add_argument("--steps", type=int, default=0, help="a fixed number of steps instead of epochs (0 = epochs x ceil(images / batch))")
    p.set_defaults(shuffle=True)  # not shown in --help as "(default: True)" beside a flag that sets False
    f.add_argument("--no-shuffle", dest="shuffle", action="store_false", default=argparse.SUPPRESS, help="the client's data loader did not reshuffle between "
                   "epochs (shuffle=False): the replay repeats the first epoch's order instead of assuming an unknown one")
    f.add_argument("--round", type=int, default=0)
    f.add_argument("--client", type=int, default=0)
    p.add_argument("--out", required=True, help="the update folder to write (a new folder)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it is an update folder")
    args = p.parse_args(argv)

    import math

    import yaml

    from model.factory import ModelSpec
    from pipelines.update_conversion import ClientFacts, convert

    try:
        kwargs = yaml.safe_load(args.model_kwargs)
    except yaml.YAMLError as err:
        raise UserError(f"--model-kwargs is not YAML/JSON ({str(err).splitlines()[0]})") from None
    if not isinstance(kwargs, dict):
        raise UserError(f"--model-kwargs must be a mapping, got {args.model_kwargs!r}")
    for name in ("lr", "momentum", "weight_decay", "bn_momentum", "eps"):
        value = getattr(args, name)
        if not math.isfinite(value) or value < 0 or (name in ("lr", "bn_momentum", "eps") and value <= 0):
            raise UserError(f"--{name.replace('_', '-')} must be a finite number {'> 0' if name in ('lr', 'bn_momentum', 'eps') else '>= 0'}, got {value}")
    spec = ModelSpec(args.model, args.in_chans, args.num_classes, args.image_size, args.resize_to, args.norm_mean, args.norm_std,
                     args.bn_momentum, kwargs=kwargs)
    if args.optimizer == "sgd":
        opt = {"name": "sgd", "lr": args.lr, "momentum": args.momentum, "dampening": args.dampening, "nesterov": args.nesterov,
               "weight_decay": args.weight_decay}
    else:
        opt = {"name": "adam", "lr": args.lr, "betas": list(args.betas), "eps": args.eps, "weight_decay": args.weight_decay}
    facts = ClientFacts(opt, args.num_images, args.batch_size, args.epochs, args.steps, args.round, args.client, args.shuffle)
    out = convert(spec, facts, args.global_path, args.out, args.local, args.delta, args.overwrite, args.strip_prefix)
    # quoted: unquoted brackets are a shell glob
    trust = f" 'trusted_models=[{args.model}]'" if ":" in args.model else ""
    path = import_folder(args.model) if ":" in args.model else None
    env = f"PYTHONPATH={shlex.quote(str(path))} " if path is not None else ""
    print(f"update folder written: {out} ({facts.local_steps} local step(s)); attack it with: {env}python attack.py --update {out}{trust}")


def import_folder(model: str) -> Path | None:
    """The folder attack.py needs on PYTHONPATH to import ``model`` (None: importable from the project or an installed package)."""
    import importlib.util
    import sysconfig

    top = model.partition(":")[0].split(".")[0]
    spec = importlib.util.find_spec(top)
    if spec is None or spec.origin is None:
        return None
    origin = Path(spec.origin).resolve()
    folder = origin.parent.parent if origin.name == "__init__.py" else origin.parent
    installed = {Path(p).resolve() for p in (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], sysconfig.get_paths()["stdlib"])}
    project = Path(__file__).resolve().parent
    return None if folder in installed or folder == project else folder


if __name__ == "__main__":
    run_cli(main)
