//! PNG/JPEG images <-> tensors in msdiff's pixel convention, `[C, H, W]` float in `[-1, 1]`.
//!
//! Conversions:
//! - to 8 bits: `u = clamp(round((x + 1) * 127.5), 0, 255)` where `round` is Rust's
//!   `f32::round` (halves away from zero, *not* libtorch's round-half-to-even); NaN maps to 0.
//! - from 8 bits: `x = u / 127.5 - 1`, so every `u8` survives a write/read round trip exactly.
//! - from 16 bits (PNG): `x = u / 65535 * 2 - 1`.
use super::atomic::write_atomic;
use super::FlatContext;
use anyhow::{anyhow, bail, Result};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// One float pixel value in `[-1, 1]` to 8 bits (see the module docs).
#[inline]
pub fn f32_to_u8(x: f32) -> u8 {
    ((x + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8
}

/// One 8-bit value to `[-1, 1]` (exact inverse of [`f32_to_u8`] on its range).
#[inline]
pub fn u8_to_f32(u: u8) -> f32 {
    u as f32 / 127.5 - 1.0
}

/// Lookup table for [`u8_to_f32`].
pub fn u8_lut() -> [f32; 256] {
    let mut lut = [0f32; 256];
    for (i, v) in lut.iter_mut().enumerate() {
        *v = u8_to_f32(i as u8);
    }
    lut
}

/// A float tensor in `[-1, 1]` (any shape, any device) to a CPU `Uint8` tensor of the same shape
/// via [`f32_to_u8`]. A `Uint8` input is returned as is (on the CPU).
pub fn tensor_to_u8(t: &Tensor) -> Result<Tensor> {
    Ok(Tensor::from_slice(&tensor_to_u8_vec(t)?).reshape(t.size().as_slice()))
}

/// Like [`tensor_to_u8`] but returns the values flattened in C order.
pub fn tensor_to_u8_vec(t: &Tensor) -> Result<Vec<u8>> {
    let flat = t.to_device(Device::Cpu).contiguous().reshape([-1]);
    let n = flat.numel();
    match t.kind() {
        Kind::Uint8 => {
            let mut v = vec![0u8; n];
            flat.copy_data(&mut v, n);
            Ok(v)
        }
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16 => {
            let flat = flat.to_kind(Kind::Float);
            let mut v = vec![0f32; n];
            flat.copy_data(&mut v, n);
            Ok(v.into_iter().map(f32_to_u8).collect())
        }
        k => bail!("image tensors must be float in [-1, 1] or Uint8, got {k:?}"),
    }
}

/// `[C, H, W]` (or `[H, W]`) -> (channels, height, width) with C in {1, 3}.
fn chw(t: &Tensor) -> Result<(usize, usize, usize)> {
    let s = t.size();
    let (c, h, w) = match s.as_slice() {
        [h, w] => (1, *h, *w),
        [c, h, w] => (*c, *h, *w),
        _ => bail!("an image must be [C, H, W] (or [H, W]), got shape {s:?}"),
    };
    if c != 1 && c != 3 {
        bail!("an image must have 1 (grey) or 3 (RGB) channels, got shape {s:?}");
    }
    if h <= 0 || w <= 0 {
        bail!("an image must not be empty, got shape {s:?}");
    }
    Ok((c as usize, h as usize, w as usize))
}

/// Encodes interleaved 8-bit pixels (`channels` 1 = grey, 3 = RGB) as PNG bytes.
pub fn encode_png(width: usize, height: usize, channels: usize, pixels: &[u8]) -> Result<Vec<u8>> {
    assert_eq!(pixels.len(), width * height * channels);
    let color = match channels {
        1 => png::ColorType::Grayscale,
        3 => png::ColorType::Rgb,
        4 => png::ColorType::Rgba,
        c => bail!("cannot encode {c} channels as PNG"),
    };
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width as u32, height as u32);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header()?;
        w.write_image_data(pixels)?;
        w.finish()?;
    }
    Ok(out)
}

/// Planar `[C, H, W]` bytes -> interleaved `[H, W, C]`.
fn interleave(c: usize, h: usize, w: usize, planar: &[u8]) -> Vec<u8> {
    if c == 1 {
        return planar.to_vec();
    }
    let mut out = vec![0u8; c * h * w];
    for ch in 0..c {
        for i in 0..h * w {
            out[i * c + ch] = planar[ch * h * w + i];
        }
    }
    out
}

/// Writes one image `[C, H, W]` (C = 1 grey or 3 RGB; float in `[-1, 1]` or `Uint8`) as an
/// 8-bit PNG, atomically.
pub fn write_png(path: &Path, img: &Tensor) -> Result<()> {
    let run = || -> Result<Vec<u8>> {
        let (c, h, w) = chw(img)?;
        let planar = tensor_to_u8_vec(img)?;
        encode_png(w, h, c, &interleave(c, h, w, &planar))
    };
    let bytes = run().flat_context(|| format!("cannot write {}", path.display()))?;
    write_atomic(path, |f| Ok(f.write_all(&bytes)?))
}

