//! How far a backfill is, for people and for dashboards: one line redrawn in place when stderr
//! is a terminal, a structured log line every [`LOG_EVERY`] otherwise, and the
//! `sluice_backfill_*` metrics. Only acknowledged items count: the figures never run ahead of
//! what the index holds.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Log lines, when not on a terminal.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
const REDRAW_EVERY: Duration = Duration::from_millis(250);

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// A line on stderr, redrawn in place.
    Terminal,
    /// `info` log lines.
    Log,
}

impl Display {
    /// A terminal line when stderr is a terminal, log lines otherwise.
    pub fn for_stderr() -> Display {
        if std::io::stderr().is_terminal() {
            Display::Terminal
        } else {
            Display::Log
        }
    }
}

pub struct Progress {
    /// What is loaded: "table `Posts`", "export 01700…".
    what: String,
    /// "segments" (Scan) or "files" (export).
    parts_name: &'static str,
    started: Instant,
    /// Acknowledged in this run.
    items: AtomicU64,
    /// Acknowledged in earlier runs of the same backfill (it resumed).
    before: u64,
    /// Items expected in all (0: unknown).
    estimate: u64,
    parts_total: u32,
    parts_done: AtomicU32,
    metrics: Metrics,
}

impl Progress {
    pub fn new(
        metrics: Metrics,
        what: String,
        parts_name: &'static str,
        parts_total: u32,
        parts_done: u32,
        before: u64,
        estimate: u64,
    ) -> Arc<Progress> {
        metrics.backfill_estimated_items.set(estimate as i64);
        metrics.backfill_complete.set(0);
        let progress = Progress {
            what,
            parts_name,
            started: Instant::now(),
            items: AtomicU64::new(0),
            before,
            estimate,
            parts_total,
            parts_done: AtomicU32::new(parts_done),
            metrics,
        };
        progress.set_part_states(parts_total.saturating_sub(parts_done), 0);
        Arc::new(progress)
    }

    /// `n` more items acknowledged; `part_done` when that finished a part.
    pub fn acknowledged(&self, n: u64, part_done: bool) {
        self.items.fetch_add(n, Ordering::Relaxed);
        self.metrics.backfill_items.inc_by(n);
        if part_done {
            let done = self.parts_done.fetch_add(1, Ordering::Relaxed) + 1;
            if done >= self.parts_total {
                self.metrics.backfill_complete.set(1);
            }
        }
    }

    /// Parts currently being read (the rest of those not done are pending).
    pub fn set_part_states(&self, not_done: u32, in_progress: u32) {
        let done = self.parts_total.saturating_sub(not_done);
        let pending = not_done.saturating_sub(in_progress);
        let gauge = &self.metrics.backfill_segments;
        gauge.with_label_values(&["pending"]).set(pending as i64);
        gauge
            .with_label_values(&["in_progress"])
            .set(in_progress as i64);
        gauge.with_label_values(&["done"]).set(done as i64);
        if not_done == 0 {
            self.metrics.backfill_complete.set(1);
        }
    }

    /// Items acknowledged per second in this run.
    fn rate(&self) -> f64 {
        let secs = self.started.elapsed().as_secs_f64();
        if secs < 0.5 {
            return 0.0;
        }
        self.items.load(Ordering::Relaxed) as f64 / secs
    }

    /// Seconds left at the current rate, when the total is known and the rate is not zero.
    fn eta(&self) -> Option<u64> {
        let total = self.before + self.items.load(Ordering::Relaxed);
        let rate = self.rate();
        (self.estimate > 0 && rate > 0.0)
            .then(|| (self.estimate.saturating_sub(total) as f64 / rate).ceil() as u64)
    }

    /// One line: items (of the estimate), items/s, ETA, parts done.
    pub fn line(&self) -> String {
        let total = self.before + self.items.load(Ordering::Relaxed);
        let mut out = format!("backfill of {}: {} items", self.what, thousands(total));
        if self.estimate > 0 {
            let pct = (total as f64 * 100.0 / self.estimate as f64).min(100.0);
            out.push_str(&format!(" of ~{} ({pct:.0}%)", thousands(self.estimate)));
        }
        out.push_str(&format!(", {} items/s", thousands(self.rate() as u64)));
        if let Some(eta) = self.eta() {
            out.push_str(&format!(", ETA {}", clock(eta)));
        }
        out.push_str(&format!(
            ", {}/{} {} done",
            self.parts_done.load(Ordering::Relaxed),
            self.parts_total,
            self.parts_name
        ));
        out
    }

    fn log(&self) {
        let total = self.before + self.items.load(Ordering::Relaxed);
        tracing::info!(
            what = %self.what,
            items = total,
            estimated_items = self.estimate,
            items_per_second = self.rate().round() as u64,
            eta_seconds = self.eta(),
            done = self.parts_done.load(Ordering::Relaxed),
            of = self.parts_total,
            "backfill progress"
        );
    }

    /// Shows progress until `stop`, then once more (the final figures).
    pub async fn show(self: Arc<Self>, display: Display, stop: CancellationToken) {
        let every = match display {
            Display::Terminal => REDRAW_EVERY,
            Display::Log => LOG_EVERY,
        };
        loop {
            let stopped = tokio::select! {
                _ = stop.cancelled() => true,
                _ = tokio::time::sleep(every) => false,
            };
            match display {
                Display::Terminal => {
                    // \r and erase-line: the line is redrawn in place
                    let mut err = std::io::stderr().lock();
                    let _ = write!(err, "\r\x1b[K{}", self.line());
                    if stopped {
                        let _ = writeln!(err);
                    }
                    let _ = err.flush();
                }
                Display::Log => self.log(),
            }
            if stopped {
                return;
            }
        }
    }
}

/// 1234567 → "1,234,567".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Seconds → "1h02m03s", "4m05s", "6s".
fn clock(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_items_rate_eta_and_parts() {
        let p = Progress::new(
            Metrics::new(),
            "table `Posts`".into(),
            "segments",
            4,
            1,
            1000,
            50_000,
        );
        assert!(
            p.line()
                .starts_with("backfill of table `Posts`: 1,000 items of ~50,000 (2%), "),
            "{}",
            p.line()
        );
        assert!(p.line().ends_with(", 1/4 segments done"), "{}", p.line());
        p.acknowledged(500, true);
        assert!(p.line().contains("1,500 items"), "{}", p.line());
        assert!(p.line().ends_with("2/4 segments done"), "{}", p.line());
    }

    #[test]
    fn metrics_follow_acknowledged_items_and_completion() {
        let metrics = Metrics::new();
        let p = Progress::new(metrics.clone(), "t".into(), "segments", 2, 0, 0, 10);
        p.set_part_states(2, 2);
        p.acknowledged(4, true);
        p.set_part_states(1, 1);
        assert_eq!(metrics.backfill_items.get(), 4);
        assert_eq!(metrics.backfill_complete.get(), 0);
        assert_eq!(
            metrics.backfill_segments.with_label_values(&["done"]).get(),
            1
        );
        p.acknowledged(6, true);
        assert_eq!(metrics.backfill_complete.get(), 1);
    }

    #[test]
    fn numbers_read_the_way_people_write_them() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(clock(6), "6s");
        assert_eq!(clock(245), "4m05s");
        assert_eq!(clock(3723), "1h02m03s");
    }
}
