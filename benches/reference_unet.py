#!/usr/bin/env python3
"""PyTorch reference of msdiff's U-Net training step (`msdiff bench train`).

A layer-for-layer re-implementation of `src/nn/` (config.rs presets, unet.rs, blocks.rs,
layers.rs, embedding.rs): same layer order, shapes, GroupNorm groups (min(C/4, max_groups)),
single-head attention with one fused qkv 1x1 conv, resampling, (skip + h)/sqrt(2) rescale,
sinusoidal time embedding + MLP, and for multistage models the per-sample routing (encoder on the
whole batch, each decoder on `index_select` of its stage's samples, `index_copy` back).

It asserts that its parameter count equals msdiff's (`msdiff info --preset NAME`), then times one
training step exactly as `msdiff bench train` lays it out: random input, noise labels
999 (i + 0.5) / B, stage ids i K / B, loss = MSE to a random target, forward + backward +
`torch.optim.Adam(lr=1e-4)` step; one warm-up, median over `--repeats`; plain CPU eager mode.

Usage: reference_unet.py --preset reference-6.5m --batch 32 --repeats 3 --threads 2
"""
import argparse
import contextlib
import math
import resource
import sys
import time
import warnings

warnings.filterwarnings("ignore", message=".*NumPy.*")  # the venv has no numpy; torch warns
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# Parameter counts printed by `./target/release/msdiff info --preset NAME` (msdiff ccd52f1).
# `--expect-params` overrides (benches/train_step.sh passes the live count).
MSDIFF_PARAMS = {
    "reference-6.5m": 6_472_195,
    "small-multistage": 4_182_243,
    "small-unified": 1_752_993,
}

# ----------------------------------------------------------------------------------------------
# config.rs presets


def preset(name):
    paper = dict(
        in_channels=3, resolution=32, base_channels=128, channel_mult=[1, 2, 2, 2], num_res_blocks=8,
        attn_resolutions=[16], dropout=0.1, resample="fir", resample_with="resblock", decoder_attn="level",
        input_pyramid=True, skip_rescale=True, embedding_dim=None, decoder_channels=[192, 128, 16],
        architecture="multistage", norm_max_groups=16, norm_eps=1e-6, init_scale=0.0,
    )
    small = dict(
        in_channels=1, resolution=28, base_channels=32, channel_mult=[1, 2, 2], num_res_blocks=2,
        attn_resolutions=[7], dropout=0.1, resample="plain", resample_with="resblock", decoder_attn="level",
        input_pyramid=False, skip_rescale=True, embedding_dim=None, decoder_channels=[48, 32, 16],
        architecture="multistage", norm_max_groups=32, norm_eps=1e-6, init_scale=0.0,
    )
    if name == "reference-6.5m":
        return {**paper, **dict(base_channels=64, channel_mult=[1, 2, 2], num_res_blocks=2, attn_resolutions=[16],
                                resample="plain", resample_with="conv", decoder_attn="block", input_pyramid=False,
                                decoder_channels=[64], norm_max_groups=32)}
    if name == "small-multistage":
        return small
    if name == "small-unified":
        return {**small, "decoder_channels": [32]}
    if name == "tiny":
        return {**small, **dict(in_channels=1, resolution=16, base_channels=16, channel_mult=[1, 2], num_res_blocks=1,
                                attn_resolutions=[8], decoder_channels=[24, 16, 8])}
    if name == "cifar10-multistage":
        return paper
    if name == "cifar10-unified":
        return {**paper, "decoder_channels": [128]}
    raise SystemExit(f"unknown preset {name!r}")


