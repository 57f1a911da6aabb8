//! Tests of the FID module: the network against the reference fixtures, the resize, the
//! statistics and the Frechet distance against closed forms.
use super::inception::{read_weights, resolve_weights, strip_prefix, tf1_bilinear_matrix, WEIGHTS_ENV};
use super::*;
use crate::data::assets::{self, test_asset_present, Asset};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The weights (safetensors) in the folder beside the repository (dev and CI machines).
fn shared_weights() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_WEIGHTS)
}

/// The copy `scripts/fetch-assets fid-weights` fetched, if there is a cache folder.
fn fetched_weights() -> Option<PathBuf> {
    assets::cache_root().map(|r| assets::fetched_path(Asset::FidWeights, &r))
}

/// The weights the tests use: `$MSDIFF_FID_WEIGHTS`, else the shared copy, else the fetched one.
fn weights_path() -> PathBuf {
    if let Some(p) = std::env::var_os(WEIGHTS_ENV).filter(|v| !v.is_empty()) {
        return p.into();
    }
    let shared = shared_weights();
    match fetched_weights() {
        Some(f) if !shared.is_file() && f.is_file() => f,
        _ => shared,
    }
}

/// The golden inputs and outputs (only in the shared folder).
fn fixture(name: &str) -> PathBuf {
    shared_weights().parent().unwrap().join("fixtures").join(name)
}

/// The network, or `None` (test skipped, loudly; a failure under CI=true) when no weights are present.
fn net() -> Option<FidInception> {
    let p = weights_path();
    if !test_asset_present(&p, "FID weights") {
        return None;
    }
    Some(FidInception::load(&p, Device::Cpu).unwrap())
}

