//! `.npy` arrays <-> `tch::Tensor`.
//!
//! Format: NumPy's NPY specification ("A Simple File Format for NumPy Arrays", NEP 1, format
//! version 1.0; versions 2.0/3.0 only widen the header length to 4 bytes / allow UTF-8):
//! the magic `\x93NUMPY`, a major and minor version byte, the header length (little-endian
//! `u16` in v1, `u32` in v2/v3), then an ASCII Python dict literal with keys `descr`,
//! `fortran_order` and `shape`, padded with spaces and ended by `\n`, then the raw data.
//!
//! Supported dtypes: `<f4`, `<f8`, `|u1`, `<i8`, `<i4` (big-endian `>` variants are read and
//! byte-swapped). Only C order (`fortran_order: False`). Files are written as version 1.0
//! (2.0 if the header would not fit), with the header padded so the data start at a multiple
//! of 64 bytes as current NumPy does (a multiple of the 16 the v1.0 spec asks for).
use super::atomic::write_atomic;
use super::FlatContext;
use anyhow::{anyhow, bail, Result};
use std::path::Path;
use tch::{Kind, Tensor};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

#[derive(Clone, Copy, Debug, PartialEq)]
enum DType {
    F4,
    F8,
    U1,
    I8,
    I4,
}

impl DType {
    fn size(self) -> usize {
        match self {
            DType::F4 | DType::I4 => 4,
            DType::F8 | DType::I8 => 8,
            DType::U1 => 1,
        }
    }
    fn descr(self) -> &'static str {
        match self {
            DType::F4 => "<f4",
            DType::F8 => "<f8",
            DType::U1 => "|u1",
            DType::I8 => "<i8",
            DType::I4 => "<i4",
        }
    }
    fn from_kind(k: Kind) -> Option<Self> {
        Some(match k {
            Kind::Float => DType::F4,
            Kind::Double => DType::F8,
            Kind::Uint8 => DType::U1,
            Kind::Int64 => DType::I8,
            Kind::Int => DType::I4,
            _ => return None,
        })
    }
}

/// Parses a descr string; returns the dtype and whether the data are big-endian.
fn parse_descr(d: &str) -> Result<(DType, bool)> {
    let (order, code) = d.split_at(d.len().min(1));
    let big = match order {
        "<" | "=" | "|" => false,
        ">" => true,
        _ => bail!("unsupported dtype '{d}'"),
    };
    let t = match code {
        "f4" => DType::F4,
        "f8" => DType::F8,
        "u1" => DType::U1,
        "i8" => DType::I8,
        "i4" => DType::I4,
        _ => bail!("unsupported dtype '{d}' (supported: <f4, <f8, |u1, <i8, <i4)"),
    };
    Ok((t, big && t.size() > 1))
}

// ---- a tiny parser for the header's Python dict literal ----

#[derive(Debug, PartialEq)]
enum PyVal {
    Str(String),
    Bool(bool),
    Tuple(Vec<i64>),
}

struct HeaderParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> HeaderParser<'a> {
    fn ws(&mut self) {
        while self.i < self.s.len() && (self.s[self.i] as char).is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }
    fn expect(&mut self, c: u8) -> Result<()> {
        match self.peek() {
            Some(x) if x == c => {
                self.i += 1;
                Ok(())
            }
            other => {
                bail!("expected '{}' at byte {} of the header, found {:?}", c as char, self.i, other.map(|b| b as char))
            }
        }
    }
    fn string(&mut self) -> Result<String> {
        let q = self.peek().ok_or_else(|| anyhow!("unexpected end of header"))?;
        if q != b'\'' && q != b'"' {
            bail!("expected a quoted string at byte {} of the header", self.i);
        }
        self.i += 1;
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i] != q {
            self.i += 1;
        }
        if self.i >= self.s.len() {
            bail!("unterminated string in header");
        }
        let out = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
        self.i += 1;
        Ok(out)
    }
    fn int(&mut self) -> Result<i64> {
        self.ws();
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
            self.i += 1;
        }
        let txt = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
        // Python 2 era headers may write long integers as `3L`.
        if self.s.get(self.i) == Some(&b'L') {
            self.i += 1;
        }
        txt.parse::<i64>().map_err(|_| anyhow!("bad integer in header shape at byte {start}"))
    }
    fn value(&mut self) -> Result<PyVal> {
        match self.peek() {
            Some(b'\'') | Some(b'"') => Ok(PyVal::Str(self.string()?)),
            Some(b'(') => {
                self.i += 1;
                let mut v = Vec::new();
                loop {
                    if self.peek() == Some(b')') {
                        self.i += 1;
                        break;
                    }
                    v.push(self.int()?);
                    match self.peek() {
                        Some(b',') => self.i += 1,
                        Some(b')') => {}
                        _ => bail!("bad shape tuple in header"),
                    }
                }
                Ok(PyVal::Tuple(v))
            }
            Some(b'T') if self.s[self.i..].starts_with(b"True") => {
                self.i += 4;
                Ok(PyVal::Bool(true))
            }
            Some(b'F') if self.s[self.i..].starts_with(b"False") => {
                self.i += 5;
                Ok(PyVal::Bool(false))
            }
            _ => bail!("unsupported value at byte {} of the header (structured dtype?)", self.i),
        }
    }
    fn dict(&mut self) -> Result<Vec<(String, PyVal)>> {
        self.expect(b'{')?;
        let mut out = Vec::new();
        loop {
            if self.peek() == Some(b'}') {
                self.i += 1;
                return Ok(out);
            }
            let k = self.string()?;
            self.expect(b':')?;
            let v = self.value()?;
            out.push((k, v));
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {}
                _ => bail!("expected ',' or '}}' at byte {} of the header", self.i),
            }
        }
    }
}

