"""An attribute classifier for the shapes data set: one small CNN, one output head per attribute.

It is the measuring stick for prompt adherence: trained on real (drawn) data set images, checked on held-out real
images first (its accuracy there is the ceiling of what an evaluation can show), then run on generated images.
Images are read at 64x64 (downsampled with a box filter), enough to tell kind, color, size, position and scene apart.
Half of the training images are softened by a random Gaussian blur, as decoded images are softer than drawn ones.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from generation.shapes import dataset as ds

INPUT = 64


def downsample(images: np.ndarray) -> np.ndarray:
    """N x H x W x 3 uint8 -> N x 64 x 64 x 3 uint8 by averaging blocks."""
    n, h, w, _ = images.shape
    f = h // INPUT
    if f == 1:
        return images
    return images.reshape(n, INPUT, f, INPUT, f, 3).mean(axis=(2, 4)).round().astype(np.uint8)


def build():
    import torch.nn as nn

    class AttributeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()

            def block(i: int, o: int) -> nn.Sequential:
                return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                                     nn.Conv2d(o, o, 3, padding=1, stride=2), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

            self.features = nn.Sequential(block(3, 24), block(24, 48), block(48, 64), block(64, 96))  # 64 -> 4
            self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(96 * 16, 256), nn.ReLU(inplace=True), nn.Dropout(0.2))
            self.heads = nn.ModuleList(nn.Linear(256, len(ds.VALUES[a])) for a in ds.ATTRIBUTES)

        def forward(self, x):
            h = self.trunk(self.features(x))
            return [head(h) for head in self.heads]

    return AttributeNet()


def _tensor(images: np.ndarray):
    import torch

    return torch.from_numpy(downsample(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def predict(model, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Predicted value index per attribute: N x len(ATTRIBUTES)."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            logits = model(_tensor(images[i : i + batch]))
            out.append(torch.stack([lg.argmax(1) for lg in logits], dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(ds.ATTRIBUTES)), dtype=np.int64)


def accuracy(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Per-attribute accuracy plus `all` (every attribute right at once)."""
    hit = pred == labels
    acc = {a: float(hit[:, i].mean()) for i, a in enumerate(ds.ATTRIBUTES)}
    acc["all"] = float(hit.all(axis=1).mean())
    return acc


def _draw(n: int, seed: int, blur: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """`n` real images at 64x64 with labels; a `blur` fraction of them softened by a random Gaussian blur."""
    from PIL import Image, ImageFilter

    # Every combination may appear (training=False): the classifier measures attributes, it is not the generator.
    rng = np.random.default_rng(seed)
    samples = [ds.random_sample(rng, training=False) for _ in range(n)]
    images = []
    for s in samples:
        im = ds.render(s, rng, INPUT)
        if blur and rng.random() < blur:
            # Decoded images are softer than drawn ones; a blurred copy of a real image keeps its true labels.
            im = np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(float(rng.uniform(0.4, 1.6)))))
        images.append(im)
    return np.stack(images), np.array([s.labels() for s in samples], dtype=np.int64)


def train_or_load(path: Path, *, n_train: int = 16000, epochs: int = 3, seed: int = 7, log=print):
    """Load the classifier from `path`, or train it (a few minutes on 2 cores) and save it there."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    torch.manual_seed(seed)
    model = build()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    t0 = time.time()
    images, labels = _draw(n_train, seed, blur=0.5)
    x_all, y_all = _tensor(images), torch.from_numpy(labels)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * (n_train // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    bar = tqdm(total=steps, desc="classifier", unit="step", dynamic_ncols=True)
    for _ in range(epochs):
        perm = torch.randperm(n_train, generator=gen)
        for b in range(n_train // 128):
            idx = perm[b * 128 : (b + 1) * 128]
            x = x_all[idx]
            # light noise so the classifier does not depend on perfectly clean pixels
            x = x + 0.03 * torch.randn(x.shape, generator=gen)
            logits = model(x)
            loss = sum(F.cross_entropy(lg, y_all[idx, i]) for i, lg in enumerate(logits))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            bar.update(1)
    bar.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    log(f"classifier: trained in {time.time() - t0:.0f}s on {n_train} images")
    return model.eval()


def held_out_accuracy(model, n: int = 3000, seed: int = 2024) -> dict[str, float]:
    """Accuracy on freshly drawn real images the classifier never saw (its ceiling)."""
    images, labels = _draw(n, seed)
    return accuracy(predict(model, images), labels)


def held_out_prompt_accuracy(model, per_prompt: int = 8, seed: int = 77) -> dict[str, float]:
    """Accuracy on real images of exactly the evaluation combinations (`HELD_OUT`)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for s in ds.HELD_OUT:
        for _ in range(per_prompt):
            images.append(ds.render(s, rng))
            labels.append(s.labels())
    return accuracy(predict(model, np.stack(images)), np.array(labels))