/// Grey value of the padding between grid cells (mid grey: visible on dark and light images).
pub const GRID_PAD_VALUE: u8 = 128;

/// Tiles `imgs` `[N, C, H, W]` row-major into a grid of `ncols` columns (rows as needed) with
/// `padding` pixels of [`GRID_PAD_VALUE`] around and between cells; empty trailing cells are
/// padding colour. Returns (width, height, channels, interleaved bytes).
pub fn grid_pixels(imgs: &Tensor, ncols: usize, padding: usize) -> Result<(usize, usize, usize, Vec<u8>)> {
    let s = imgs.size();
    if s.len() != 4 {
        bail!("a grid needs [N, C, H, W] images, got shape {s:?}");
    }
    let (n, c, h, w) = (s[0] as usize, s[1] as usize, s[2] as usize, s[3] as usize);
    if n == 0 || h == 0 || w == 0 {
        bail!("a grid needs at least one non-empty image, got shape {s:?}");
    }
    if c != 1 && c != 3 {
        bail!("grid images must have 1 or 3 channels, got shape {s:?}");
    }
    let ncols = ncols.clamp(1, n);
    let nrows = n.div_ceil(ncols);
    let gw = ncols * w + (ncols + 1) * padding;
    let gh = nrows * h + (nrows + 1) * padding;
    let planar = tensor_to_u8_vec(imgs)?;
    let mut out = vec![GRID_PAD_VALUE; gw * gh * c];
    for k in 0..n {
        let (r, col) = (k / ncols, k % ncols);
        let (y0, x0) = (padding + r * (h + padding), padding + col * (w + padding));
        for ch in 0..c {
            let plane = &planar[(k * c + ch) * h * w..(k * c + ch + 1) * h * w];
            for y in 0..h {
                for x in 0..w {
                    out[((y0 + y) * gw + x0 + x) * c + ch] = plane[y * w + x];
                }
            }
        }
    }
    Ok((gw, gh, c, out))
}

/// Writes `imgs` `[N, C, H, W]` as one PNG grid (see [`grid_pixels`]), atomically.
pub fn write_grid(path: &Path, imgs: &Tensor, ncols: usize, padding: usize) -> Result<()> {
    let run = || -> Result<Vec<u8>> {
        let (gw, gh, c, px) = grid_pixels(imgs, ncols, padding)?;
        encode_png(gw, gh, c, &px)
    };
    let bytes = run().flat_context(|| format!("cannot write {}", path.display()))?;
    write_atomic(path, |f| Ok(f.write_all(&bytes)?))
}

/// A decoded image: planar `[channels, height, width]` values in `[-1, 1]`, channels 1 or 3.
#[derive(Clone, Debug)]
pub struct DecodedImage {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

impl DecodedImage {
    pub fn to_tensor(&self) -> Tensor {
        Tensor::from_slice(&self.data).reshape([self.channels as i64, self.height as i64, self.width as i64])
    }

    /// Grey -> RGB by repeating the plane (RGB is returned unchanged).
    pub fn to_rgb(&self) -> DecodedImage {
        if self.channels == 3 {
            return self.clone();
        }
        let mut data = Vec::with_capacity(self.data.len() * 3);
        for _ in 0..3 {
            data.extend_from_slice(&self.data);
        }
        DecodedImage { channels: 3, data, ..*self }
    }
}

/// Interleaved samples (`in_ch` per pixel, first `keep` kept) -> planar `[keep, h, w]` floats.
fn deinterleave(h: usize, w: usize, in_ch: usize, keep: usize, samples: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; keep * h * w];
    for i in 0..h * w {
        for ch in 0..keep {
            out[ch * h * w + i] = samples[i * in_ch + ch];
        }
    }
    out
}

fn decode_png(bytes: &[u8]) -> Result<DecodedImage> {
    let mut dec = png::Decoder::new(bytes);
    // EXPAND: palette -> RGB(A), grey < 8 bits -> 8 bits, tRNS -> alpha. 16 bits stay 16.
    dec.set_transformations(png::Transformations::EXPAND);
    let mut reader = dec.read_info().map_err(|e| anyhow!("bad PNG: {e}"))?;
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).map_err(|e| anyhow!("bad PNG: {e}"))?;
    let (w, h) = (info.width as usize, info.height as usize);
    let in_ch = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => bail!("bad PNG: palette was not expanded"),
    };
    let keep = if in_ch <= 2 { 1 } else { 3 };
    let samples: Vec<f32> = match info.bit_depth {
        png::BitDepth::Eight => {
            let lut = u8_lut();
            buf[..info.line_size * h]
                .chunks_exact(info.line_size)
                .flat_map(|row| row[..w * in_ch].iter().map(|&u| lut[u as usize]))
                .collect()
        }
        png::BitDepth::Sixteen => buf[..info.line_size * h]
            .chunks_exact(info.line_size)
            .flat_map(|row| {
                row[..w * in_ch * 2]
                    .chunks_exact(2)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]) as f32 / 65535.0 * 2.0 - 1.0)
            })
            .collect(),
        d => bail!("unexpected PNG bit depth {d:?} after expansion"),
    };
    Ok(DecodedImage { channels: keep, height: h, width: w, data: deinterleave(h, w, in_ch, keep, &samples) })
}

