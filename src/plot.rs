//! Small PNG line plots, drawn from scratch (no plotting crate): loss curves, FID against
//! iterations, the clustering curves S0(t)/S1(t) with the threshold line and the chosen cuts.
//!
//! ```no_run
//! use msdiff::plot::{Plot, palette};
//! let loss = vec![(0.0, 1.0), (1.0, 0.5), (2.0, 0.3)];
//! Plot::new("training loss", 640, 400)
//!     .xlabel("iteration")
//!     .ylabel("loss")
//!     .log_y(true)
//!     .series("loss", &loss, palette(0))
//!     .vline(1.5, "lr drop", palette(3))
//!     .save(std::path::Path::new("loss.png"))
//!     .unwrap();
//! ```
//!
//! White background, a frame with outward ticks at "nice" steps (1, 2, 2.5, 5 x 10^k; decades
//! and, over short spans, 2x and 5x in log scale) with numeric labels and light grid lines, text
//! from the public-domain 8x8 bitmap font (`font8x8`, ASCII, Latin-1 and Greek, so `α` works), a
//! legend in the emptiest corner, anti-aliased lines clipped to the plot area. Points with a
//! non-finite coordinate (or `y <= 0` on a log axis) are skipped and break the line there.
//! Ranges fit the data and the reference lines, with 4% padding, unless set explicitly.
use crate::io::atomic::write_atomic_bytes;
use crate::io::image::encode_png;
use crate::io::FlatContext;
use anyhow::Result;
use std::path::Path;

/// An sRGB colour.
pub type Color = [u8; 3];

/// The "tab10" colours of matplotlib / Vega (blue, orange, green, red, purple, brown, pink,
/// grey, olive, cyan).
pub const PALETTE: [Color; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

/// Colour `i` of [`PALETTE`] (cycling).
pub fn palette(i: usize) -> Color {
    PALETTE[i % PALETTE.len()]
}

pub const BLACK: Color = [0, 0, 0];
const WHITE: Color = [255, 255, 255];
const GRID: Color = [232, 232, 232];
const FRAME: Color = [60, 60, 60];

/// How a series is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    Line,
    Points,
    LinePoints,
}

#[derive(Clone, Debug)]
struct Series {
    name: String,
    pts: Vec<(f64, f64)>,
    color: Color,
    style: Style,
}

#[derive(Clone, Debug)]
struct RefLine {
    vertical: bool,
    at: f64,
    label: String,
    color: Color,
}

/// A line plot; build it with the chained methods, then [`Plot::save`] or [`Plot::render`].
#[derive(Clone, Debug)]
pub struct Plot {
    title: String,
    width: usize,
    height: usize,
    xlabel: String,
    ylabel: String,
    series: Vec<Series>,
    lines: Vec<RefLine>,
    log_y: bool,
    xrange: Option<(f64, f64)>,
    yrange: Option<(f64, f64)>,
}

/// A rendered RGB image (row-major, 3 bytes per pixel).
#[derive(Clone, Debug)]
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

#[derive(Clone, Copy)]
struct Rect {
    x0: f64,
    y0: f64,
    x1: f64,
    y1: f64,
}

impl Canvas {
    fn new(width: usize, height: usize) -> Self {
        Canvas { width, height, pixels: vec![255; width * height * 3] }
    }

    /// Pixel (x, y) as RGB.
    pub fn get(&self, x: usize, y: usize) -> Color {
        let i = (y * self.width + x) * 3;
        [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
    }

    fn blend(&mut self, x: i64, y: i64, c: Color, a: f64) {
        if x < 0 || y < 0 || x >= self.width as i64 || y >= self.height as i64 || a <= 0.0 {
            return;
        }
        let a = a.min(1.0);
        let i = (y as usize * self.width + x as usize) * 3;
        for (px, &ck) in self.pixels[i..i + 3].iter_mut().zip(c.iter()) {
            let old = *px as f64;
            *px = (old + (ck as f64 - old) * a).round() as u8;
        }
    }

    fn fill_rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Color, a: f64) {
        for y in y0.max(0)..y1.min(self.height as i64) {
            for x in x0.max(0)..x1.min(self.width as i64) {
                self.blend(x, y, c, a);
            }
        }
    }