def groups(cfg, c):
    return min(c // 4, cfg["norm_max_groups"])


def skip_channels(cfg):
    e = cfg["base_channels"]
    hs = [e]
    nl = len(cfg["channel_mult"])
    for i, m in enumerate(cfg["channel_mult"]):
        hs += [e * m] * cfg["num_res_blocks"]
        if i + 1 != nl:
            hs.append(e * m)
    return hs


# ----------------------------------------------------------------------------------------------
# layers.rs


def variance_scaling_(w, fan_in, fan_out, scale):
    scale = 1e-10 if scale == 0.0 else scale
    b = math.sqrt(3.0 * scale / ((fan_in + fan_out) / 2.0))
    with torch.no_grad():
        w.uniform_(-b, b)


class Conv2d(nn.Conv2d):
    """Conv with bias, score_sde variance-scaling init, bias zero."""

    def __init__(self, i, o, k, stride=1, padding=None, init_scale=1.0, init=None):
        super().__init__(i, o, k, stride=stride, padding=k // 2 if padding is None else padding, bias=True)
        if init is None:
            variance_scaling_(self.weight, i * k * k, o * k * k, init_scale)
        else:
            init(self.weight)
        nn.init.zeros_(self.bias)


class Dense(nn.Linear):
    def __init__(self, i, o, init_scale=1.0):
        super().__init__(i, o, bias=True)
        variance_scaling_(self.weight, i, o, init_scale)
        nn.init.zeros_(self.bias)


def group_norm(cfg, c):
    return nn.GroupNorm(groups(cfg, c), c, eps=cfg["norm_eps"], affine=True)


def fir_kernel(x, gain):
    k1 = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=x.dtype, device=x.device)
    k = torch.outer(k1, k1) / 64.0 * gain
    c = x.shape[1]
    return k.reshape(1, 1, 4, 4).expand(c, 1, 4, 4)


def downsample(x, kind):
    if kind == "fir":
        return F.conv2d(x, fir_kernel(x, 1.0), None, stride=2, padding=1, groups=x.shape[1])
    return F.avg_pool2d(x, 2, 2, 0, ceil_mode=False, count_include_pad=True)


def upsample(x, kind):
    if kind == "fir":
        return F.conv_transpose2d(x, fir_kernel(x, 4.0), None, stride=2, padding=1, groups=x.shape[1])
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


class ConvDown(nn.Module):
    def __init__(self, i, o, kind):
        super().__init__()
        self.kind = kind
        self.conv = Conv2d(i, o, 3, stride=2, padding=0 if kind == "fir" else 1)

    def forward(self, x):
        if self.kind == "fir":
            x = F.conv2d(x, fir_kernel(x, 1.0), None, stride=1, padding=2, groups=x.shape[1])
        return self.conv(x)


class ConvUp(nn.Module):
    def __init__(self, i, o, kind):
        super().__init__()
        self.kind = kind
        self.conv = Conv2d(i, o, 3)

    def forward(self, x):
        return self.conv(upsample(x, self.kind))


def add_skip(a, b, rescale):
    s = a + b
    return s * (1.0 / math.sqrt(2.0)) if rescale else s


# ----------------------------------------------------------------------------------------------
# blocks.rs


class ResBlock(nn.Module):
    """BigGAN residual block (score_sde ResnetBlockBigGANpp), updown in {None, 'up', 'down'}."""

    def __init__(self, cfg, i, o, updown=None):
        super().__init__()
        self.cfg, self.updown = cfg, updown
        self.norm0 = group_norm(cfg, i)
        self.conv0 = Conv2d(i, o, 3)
        self.temb_proj = Dense(4 * cfg["base_channels"], o)
        self.norm1 = group_norm(cfg, o)
        self.conv1 = Conv2d(o, o, 3, init_scale=cfg["init_scale"])
        self.skip = Conv2d(i, o, 1) if (i != o or updown is not None) else None

    def forward(self, x, temb):
        h = F.silu(self.norm0(x))
        if self.updown == "up":
            h, x = upsample(h, self.cfg["resample"]), upsample(x, self.cfg["resample"])
        elif self.updown == "down":
            h, x = downsample(h, self.cfg["resample"]), downsample(x, self.cfg["resample"])
        h = self.conv0(h)
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = F.silu(self.norm1(h))
        if self.cfg["dropout"] > 0.0:
            h = F.dropout(h, self.cfg["dropout"], self.training)
        h = self.conv1(h)
        skip = self.skip(x) if self.skip is not None else x
        return add_skip(skip, h, self.cfg["skip_rescale"])


class AttnBlock(nn.Module):
    """Single-head self-attention over H*W positions (score_sde AttnBlockpp), fused qkv 1x1."""

    def __init__(self, cfg, c):
        super().__init__()
        self.cfg = cfg
        self.norm = group_norm(cfg, c)
        self.qkv = Conv2d(c, 3 * c, 1, init=lambda w: variance_scaling_(w, c, c, 0.1))
        self.proj_out = Conv2d(c, c, 1, init_scale=cfg["init_scale"])

    def forward(self, x):
        b, c, hh, ww = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, c, hh * ww)
        q, k, v = qkv.select(1, 0), qkv.select(1, 1), qkv.select(1, 2)  # [B, C, N]
        w = torch.bmm(q.transpose(1, 2), k) * (c ** -0.5)  # [B, N(query), N(key)]
        w = w.softmax(-1)
        h = torch.bmm(v, w.transpose(1, 2)).reshape(b, c, hh, ww)
        return add_skip(x, self.proj_out(h), self.cfg["skip_rescale"])


