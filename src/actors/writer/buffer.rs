//! The writer's buffer of uncommitted ops: arrival order kept, a memory cap that only ever
//! drops metric rows.

use std::collections::VecDeque;

use crate::store::write::WriteOp;

/// Uncommitted ops in arrival order, with a memory cap that only ever drops metric rows.
#[derive(Debug, Default)]
pub struct PendingBuffer {
    ops: VecDeque<WriteOp>,
    bytes: usize,
    rows: usize,
}

impl PendingBuffer {
    /// Appends an op, then drops the oldest metric rows while over `cap_bytes`; returns how many
    /// rows were dropped.
    pub fn push(&mut self, op: WriteOp, cap_bytes: usize) -> usize {
        self.bytes += op.approx_bytes();
        self.rows += op.rows();
        self.ops.push_back(op);
        let mut dropped = 0;
        while self.bytes > cap_bytes {
            let Some(pos) = self.ops.iter().position(WriteOp::is_droppable) else {
                break; // Only alerts and monitors left: they are never dropped.
            };
            if let Some(op) = self.ops.remove(pos) {
                self.bytes -= op.approx_bytes();
                self.rows -= op.rows();
                dropped += op.rows();
            }
        }
        dropped
    }

    /// The oldest ops holding about `max_rows` rows (at least one op).
    pub(crate) fn front_batch(&mut self, max_rows: usize) -> &[WriteOp] {
        let mut rows = 0;
        let mut n = 0;
        for op in &self.ops {
            if n > 0 && rows + op.rows() > max_rows {
                break;
            }
            rows += op.rows();
            n += 1;
        }
        &self.ops.make_contiguous()[..n]
    }

    /// Forgets the `n` oldest ops (they were committed); returns their row count.
    pub(crate) fn pop_front(&mut self, n: usize) -> usize {
        let mut rows = 0;
        for op in self.ops.drain(..n) {
            self.bytes -= op.approx_bytes();
            self.rows -= op.rows();
            rows += op.rows();
        }
        rows
    }

    /// Rows waiting.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{HealthMetric, Measurement, MonitorKind, ResourceType};

    /// A metrics op of `n` rows.
    pub(crate) fn rows(n: usize) -> WriteOp {
        WriteOp::Metrics(
            (0..n)
                .map(|i| {
                    HealthMetric::from_measurement(
                        Measurement::now(ResourceType::Cpu, "system", "x", i as f64, "%"),
                        None,
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn the_buffer_cap_drops_oldest_metrics_and_never_alerts() {
        let mut buf = PendingBuffer::default();
        let one = rows(10).approx_bytes();
        let cap = one * 3;
        assert_eq!(buf.push(rows(10), cap), 0);
        buf.push(WriteOp::MonitorDeleted(MonitorKind::Agent, "a".into()), cap);
        assert_eq!(buf.push(rows(10), cap), 0);
        assert_eq!(buf.push(rows(10), cap), 10);
        assert_eq!(buf.rows(), 21);
        assert!(matches!(buf.front_batch(1)[0], WriteOp::MonitorDeleted(..)));
        // Only non-droppable ops left over the cap: kept anyway.
        let mut buf = PendingBuffer::default();
        for _ in 0..5 {
            buf.push(WriteOp::MonitorDeleted(MonitorKind::Agent, "a".into()), 10);
        }
        assert_eq!(buf.rows(), 5);
    }

    #[test]
    fn a_batch_is_at_least_one_op_and_at_most_the_row_limit() {
        let mut buf = PendingBuffer::default();
        buf.push(rows(30), usize::MAX);
        buf.push(rows(30), usize::MAX);
        buf.push(rows(30), usize::MAX);
        assert_eq!(buf.front_batch(10).len(), 1);
        assert_eq!(buf.front_batch(60).len(), 2);
        assert_eq!(buf.pop_front(2), 60);
        assert_eq!(buf.rows(), 30);
    }
}