    /// Anti-aliased segment of width `lw` (pixel coordinates; pixel centres at +0.5), clipped.
    fn segment(&mut self, p: (f64, f64), q: (f64, f64), lw: f64, c: Color, clip: Rect) {
        let pad = lw + 1.0;
        let Some((p, q)) =
            clip_segment(p, q, Rect { x0: clip.x0 - pad, y0: clip.y0 - pad, x1: clip.x1 + pad, y1: clip.y1 + pad })
        else {
            return;
        };
        let r = lw / 2.0 + 0.5;
        let xa = (p.0.min(q.0) - r).floor().max(clip.x0.floor()) as i64;
        let xb = (p.0.max(q.0) + r).ceil().min(clip.x1.ceil()) as i64;
        let ya = (p.1.min(q.1) - r).floor().max(clip.y0.floor()) as i64;
        let yb = (p.1.max(q.1) + r).ceil().min(clip.y1.ceil()) as i64;
        let (dx, dy) = (q.0 - p.0, q.1 - p.1);
        let len2 = dx * dx + dy * dy;
        for y in ya..yb {
            for x in xa..xb {
                let (cx, cy) = (x as f64 + 0.5, y as f64 + 0.5);
                if cx < clip.x0 || cx > clip.x1 || cy < clip.y0 || cy > clip.y1 {
                    continue;
                }
                let t = if len2 > 0.0 { (((cx - p.0) * dx + (cy - p.1) * dy) / len2).clamp(0.0, 1.0) } else { 0.0 };
                let (ex, ey) = (p.0 + t * dx - cx, p.1 + t * dy - cy);
                let d = (ex * ex + ey * ey).sqrt();
                self.blend(x, y, c, lw / 2.0 + 0.5 - d);
            }
        }
    }

    fn dot(&mut self, p: (f64, f64), radius: f64, c: Color, clip: Rect) {
        self.segment(p, p, 2.0 * radius, c, clip);
    }

    /// Text with its top-left corner at (x, y), `scale` pixels per font pixel.
    fn text(&mut self, x: i64, y: i64, s: &str, c: Color, scale: i64) {
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) != 0 {
                        let (px, py) = (x + (k as i64 * 8 + col) * scale, y + row as i64 * scale);
                        self.fill_rect(px, py, px + scale, py + scale, c, 1.0);
                    }
                }
            }
        }
    }

    /// Text rotated 90 degrees counter-clockwise (reading bottom to top); (x, y) is the
    /// top-left of its bounding box, which is 8 wide and 8 * len tall.
    fn text_up(&mut self, x: i64, y: i64, s: &str, c: Color) {
        let n = s.chars().count() as i64;
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) != 0 {
                        // glyph (col, row) -> (row, -col) rotated; characters run upward
                        let px = x + row as i64;
                        let py = y + (n - k as i64) * 8 - 1 - col;
                        self.blend(px, py, c, 1.0);
                    }
                }
            }
        }
    }
}

/// The 8x8 glyph of `ch` (rows top to bottom, bit 0 = leftmost pixel); `?` when missing.
fn glyph(ch: char) -> [u8; 8] {
    let u = ch as u32;
    match u {
        0..=127 => font8x8::legacy::BASIC_LEGACY[u as usize],
        0xA0..=0xFF => font8x8::legacy::LATIN_LEGACY[(u - 0xA0) as usize],
        0x390..=0x3C9 => font8x8::legacy::GREEK_LEGACY[(u - 0x390) as usize],
        _ => font8x8::legacy::BASIC_LEGACY[b'?' as usize],
    }
}

fn text_width(s: &str, scale: i64) -> i64 {
    s.chars().count() as i64 * 8 * scale
}

