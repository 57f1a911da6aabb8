"""The official EDM networks' training step in PyTorch: the reference for `msdiff bench train` on the
paper-size DDPM++ presets (docs/BENCHMARKS.md, "Against the official networks").

Builds, from the multi-stage authors' fork of EDM (`edm/training/networks.py` of
LucasYFL/Multistage_Diffusion, imported from the given folder; nothing of it is copied here):
  unified:    EDMPrecond(SongUNet), EDM's CIFAR-10 DDPM++ (model_channels 128, channel_mult 2,2,2,
              4 blocks, attention at 16, dropout 0.13, positional embedding, [1,1] resampling,
              augment_dim 9) = msdiff's cifar10-edm-unified;
  multistage: EDMPrecond(MultistageUNet), encoder 128, decoders 192 / 128 / 16 = msdiff's
              cifar10-edm-multistage.
The parameter counts are printed and must equal msdiff's (`msdiff info --preset ...`). One step is
what the official training loop does per batch: EDM's loss (sigma ~ the stage's interval for the
multi-stage net, whose forward routes the whole batch to one decoder, as EDMMultistageLoss draws
it), weighted MSE, backward, torch.optim.Adam (PyTorch's default implementation, as the official
loop builds it). Random images; one warm-up step, then the median of --repeats.

    python benches/official_edm.py --edm /tmp/ms/edm --batch 16 --repeats 3 --threads 2
(needs numpy and requests next to torch: EDM's modules import them.)
"""
import argparse, os, sys, time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--edm", required=True, help="the edm/ folder of LucasYFL/Multistage_Diffusion")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--nets", default="unified,stage0,stage1,stage2")
    a = p.parse_args()
    import torch
    torch.set_num_threads(a.threads)
    sys.path.insert(0, os.path.abspath(a.edm))
    from training.networks import EDMPrecond  # noqa: E402

    common = dict(img_resolution=32, img_channels=3, embedding_type="positional", encoder_type="standard",
                  decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1], channel_mult=[2, 2, 2],
                  num_blocks=4, attn_resolutions=[16], dropout=0.13, augment_dim=9)
    cuts = [2.5103, 7.6577]  # the official EDM stage boundaries (sigma)
    intervals = [(0.002, cuts[0]), (cuts[0], cuts[1]), (cuts[1], 80.0)]
    built = {}

    def net(kind):
        if kind not in built:
            torch.manual_seed(0)
            if kind == "unified":
                m = EDMPrecond(model_type="SongUNet", model_channels=128, **common)
            else:
                m = EDMPrecond(model_type="MultistageUNet", en_model_channels=128, de_model_channels=[192, 128, 16],
                               stage_num=3, **common)
            m.train()
            opt = torch.optim.Adam(m.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8)
            n = sum(q.numel() for q in m.parameters())
            print(f"official {kind}: {n} parameters")
            built[kind] = (m, opt)
        return built[kind]

    g = torch.Generator().manual_seed(0)
    for name in a.nets.split(","):
        kind = "unified" if name == "unified" else "multistage"
        m, opt = net(kind)
        lo, hi = intervals[int(name[-1])] if name.startswith("stage") else (0.002, 80.0)
        y = torch.randn(a.batch, 3, 32, 32, generator=g)
        # sigma spread over the interval in log space (the loss's log-normal restricted to it).
        u = (torch.arange(a.batch, dtype=torch.float32) + 0.5) / a.batch
        sigma = (torch.log(torch.tensor(lo)) + u * (torch.log(torch.tensor(hi)) - torch.log(torch.tensor(lo)))).exp()
        sigma = sigma.reshape(-1, 1, 1, 1)
        aug = torch.zeros(a.batch, 9)
        times = []
        for r in range(a.repeats + 1):
            t0 = time.perf_counter()
            n = torch.randn(y.shape, generator=g) * sigma
            weight = (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2
            loss = (weight * (m(y + n, sigma, None, augment_labels=aug) - y) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if r > 0:
                times.append(time.perf_counter() - t0)
        times.sort()
        print(f"official {name}: batch {a.batch}, median {times[len(times) // 2]:.3f} s over {a.repeats} "
              f"(rounds {' '.join(f'{t:.3f}' for t in times)})", flush=True)


if __name__ == "__main__":
    main()
