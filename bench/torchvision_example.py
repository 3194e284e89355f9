"""The torchvision worked example of docs/update-format.md, measured: a plain-PyTorch ResNet-18 client that feeds
one grayscale LFW face repeated to 3 channels, one SGD step, converted with convert.py and attacked with attack.py.

    python -m bench.torchvision_example --resize 80 --prior others [--tag NAME] [attack overrides ...]

--prior others: the attacker's prior is the mean of the 99 other faces of the LFW subset (public images, never
the client's); grey: no prior (uniform grey). Every attack override (e.g. optim.grayscale=true) is passed on.
Saves bench/results/torchvision_example_<tag>.json with the attack's SSIM and verdict.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import ROOT, save

CLIENT = '''
import torch, torch.nn.functional as F, torchvision
from safetensors.torch import save_file
from skimage.data import lfw_subset
torch.manual_seed(0)
model = torchvision.models.resnet18(num_classes=2)
torch.save(model.state_dict(), "global.pt")
faces = torch.tensor(lfw_subset()[:100], dtype=torch.float32)
image = faces[0].expand(1, 3, 25, 25).contiguous()
label = torch.tensor([0])
model.train()
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x = F.interpolate((image - 0.5) / 0.5, size={resize}, mode="bilinear", align_corners=False)
loss = F.cross_entropy(model(x), label)
opt.zero_grad(); loss.backward(); opt.step()
torch.save(model.state_dict(), "client_after.pt")
save_file({{"images": image, "labels": label}}, "ground_truth.safetensors")
save_file({{"mean": faces[1:100].mean(0).expand(3, 25, 25).contiguous()}}, "prior_others.safetensors")
'''


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resize", type=int, default=80)
    p.add_argument("--prior", choices=("others", "grey"), default="others")
    p.add_argument("--tag", default=None)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    env = {**os.environ, "WANDB_MODE": "disabled"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "client.py").write_text(CLIENT.format(resize=args.resize))
        steps = [
            [sys.executable, "client.py"],
            [sys.executable, str(ROOT / "convert.py"), "--model", "torchvision.models:resnet18", "--model-kwargs", "{num_classes: 2}",
             "--in-chans", "3", "--image-size", "25", "--num-classes", "2", "--norm-mean", "0.5", "--norm-std", "0.5",
             "--resize-to", str(args.resize), "--global", "global.pt", "--local", "client_after.pt", "--optimizer", "sgd",
             "--lr", "0.01", "--num-images", "1", "--batch-size", "1", "--out", "my_update"],
            [sys.executable, str(ROOT / "attack.py"), "--update", "my_update", "trusted_models=[torchvision.models:resnet18]",
             "--ground-truth", "ground_truth.safetensors", "--out", "my_attack", "logging.progress=false", "logging.wandb=false",
             "scoring.lpips=false", *([f"prior.path={work / 'prior_others.safetensors'}"] if args.prior == "others" else []),
             *args.overrides],
        ]
        for argv in steps:
            done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{argv[1]} failed: {done.stderr[-2000:]}")
        print(done.stdout.strip())
        m = json.loads((work / "my_attack" / "metrics.json").read_text())
    save(f"torchvision_example_{args.tag or f'{args.resize}px_{args.prior}'}", {
        "resize": args.resize, "prior": args.prior, "overrides": args.overrides, "ssim": m["ssim"], "psnr": m.get("psnr"),
        "verdict": m["verdict"], "converged": m["converged"], "heldout_error": m["convergence"]["heldout_error"],
        "rungs": len(m["escalation"]["rungs"]), "seconds": m["seconds"]})


if __name__ == "__main__":
    main()