/// Liang-Barsky clipping of segment p-q to `r`.
fn clip_segment(p: (f64, f64), q: (f64, f64), r: Rect) -> Option<((f64, f64), (f64, f64))> {
    let (dx, dy) = (q.0 - p.0, q.1 - p.1);
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for (pk, qk) in [(-dx, p.0 - r.x0), (dx, r.x1 - p.0), (-dy, p.1 - r.y0), (dy, r.y1 - p.1)] {
        if pk == 0.0 {
            if qk < 0.0 {
                return None;
            }
        } else {
            let t = qk / pk;
            if pk < 0.0 {
                t0 = t0.max(t);
            } else {
                t1 = t1.min(t);
            }
        }
    }
    if t0 > t1 {
        return None;
    }
    Some(((p.0 + t0 * dx, p.1 + t0 * dy), (p.0 + t1 * dx, p.1 + t1 * dy)))
}

/// The "nice" step (1, 2, 2.5 or 5 times a power of ten) nearest to `raw`.
fn nice_step(raw: f64) -> f64 {
    let e = raw.log10().floor();
    let base = 10f64.powf(e);
    let m = raw / base;
    // the nearest candidate, roughly (thresholds between neighbours)
    let nm = if m < 1.5 {
        1.0
    } else if m < 2.25 {
        2.0
    } else if m < 3.5 {
        2.5
    } else if m < 7.5 {
        5.0
    } else {
        10.0
    };
    nm * base
}

/// Linear ticks in [lo, hi], about `target` of them, with their labels.
fn linear_ticks(lo: f64, hi: f64, target: usize) -> Vec<(f64, String)> {
    let step = nice_step((hi - lo) / target.max(1) as f64);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    let big = lo.abs().max(hi.abs());
    let sci = big >= 1e6 || step < 1e-4;
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize + usize::from(((step / 10f64.powf(step.log10().floor())) - 2.5).abs() < 1e-9)
    };
    (first..=last)
        .map(|k| {
            let v = k as f64 * step;
            let v = if v.abs() < step * 1e-9 { 0.0 } else { v };
            let s = if sci { format_sci(v) } else { format!("{v:.decimals$}") };
            (v, s)
        })
        .collect()
}

/// Compact scientific notation: `2.5e6`, `1e-5`, `0`.
fn format_sci(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let s = format!("{v:.3e}");
    // trim mantissa zeros: "2.500e6" -> "2.5e6"
    match s.split_once('e') {
        Some((m, e)) => {
            let m = if m.contains('.') { m.trim_end_matches('0').trim_end_matches('.') } else { m };
            format!("{m}e{e}")
        }
        None => s,
    }
}

/// A power-of-ten-based value for log-axis labels: plain for 1e-3..1e4, else scientific.
fn format_log(v: f64) -> String {
    let e = v.log10();
    if (-3.0..=4.0).contains(&e.floor()) {
        let dec = (-e.floor()).max(0.0) as usize;
        format!("{v:.dec$}")
    } else {
        format_sci(v)
    }
}

/// Log-axis ticks (positions in log10 units) for [lo, hi] (log10 units): (major with labels,
/// minor positions).
fn log_ticks(lo: f64, hi: f64, target: usize) -> (Vec<(f64, String)>, Vec<f64>) {
    let (d0, d1) = (lo.floor() as i64, hi.ceil() as i64);
    let span = hi - lo;
    let mut major = Vec::new();
    let mut minor = Vec::new();
    if span < 0.3 {
        // Less than a factor of two: linear ticks on the values.
        let (a, b) = (10f64.powf(lo), 10f64.powf(hi));
        let t = linear_ticks(a, b, target);
        return (t.into_iter().filter(|(v, _)| *v > 0.0).map(|(v, s)| (v.log10(), s)).collect(), minor);
    }
    let every = ((span / target.max(1) as f64).ceil() as i64).max(1);
    for d in d0..=d1 {
        for m in 1..10 {
            let v = m as f64 * 10f64.powi(d as i32);
            let lv = v.log10();
            if lv < lo - 1e-12 || lv > hi + 1e-12 {
                continue;
            }
            let labelled = if m == 1 { d.rem_euclid(every) == 0 } else { span <= 2.5 && (m == 2 || m == 5) };
            if labelled {
                major.push((lv, format_log(v)));
            } else if span <= 6.0 {
                minor.push(lv);
            }
        }
    }
    if major.len() < 2 {
        // Within one decade and no 1/2/5 inside: fall back to linear ticks on the values.
        let (a, b) = (10f64.powf(lo), 10f64.powf(hi));
        major = linear_ticks(a, b, target).into_iter().filter(|(v, _)| *v > 0.0).map(|(v, s)| (v.log10(), s)).collect();
    }
    (major, minor)
}

