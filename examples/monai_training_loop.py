"""A MONAI training loop before and after adding NASDM synthetic patches: a one-line change.

Run (1-2 minutes on a free 2-core CPU; builds a toy real store and bank in a temp dir when none is given):
    .venv/bin/python examples/monai_training_loop.py
    .venv/bin/python examples/monai_training_loop.py --real real.h5 --bank bank.h5 --mode add --ratio 0.5

The bank is normally made by ``nasdm-aug synthesize --masks real.h5 --split Train --out bank.h5``;
the toy bank here re-stains the real masks so the example runs without a trained model.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from monai.data import DataLoader
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.nets import BasicUNet
from monai.transforms import Compose, Lambdad, RandFlipd, RandRotate90d

from nasdm_aug.data.store_writer import PatchStoreWriter
from nasdm_aug.mixing import SyntheticMixDataset
from nasdm_aug.types import LIZARD

KEYS = ["image", "inst", "type"]
# MONAI dictionary transforms apply to image and labels alike: items are channel-first [C, H, W]
train_tf = Compose([
    RandFlipd(KEYS, prob=0.5, spatial_axis=0),
    RandFlipd(KEYS, prob=0.5, spatial_axis=1),
    RandRotate90d(KEYS, prob=0.5),
    Lambdad("inst", lambda inst: (inst > 0).long(), overwrite="fg"),  # foreground target [1, H, W]
])
eval_tf = Lambdad("inst", lambda inst: (torch.as_tensor(inst) > 0).long(), overwrite="fg")


def make_dataset(real: Path, bank: Path, mode: str, ratio: float) -> SyntheticMixDataset:
    if mode == "real":
        # BEFORE: real patches only
        return SyntheticMixDataset(real, split="Train", mode="real", transform=train_tf)
    # AFTER: the one changed line, real base + synthetic patches from the other masks (paper 4.3.3)
    return SyntheticMixDataset(real, bank, split="Train", mode=mode, ratio=ratio, transform=train_tf)


def train_and_eval(train_ds, test_ds, steps: int, seed: int = 0) -> tuple[float, float]:
    """Train a small BasicUNet on foreground for ``steps`` steps; return (last loss, test Dice)."""
    torch.manual_seed(seed)
    train_ds.transform.set_random_state(seed)
    net = BasicUNet(spatial_dims=2, in_channels=3, out_channels=2, features=(8, 8, 16, 16, 32, 8))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    loader = DataLoader(train_ds, batch_size=8, shuffle=True, num_workers=2)
    step, loss = 0, torch.tensor(0.0)
    while step < steps:
        for batch in loader:
            loss = loss_fn(net(batch["image"]), batch["fg"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss = loss.detach()
            step += 1
            if step == steps:
                break
    dice = DiceMetric(include_background=False)
    net.eval()
    with torch.no_grad():
        for batch in DataLoader(test_ds, batch_size=16):
            pred = net(batch["image"]).argmax(1, keepdim=True)
            dice(torch.nn.functional.one_hot(pred[:, 0], 2).permute(0, 3, 1, 2),
                 torch.nn.functional.one_hot(batch["fg"][:, 0], 2).permute(0, 3, 1, 2))
    return loss.item(), dice.aggregate().item()


def make_toy_stores(root: Path, n: int = 64, p: int = 32) -> tuple[Path, Path]:
    """A toy real store (Train = images 0-5, Test = 6-7) and a bank with one patch per real mask."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:p, :p]
    real, bank = root / "real.h5", root / "bank.h5"
    with PatchStoreWriter(real, patch_size=p, type_table=LIZARD) as wr, \
            PatchStoreWriter(bank, patch_size=p, type_table=LIZARD, origin="synthetic") as wb:
        for i in range(n):
            inst = np.zeros((p, p), np.int32)
            for k in range(1, 6):
                cy, cx, r = rng.integers(0, p, 2).tolist() + [int(rng.integers(2, 5))]
                inst[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
            typ = np.where(inst > 0, 1 + inst % 6, 0).astype(np.uint8)
            for w, stain, kw in ((wr, (90, 40, 150), {}), (wb, (110, 50, 140), {"parent": i})):
                img = rng.normal(215, 12, (p, p, 3))
                img[inst > 0] = stain + rng.normal(0, 12, ((inst > 0).sum(), 3))
                w.append(np.clip(img, 0, 255).astype(np.uint8), inst, typ, source=f"img{i // 8}", **kw)
        wr.set_splits({"Train": [f"img{k}" for k in range(6)], "Test": ["img6", "img7"]})
    return real, bank


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real", type=Path, help="real PatchStore (default: a toy one)")
    ap.add_argument("--bank", type=Path, help="synthetic PatchStore made from the real masks")
    ap.add_argument("--mode", default="add", choices=["add", "replace", "synthetic"])
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        real, bank = (args.real, args.bank) if args.real else make_toy_stores(Path(tmp))
        test_ds = SyntheticMixDataset(real, split="Test", mode="real", transform=eval_tf)
        for mode in ("real", args.mode):
            ds = make_dataset(real, bank, mode, args.ratio)
            print(ds.summary())
            loss, dice = train_and_eval(ds, test_ds, args.steps)
            print(f"-> {'before' if mode == 'real' else 'after'}: last loss {loss:.3f}, test foreground Dice {dice:.3f}\n")


if __name__ == "__main__":
    main()
