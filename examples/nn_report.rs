//! Prints the analytic report of every network preset.
fn main() -> anyhow::Result<()> {
    for name in msdiff::nn::PRESETS {
        let cfg = msdiff::nn::UNetConfig::preset(name)?;
        let s = cfg.num_stages();
        let b: Vec<f64> = if s == 3 { vec![0.442, 0.6308] } else { (1..s).map(|j| j as f64 / s as f64).collect() };
        println!("== {name}\n{}\n", msdiff::nn::report(&cfg, &b)?);
    }
    Ok(())
}