/// (lo, hi) padded by `frac` of the span; degenerate spans widened.
fn padded(lo: f64, hi: f64, frac: f64, log: bool) -> (f64, f64) {
    if hi > lo {
        let p = (hi - lo) * frac;
        (lo - p, hi + p)
    } else {
        let w = if log {
            0.5
        } else if lo == 0.0 {
            1.0
        } else {
            lo.abs() * 0.1
        };
        (lo - w, hi + w)
    }
}

impl Plot {
    /// A plot of `width` x `height` pixels (at least 160 x 120).
    pub fn new(title: &str, width: u32, height: u32) -> Self {
        Plot {
            title: title.to_string(),
            width: (width as usize).max(160),
            height: (height as usize).max(120),
            xlabel: String::new(),
            ylabel: String::new(),
            series: Vec::new(),
            lines: Vec::new(),
            log_y: false,
            xrange: None,
            yrange: None,
        }
    }

    pub fn xlabel(mut self, s: &str) -> Self {
        self.xlabel = s.to_string();
        self
    }

    pub fn ylabel(mut self, s: &str) -> Self {
        self.ylabel = s.to_string();
        self
    }

    /// A line through `pts` (in order); `name` goes in the legend unless empty.
    pub fn series(self, name: &str, pts: &[(f64, f64)], color: Color) -> Self {
        self.series_styled(name, pts, color, Style::Line)
    }

    /// Markers only at `pts`.
    pub fn points(self, name: &str, pts: &[(f64, f64)], color: Color) -> Self {
        self.series_styled(name, pts, color, Style::Points)
    }

    pub fn series_styled(mut self, name: &str, pts: &[(f64, f64)], color: Color, style: Style) -> Self {
        self.series.push(Series { name: name.to_string(), pts: pts.to_vec(), color, style });
        self
    }

    /// A dashed vertical line at `x`; a non-empty `label` goes in the legend (once per
    /// label and colour, so many cuts can share one entry).
    pub fn vline(mut self, x: f64, label: &str, color: Color) -> Self {
        self.lines.push(RefLine { vertical: true, at: x, label: label.to_string(), color });
        self
    }

    /// A dashed horizontal line at `y` (see [`Plot::vline`]).
    pub fn hline(mut self, y: f64, label: &str, color: Color) -> Self {
        self.lines.push(RefLine { vertical: false, at: y, label: label.to_string(), color });
        self
    }

    /// Logarithmic y axis (points with `y <= 0` are skipped).
    pub fn log_y(mut self, on: bool) -> Self {
        self.log_y = on;
        self
    }

    /// Fixed x range (no padding).
    pub fn xrange(mut self, lo: f64, hi: f64) -> Self {
        self.xrange = Some((lo.min(hi), lo.max(hi)));
        self
    }

    /// Fixed y range in data units (no padding).
    pub fn yrange(mut self, lo: f64, hi: f64) -> Self {
        self.yrange = Some((lo.min(hi), lo.max(hi)));
        self
    }

    /// A series' points in pixel coordinates; `None` where a point cannot be drawn (non-finite,
    /// or y <= 0 on a log axis), which breaks the line there.
    fn pixel_points(&self, s: &Series, px: &dyn Fn(f64) -> f64, py: &dyn Fn(f64) -> f64) -> Vec<Option<(f64, f64)>> {
        s.pts
            .iter()
            .map(|&(x, y)| match (x.is_finite(), self.ty(y)) {
                (true, Some(y)) => Some((px(x), py(y))),
                _ => None,
            })
            .collect()
    }