fn decode_jpeg(bytes: &[u8]) -> Result<DecodedImage> {
    let mut dec = jpeg_decoder::Decoder::new(bytes);
    let px = dec.decode().map_err(|e| anyhow!("bad JPEG: {e}"))?;
    let info = dec.info().ok_or_else(|| anyhow!("bad JPEG: no frame header"))?;
    let (w, h) = (info.width as usize, info.height as usize);
    let in_ch = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => 1,
        jpeg_decoder::PixelFormat::RGB24 => 3,
        f => bail!("unsupported JPEG pixel format {f:?} (only 8-bit grey and RGB)"),
    };
    if px.len() != w * h * in_ch {
        bail!("bad JPEG: {} decoded bytes for {w}x{h}x{in_ch}", px.len());
    }
    let lut = u8_lut();
    let samples: Vec<f32> = px.iter().map(|&u| lut[u as usize]).collect();
    Ok(DecodedImage { channels: in_ch, height: h, width: w, data: deinterleave(h, w, in_ch, in_ch, &samples) })
}

/// Decodes PNG or JPEG bytes (recognised by their magic bytes, not by name). Alpha is dropped,
/// palettes expanded, 16-bit PNG scaled; the result has 1 (grey) or 3 (RGB) channels.
pub fn decode_image(bytes: &[u8]) -> Result<DecodedImage> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        decode_png(bytes)
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        decode_jpeg(bytes)
    } else {
        bail!("not a PNG or JPEG file (unrecognised magic bytes)")
    }
}

/// Reads a PNG or JPEG file as a decoded image (see [`decode_image`]); errors name the file.
pub fn read_decoded(path: &Path) -> Result<DecodedImage> {
    let bytes = std::fs::read(path).flat_context(|| format!("cannot read {}", path.display()))?;
    decode_image(&bytes).flat_context(|| format!("cannot decode {}", path.display()))
}

