//! The training log: losses averaged over a logging window, overall and per stage, written as one
//! JSON line per window to `metrics.jsonl`.
use super::state::StepStats;
use serde::Serialize;
use std::time::Instant;

/// Accumulates the steps of one logging window.
pub struct LossWindow {
    sum: f64,
    steps: usize,
    images: usize,
    stage_sum: Vec<f64>,
    stage_n: Vec<usize>,
    grad_norm: f64,
    since: Instant,
}

/// One `metrics.jsonl` line.
#[derive(Clone, Debug, Serialize)]
pub struct MetricsLine {
    pub step: u64,
    /// Mean loss over the window's steps.
    pub loss: f64,
    /// Mean per-sample loss of each stage over the window (null: the stage saw no sample).
    pub loss_by_stage: Vec<Option<f64>>,
    pub lr: f64,
    /// Gradient norm (before clipping) of the window's last step.
    pub grad_norm: f64,
    pub images_per_s: f64,
    /// Seconds since the start of this session.
    pub elapsed_s: f64,
}

impl LossWindow {
    pub fn new(stages: usize) -> Self {
        LossWindow {
            sum: 0.0,
            steps: 0,
            images: 0,
            stage_sum: vec![0.0; stages],
            stage_n: vec![0; stages],
            grad_norm: 0.0,
            since: Instant::now(),
        }
    }

    /// Add a step whose samples had the stages `stage`.
    pub fn add(&mut self, stats: &StepStats, stage: &[i64]) {
        self.sum += stats.loss;
        self.steps += 1;
        self.images += stage.len();
        for (&st, &l) in stage.iter().zip(&stats.per_sample) {
            self.stage_sum[st as usize] += l;
            self.stage_n[st as usize] += 1;
        }
        self.grad_norm = stats.grad_norm;
    }

    /// The window's line, and a fresh window.
    pub fn flush(&mut self, step: u64, lr: f64, elapsed_s: f64) -> MetricsLine {
        let secs = self.since.elapsed().as_secs_f64().max(1e-9);
        let line = MetricsLine {
            step,
            loss: self.sum / self.steps.max(1) as f64,
            loss_by_stage: self
                .stage_sum
                .iter()
                .zip(&self.stage_n)
                .map(|(s, &n)| (n > 0).then(|| s / n as f64))
                .collect(),
            lr,
            grad_norm: self.grad_norm,
            images_per_s: self.images as f64 / secs,
            elapsed_s,
        };
        *self = LossWindow::new(self.stage_sum.len());
        line
    }
}

impl MetricsLine {
    /// "loss 0.1234 | s0 0.1 s1 - s2 0.3" for the progress bar.
    pub fn summary(&self) -> String {
        let stages: Vec<String> = self
            .loss_by_stage
            .iter()
            .enumerate()
            .map(|(j, v)| v.map_or(format!("s{j} -"), |v| format!("s{j} {v:.4}")))
            .collect();
        format!("loss {:.4} | {}", self.loss, stages.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_means_per_stage_and_resets() {
        let mut w = LossWindow::new(3);
        w.add(&StepStats { loss: 1.0, per_sample: vec![0.5, 1.5], grad_norm: 2.0 }, &[0, 2]);
        w.add(&StepStats { loss: 3.0, per_sample: vec![2.0, 4.0], grad_norm: 7.0 }, &[0, 0]);
        let l = w.flush(2, 1e-3, 0.5);
        assert_eq!(l.loss, 2.0);
        assert_eq!(l.loss_by_stage, vec![Some((0.5 + 2.0 + 4.0) / 3.0), None, Some(1.5)]);
        assert_eq!(l.grad_norm, 7.0);
        let l = w.flush(3, 1e-3, 0.6);
        assert_eq!(l.loss_by_stage, vec![None, None, None]);
    }
}