/// The golden inputs and features, or `None` (skipped loudly; a failure under CI=true).
fn golden() -> Option<(Tensor, Tensor)> {
    let (i, f) = (fixture("inputs_u8.npy"), fixture("features_f32.npy"));
    if !test_asset_present(&i, "FID golden inputs") || !test_asset_present(&f, "FID golden features") {
        return None;
    }
    Some((Tensor::read_npy(i).unwrap(), Tensor::read_npy(f).unwrap().to_kind(Kind::Double)))
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

#[test]
fn fid_features_match_reference_fixture() {
    let Some(net) = net() else { return };
    let Some((inputs, golden)) = golden() else { return };
    assert_eq!(inputs.size(), [4, 3, 299, 299]);
    assert_eq!(inputs.kind(), Kind::Uint8);
    let feats = net.features_u8(&inputs).unwrap();
    assert_eq!(feats.size(), [4, 2048]);
    assert_eq!(feats.kind(), Kind::Float);
    let f = feats.to_kind(Kind::Double);
    let err = max_abs(&(&f - &golden));
    let rel = err / max_abs(&golden);
    let cos = (&f * &golden).sum_dim_intlist([1i64].as_slice(), false, Kind::Double)
        / (f.norm_scalaropt_dim(2, [1i64].as_slice(), false) * golden.norm_scalaropt_dim(2, [1i64].as_slice(), false));
    let min_cos = cos.min().double_value(&[]);
    let row_rel = (&f - &golden).norm_scalaropt_dim(2, [1i64].as_slice(), false)
        / golden.norm_scalaropt_dim(2, [1i64].as_slice(), false);
    let max_row_rel = row_rel.max().double_value(&[]);
    eprintln!(
        "fixture: max|a-b| = {err:.3e}, max|a-b|/max|b| = {rel:.3e}, max_row ||a-b||/||b|| = {max_row_rel:.3e}, \
         min_row cos = {min_cos:.9}, max|b| = {:.4}",
        max_abs(&golden)
    );
    assert!(rel < 1e-4, "relative error {rel}");
    assert!(max_row_rel < 1e-4, "row relative error {max_row_rel}");
    assert!(1.0 - min_cos < 1e-7, "cosine {min_cos}");

    // Batching does not change the features (beyond float reassociation).
    let f1 = features(&net, &inputs, 1, |_| {}).unwrap();
    let d = max_abs(&(&f1 - &feats)) / max_abs(&feats);
    eprintln!("batch 1 vs batch 4: max rel diff {d:.3e}");
    assert!(d < 1e-5, "batch 1 vs 4 differ by {d}");

    // Float input in [0, 255] == u8 input; [-1, 1] input == u8 input (quantisation is exact).
    let ff = net.features_u8(&inputs.to_kind(Kind::Float)).unwrap();
    assert!(max_abs(&(&ff - &feats)) == 0.0);
    let pm1 = inputs.to_kind(Kind::Float) / 127.5 - 1.0;
    let fp = net.features_pm1(&pm1).unwrap();
    assert!(max_abs(&(&fp - &feats)) == 0.0);

    // Grey images are replicated to RGB.
    let grey = inputs.narrow(1, 0, 1);
    let fg = net.features_u8(&grey).unwrap();
    let fr = net.features_u8(&grey.expand([-1, 3, -1, -1], false).contiguous()).unwrap();
    assert!(max_abs(&(&fg - &fr)) == 0.0);

    // Out-of-range input is refused.
    let e = net.features_u8(&(inputs.to_kind(Kind::Float) / 255.0 - 0.5)).unwrap_err().to_string();
    assert!(e.contains("[0, 255]"), "{e}");

    let gf = net.flops_per_image() / 1e9;
    eprintln!("GFLOP per image (2 x conv MACs): {gf:.4}");
    assert!((11.0..12.0).contains(&gf), "{gf}");
}

#[test]
fn fid_weights_errors_are_clear() {
    let dir = std::env::temp_dir().join(format!("msdiff-fid-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let e = FidInception::load(dir.join("nope.safetensors"), Device::Cpu).unwrap_err().to_string();
    assert!(
        e.contains("not found") && e.contains("scripts/fetch-assets fid-weights") && e.contains("--weights"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");

    let wrong = dir.join("wrong.safetensors");
    let t = Tensor::zeros([32, 3, 3, 4], (Kind::Float, Device::Cpu));
    Tensor::write_safetensors(&[("conv.weight", &t)], &wrong).unwrap();
    let e = FidInception::load(&wrong, Device::Cpu).unwrap_err().to_string();
    assert!(
        e.contains("not the FID Inception weights file") && e.contains("conv.weight") && e.contains("shape"),
        "{e}"
    );

    let t = Tensor::zeros([32, 3, 3, 3], (Kind::Float, Device::Cpu));
    Tensor::write_safetensors(&[("conv.weight", &t)], &wrong).unwrap();
    let e = FidInception::load(&wrong, Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("not the FID Inception weights file") && e.contains("conv.beta missing"), "{e}");

    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"hello world, definitely not safetensors").unwrap();
    let e = FidInception::load(&garbage, Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("not a readable safetensors file"), "{e}");
    // A zip file that is not TorchScript: one line, no C++ trace.
    let zip = dir.join("not-torchscript.pt");
    std::fs::write(&zip, b"PK\x03\x04 and then nothing a zip reader wants").unwrap();
    let e = FidInception::load(&zip, Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("not a readable TorchScript file") && e.contains("scripts/fetch-assets"), "{e}");
    assert!(!e.contains('\n'), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Default weights: the environment variable, then the fetched copy, then the shared one; when
/// none is there, one line that says which command fetches them.
#[test]
fn default_weights_resolution() {
    let d = std::env::temp_dir().join(format!("msdiff-fid-resolve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let (cache, shared) = (d.join("cache"), d.join("shared"));
    let put = |p: &Path| {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"w").unwrap();
    };
    let e = format!("{:#}", resolve_weights(None, Some(&cache), &shared).unwrap_err());
    assert!(e.contains("run scripts/fetch-assets fid-weights") && !e.contains('\n'), "{e}");
    assert!(e.contains(&cache.join("assets/fid-weights/inception-2015-12-05-fid.pt").display().to_string()), "{e}");
    let shared_file = assets::shared_path(Asset::FidWeights, &shared);
    put(&shared_file);
    assert_eq!(resolve_weights(None, Some(&cache), &shared).unwrap(), shared_file);
    let fetched = assets::fetched_path(Asset::FidWeights, &cache);
    put(&fetched);
    assert_eq!(resolve_weights(None, Some(&cache), &shared).unwrap(), fetched);
    assert_eq!(resolve_weights(Some("".into()), Some(&cache), &shared).unwrap(), fetched);
    // The variable wins, and must name a file.
    assert_eq!(resolve_weights(Some(shared_file.clone().into()), Some(&cache), &shared).unwrap(), shared_file);
    let e = format!("{:#}", resolve_weights(Some(d.join("nope").into()), Some(&cache), &shared).unwrap_err());
    assert!(
        e.contains("MSDIFF_FID_WEIGHTS=") && e.contains("nope") && e.contains("scripts/fetch-assets fid-weights"),
        "{e}"
    );
    // The dev-machine default is the shared asset's path.
    assert_eq!(Path::new(DEFAULT_WEIGHTS), assets::shared_path(Asset::FidWeights, Path::new(assets::SHARED_ROOT)));
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn torchscript_names_lose_their_wrapper_prefix() {
    let t = || Tensor::zeros([1], (Kind::Float, Device::Cpu));
    let names = |v: Vec<(String, Tensor)>| v.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
    let wrapped = ["net.layers.conv.weight", "net.layers.mixed.conv.weight", "net.layers.conv.beta", "other.x"];
    let v = strip_prefix(wrapped.iter().map(|n| (n.to_string(), t())).collect());
    assert_eq!(names(v), ["conv.weight", "mixed.conv.weight", "conv.beta", "other.x"]);
    let plain = ["conv.weight", "mixed.conv.weight"];
    let v = strip_prefix(plain.iter().map(|n| (n.to_string(), t())).collect());
    assert_eq!(names(v), plain);
}

/// The TorchScript file that `scripts/fetch-assets fid-weights` fetches holds exactly the tensors of
/// the shared safetensors file (all 376, bit for bit), so both give the same features on the golden
/// inputs. Needs both copies: the fetched one is optional (CI has only the shared one), so its
/// absence is a skip even under CI=true.
#[test]
fn fetched_torchscript_weights_equal_the_shared_safetensors() {
    let shared = shared_weights();
    if !test_asset_present(&shared, "FID weights (safetensors)") {
        return;
    }
    let Some(fetched) = fetched_weights().filter(|f| f.is_file()) else {
        eprintln!(
            "SKIPPED: no fetched FID weights ({}); scripts/fetch-assets fid-weights fetches them",
            fetched_weights().map_or("no cache folder".into(), |f| f.display().to_string())
        );
        return;
    };
    let a: HashMap<String, Tensor> = read_weights(&shared).unwrap().into_iter().collect();
    let b: HashMap<String, Tensor> = read_weights(&fetched).unwrap().into_iter().collect();
    assert_eq!(a.len(), 376);
    assert_eq!(b.len(), 376);
    for (name, x) in &a {
        let y = b.get(name).unwrap_or_else(|| panic!("{name} missing from {}", fetched.display()));
        assert_eq!((x.kind(), x.size()), (y.kind(), y.size()), "{name}");
        assert!(x.equal(y), "{name} differs");
    }
    let Some((inputs, golden)) = golden() else { return };
    let fa = FidInception::load(&shared, Device::Cpu).unwrap().features_u8(&inputs).unwrap();
    let fb = FidInception::load(&fetched, Device::Cpu).unwrap().features_u8(&inputs).unwrap();
    assert_eq!(max_abs(&(&fa - &fb)), 0.0, "the two copies give different features");
    let rel = max_abs(&(fb.to_kind(Kind::Double) - &golden)) / max_abs(&golden);
    eprintln!("fetched TorchScript weights: 376 tensors equal, features equal, max rel error vs golden {rel:.3e}");
    assert!(rel < 1e-4, "{rel}");
}

/// TF1 legacy resize reference, straight from its definition (one pixel at a time).
fn tf1_resize_scalar(img: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    let (sy, sx) = (h as f32 / oh as f32, w as f32 / ow as f32);
    let mut out = vec![0f32; oh * ow];
    for y in 0..oh {
        let fy = y as f32 * sy;
        let (y0, dy) = (fy.floor() as usize, fy - fy.floor());
        let y1 = (y0 + 1).min(h - 1);
        for x in 0..ow {
            let fx = x as f32 * sx;
            let (x0, dx) = (fx.floor() as usize, fx - fx.floor());
            let x1 = (x0 + 1).min(w - 1);
            let p = |yy: usize, xx: usize| img[yy * w + xx];
            let top = p(y0, x0) + (p(y0, x1) - p(y0, x0)) * dx;
            let bot = p(y1, x0) + (p(y1, x1) - p(y1, x0)) * dx;
            out[y * ow + x] = top + (bot - top) * dy;
        }
    }
    out
}

#[test]
fn fid_resize_is_tf1_bilinear() {
    // Upsampling 3 -> 6: source = i * 0.5; the last row clamps to the edge (TF1's asymmetry).
    let m = Vec::<f32>::try_from(&tf1_bilinear_matrix(3, 6).view([-1])).unwrap();
    let want = [1., 0., 0., 0.5, 0.5, 0., 0., 1., 0., 0., 0.5, 0.5, 0., 0., 1., 0., 0., 1.];
    assert_eq!(m, want);
    // Downsampling 4 -> 2 picks pixels 0 and 2 (no antialias).
    let m = Vec::<f32>::try_from(&tf1_bilinear_matrix(4, 2).view([-1])).unwrap();
    assert_eq!(m, [1., 0., 0., 0., 0., 0., 1., 0.]);
    // 299 -> 299 is the identity.
    let m = tf1_bilinear_matrix(299, 299);
    assert!(max_abs(&(m - Tensor::eye(299, (Kind::Float, Device::Cpu)))) == 0.0);
    // Random images, several sizes, against the pixel-by-pixel definition.
    tch::manual_seed(1);
    for &(h, w, oh, ow) in
        &[(5usize, 7usize, 11usize, 13usize), (28, 28, 299, 299), (64, 40, 299, 299), (512, 300, 299, 299)]
    {
        let x = Tensor::rand([2, 3, h as i64, w as i64], (Kind::Float, Device::Cpu)) * 255.0;
        let y = resize_tf1_bilinear(&x, oh as i64, ow as i64);
        assert_eq!(y.size(), [2, 3, oh as i64, ow as i64]);
        let img = Vec::<f32>::try_from(&x.get(1).get(2).contiguous().view([-1])).unwrap();
        let want = Tensor::from_slice(&tf1_resize_scalar(&img, h, w, oh, ow)).view([oh as i64, ow as i64]);
        let err = max_abs(&(y.get(1).get(2) - want));
        assert!(err < 1e-3, "{h}x{w} -> {oh}x{ow}: {err}");
    }
}

fn f64t(v: &[f64]) -> Tensor {
    Tensor::from_slice(v)
}

fn stats(mu: &Tensor, sigma: &Tensor, n: u64) -> FidStats {
    FidStats::new(mu, sigma, n, NETWORK_NAME, RESIZE_NAME).unwrap()
}

fn opts() -> (Kind, Device) {
    (Kind::Double, Device::Cpu)
}

#[test]
fn fid_frechet_diagonal_and_commuting_closed_forms() {
    tch::manual_seed(2);
    let d = 64;
    let mu_a = Tensor::randn([d], opts());
    let mu_b = Tensor::randn([d], opts()) * 0.5 + 1.0;
    let a = Tensor::rand([d], opts()) * 3.0 + 0.01;
    let b = Tensor::rand([d], opts()) * 3.0 + 0.01;
    let dmu = (&mu_a - &mu_b).square().sum(Kind::Double).double_value(&[]);
    let want = dmu + (a.sqrt() - b.sqrt()).square().sum(Kind::Double).double_value(&[]);
    // Diagonal.
    let fid = frechet_distance(&stats(&mu_a, &a.diag(0), 10_000), &stats(&mu_b, &b.diag(0), 10_000)).unwrap();
    eprintln!("diagonal: fid {fid:.12} closed form {want:.12}");
    assert!((fid - want).abs() < 1e-10 * want, "{fid} vs {want}");
    // Commuting: same random eigenbasis.
    let (q, _) = Tensor::linalg_qr(&Tensor::randn([d, d], opts()), "reduced");
    let sa = (&q * a.unsqueeze(0)).matmul(&q.tr());
    let sb = (&q * b.unsqueeze(0)).matmul(&q.tr());
    let (sa_, sb_) = (stats(&mu_a, &sa, 10_000), stats(&mu_b, &sb, 10_000));
    let fid = frechet_distance(&sa_, &sb_).unwrap();
    eprintln!("commuting: fid {fid:.12} closed form {want:.12}");
    assert!((fid - want).abs() < 1e-9 * want, "{fid} vs {want}");
    // Symmetry.
    let fid_ba = frechet_distance(&sb_, &sa_).unwrap();
    assert!((fid - fid_ba).abs() < 1e-9 * want, "{fid} vs {fid_ba}");
    // Not covariances: one eigenvalue of -1 (largest ~3) on either side is refused, not clamped to 0.
    let mut neg = b.copy();
    let _ = neg.get(7).fill_(-1.0);
    let bad = stats(&mu_b, &(&q * neg.unsqueeze(0)).matmul(&q.tr()), 10_000);
    for (x, y) in [(&sa_, &bad), (&bad, &sa_)] {
        let e = frechet_distance(x, y).unwrap_err().to_string();
        assert!(e.contains("significantly negative eigenvalue"), "{e}");
    }
    neg = neg.abs(); // the same matrix made valid again is accepted
    frechet_distance(&sa_, &stats(&mu_b, &(&q * neg.unsqueeze(0)).matmul(&q.tr()), 10_000)).unwrap();
}

#[test]
fn fid_frechet_2x2_noncommuting_identical_and_symmetric() {
    // 2x2 closed form: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)), M = sqrt(S_a) S_b sqrt(S_a),
    // tr M = tr(S_a S_b), det M = det S_a det S_b.
    let sa = f64t(&[2.0, 0.7, 0.7, 1.0]).view([2, 2]);
    let sb = f64t(&[0.5, -0.3, -0.3, 3.0]).view([2, 2]);
    let (mu_a, mu_b) = (f64t(&[0.1, -0.2]), f64t(&[1.0, 0.5]));
    let tr_ab = sa.matmul(&sb).trace().double_value(&[]);
    let det: f64 = (2.0 * 1.0 - 0.49) * (0.5 * 3.0 - 0.09);
    let want = 0.9f64.powi(2) + 0.7f64.powi(2) + 3.0 + 3.5 - 2.0 * (tr_ab + 2.0 * det.sqrt()).sqrt();
    let r = frechet_distance_report(&stats(&mu_a, &sa, 100), &stats(&mu_b, &sb, 100)).unwrap();
    eprintln!("2x2: fid {:.15} closed form {want:.15}", r.fid);
    assert!((r.fid - want).abs() < 1e-12, "{} vs {want}", r.fid);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);

    // Covariances of 512-d data with n > d and n < d (rank deficient).
    tch::manual_seed(3);
    let d = 512;
    for &n in &[800i64, 200] {
        let x = Tensor::randn([n, d], opts()).matmul(&(Tensor::randn([d, d], opts()) * 0.05)) + 0.3;
        let y = Tensor::randn([n, d], opts()).square() * 0.5;
        let (sx, sy) = (stats_of_features(&x).unwrap(), stats_of_features(&y).unwrap());
        let scale = sx.sigma.trace().double_value(&[]) + sy.sigma.trace().double_value(&[]);
        let same = frechet_distance_report(&sx, &sx.clone()).unwrap();
        let raw = same.mean_term + same.cov_term; // before clamping at 0
        eprintln!("n={n}: FID(x,x) = {raw:.3e} (scale {scale:.3e}), min rel eig {:.3e}", same.min_rel_eig);
        let tol = 1e-8;
        assert!(raw.abs() <= tol * scale, "FID(x, x) = {raw} (scale {scale})");
        let xy = frechet_distance(&sx, &sy).unwrap();
        let yx = frechet_distance(&sy, &sx).unwrap();
        eprintln!("n={n}: FID(x,y) = {xy:.9}, FID(y,x) = {yx:.9}");
        assert!((xy - yx).abs() <= 1e-6 * xy.max(1.0), "{xy} vs {yx}");
        let rank_warned = same.warnings.iter().any(|w| w.contains("samples for full rank"));
        assert_eq!(rank_warned, n < d + 1, "{:?}", same.warnings);
    }
}

#[test]
fn fid_streaming_stats_match_two_pass_and_roundtrip() {
    tch::manual_seed(4);
    let (n, d) = (1000i64, 16i64);
    // A large common offset: naive sum / sum-of-squares would lose digits, the merge does not.
    let x = Tensor::randn([n, d], opts()).matmul(&Tensor::randn([d, d], opts())) + 1e6;
    let mu = x.mean_dim([0i64].as_slice(), false, Kind::Double);
    let xc = &x - &mu;
    let cov = xc.tr().matmul(&xc) / (n - 1) as f64;
    let mut acc = StatsAccumulator::new();
    for (s, l) in [(0, 1), (1, 7), (8, 300), (308, 0), (308, 692)] {
        acc.update(&x.narrow(0, s, l).to_kind(Kind::Double)).unwrap();
    }
    assert_eq!(acc.count(), 1000);
    let st = acc.finish(NETWORK_NAME, RESIZE_NAME).unwrap();
    let e_mu = max_abs(&(&st.mu - &mu));
    let e_cov = max_abs(&(&st.sigma - &cov)) / max_abs(&cov);
    eprintln!("streaming vs two-pass: mu {e_mu:.3e}, cov rel {e_cov:.3e}");
    assert!(e_mu < 1e-8 && e_cov < 1e-9);

    let dir = std::env::temp_dir().join(format!("msdiff-fidstats-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("s.safetensors");
    st.save(&p).unwrap();
    let back = FidStats::load(&p).unwrap();
    assert_eq!(back.n, 1000);
    assert_eq!(back.resize, RESIZE_NAME);
    assert_eq!(back.network, NETWORK_NAME);
    assert!(max_abs(&(&back.mu - &st.mu)) == 0.0 && max_abs(&(&back.sigma - &st.sigma)) == 0.0);
    assert!(frechet_distance(&back, &st).unwrap().abs() < 1e-6);

    // Not a stats file: a safetensors file without the metadata, and garbage.
    let other = dir.join("o.safetensors");
    Tensor::write_safetensors(&[("mu", &mu)], &other).unwrap();
    let e = FidStats::load(&other).unwrap_err().to_string();
    assert!(e.contains("is not an msdiff FID statistics file") && e.contains("format"), "{e}");
    std::fs::write(&other, b"\x05\0\0\0\0\0\0\0{}").unwrap();
    let e = FidStats::load(&other).unwrap_err().to_string();
    assert!(e.contains("is not an msdiff FID statistics file"), "{e}");
    let e = FidStats::load(dir.join("missing")).unwrap_err().to_string();
    assert!(e.contains("reading FID statistics"), "{e}");
    // Well-formed files with unusable contents: a non-finite covariance entry, n < 2.
    let bad = st.clone(); // deep copies
    let _ = bad.sigma.get(3).get(5).fill_(f64::INFINITY);
    bad.save(&other).unwrap();
    let e = FidStats::load(&other).unwrap_err().to_string();
    assert!(e.contains("non-finite value (inf) at element 53"), "{e}");
    let e = frechet_distance(&bad, &st).unwrap_err().to_string();
    assert!(e.contains("non-finite"), "{e}");
    FidStats { n: 1, ..st.clone() }.save(&other).unwrap();
    let e = FidStats::load(&other).unwrap_err().to_string();
    assert!(e.contains("n = 1"), "{e}");
    // Saving over a folder fails without leaving a temporary behind.
    let folder = dir.join("folder.safetensors");
    std::fs::create_dir_all(&folder).unwrap();
    assert!(st.save(&folder).unwrap_err().to_string().contains("it is a folder"));
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    std::fs::remove_dir_all(&dir).ok();

    // Differences in metadata are reported.
    let mut st2 = st.clone();
    st2.resize = "clean-fid bicubic".into();
    let r = frechet_distance_report(&st, &st2).unwrap();
    assert!(r.warnings.iter().any(|w| w.contains("different resizes")), "{:?}", r.warnings);
}
