"""A plain float64 PyTorch implementation of Algorithm 1 (msdiff cluster --method optimal), the
reference for `msdiff cluster`'s speed (docs/BENCHMARKS.md, "Timestep clustering").

Same algorithm and defaults as msdiff (docs/METHOD.md §3): data scaled to [0, 1], K samples
(index, t ~ U[1e-3, 1], noise) with the VP-SDE (beta 0.1..20), the posterior mean over the whole
set in batches of 256 (distances by one matmul, softmax, weighted mean), S0 = fraction of pixels
with |y - m| <= eta sigma, S1 the same for |ybar - m|, cuts at alpha. Its random draws are
torch's, not msdiff's, so its cuts agree with msdiff's only up to Monte-Carlo noise; msdiff's own
`--precision f64` run is the same-draws check.

    python benches/cluster_reference.py --data DIR [--samples 5000] [--threads 2]
(DIR: a folder with train-images-idx3-ubyte[.gz], e.g. the one scripts/fetch-assets makes.)
"""
import argparse, gzip, math, os, time

import torch


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    n, r, c = (int.from_bytes(raw[i : i + 4], "big") for i in (4, 8, 12))
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8, offset=16).reshape(n, r * c)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--samples", type=int, default=5000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--alpha", type=float, default=0.9)
    p.add_argument("--eta", type=float, default=2 / 255)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.time()
    name = next(f for f in ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte") if os.path.exists(os.path.join(a.data, f)))
    y_all = read_idx(os.path.join(a.data, name)).to(torch.float64) / 255.0
    n, d = y_all.shape
    ybar = y_all.mean(0)
    ysq = (y_all * y_all).sum(1)
    g = torch.Generator().manual_seed(a.seed)
    t_all, s0_all, s1_all = [], [], []
    for start in range(0, a.samples, 256):
        k = min(256, a.samples - start)
        idx = torch.randint(0, n, (k,), generator=g)
        t = 1e-3 + (1 - 1e-3) * torch.rand(k, generator=g, dtype=torch.float64)
        z = torch.randn(k, d, generator=g, dtype=torch.float64)
        log_s = -0.25 * t**2 * (20 - 0.1) - 0.5 * t * 0.1          # VP-SDE log alpha_t
        sigma = torch.sqrt(torch.exp(-2 * log_s) - 1)                 # noise-to-signal ratio
        y = y_all[idx]
        x = y + sigma[:, None] * z                                    # scaled x~ = y + sigma eps
        dist = (x * x).sum(1, keepdim=True) - 2 * x @ y_all.T + ysq[None, :]
        w = torch.softmax(-dist / (2 * sigma[:, None] ** 2), dim=1)
        m = w @ y_all
        thr = a.eta * sigma[:, None]
        s0_all.append(((y - m).abs() <= thr).double().mean(1))
        s1_all.append(((ybar[None, :] - m).abs() <= thr).double().mean(1))
        t_all.append(t)
    t, s0, s1 = torch.cat(t_all), torch.cat(s0_all), torch.cat(s1_all)
    order = torch.argsort(t)
    t, s0, s1 = t[order], s0[order], s1[order]
    prefix = torch.cumsum(s0, 0) / torch.arange(1, len(t) + 1)
    suffix = torch.flip(torch.cumsum(torch.flip(s1, [0]), 0), [0]) / torch.arange(len(t), 0, -1)
    t1 = t[(prefix >= a.alpha).nonzero().max()].item()
    t2 = t[(suffix >= a.alpha).nonzero().min()].item()
    print(f"pytorch f64 reference: K={a.samples}, {n}x{d}, {a.threads} threads: cuts {t1:.4f}, {t2:.4f}; wall {time.time() - t0:.2f} s")


if __name__ == "__main__":
    main()