# ----------------------------------------------------------------------------------------------
# embedding.rs


def sinusoidal(t, dim):
    half = dim // 2
    scale = math.log(10000.0) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * -scale)
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([args.sin(), args.cos()], 1)


class TimeEmbedding(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.e = cfg["embedding_dim"] or cfg["base_channels"]
        t = 4 * cfg["base_channels"]
        self.dense0 = Dense(self.e, t)
        self.dense1 = Dense(t, t)

    def forward(self, label):
        return self.dense1(F.silu(self.dense0(sinusoidal(label, self.e))))


# ----------------------------------------------------------------------------------------------
# unet.rs


class Encoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        e, nl = cfg["base_channels"], len(cfg["channel_mult"])
        self.conv_in = Conv2d(cfg["in_channels"], e, 3)
        c, pyr_c = e, cfg["in_channels"]
        self.levels = nn.ModuleList()
        for i, m in enumerate(cfg["channel_mult"]):
            lvl = nn.Module()
            has_attn = (cfg["resolution"] >> i) in cfg["attn_resolutions"]
            lvl.blocks, lvl.attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg["num_res_blocks"]):
                lvl.blocks.append(ResBlock(cfg, c, e * m))
                c = e * m
                if has_attn:
                    lvl.attns.append(AttnBlock(cfg, c))
            lvl.down = lvl.pyramid = None
            if i + 1 != nl:
                lvl.down = ResBlock(cfg, c, c, "down") if cfg["resample_with"] == "resblock" else ConvDown(c, c, cfg["resample"])
                if cfg["input_pyramid"]:
                    lvl.pyramid = ConvDown(pyr_c, c, cfg["resample"])
                    pyr_c = c
            self.levels.append(lvl)
        self.mid0 = ResBlock(cfg, c, c)
        self.mid_attn = AttnBlock(cfg, c)
        self.mid1 = ResBlock(cfg, c, c)

    def forward(self, x, temb):
        hs = [self.conv_in(x)]
        pyramid = x
        for lvl in self.levels:
            for b, block in enumerate(lvl.blocks):
                h = block(hs[-1], temb)
                if b < len(lvl.attns):
                    h = lvl.attns[b](h)
                hs.append(h)
            if lvl.down is not None:
                h = lvl.down(hs[-1], temb) if isinstance(lvl.down, ResBlock) else lvl.down(hs[-1])
                if lvl.pyramid is not None:
                    pyramid = add_skip(lvl.pyramid(pyramid), h, self.cfg["skip_rescale"])
                    h = pyramid
                hs.append(h)
        h = self.mid0(hs[-1], temb)
        h = self.mid_attn(h)
        h = self.mid1(h, temb)
        return h, hs


