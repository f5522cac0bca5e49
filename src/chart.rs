//! Charts of a series over a range, from its rollups: which bucket width a range reads, how its
//! buckets are merged down to a page's worth of points (min, avg and max each), and the SVG
//! geometry of a chart and of a sparkline. Plain functions; the HTTP layer reads the rows and
//! renders the page.

use std::fmt::Write as _;

use serde::Serialize;

use crate::model::Thresholds;
use crate::rollup::{Acc, BUCKET_SECS, COARSE_SECS};

/// The ranges a chart shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Range {
    /// The last hour.
    H1,
    /// The last six hours.
    H6,
    /// The last day.
    H24,
    /// The last week.
    D7,
}

impl Range {
    /// Every range, shortest first.
    pub const ALL: [Range; 4] = [Range::H1, Range::H6, Range::H24, Range::D7];

    /// Its name in URLs: `1h`, `6h`, `24h`, `7d`.
    pub fn as_str(self) -> &'static str {
        match self {
            Range::H1 => "1h",
            Range::H6 => "6h",
            Range::H24 => "24h",
            Range::D7 => "7d",
        }
    }

    /// Parses a name of [`as_str`](Self::as_str).
    pub fn parse(s: &str) -> Option<Range> {
        Range::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The range a page's `?range=` asks for: 1 h when it says none.
    pub fn from_query(range: Option<&str>) -> Result<Range, String> {
        match range {
            None => Ok(Range::H1),
            Some(r) => {
                Range::parse(r).ok_or_else(|| format!("range {r:?} is not 1h, 6h, 24h or 7d"))
            }
        }
    }

    /// Its length in seconds.
    pub fn secs(self) -> i64 {
        match self {
            Range::H1 => 3600,
            Range::H6 => 6 * 3600,
            Range::H24 => 86_400,
            Range::D7 => 7 * 86_400,
        }
    }

    /// The rollup width it reads: minutes up to a day, ten minutes beyond.
    pub fn width(self) -> i64 {
        if self.secs() <= 86_400 {
            BUCKET_SECS
        } else {
            COARSE_SECS
        }
    }
}

/// The most points a chart gets.
pub const MAX_POINTS: usize = 360;

/// One point of a chart: a span of time's min, mean and max.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ChartPoint {
    /// The span's start, in Unix seconds.
    pub start: i64,
    /// Its smallest sample.
    pub min: f64,
    /// The mean of its samples.
    pub avg: f64,
    /// Its largest sample.
    pub max: f64,
    /// How many samples it holds.
    pub count: u64,
}

/// Merges rollup buckets (oldest first, any width) into at most `max_points` spans of equal
/// length between `since` and `until`; spans without samples are left out.
pub fn downsample(buckets: &[Acc], since: i64, until: i64, max_points: usize) -> Vec<ChartPoint> {
    let range = (until - since).max(1);
    let span = (range as f64 / max_points.max(1) as f64).ceil().max(1.0) as i64;
    let mut out: Vec<(i64, Acc)> = Vec::new();
    for b in buckets
        .iter()
        .filter(|b| b.count > 0 && b.bucket_start >= since - span)
    {
        let slot = since + (b.bucket_start - since).div_euclid(span) * span;
        match out.last_mut() {
            Some((s, acc)) if *s == slot => acc.merge(b),
            _ => out.push((slot, *b)),
        }
    }
    out.into_iter()
        .map(|(start, a)| ChartPoint {
            start,
            min: a.min,
            avg: a.avg(),
            max: a.max,
            count: a.count,
        })
        .collect()
}

/// A chart's drawing, in a `width` × `height` box: everything is numbers, safe to put in a page
/// as it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChartSvg {
    /// The `d` of the mean's line.
    pub avg_path: String,
    /// The `d` of the min-to-max band.
    pub band_path: String,
    /// The warning threshold's value and its line's y, when the metric has thresholds in view.
    pub warning: Option<(f64, f64)>,
    /// The critical threshold's value and its line's y.
    pub critical: Option<(f64, f64)>,
    /// The lowest value of the y axis.
    pub y_min: f64,
    /// The highest value of the y axis.
    pub y_max: f64,
}