struct Header {
    dtype: DType,
    big_endian: bool,
    shape: Vec<i64>,
    data_offset: usize,
}

fn parse_header(bytes: &[u8]) -> Result<Header> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        bail!("not a .npy file (missing the \\x93NUMPY magic)");
    }
    let major = bytes[6];
    let (hlen, start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => {
            if bytes.len() < 12 {
                bail!("truncated .npy header");
            }
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => bail!("unsupported .npy format version {v}.{}", bytes[7]),
    };
    let end = start
        .checked_add(hlen)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| anyhow!("truncated .npy header (needs {hlen} bytes)"))?;
    let mut p = HeaderParser { s: &bytes[start..end], i: 0 };
    let dict = p.dict().flat_context(|| "malformed .npy header".to_string())?;
    let mut descr = None;
    let mut fortran = None;
    let mut shape = None;
    for (k, v) in dict {
        match (k.as_str(), v) {
            ("descr", PyVal::Str(s)) => descr = Some(s),
            ("fortran_order", PyVal::Bool(b)) => fortran = Some(b),
            ("shape", PyVal::Tuple(t)) => shape = Some(t),
            (k, v) => bail!("malformed .npy header: unexpected entry '{k}': {v:?}"),
        }
    }
    let descr = descr.ok_or_else(|| anyhow!("malformed .npy header: no 'descr'"))?;
    let fortran = fortran.ok_or_else(|| anyhow!("malformed .npy header: no 'fortran_order'"))?;
    let shape = shape.ok_or_else(|| anyhow!("malformed .npy header: no 'shape'"))?;
    if fortran {
        bail!("Fortran-order arrays are not supported; save with np.save(path, np.ascontiguousarray(a))");
    }
    let (dtype, big_endian) = parse_descr(&descr)?;
    Ok(Header { dtype, big_endian, shape, data_offset: end })
}

/// Decodes `.npy` bytes into a CPU tensor (`what` names the source in errors).
pub fn npy_from_bytes(bytes: &[u8], what: &str) -> Result<Tensor> {
    let h = parse_header(bytes).flat_context(|| format!("reading {what}"))?;
    let numel = h
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d as usize))
        .ok_or_else(|| anyhow!("reading {what}: shape {:?} overflows", h.shape))?;
    let nbytes =
        numel.checked_mul(h.dtype.size()).ok_or_else(|| anyhow!("reading {what}: shape {:?} overflows", h.shape))?;
    let data = &bytes[h.data_offset..];
    if data.len() < nbytes {
        bail!(
            "reading {what}: truncated .npy file: shape {:?} of {} needs {} data bytes, found {}",
            h.shape,
            h.dtype.descr(),
            nbytes,
            data.len()
        );
    }
    let data = &data[..nbytes];
    let sz = h.dtype.size();
    macro_rules! decode {
        ($t:ty) => {{
            let v: Vec<$t> = data
                .chunks_exact(sz)
                .map(|c| {
                    let a = c.try_into().unwrap();
                    if h.big_endian {
                        <$t>::from_be_bytes(a)
                    } else {
                        <$t>::from_le_bytes(a)
                    }
                })
                .collect();
            Tensor::from_slice(&v)
        }};
    }
    let t = match h.dtype {
        DType::F4 => decode!(f32),
        DType::F8 => decode!(f64),
        DType::I8 => decode!(i64),
        DType::I4 => decode!(i32),
        DType::U1 => Tensor::from_slice(data),
    };
    Ok(t.reshape(h.shape.as_slice()))
}

