//! JSON-lines logs (`metrics.jsonl`, `val-loss.jsonl`, ...) read back, for reports.
use anyhow::{Context, Result};
use serde_json::Value;
use std::path::Path;

/// Every non-empty line of a JSONL file as a JSON value; a line that does not parse is an error
/// naming the file and line.
pub fn read_jsonl(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{}:{}: not a JSON line", path.display(), i + 1)))
        .collect()
}

/// The numbers of a JSON array (non-numbers skipped; empty if `v` is not an array).
pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_lines_and_names_a_bad_one() {
        let dir = std::env::temp_dir().join(format!("msdiff-jsonl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.jsonl");
        std::fs::write(&p, "{\"loss\":[1,2.5,\"x\"]}\n\n{\"step\":3}\n").unwrap();
        let v = read_jsonl(&p).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(floats(&v[0]["loss"]), vec![1.0, 2.5]);
        assert!(floats(&v[1]["loss"]).is_empty());
        std::fs::write(&p, "{\"step\":3}\n{oops\n").unwrap();
        let e = format!("{:#}", read_jsonl(&p).unwrap_err());
        assert!(e.contains("a.jsonl:2"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