/// Lays out a chart of `points` over `since..until` with its thresholds drawn as lines.
pub fn layout(
    points: &[ChartPoint],
    thresholds: Option<Thresholds>,
    since: i64,
    until: i64,
    width: f64,
    height: f64,
) -> ChartSvg {
    let mut lo = points.iter().map(|p| p.min).fold(f64::INFINITY, f64::min);
    let mut hi = points
        .iter()
        .map(|p| p.max)
        .fold(f64::NEG_INFINITY, f64::max);
    // Thresholds a chart can reach stay in view; a warn-only threshold's f64::MAX does not.
    let in_view = |v: f64| v.is_finite() && v.abs() < 1e15;
    if let Some(t) = thresholds {
        for v in [t.warning, t.critical].into_iter().filter(|v| in_view(*v)) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
    }
    if !lo.is_finite() || !hi.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    if hi - lo < 1e-9 {
        (lo, hi) = (lo - 0.5, hi + 0.5);
    }
    let pad = (hi - lo) * 0.05;
    let (lo, hi) = (lo - pad, hi + pad);
    let x = |t: i64| (t - since) as f64 / (until - since).max(1) as f64 * width;
    let y = |v: f64| height - (v - lo) / (hi - lo) * height;
    let mut avg_path = String::new();
    let mut upper = String::new();
    let mut lower: Vec<(f64, f64)> = Vec::new();
    for (i, p) in points.iter().enumerate() {
        let px = x(p.start);
        let cmd = if i == 0 { 'M' } else { 'L' };
        let _ = write!(avg_path, "{cmd}{px:.1},{:.1}", y(p.avg));
        let _ = write!(upper, "{cmd}{px:.1},{:.1}", y(p.max));
        lower.push((px, y(p.min)));
    }
    let mut band_path = upper;
    for (px, py) in lower.iter().rev() {
        let _ = write!(band_path, "L{px:.1},{py:.1}");
    }
    if !band_path.is_empty() {
        band_path.push('Z');
    }
    let line = |v: f64| in_view(v).then(|| (v, (y(v) * 10.0).round() / 10.0));
    ChartSvg {
        avg_path,
        band_path,
        warning: thresholds.and_then(|t| line(t.warning)),
        critical: thresholds.and_then(|t| line(t.critical)),
        y_min: lo,
        y_max: hi,
    }
}

/// The `d` of a sparkline of `values` (oldest first) in a `width` × `height` box.
pub fn sparkline(values: &[f64], width: f64, height: f64) -> String {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.is_empty() {
        return String::new();
    }
    let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = if hi - lo < 1e-12 { 1.0 } else { hi - lo };
    let step = if finite.len() > 1 {
        width / (finite.len() - 1) as f64
    } else {
        0.0
    };
    if finite.len() == 1 {
        // One point: a level line across the middle.
        return format!("M0.0,{:.1}L{width:.1},{:.1}", height / 2.0, height / 2.0);
    }
    let mut d = String::new();
    for (i, v) in finite.iter().enumerate() {
        let cmd = if i == 0 { 'M' } else { 'L' };
        let py = height - 1.0 - (v - lo) / span * (height - 2.0);
        let _ = write!(d, "{cmd}{:.1},{py:.1}", i as f64 * step);
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(start: i64, v: f64) -> Acc {
        Acc {
            bucket_start: start,
            min: v - 1.0,
            max: v + 1.0,
            sum: v * 60.0,
            count: 60,
        }
    }

    #[test]
    fn a_week_of_ten_minute_buckets_becomes_at_most_360_points_keeping_extremes() {
        let since = 0;
        let until = 7 * 86_400;
        let buckets: Vec<Acc> = (0..1008)
            .map(|i| acc(i * 600, if i == 500 { 1000.0 } else { 10.0 }))
            .collect();
        let points = downsample(&buckets, since, until, MAX_POINTS);
        assert!(
            points.len() <= MAX_POINTS && points.len() > 300,
            "{}",
            points.len()
        );
        assert!(points.iter().any(|p| p.max == 1001.0), "the spike survives");
        let total: u64 = points.iter().map(|p| p.count).sum();
        assert_eq!(total, 1008 * 60);
        assert!(points.windows(2).all(|w| w[0].start < w[1].start));
    }

    #[test]
    fn thresholds_are_lines_inside_the_box_and_the_series_fits() {
        let points = vec![
            ChartPoint {
                start: 0,
                min: 0.5,
                avg: 1.0,
                max: 1.5,
                count: 1,
            },
            ChartPoint {
                start: 60,
                min: 1.5,
                avg: 2.0,
                max: 2.5,
                count: 1,
            },
        ];
        let svg = layout(
            &points,
            Some(Thresholds::new(1.0, 3.0)),
            0,
            120,
            600.0,
            200.0,
        );
        let (w, wy) = svg.warning.unwrap();
        let (c, cy) = svg.critical.unwrap();
        assert_eq!((w, c), (1.0, 3.0));
        assert!(cy < wy && (0.0..=200.0).contains(&wy) && (0.0..=200.0).contains(&cy));
        assert!(svg.avg_path.starts_with("M0.0,") && svg.avg_path.contains("L300.0,"));
        assert!(svg.band_path.ends_with('Z'));
        // A warn-only threshold's far critical is not drawn, nor does it squash the chart.
        let svg = layout(
            &points,
            Some(Thresholds::new(1.0, f64::MAX)),
            0,
            120,
            600.0,
            200.0,
        );
        assert!(svg.critical.is_none() && svg.y_max < 10.0);
    }

    #[test]
    fn a_sparkline_spans_its_box() {
        let d = sparkline(&[1.0, 3.0, 2.0], 100.0, 20.0);
        assert_eq!(d, "M0.0,19.0L50.0,1.0L100.0,10.0");
        assert_eq!(sparkline(&[], 100.0, 20.0), "");
        assert_eq!(sparkline(&[5.0], 100.0, 20.0), "M0.0,10.0L100.0,10.0");
    }
}