/// Reads a `.npy` file into a CPU tensor of the matching kind (Float, Double, Uint8, Int64, Int).
pub fn read_npy(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).flat_context(|| format!("cannot read {}", path.display()))?;
    npy_from_bytes(&bytes, &path.display().to_string())
}

/// The `.npy` header (magic, version, length, padded dict) for an array of `kind` and `shape`.
fn header_bytes(dtype: DType, shape: &[i64]) -> Vec<u8> {
    let shape_txt = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let dict = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}", dtype.descr(), shape_txt);
    let (version, prefix) = if dict.len() + 1 + 10 <= 65535 { (1u8, 10) } else { (2u8, 12) };
    let unpadded = prefix + dict.len() + 1;
    let total = unpadded.div_ceil(64) * 64;
    let hlen = total - prefix;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(MAGIC);
    out.push(version);
    out.push(0);
    if version == 1 {
        out.extend_from_slice(&(hlen as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(hlen as u32).to_le_bytes());
    }
    out.extend_from_slice(dict.as_bytes());
    out.resize(total - 1, b' ');
    out.push(b'\n');
    out
}

/// Encodes a tensor (any device; Float, Double, Uint8, Int64 or Int) as `.npy` bytes, C order.
pub fn npy_to_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let kind = t.kind();
    let dtype = DType::from_kind(kind).ok_or_else(|| {
        anyhow!("cannot save a {kind:?} tensor as .npy (supported: Float, Double, Uint8, Int64, Int)")
    })?;
    let shape = t.size();
    let flat = t.to_device(tch::Device::Cpu).contiguous().reshape([-1]);
    let n = flat.numel();
    let mut out = header_bytes(dtype, &shape);
    out.reserve(n * dtype.size());
    macro_rules! encode {
        ($t:ty) => {{
            let mut v = vec![<$t>::default(); n];
            flat.copy_data(&mut v, n);
            for x in v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }};
    }
    match dtype {
        DType::F4 => encode!(f32),
        DType::F8 => encode!(f64),
        DType::I8 => encode!(i64),
        DType::I4 => encode!(i32),
        DType::U1 => encode!(u8),
    }
    Ok(out)
}