class Decoder(nn.Module):
    def __init__(self, cfg, d):
        super().__init__()
        skips = skip_channels(cfg)
        nl = len(cfg["channel_mult"])
        c = cfg["base_channels"] * cfg["channel_mult"][-1]
        self.levels = nn.ModuleList()
        for i in reversed(range(nl)):
            lvl = nn.Module()
            has_attn = (cfg["resolution"] >> i) in cfg["attn_resolutions"]
            o = d * cfg["channel_mult"][i]
            lvl.blocks, lvl.attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg["num_res_blocks"] + 1):
                sc = skips.pop()
                lvl.blocks.append(ResBlock(cfg, c + sc, o))
                c = o
                if has_attn and cfg["decoder_attn"] == "block":
                    lvl.attns.append(AttnBlock(cfg, c))
            if has_attn and cfg["decoder_attn"] == "level":
                lvl.attns.append(AttnBlock(cfg, c))
            lvl.per_block = cfg["decoder_attn"] == "block" and len(lvl.attns) > 0
            lvl.up = None
            if i != 0:
                lvl.up = ResBlock(cfg, c, c, "up") if cfg["resample_with"] == "resblock" else ConvUp(c, c, cfg["resample"])
            self.levels.append(lvl)
        self.norm_out = group_norm(cfg, c)
        self.conv_out = Conv2d(c, cfg["in_channels"], 3, init_scale=cfg["init_scale"])

    def forward(self, h, skips, temb):
        k = len(skips)
        for lvl in self.levels:
            for b, block in enumerate(lvl.blocks):
                k -= 1
                h = block(torch.cat([h, skips[k]], 1), temb)
                if lvl.per_block:
                    h = lvl.attns[b](h)
            if not lvl.per_block and len(lvl.attns) > 0:
                h = lvl.attns[0](h)
            if lvl.up is not None:
                h = lvl.up(h, temb) if isinstance(lvl.up, ResBlock) else lvl.up(h)
        assert k == 0
        return self.conv_out(F.silu(self.norm_out(h)))


class MultiStageUNet(nn.Module):
    """Shared time embedding + encoder, one decoder per stage (multistage / unified)."""

    def __init__(self, cfg):
        super().__init__()
        assert cfg["architecture"] == "multistage", "the separate baseline is not needed here"
        self.cfg = cfg
        self.embed = TimeEmbedding(cfg)
        self.encoder = Encoder(cfg)
        self.decoders = nn.ModuleList(Decoder(cfg, d) for d in cfg["decoder_channels"])

    def forward_stage(self, x, label, j):
        temb = self.embed(label)
        h, skips = self.encoder(x, temb)
        return self.decoders[j](h, skips, temb)

    def forward(self, x, label, stage):
        b = x.shape[0]
        ids = stage.tolist()  # msdiff copies the ids to the host too
        groups_ = [[i for i, s in enumerate(ids) if s == j] for j in range(len(self.decoders))]
        for j, g in enumerate(groups_):
            if len(g) == b:  # everything in one stage: no gather/scatter
                return self.forward_stage(x, label, j)
        out = None  # allocated in the decoders' dtype (bf16 under autocast)
        temb = self.embed(label)
        h, skips = self.encoder(x, temb)
        for j, g in enumerate(groups_):
            if not g:
                continue
            idx = torch.tensor(g, dtype=torch.int64, device=x.device)
            sel = lambda t: t.index_select(0, idx)  # noqa: E731
            y = self.decoders[j](sel(h), [sel(s) for s in skips], sel(temb))
            if out is None:
                out = y.new_zeros((b,) + tuple(y.shape[1:]))
            out = out.index_copy(0, idx, y)
        return out