    fn ty(&self, y: f64) -> Option<f64> {
        if !y.is_finite() {
            None
        } else if self.log_y {
            (y > 0.0).then(|| y.log10())
        } else {
            Some(y)
        }
    }

    /// Data ranges, x and y (y in log10 units on a log axis).
    fn ranges(&self) -> ((f64, f64), (f64, f64)) {
        let mut xs: Vec<f64> = Vec::new();
        let mut ys: Vec<f64> = Vec::new();
        for s in &self.series {
            for &(x, y) in &s.pts {
                if let (true, Some(y)) = (x.is_finite(), self.ty(y)) {
                    xs.push(x);
                    ys.push(y);
                }
            }
        }
        for l in &self.lines {
            if l.vertical && l.at.is_finite() {
                xs.push(l.at);
            } else if let (false, Some(y)) = (l.vertical, self.ty(l.at)) {
                ys.push(y);
            }
        }
        let mm = |v: &[f64]| v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
        let xr = match self.xrange {
            Some((a, b)) if b > a => (a, b),
            _ => {
                let (a, b) = mm(&xs);
                if a.is_finite() {
                    padded(a, b, 0.04, false)
                } else {
                    (0.0, 1.0)
                }
            }
        };
        let yr = match self.yrange.and_then(|(a, b)| Some((self.ty(a)?, self.ty(b)?))) {
            Some((a, b)) if b > a => (a, b),
            _ => {
                let (a, b) = mm(&ys);
                if a.is_finite() {
                    padded(a, b, 0.04, self.log_y)
                } else {
                    // No finite data: an arbitrary unit range (log axes: 10^0..10^1).
                    (0.0, 1.0)
                }
            }
        };
        (xr, yr)
    }

