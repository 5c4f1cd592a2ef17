"""Train the embedded default model from scratch and export it as a diffusers folder.

    python -m generation.shapes.train                       # every phase, resuming whatever is already in --run
    python -m generation.shapes.train --phase export        # write generation/models/default from the latest checkpoint

Phases (each resumes from what is on disk under --run, default runs/default):
1. vae      train the small AutoencoderKL on freshly drawn 64x64 images;
2. latents  draw a fixed pool of training images, encode them once, store latents + attribute labels, and set the
            VAE's scaling factor to 1/std of the latents;
3. decoder  keep training the VAE decoder alone with the encoder frozen: the latents (and so the UNet's training
            data) do not change, so this can run at the same time as phase 4;
4. unet     train the text encoder and UNet together on the latents: Stable Diffusion's noise schedule, epsilon
            prediction, min-SNR loss weighting, captions re-phrased every time and dropped 12% of the time (for
            classifier-free guidance), EMA of the weights; a checkpoint every --ckpt-every steps;
5. export   save the EMA weights with the VAE, tokenizer and a DPM-Solver++ scheduler as a Stable Diffusion folder.

Creating a file named STOP in the run folder makes the UNet phase save a checkpoint and exit cleanly.
Seeds are fixed: the data each step sees depends only on --seed and the step number.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from generation import DEFAULT_MODEL
from generation.shapes import dataset as ds

DEFAULT_RUN = Path("runs/default")
DEFAULT_OUT = DEFAULT_MODEL
CAPTION_DROPOUT = 0.12


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m generation.shapes.train", description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, default=DEFAULT_RUN, help="folder for checkpoints and logs (default %(default)s)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the diffusers folder is exported")
    p.add_argument("--phase", choices=("all", "vae", "latents", "decoder", "unet", "export"), default="all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--vae-steps", type=int, default=500)
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--vae-init", type=Path, default=None,
                   help="start the VAE phase from these weights (a vae_final.pt / decoder_final.pt of an earlier run)")
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--anchor-weight", type=float, default=1.0,
                   help="weight of the term tying latent channels 0-2 to the 4x4-pooled image (see train_vae)")
    p.add_argument("--shape-weight", type=float, default=1.0,
                   help="extra weight of pixels that differ from the image's dominant color (1 = none)")
    p.add_argument("--decoder-steps", type=int, default=3000, help="extra steps for the VAE decoder alone")
    p.add_argument("--pool", type=int, default=16000, help="number of pre-encoded training images")
    p.add_argument("--unet-steps", type=int, default=7000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--cooldown-steps", type=int, default=0,
                   help="the last N UNet steps train at --cooldown-lr instead of --lr (a lower rate to finish on)")
    p.add_argument("--cooldown-lr", type=float, default=1e-4)
    p.add_argument("--init-from", type=Path, default=None,
                   help="start a new UNet phase from the EMA weights of this checkpoint (unet_NNNNNN.pt of an earlier run)")
    p.add_argument("--legacy-schedule", action="store_true",
                   help="train (and export) with Stable Diffusion 1.x's epsilon schedule instead of the zero-terminal-SNR "
                        "v-prediction one (the first stage of the shipped model, see docs/model.md)")
    p.add_argument("--high-t-frac", type=float, default=0.0,
                   help="fraction of each batch whose timestep is drawn from the noisiest 30%% of the schedule, where "
                        "the layout (position, size) is decided")
    p.add_argument("--shape-loss-weight", type=float, default=1.0,
                   help="weight of latent pixels that differ from the image's dominant value in the UNet loss")
    p.add_argument("--offset-noise", type=float, default=0.0,
                   help="std of a per-image, per-channel constant added to the noise (see train_unet)")
    p.add_argument("--offset-from-step", type=int, default=0, help="first UNet step that uses --offset-noise")
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--keep-every", type=int, default=1000, help="checkpoints at multiples of this are kept")
    p.add_argument("--export-step", type=int, default=None, help="export this UNet checkpoint instead of the latest")
    p.add_argument("--export-live", action="store_true", help="export the live weights instead of their EMA")
    return p.parse_args(argv)


# --- helpers ---------------------------------------------------------------------------------------------------
def _to_tensor(images: np.ndarray):
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _atomic_save(obj, path: Path) -> None:
    import torch

    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _step_seed(seed: int, phase: int, step: int) -> int:
    return (seed * 1_000_003 + phase * 7_919_113 + step) % (2**63)


# --- phase 1: VAE ----------------------------------------------------------------------------------------------
def train_vae(args) -> None:
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from generation.shapes.tinymodel import IMAGE_SIDE, build_vae

    final = args.run / "vae_final.pt"
    if final.exists():
        print(f"vae: {final} exists, skipping")
        return
    ckpt_path = args.run / "vae_ckpt.pt"
    torch.manual_seed(args.seed)
    vae = build_vae()
    if args.vae_init is not None:
        vae.load_state_dict(torch.load(args.vae_init, weights_only=False)["model"])
        print(f"vae: starting from {args.vae_init}")
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    start = 0
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        vae.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        torch.set_rng_state(ck["torch_rng"])
        start = ck["step"]
        print(f"vae: resuming at step {start}")
    total = args.vae_steps
    vae.train()
    bar = tqdm(total=total, initial=start, desc="vae", unit="step", dynamic_ncols=True)
    avg = None
    for step in range(start, total):
        rng = np.random.default_rng(_step_seed(args.seed, 1, step))
        images, _, _ = ds.make_batch(args.vae_batch, seed=int(rng.integers(2**62)), size=IMAGE_SIDE)
        x = _to_tensor(images)
        lr = args.vae_lr if step < total * 0.75 else args.vae_lr / 4
        for g in opt.param_groups:
            g["lr"] = lr
        post = vae.encode(x).latent_dist
        # The posterior mean, not a sample: with a tiny KL weight the variance would take long to shrink, and the
        # sampling noise slowed learning badly in the short training this project can afford.
        z = post.mode()
        rec = vae.decode(z).sample
        kl = post.kl().mean() / x[0].numel()
        # Anchor the first three latent channels to the 4x4-average-pooled RGB image. Without it, 600 steps left the
        # latents with almost no color information (a linear probe read the shape's color right 28% of the time);
        # with it the encoder starts from an image-like latent at once, and the fourth channel is free for detail.
        # The anchor also confines the shape's outline to the fourth channel: at weight 1 a small star came back as a
        # pentagon. The shipped VAE was trained further from the first one with a weaker anchor (0.1) and the shape
        # pixels weighted 5x (--anchor-weight 0.1 --shape-weight 5), which keeps color in channels 0-2 but frees them.
        anchor = F.mse_loss(z[:, :3], F.avg_pool2d(x, 4))
        loss = _weighted_rec_loss(rec, x, args.shape_weight) + args.anchor_weight * anchor + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 10.0)
        opt.step()
        avg = loss.item() if avg is None else 0.95 * avg + 0.05 * loss.item()
        bar.set_postfix(loss=f"{avg:.4f}")
        bar.update(1)
        if (step + 1) % 100 == 0 or step + 1 == total:
            _atomic_save({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1, "torch_rng": torch.get_rng_state()}, ckpt_path)
    bar.close()
    _atomic_save({"model": vae.state_dict()}, final)
    # A side-by-side reconstruction for a quick look.
    from PIL import Image

    vae.eval()
    images, _, _ = ds.make_batch(8, seed=12345, size=IMAGE_SIDE)
    with torch.no_grad():
        rec = vae.decode(vae.encode(_to_tensor(images)).latent_dist.mode()).sample
    rec = ((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    top, bottom = np.concatenate(list(images), axis=1), np.concatenate(list(rec), axis=1)
    Image.fromarray(np.concatenate([top, bottom], axis=0)).save(args.run / "vae_recon.png")
    err = np.abs(images.astype(np.float32) - rec.astype(np.float32)).mean()
    print(f"vae: done, mean abs reconstruction error {err:.2f}/255, preview {args.run / 'vae_recon.png'}")


def train_decoder(args) -> None:
    import torch
    from tqdm import tqdm

    from generation.shapes.tinymodel import IMAGE_SIDE

    final = args.run / "decoder_final.pt"
    if final.exists() or args.decoder_steps <= 0:
        print(f"decoder: {final} exists or no steps asked, skipping")
        return
    ckpt_path = args.run / "decoder_ckpt.pt"
    vae = load_vae(args, use_decoder=False)
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    start = 0
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        vae.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        start = ck["step"]
        print(f"decoder: resuming at step {start}")
    total = args.decoder_steps
    vae.decoder.train()
    bar = tqdm(total=total, initial=start, desc="decoder", unit="step", dynamic_ncols=True)
    avg = None
    for step in range(start, total):
        rng = np.random.default_rng(_step_seed(args.seed, 5, step))
        images, _, _ = ds.make_batch(args.vae_batch, seed=int(rng.integers(2**62)), size=IMAGE_SIDE)
        x = _to_tensor(images)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mode()
        for g in opt.param_groups:
            g["lr"] = 1e-3 if step < total * 0.7 else 2.5e-4
        rec = vae.decode(z).sample
        # Shapes cover a small part of each image: pixels that differ from the image's dominant (median) color
        # weigh 5x, so the decoder spends its capacity on the shapes' colors and outlines.
        loss = _weighted_rec_loss(rec, x, 5.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        avg = loss.item() if avg is None else 0.95 * avg + 0.05 * loss.item()
        bar.set_postfix(loss=f"{avg:.4f}")
        bar.update(1)
        if (step + 1) % 100 == 0 or step + 1 == total:
            _atomic_save({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1}, ckpt_path)
    bar.close()
    _atomic_save({"model": vae.state_dict()}, final)
    print("decoder: done")


def _weighted_rec_loss(rec, x, shape_weight: float):
    """L1 + MSE where pixels that differ from the image's dominant (median) color weigh `shape_weight` times more.

    Shapes cover a small part of each image; the weight makes the VAE spend its capacity on their colors and outlines.
    """
    err = (rec - x).abs() + (rec - x) ** 2
    if shape_weight == 1.0:
        return err.mean()
    med = x.flatten(2).median(dim=2).values[:, :, None, None]
    w = 1.0 + (shape_weight - 1.0) * ((x - med).abs().sum(dim=1, keepdim=True) > 0.15).float()
    return (err * w).mean() / w.mean()


def load_vae(args, scaling: float | None = None, use_decoder: bool = True):
    """The trained VAE; with `use_decoder`, the separately trained decoder where there is one."""
    import torch

    from generation.shapes.tinymodel import build_vae

    vae = build_vae()
    vae.load_state_dict(torch.load(args.run / "vae_final.pt", weights_only=False)["model"])
    dec = args.run / ("decoder_final.pt" if (args.run / "decoder_final.pt").exists() else "decoder_ckpt.pt")
    if use_decoder and dec.exists():
        print(f"vae: decoder weights from {dec}")
        vae.load_state_dict(torch.load(dec, weights_only=False)["model"])
    if scaling is not None:
        vae.register_to_config(scaling_factor=float(scaling))
    return vae.eval()


# --- phase 2: latent pool --------------------------------------------------------------------------------------
def build_pool(args) -> None:
    import torch
    from tqdm import tqdm

    from generation.shapes.tinymodel import IMAGE_SIDE

    path = args.run / "pool.pt"
    if path.exists():
        print(f"latents: {path} exists, skipping")
        return
    vae = load_vae(args, use_decoder=False)
    chunk = 400
    lat, labels = [], []
    with torch.no_grad():
        for c in tqdm(range(0, args.pool, chunk), desc="latents", unit="chunk", dynamic_ncols=True):
            n = min(chunk, args.pool - c)
            images, samples, _ = ds.make_batch(n, seed=_step_seed(args.seed, 2, c), size=IMAGE_SIDE)
            lat.append(vae.encode(_to_tensor(images)).latent_dist.mode().half())
            labels.extend(s.labels() for s in samples)
    latents = torch.cat(lat)
    std = latents.float().std().item()
    scaling = 1.0 / std
    print(f"latents: {tuple(latents.shape)}, mean {latents.float().mean():.3f}, std {std:.3f} -> scaling_factor {scaling:.4f}")
    _atomic_save({"latents": latents, "labels": torch.tensor(labels, dtype=torch.int8), "scaling": scaling}, path)


# --- phase 3: UNet + text encoder ------------------------------------------------------------------------------
def _latest_unet_ckpt(run: Path) -> Path | None:
    cks = sorted(run.glob("unet_*.pt"))
    return cks[-1] if cks else None


def _captions_for(labels: np.ndarray, rng: np.random.Generator) -> list[str]:
    caps = []
    for row in labels:
        if rng.random() < CAPTION_DROPOUT:
            caps.append("")
            continue
        s = ds.Sample(*(ds.VALUES[a][int(i)] for a, i in zip(ds.ATTRIBUTES, row, strict=True)))
        caps.append(ds.caption(s, rng))
    return caps


def encode_text(tokenizer, text_encoder, captions: list[str]):
    """Token ids padded to the maximum length, through the text encoder, exactly as the SD pipeline does it."""
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids)[0]


def train_unet(args, tokenizer) -> None:
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from generation.shapes.tinymodel import build_text_encoder, build_train_scheduler, build_unet, count_params

    pool = torch.load(args.run / "pool.pt", weights_only=False)
    latents, labels, scaling = pool["latents"], pool["labels"].numpy(), pool["scaling"]
    n_pool = latents.shape[0]

    torch.manual_seed(args.seed)
    unet, te = build_unet(), build_text_encoder(len(tokenizer))
    print(f"unet: {count_params(unet) / 1e6:.2f}M params, text encoder {count_params(te) / 1e6:.2f}M params, pool {n_pool}")
    ema_unet, ema_te = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(te).requires_grad_(False)
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    sched = build_train_scheduler(args.legacy_schedule)
    alphas = sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    v_pred = sched.config.prediction_type == "v_prediction"
    start = 0
    ck_path = _latest_unet_ckpt(args.run)
    if ck_path is not None:
        ck = torch.load(ck_path, weights_only=False)
        unet.load_state_dict(ck["unet"])
        te.load_state_dict(ck["te"])
        ema_unet.load_state_dict(ck["ema_unet"])
        ema_te.load_state_dict(ck["ema_te"])
        opt.load_state_dict(ck["opt"])
        start = ck["step"]
        print(f"unet: resuming from {ck_path} (step {start})")
    elif args.init_from is not None:
        ck = torch.load(args.init_from, weights_only=False)
        for m in (unet, ema_unet):
            m.load_state_dict(ck["ema_unet"])
        for m in (te, ema_te):
            m.load_state_dict(ck["ema_te"])
        print(f"unet: starting from the EMA weights of {args.init_from} (its step {ck['step']})")

    def save(step: int) -> None:
        path = args.run / f"unet_{step:06d}.pt"
        _atomic_save(
            {"unet": unet.state_dict(), "te": te.state_dict(), "ema_unet": ema_unet.state_dict(), "ema_te": ema_te.state_dict(),
             "opt": opt.state_dict(), "step": step, "scaling": scaling},
            path,
        )
        for old in sorted(args.run.glob("unet_*.pt"))[:-2]:
            if int(old.stem.split("_")[1]) % args.keep_every:
                old.unlink()

    log_path = args.run / "train_log.csv"
    new_log = not log_path.exists()
    log = open(log_path, "a", newline="")
    writer = csv.writer(log)
    if new_log:
        writer.writerow(["step", "loss", "lr", "seconds"])
    unet.train()
    te.train()
    stop_file = args.run / "STOP"
    bar = tqdm(total=args.unet_steps, initial=start, desc="unet", unit="step", dynamic_ncols=True)
    avg, t0 = None, time.time()
    step = start
    for step in range(start, args.unet_steps):
        rng = np.random.default_rng(_step_seed(args.seed, 3, step))
        gen = torch.Generator().manual_seed(_step_seed(args.seed, 4, step))
        idx = rng.integers(n_pool, size=args.batch)
        x0 = latents[torch.from_numpy(idx)].float() * scaling
        caps = _captions_for(labels[idx], rng)
        noise = torch.randn(x0.shape, generator=gen)
        if args.offset_noise and step >= args.offset_from_step:
            # Offset noise: at 16x16 latents, Stable Diffusion's schedule leaves the image's mean color visible even
            # at the last timestep (signal-to-noise ~1 for the mean), so the model learned to read the scene and
            # layout from the *noise* there; sampling starts from pure noise, where that reading is random. A random
            # per-channel constant in the noise hides the mean at high noise levels, so the caption has to decide it.
            noise = noise + args.offset_noise * torch.randn(x0.shape[0], x0.shape[1], 1, 1, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (args.batch,), generator=gen)
        n_high = int(round(args.high_t_frac * args.batch))
        if n_high:
            # At 16x16 the layout is settled in the first, noisiest sampling steps; after switching to the
            # zero-terminal-SNR schedule the warm-started model still ignored position words, so part of every batch
            # is spent where only the caption can say where the shape goes.
            T = sched.config.num_train_timesteps
            t[:n_high] = torch.randint(int(0.7 * T), T, (n_high,), generator=gen)
        xt = sched.add_noise(x0, noise, t)
        lr = args.lr * min(1.0, (step + 1) / args.warmup)
        if step >= args.unet_steps - args.cooldown_steps:
            lr = args.cooldown_lr
        for g in opt.param_groups:
            g["lr"] = lr
        pred = unet(xt, t, encode_text(tokenizer, te, caps)).sample
        if v_pred:
            # Min-SNR-5 weighting written for v-prediction, with the weight of the implied x0 error kept >= 1:
            # plain min-SNR gives the x0 error weight min(snr, 5), which is 0 at the zero-SNR last timestep, the one
            # step where only the caption can decide the layout.
            target = sched.get_velocity(x0, noise, t)
            w = (torch.clamp(snr[t], min=1.0, max=5.0) / (snr[t] + 1)).float()
        else:
            # min-SNR-5 weighting for epsilon prediction: weight = min(snr, 5) / snr
            target = noise
            w = (torch.clamp(snr[t], max=5.0) / snr[t]).float()
        err = F.mse_loss(pred, target, reduction="none")
        if args.shape_loss_weight != 1.0:
            # The shape covers a small part of the latent, so its placement moves the loss little next to the
            # background's; latent pixels away from the image's median weigh more.
            med = x0.flatten(2).median(dim=2).values[:, :, None, None]
            mask = ((x0 - med).abs().mean(dim=1, keepdim=True) > 0.3).float()
            sw = 1.0 + (args.shape_loss_weight - 1.0) * mask
            err = err * sw / sw.mean(dim=(1, 2, 3), keepdim=True)
        loss = (err.mean(dim=(1, 2, 3)) * w).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema, live in ((ema_unet, unet), (ema_te, te)):
                for pe, pl in zip(ema.parameters(), live.parameters(), strict=True):
                    pe.lerp_(pl, 1 - decay)
        avg = loss.item() if avg is None else 0.98 * avg + 0.02 * loss.item()
        bar.set_postfix(loss=f"{avg:.4f}", lr=f"{lr:.1e}")
        bar.update(1)
        done = step + 1
        if done % 50 == 0:
            writer.writerow([done, f"{avg:.5f}", f"{lr:.2e}", f"{time.time() - t0:.1f}"])
            log.flush()
        if done % args.ckpt_every == 0 or done == args.unet_steps:
            save(done)
        if stop_file.exists():
            save(done)
            stop_file.unlink()
            print(f"unet: STOP file found, saved step {done} and exiting")
            break
    bar.close()
    log.close()


# --- phase 4: export -------------------------------------------------------------------------------------------
def export(args, tokenizer) -> Path:
    import torch
    from diffusers import StableDiffusionPipeline

    from generation.shapes.tinymodel import build_sample_scheduler, build_text_encoder, build_unet

    if args.export_step is not None:
        ck_path = args.run / f"unet_{args.export_step:06d}.pt"
    else:
        ck_path = _latest_unet_ckpt(args.run)
    if ck_path is None or not ck_path.exists():
        raise SystemExit(f"export: no UNet checkpoint in {args.run}; train first")
    ck = torch.load(ck_path, weights_only=False)
    unet, te = build_unet(), build_text_encoder(len(tokenizer))
    unet.load_state_dict(ck["unet" if args.export_live else "ema_unet"])
    te.load_state_dict(ck["te" if args.export_live else "ema_te"])
    vae = load_vae(args, scaling=ck["scaling"])
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=te, tokenizer=tokenizer, unet=unet.eval(), scheduler=build_sample_scheduler(args.legacy_schedule),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    out = args.out
    old_meta = {}
    if (out / "imaginebot.json").exists():
        old_meta = json.loads((out / "imaginebot.json").read_text())
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # The UNet and VAE are stored in float16 to stay small; diffusers loads them back as float32 by default.
    # The text encoder stays float32 (transformers would otherwise keep float16 on load).
    unet.half()
    vae.half()
    pipe.save_pretrained(tmp, safe_serialization=True)
    meta = model_meta(int(ck["step"]), old_meta)
    meta["weights"] = "live" if args.export_live else "ema"
    (tmp / "imaginebot.json").write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"export: step {ck['step']} -> {out} ({size / 1e6:.2f} MB)")
    return out


def model_meta(step: int, old: dict | None = None) -> dict:
    old = old or {}
    return {
        "name": "imaginebot-shapes-64",
        "description": "Small text-to-image model trained from scratch on the project's procedural shapes data set.",
        "trained_steps": step,
        "default_width": 64,
        "default_height": 64,
        "min_side": 64,
        "max_side": 128,
        "default_steps": old.get("default_steps", 8),
        "default_guidance": old.get("default_guidance", 5.0),
        # guidance on the noisier half of the steps only (measured in docs/model.md: guiding the late, nearly clean
        # steps as well enlarges the shapes)
        "guidance_min_timestep": old.get("guidance_min_timestep", 500),
        "default_scheduler": "dpmpp_2m",
        "knows": {
            "kinds": list(ds.KINDS),
            "colors": list(ds.COLORS),
            "sizes": list(ds.SIZES),
            "positions": list(ds.POSITIONS),
            "backgrounds": list(ds.BACKGROUNDS),
        },
        "example_prompts": [
            "a red circle on a white background",
            "a small blue star at the top, at night",
            "large crimson box on the left, on a sandy beach",
            "a tiny golden heart at the bottom in a grassy meadow",
            "purple triangle in the middle, gray background",
        ],
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    from generation.shapes.tinymodel import build_tokenizer

    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.run.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(ds.vocabulary())
    t0 = time.time()
    if args.phase in ("all", "vae"):
        train_vae(args)
    if args.phase in ("all", "latents"):
        build_pool(args)
    if args.phase in ("all", "decoder"):
        train_decoder(args)
    if args.phase in ("all", "unet"):
        train_unet(args, tokenizer)
    if args.phase in ("all", "export"):
        export(args, tokenizer)
    print(f"done in {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