# ----------------------------------------------------------------------------------------------
# benchmark (src/cli/bench.rs `bench_train`)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="reference-6.5m")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--expect-params", type=int, default=None,
                    help="msdiff's parameter count (`msdiff info --preset NAME`); default: the table in this file")
    ap.add_argument("--grad-clip", type=float, default=0.0,
                    help="clip the global grad norm before Adam, as msdiff's default OptimConfig (grad_clip 1) "
                         "does in `msdiff bench train`; 0 = plain torch.optim.Adam (the reference)")
    ap.add_argument("--foreach", choices=["default", "on", "off"], default="default",
                    help="torch.optim.Adam foreach flag (default: PyTorch's choice, the for-loop on CPU)")
    ap.add_argument("--forward-only", action="store_true", help="time the forward pass alone (profiling)")
    ap.add_argument("--phases", action="store_true",
                    help="profile: time forward (no grad), forward + backward, and Adam alone (for-loop and foreach)")
    ap.add_argument("--count-only", action="store_true", help="check the parameter count and exit")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: torch.autocast(bfloat16) around the forward pass, loss in fp32 (PyTorch's own mixed precision)")
    ap.add_argument("--sample-nfe", type=int, default=0,
                    help="time sampling instead: this many no-grad network evaluations over t from 1 to 1e-3, "
                         "stages cut at t = 0.442, 0.631 for 3-stage models (as `msdiff bench sample`)")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = preset(a.preset)
    net = MultiStageUNet(cfg)
    dev = torch.device(a.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    net = net.to(dev)
    n_params = sum(p.numel() for p in net.parameters())
    expect = a.expect_params if a.expect_params is not None else MSDIFF_PARAMS.get(a.preset)
    if expect is None:
        sys.exit(f"no msdiff parameter count known for {a.preset}; pass --expect-params")
    assert n_params == expect, f"{a.preset}: PyTorch model has {n_params} parameters, msdiff {expect}"
    print(f"network: {a.preset}, {n_params} parameters (= msdiff), batch {a.batch}, "
          f"{len(cfg['decoder_channels'])} stage(s); torch {torch.__version__}, {torch.get_num_threads()} threads")
    if a.count_only:
        return

    b, c, r, k = a.batch, cfg["in_channels"], cfg["resolution"], len(cfg["decoder_channels"])
    x = torch.randn(b, c, r, r).to(dev)
    label = torch.tensor([999.0 * (i + 0.5) / b for i in range(b)], dtype=torch.float32).to(dev)
    stage = torch.tensor([i * k // b for i in range(b)], dtype=torch.int64).to(dev)
    target = torch.randn_like(x)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    amp = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if a.precision == "bf16" else contextlib.nullcontext
    print(f"device {dev}, precision {a.precision}"
          + (f", {torch.cuda.get_device_name(dev)}, CUDA {torch.version.cuda}" if dev.type == "cuda" else ""))
    net.train()
    foreach = {"default": None, "on": True, "off": False}[a.foreach]
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, foreach=foreach)
    params = list(net.parameters())

    cuts = [0.442, 0.631] if k == 3 else [j / k for j in range(1, k)]
    grid = [1.0 - (1.0 - 1e-3) * i / (max(a.sample_nfe, 2) - 1) for i in range(a.sample_nfe)]

    def step():
        if a.sample_nfe > 0:
            with torch.no_grad(), amp():
                for t in grid:
                    st = sum(1 for cut in cuts if t >= cut)
                    net(x, torch.full((b,), 999.0 * t, device=dev), torch.full((b,), st, dtype=torch.int64, device=dev))
            sync()
            return
        if a.forward_only:
            with torch.no_grad(), amp():
                net(x, label, stage)
            sync()
            return
        opt.zero_grad(set_to_none=True)
        with amp():
            out = net(x, label, stage)
        loss = (out.float() - target).square().mean()
        loss.backward()
        if a.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, a.grad_clip)
        opt.step()
        sync()

    if a.phases:
        def med(f, n):
            f()
            ts = []
            for _ in range(max(1, n)):
                t = time.perf_counter()
                f()
                ts.append(time.perf_counter() - t)
            return sorted(ts)[len(ts) // 2]

        def fwd():
            with torch.no_grad():
                net(x, label, stage)

        def fb():
            opt.zero_grad(set_to_none=True)
            (net(x, label, stage) - target).square().mean().backward()

        print(f"forward (no grad):            {med(fwd, a.repeats):.3f} s")
        print(f"forward + backward:           {med(fb, a.repeats):.3f} s")
        for name, fe in [("Adam step (for-loop)", False), ("Adam step (foreach)", True)]:
            o = torch.optim.Adam(params, lr=1e-4, foreach=fe)
            print(f"{name:<30}{med(o.step, max(5, a.repeats)):.4f} s")
        print(f"clip_grad_norm_(1.0):         {med(lambda: torch.nn.utils.clip_grad_norm_(params, 1.0), 5):.4f} s")
        return

    step()  # warm-up
    times = []
    for _ in range(max(1, a.repeats)):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    med = sorted(times)[len(times) // 2]  # same rule as msdiff's median (upper median)
    what = (f"sampling ({a.sample_nfe} NFE)" if a.sample_nfe > 0 else
            "forward (no grad)" if a.forward_only else "train step (forward + backward + Adam)")
    print(f"{what}: median {med:.3f} s over {a.repeats} ({b / med:.1f} images/s); all: "
          + ", ".join(f"{t:.3f}" for t in times))
    print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    if dev.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated(dev) / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