    /// Draws the plot.
    pub fn render(&self) -> Canvas {
        let (w, h) = (self.width, self.height);
        let mut cv = Canvas::new(w, h);
        let ((xlo, xhi), (ylo, yhi)) = self.ranges();
        let title_scale = if w >= 480 && text_width(&self.title, 2) <= w as i64 - 20 { 2 } else { 1 };
        let top = if self.title.is_empty() { 12 } else { 10 + 8 * title_scale + 10 };
        let bottom = 6 + 4 + 8 + 8 + if self.xlabel.is_empty() { 0 } else { 8 + 8 };
        // y tick labels decide the left margin
        let h_est = (h as i64 - top - bottom).max(40) as usize;
        let (yticks, yminor) = if self.log_y {
            log_ticks(ylo, yhi, (h_est / 45).clamp(2, 10))
        } else {
            (linear_ticks(ylo, yhi, (h_est / 45).clamp(2, 10)), vec![])
        };
        let ytw = yticks.iter().map(|(_, s)| text_width(s, 1)).max().unwrap_or(8);
        let left = 8 + if self.ylabel.is_empty() { 0 } else { 8 + 8 } + ytw + 4 + 6;
        let right = 20;
        let r = Rect { x0: left as f64, y0: top as f64, x1: (w as i64 - right) as f64, y1: (h as i64 - bottom) as f64 };
        let (pw, ph) = (r.x1 - r.x0, r.y1 - r.y0);
        let xticks = linear_ticks(xlo, xhi, ((pw / 90.0) as usize).clamp(2, 10));
        let px = |x: f64| r.x0 + (x - xlo) / (xhi - xlo) * pw;
        let py = |y: f64| r.y1 - (y - ylo) / (yhi - ylo) * ph;

        // grid, ticks and tick labels
        for (v, s) in &xticks {
            let x = px(*v).floor() as i64;
            cv.fill_rect(x, r.y0 as i64, x + 1, r.y1 as i64, GRID, 1.0);
            cv.fill_rect(x, r.y1 as i64, x + 1, r.y1 as i64 + 5, FRAME, 1.0);
            let tw = text_width(s, 1);
            cv.text((x - tw / 2).clamp(0, w as i64 - tw), r.y1 as i64 + 8, s, BLACK, 1);
        }
        for v in &yminor {
            let y = py(*v).floor() as i64;
            cv.fill_rect(r.x0 as i64 - 3, y, r.x0 as i64, y + 1, FRAME, 1.0);
        }
        for (v, s) in &yticks {
            let y = py(*v).floor() as i64;
            cv.fill_rect(r.x0 as i64, y, r.x1 as i64, y + 1, GRID, 1.0);
            cv.fill_rect(r.x0 as i64 - 5, y, r.x0 as i64, y + 1, FRAME, 1.0);
            cv.text(r.x0 as i64 - 8 - text_width(s, 1), y - 3, s, BLACK, 1);
        }

        // reference lines (dashed), then series
        for l in &self.lines {
            let Some(v) = (if l.vertical { l.at.is_finite().then_some(l.at) } else { self.ty(l.at) }) else {
                continue;
            };
            let (a, b) = if l.vertical { ((px(v), r.y1), (px(v), r.y0)) } else { ((r.x0, py(v)), (r.x1, py(v))) };
            let len = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt();
            let mut t = 0.0;
            while t < len {
                let t2 = (t + 6.0).min(len);
                let p = (a.0 + (b.0 - a.0) * t / len, a.1 + (b.1 - a.1) * t / len);
                let q = (a.0 + (b.0 - a.0) * t2 / len, a.1 + (b.1 - a.1) * t2 / len);
                cv.segment(p, q, 1.5, l.color, r);
                t += 10.0;
            }
        }
        for s in &self.series {
            let pts = self.pixel_points(s, &px, &py);
            if s.style != Style::Points {
                for win in pts.windows(2) {
                    if let (Some(p), Some(q)) = (win[0], win[1]) {
                        cv.segment(p, q, 1.8, s.color, r);
                    }
                }
            }
            for (i, p) in pts.iter().enumerate() {
                let isolated = pts.get(i.wrapping_sub(1)).is_none_or(|q| q.is_none())
                    && pts.get(i + 1).is_none_or(|q| q.is_none());
                if let Some(p) = p {
                    if s.style != Style::Line || isolated {
                        cv.dot(*p, 2.5, s.color, r);
                    }
                }
            }
        }

        // frame
        let (fx0, fy0, fx1, fy1) = (r.x0 as i64, r.y0 as i64, r.x1 as i64, r.y1 as i64);
        cv.fill_rect(fx0 - 1, fy0 - 1, fx1 + 1, fy0, FRAME, 1.0);
        cv.fill_rect(fx0 - 1, fy1, fx1 + 1, fy1 + 1, FRAME, 1.0);
        cv.fill_rect(fx0 - 1, fy0 - 1, fx0, fy1 + 1, FRAME, 1.0);
        cv.fill_rect(fx1, fy0 - 1, fx1 + 1, fy1 + 1, FRAME, 1.0);

        // title and axis labels
        let tw = text_width(&self.title, title_scale);
        cv.text(((w as i64 - tw) / 2).max(2), 10, &self.title, BLACK, title_scale);
        if !self.xlabel.is_empty() {
            let tw = text_width(&self.xlabel, 1);
            cv.text(((fx0 + fx1 - tw) / 2).max(2), h as i64 - 8 - 8, &self.xlabel, BLACK, 1);
        }
        if !self.ylabel.is_empty() {
            let th = text_width(&self.ylabel, 1);
            cv.text_up(8, ((fy0 + fy1 - th) / 2).max(2), &self.ylabel, BLACK);
        }

        self.draw_legend(&mut cv, r, &px, &py);
        cv
    }