/// Reads a PNG or JPEG file as a `[C, H, W]` float tensor in `[-1, 1]`, C = 1 or 3.
pub fn read_image(path: &Path) -> Result<Tensor> {
    Ok(read_decoded(path)?.to_tensor())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::atomic::test_dir;

    fn all_u8_image(c: i64, h: i64, w: i64) -> Tensor {
        let n = (c * h * w) as usize;
        let v: Vec<u8> = (0..n).map(|i| ((i * 37 + 11) % 256) as u8).collect();
        Tensor::from_slice(&v).reshape([c, h, w])
    }

    #[test]
    fn u8_conversion_rule() {
        assert_eq!(f32_to_u8(-1.0), 0);
        assert_eq!(f32_to_u8(1.0), 255);
        assert_eq!(f32_to_u8(-2.0), 0);
        assert_eq!(f32_to_u8(7.0), 255);
        assert_eq!(f32_to_u8(f32::NAN), 0);
        // 127.5 is the only exact half inside the range; it rounds up (as half-even would too).
        assert_eq!(f32_to_u8(0.0), 128);
        for u in 0..=255u8 {
            assert_eq!(f32_to_u8(u8_to_f32(u)), u);
        }
        let t = Tensor::from_slice(&[-1.0f32, 0.0, 1.0]).reshape([1, 1, 3]);
        let u = tensor_to_u8(&t).unwrap();
        assert_eq!(u.size(), vec![1, 1, 3]);
        assert_eq!(Vec::<u8>::try_from(u.reshape([-1])).unwrap(), vec![0, 128, 255]);
    }

    #[test]
    fn png_round_trip_exact() {
        let d = test_dir("png");
        for c in [1, 3] {
            let u = all_u8_image(c, 17, 23);
            let x = u.to_kind(Kind::Float) / 127.5 - 1.0;
            let p = d.join(format!("img{c}.png"));
            write_png(&p, &x).unwrap();
            let back = read_image(&p).unwrap();
            assert_eq!(back.size(), vec![c, 17, 23]);
            assert!(tensor_to_u8(&back).unwrap().equal(&u), "c = {c}");
            assert!(back.equal(&x), "float values differ, c = {c}");
        }
        // Grid geometry: 5 images, 2 columns, padding 1 -> 3 rows.
        let imgs = Tensor::ones([5, 3, 4, 6], (Kind::Float, Device::Cpu));
        let p = d.join("grid.png");
        write_grid(&p, &imgs, 2, 1).unwrap();
        let g = read_image(&p).unwrap();
        assert_eq!(g.size(), vec![3, 3 * 4 + 4, 2 * 6 + 3]);
        let g = tensor_to_u8(&g).unwrap();
        assert_eq!(g.int64_value(&[0, 0, 0]), GRID_PAD_VALUE as i64);
        assert_eq!(g.int64_value(&[0, 1, 1]), 255);
        // last row, second column: empty cell
        assert_eq!(g.int64_value(&[0, 2 * 5 + 1, 8]), GRID_PAD_VALUE as i64);
        std::fs::remove_dir_all(&d).unwrap();
    }

    fn png_bytes(
        w: u32,
        h: u32,
        color: png::ColorType,
        depth: png::BitDepth,
        data: &[u8],
        palette: Option<&[u8]>,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, w, h);
            enc.set_color(color);
            enc.set_depth(depth);
            if let Some(p) = palette {
                enc.set_palette(p.to_vec());
            }
            let mut wr = enc.write_header().unwrap();
            wr.write_image_data(data).unwrap();
        }
        out
    }

    #[test]
    fn png_variants() {
        use png::{BitDepth as B, ColorType as C};
        let u = |t: &DecodedImage| -> Vec<u8> { t.data.iter().map(|&x| f32_to_u8(x)).collect() };
        // grey + alpha: alpha dropped
        let im = decode_image(&png_bytes(2, 1, C::GrayscaleAlpha, B::Eight, &[10, 0, 200, 255], None)).unwrap();
        assert_eq!((im.channels, u(&im)), (1, vec![10, 200]));
        // RGBA -> RGB planes
        let im = decode_image(&png_bytes(2, 1, C::Rgba, B::Eight, &[1, 2, 3, 4, 5, 6, 7, 8], None)).unwrap();
        assert_eq!((im.channels, u(&im)), (3, vec![1, 5, 2, 6, 3, 7]));
        // 16-bit grey: 0, 65535, 32896 (= 128 * 257)
        let im = decode_image(&png_bytes(3, 1, C::Grayscale, B::Sixteen, &[0, 0, 255, 255, 128, 128], None)).unwrap();
        assert_eq!(u(&im), vec![0, 255, 128]);
        assert_eq!(im.data[1], 1.0);
        // palette -> RGB
        let pal = [255, 0, 0, 0, 0, 255];
        let im = decode_image(&png_bytes(2, 1, C::Indexed, B::Eight, &[1, 0], Some(&pal))).unwrap();
        assert_eq!((im.channels, u(&im)), (3, vec![0, 255, 0, 0, 255, 0]));
        // 1-bit grey -> 0 / 255
        let im = decode_image(&png_bytes(3, 1, C::Grayscale, B::One, &[0b1010_0000], None)).unwrap();
        assert_eq!(u(&im), vec![255, 0, 255]);
        // Garbage and truncation give errors, not panics.
        let good = png_bytes(4, 4, C::Rgb, B::Eight, &[7u8; 48], None);
        for cut in [4, 20, good.len() / 2, good.len() - 5] {
            assert!(decode_image(&good[..cut]).is_err(), "cut {cut}");
        }
        assert!(decode_image(b"hello").is_err());
        assert!(decode_image(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0]).is_err());
        let d = test_dir("png-err");
        let p = d.join("broken.png");
        std::fs::write(&p, &good[..30]).unwrap();
        let err = format!("{:#}", read_image(&p).unwrap_err());
        assert!(err.contains("broken.png"), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}

#[cfg(test)]
mod fixture_tests {
    use super::*;

    #[test]
    fn jpeg_matches_png_fixture() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let j = read_decoded(&dir.join("python.jpg")).unwrap();
        let p = read_decoded(&dir.join("python.png")).unwrap();
        assert_eq!((j.channels, j.height, j.width), (3, 16, 16));
        assert_eq!((p.channels, p.height, p.width), (3, 16, 16));
        let mad: f32 = j.data.iter().zip(&p.data).map(|(a, b)| (a - b).abs()).sum::<f32>() / j.data.len() as f32;
        // Lossy JPEG vs the lossless palette PNG: mean absolute difference of a few grey levels.
        assert!(mad < 0.1, "mean abs diff {mad}");
        eprintln!("jpeg vs png fixture: mean abs diff {mad:.4} (in [-1, 1] units)");
        let var = p.to_tensor().var(true).double_value(&[]);
        assert!(var > 0.01, "fixture looks flat: {var}");
    }
}
