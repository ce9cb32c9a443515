//! A configured core that never sees a span (a pre-fork server's master,
//! which configures the agent and forks its workers) allocates no intake
//! buffer: the workers it forks make their own and do not carry the
//! master's beside it. The intake is allocated by the first span.
#![cfg(not(loom))]

mod common;

use common::{live, Counting, SERIAL};
use pulsetrace_core::pipeline::{Core, CoreConfig};
use pulsetrace_core::span::SpanRecord;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The configuration a process starts with: 4,096 intake slots, 1,000 keys.
fn config() -> CoreConfig {
    let mut cfg = CoreConfig {
        max_metric_keys: 1_000,
        ..CoreConfig::default()
    };
    cfg.buffer.intake_spans = 4_096;
    cfg
}

#[test]
fn an_idle_core_holds_no_intake_buffer_until_its_first_span() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let intake = 4_096 * std::mem::size_of::<SpanRecord>();
    let before = live();
    let core = Core::new(config());
    let idle = live() - before;
    eprintln!("idle core: {idle} B (the intake would be {intake} B)");
    assert!(
        (idle as usize) < intake / 2,
        "an idle core holds {idle} B, its intake is {intake} B"
    );
    let mut rec = SpanRecord::new(1, 1, 0, "GET /");
    rec.duration_ns = 1_000;
    core.submit_span(rec);
    let first = live() - before;
    assert!(
        first as usize >= idle as usize + intake,
        "the first span allocates the intake: {idle} B then {first} B"
    );
    assert_eq!(core.intake_len(), 1);
}