    fn draw_legend(&self, cv: &mut Canvas, r: Rect, px: &dyn Fn(f64) -> f64, py: &dyn Fn(f64) -> f64) {
        // entries: (label, colour, dashed, marker)
        let mut entries: Vec<(String, Color, bool, bool)> = Vec::new();
        for s in self.series.iter().filter(|s| !s.name.is_empty()) {
            entries.push((s.name.clone(), s.color, false, s.style != Style::Line));
        }
        for l in self.lines.iter().filter(|l| !l.label.is_empty()) {
            if !entries.iter().any(|e| e.0 == l.label && e.1 == l.color) {
                entries.push((l.label.clone(), l.color, true, false));
            }
        }
        if entries.is_empty() {
            return;
        }
        let row = 14.0;
        let bw = 8.0 + 22.0 + 6.0 + entries.iter().map(|e| text_width(&e.0, 1)).max().unwrap_or(0) as f64 + 8.0;
        let bh = 6.0 + row * entries.len() as f64 + 2.0;
        let m = 6.0;
        let (cx, cy) = ((r.x0 + r.x1 - bw) / 2.0, (r.y0 + r.y1 - bh) / 2.0);
        let candidates = [
            (r.x1 - m - bw, r.y0 + m),
            (r.x0 + m, r.y0 + m),
            (r.x1 - m - bw, r.y1 - m - bh),
            (r.x0 + m, r.y1 - m - bh),
            (cx, r.y0 + m),
            (cx, r.y1 - m - bh),
            (r.x1 - m - bw, cy),
            (r.x0 + m, cy),
        ];
        // Points along the drawn data (segments sampled every ~3 px), in pixel coordinates.
        let mut samples: Vec<(f64, f64)> = Vec::new();
        for s in &self.series {
            let pts = self.pixel_points(s, px, py);
            for (i, p) in pts.iter().enumerate() {
                let Some(p) = *p else { continue };
                samples.push(p);
                if s.style == Style::Points {
                    continue;
                }
                if let Some(Some(q)) = pts.get(i + 1) {
                    let Some((a, b)) = clip_segment(p, *q, r) else {
                        continue;
                    };
                    let len = ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt();
                    let k = (len / 3.0).ceil().min(2000.0) as usize;
                    for j in 1..k {
                        let f = j as f64 / k as f64;
                        samples.push((a.0 + (b.0 - a.0) * f, a.1 + (b.1 - a.1) * f));
                    }
                }
            }
        }
        // the candidate covering the fewest samples (earlier wins ties: top right first)
        let count = |bx: f64, by: f64| {
            samples
                .iter()
                .filter(|&&(qx, qy)| qx >= bx - 2.0 && qx <= bx + bw + 2.0 && qy >= by - 2.0 && qy <= by + bh + 2.0)
                .count()
        };
        let (bx, by) = candidates.iter().copied().min_by_key(|&(x, y)| count(x, y)).unwrap();
        let (x0, y0) = (bx.round() as i64, by.round() as i64);
        let (x1, y1) = ((bx + bw).round() as i64, (by + bh).round() as i64);
        cv.fill_rect(x0, y0, x1, y1, WHITE, 0.9);
        cv.fill_rect(x0, y0, x1, y0 + 1, GRID, 1.0);
        cv.fill_rect(x0, y1 - 1, x1, y1, GRID, 1.0);
        cv.fill_rect(x0, y0, x0 + 1, y1, GRID, 1.0);
        cv.fill_rect(x1 - 1, y0, x1, y1, GRID, 1.0);
        let clip = Rect { x0: x0 as f64, y0: y0 as f64, x1: x1 as f64, y1: y1 as f64 };
        for (i, (label, c, dashed, marker)) in entries.iter().enumerate() {
            let yc = by + 6.0 + row * i as f64 + 4.0;
            let (sx0, sx1) = (bx + 8.0, bx + 30.0);
            if *dashed {
                cv.segment((sx0, yc), (sx0 + 8.0, yc), 1.5, *c, clip);
                cv.segment((sx0 + 13.0, yc), (sx1, yc), 1.5, *c, clip);
            } else if *marker {
                cv.dot(((sx0 + sx1) / 2.0, yc), 2.5, *c, clip);
            } else {
                cv.segment((sx0, yc), (sx1, yc), 1.8, *c, clip);
            }
            cv.text((sx1 + 6.0) as i64, (yc - 4.0).round() as i64, label, BLACK, 1);
        }
    }