/// Writes a tensor as a `.npy` file (atomically; see [`npy_to_bytes`] for the kinds).
pub fn write_npy(path: &Path, t: &Tensor) -> Result<()> {
    let bytes = npy_to_bytes(t).flat_context(|| format!("cannot write {}", path.display()))?;
    write_atomic(path, |w| {
        w.write_all(&bytes)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::atomic::test_dir;

    /// `np.save(f, np.array([1.0, 2.0], dtype='<f4'))` under the NPY v1.0 spec with 64-byte
    /// alignment, written out by hand: magic `\x93NUMPY`, version 1.0, header length 118 = 0x76
    /// (little-endian `76 00`), the dict, 60 spaces of padding and `\n` (10 + 118 = 128 bytes),
    /// then 1.0f32 = `00 00 80 3f` and 2.0f32 = `00 00 00 40`.
    fn golden_f4() -> Vec<u8> {
        let mut g = vec![0x93, b'N', b'U', b'M', b'P', b'Y', 0x01, 0x00, 0x76, 0x00];
        g.extend_from_slice(b"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }");
        g.extend(std::iter::repeat_n(b' ', 60));
        g.push(b'\n');
        g.extend_from_slice(&[0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0x40]);
        g
    }

    #[test]
    fn golden_header() {
        let g = golden_f4();
        assert_eq!(g.len(), 136);
        let t = Tensor::from_slice(&[1.0f32, 2.0]);
        assert_eq!(npy_to_bytes(&t).unwrap(), g);
        let back = npy_from_bytes(&g, "golden").unwrap();
        assert!(back.equal(&t));
        // The v1.0 spec's original 16-byte alignment (older NumPy) and a 2-D `<i8` header:
        // dict of 59 bytes + 10 spaces + `\n` = 70 = 0x46 bytes, 10 + 70 = 80 = 5 * 16.
        let mut old = vec![0x93, b'N', b'U', b'M', b'P', b'Y', 0x01, 0x00, 0x46, 0x00];
        old.extend_from_slice(b"{'descr': '<i8', 'fortran_order': False, 'shape': (1, 2), }");
        old.extend(std::iter::repeat_n(b' ', 10));
        old.push(b'\n');
        assert_eq!(old.len() % 16, 0, "{}", old.len());
        old.extend_from_slice(&7i64.to_le_bytes());
        old.extend_from_slice(&(-3i64).to_le_bytes());
        let t = npy_from_bytes(&old, "old").unwrap();
        assert_eq!(t.size(), vec![1, 2]);
        assert_eq!(t.kind(), Kind::Int64);
        assert_eq!(Vec::<i64>::try_from(t.reshape([-1])).unwrap(), vec![7, -3]);
        // Version 2.0 (4-byte header length) and big-endian data.
        let dict = b"{'descr': '>f8', 'fortran_order': False, 'shape': (), }\n";
        let mut v2 = vec![0x93, b'N', b'U', b'M', b'P', b'Y', 0x02, 0x00];
        v2.extend_from_slice(&(dict.len() as u32).to_le_bytes());
        v2.extend_from_slice(dict);
        v2.extend_from_slice(&1.5f64.to_be_bytes());
        let t = npy_from_bytes(&v2, "v2").unwrap();
        assert_eq!(t.dim(), 0);
        assert_eq!(t.double_value(&[]), 1.5);
    }

    #[test]
    fn round_trip_all_dtypes() {
        let d = test_dir("npy");
        let tensors = [
            Tensor::from_slice(&[0.5f32, -1.0, 3.25, f32::MAX, 1e-30, -0.0]).reshape([2, 3]),
            Tensor::from_slice(&[0.1f64, -2.0, 1e300, 7.0]).reshape([2, 1, 2]),
            Tensor::from_slice(&[0u8, 1, 127, 128, 255, 9, 8, 7]).reshape([2, 2, 2]),
            Tensor::from_slice(&[i64::MIN, -1, 0, i64::MAX]),
            Tensor::from_slice(&[i32::MIN, 5]),
            Tensor::from_slice(&[0.25f32]).reshape([] as [i64; 0]),
            Tensor::zeros([0, 4], (Kind::Float, tch::Device::Cpu)),
            // non-contiguous input is written in logical C order
            Tensor::arange(6, (Kind::Int64, tch::Device::Cpu)).reshape([2, 3]).transpose(0, 1),
        ];
        for (i, t) in tensors.iter().enumerate() {
            let p = d.join(format!("a{i}.npy"));
            write_npy(&p, t).unwrap();
            let back = read_npy(&p).unwrap();
            assert_eq!(back.kind(), t.kind(), "tensor {i}");
            assert_eq!(back.size(), t.size(), "tensor {i}");
            assert!(back.equal(&t.contiguous()), "tensor {i}");
            let bytes = std::fs::read(&p).unwrap();
            let hl = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
            assert_eq!((10 + hl) % 64, 0);
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn corrupt_files_error() {
        let t = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]);
        let good = npy_to_bytes(&t).unwrap();
        for cut in [0, 5, 9, 40, good.len() - 1] {
            let err = npy_from_bytes(&good[..cut], "x.npy").unwrap_err();
            assert!(format!("{err:#}").contains("x.npy"), "{err:#}");
        }
        let err = format!("{:#}", npy_from_bytes(&good_with(&good, "False", "True "), "f").unwrap_err());
        assert!(err.contains("Fortran"), "{err}");
        let err = format!("{:#}", npy_from_bytes(&good_with(&good, "<f4", "<c8"), "f").unwrap_err());
        assert!(err.contains("dtype"), "{err}");
        let err = format!("{:#}", npy_from_bytes(&good_with(&good, "(2, 2)", "(2, x)"), "f").unwrap_err());
        assert!(err.contains("header"), "{err}");
        let err = format!("{:#}", npy_from_bytes(&good_with(&good, "(2, 2)", "(9, 9)"), "f").unwrap_err());
        assert!(err.contains("truncated"), "{err}");
        let err = read_npy(Path::new("/nonexistent/q.npy")).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/q.npy"));
    }

    fn good_with(b: &[u8], from: &str, to: &str) -> Vec<u8> {
        assert_eq!(from.len(), to.len());
        let pos = b.windows(from.len()).position(|w| w == from.as_bytes()).unwrap();
        let mut out = b.to_vec();
        out[pos..pos + from.len()].copy_from_slice(to.as_bytes());
        out
    }
}