    /// The plot as PNG bytes (8-bit RGB).
    pub fn to_png(&self) -> Result<Vec<u8>> {
        let cv = self.render();
        encode_png(cv.width, cv.height, 3, &cv.pixels)
    }

    /// Writes the plot as a PNG file, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_png().flat_context(|| format!("cannot write {}", path.display()))?;
        write_atomic_bytes(path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::atomic::test_dir;

    #[test]
    fn ticks_are_nice() {
        let t: Vec<String> = linear_ticks(0.0, 1.0, 5).into_iter().map(|t| t.1).collect();
        assert_eq!(t, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        let t: Vec<String> = linear_ticks(-3.3, 97.0, 4).into_iter().map(|t| t.1).collect();
        assert_eq!(t, ["0", "25", "50", "75"]);
        let t: Vec<String> = linear_ticks(0.0, 0.01, 4).into_iter().map(|t| t.1).collect();
        assert_eq!(t, ["0.0000", "0.0025", "0.0050", "0.0075", "0.0100"]);
        let t: Vec<String> = linear_ticks(0.0, 3e6, 3).into_iter().map(|t| t.1).collect();
        assert_eq!(t, ["0", "1e6", "2e6", "3e6"]);
        let (maj, _) = log_ticks(-1.1, 0.4, 5);
        let t: Vec<&str> = maj.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(t, ["0.1", "0.2", "0.5", "1", "2"]);
        let (maj, _) = log_ticks(-3.2, 0.1, 5);
        let t: Vec<&str> = maj.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(t, ["0.001", "0.01", "0.1", "1"]);
        let (maj, _) = log_ticks(0.0, 0.9, 5);
        let t: Vec<&str> = maj.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(t, ["1", "2", "5"]);
        assert_eq!(format_sci(2.5e-7), "2.5e-7");
    }

    #[test]
    fn writes_a_valid_png() {
        let d = test_dir("plot");
        let pts: Vec<(f64, f64)> = (0..200).map(|i| (i as f64, (i as f64 / 20.0).sin())).collect();
        let mut with_nan = pts.clone();
        with_nan[50].1 = f64::NAN;
        with_nan[51].0 = f64::INFINITY;
        let p = d.join("sub/p.png");
        Plot::new("S0(t) and S1(t), α = 0.9", 480, 300)
            .xlabel("t")
            .ylabel("similarity")
            .series("S0", &with_nan, palette(0))
            .points("cuts", &[(40.0, 0.5)], palette(2))
            .vline(120.0, "cut", palette(3))
            .vline(150.0, "cut", palette(3))
            .hline(0.9, "α", palette(1))
            .save(&p)
            .unwrap();
        let im = crate::io::image::read_decoded(&p).unwrap();
        assert_eq!((im.channels, im.width, im.height), (3, 480, 300));
        let non_white = im.data.iter().filter(|&&v| v < 0.99).count();
        assert!(non_white > 2000, "only {non_white} non-white samples");
        // The series colour appears (tab10 blue, allowing for anti-aliasing).
        let cv = Plot::new("", 480, 300).series("s", &pts, palette(0)).render();
        let blue = (0..cv.height)
            .flat_map(|y| (0..cv.width).map(move |x| (x, y)))
            .filter(|&(x, y)| cv.get(x, y) == palette(0))
            .count();
        assert!(blue > 200, "{blue} blue pixels");
        // Log axis with non-positive values and an empty plot do not panic.
        let cv =
            Plot::new("log", 300, 200).log_y(true).series("l", &[(0.0, 0.0), (1.0, 1e-3), (2.0, 10.0)], BLACK).render();
        assert!(cv.pixels.iter().any(|&v| v < 255));
        Plot::new("empty", 10, 10).render();
        Plot::new("one", 200, 150).series("x", &[(1.0, 1.0)], BLACK).render();
        std::fs::remove_dir_all(&d).unwrap();
    }
}
