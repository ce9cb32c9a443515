//! A registry's histograms as bytes, and back: what each pre-fork worker
//! publishes so that one process can show the whole application.
//!
//! [`encode`] writes every key of a [`Registry`] (kind, operation name,
//! target, status class) with its cumulative histogram in the HdrHistogram
//! V2 compressed encoding, plus what V2 does not carry: the exact sum, min,
//! max and clamped count. [`decode`] reads it back into [`State`] (one
//! [`Snapshot`] per key), and [`Registry::absorb`] adds a state into another
//! registry, so that the merged registry renders, and answers
//! `merged_by_target`, exactly as one process's would: counts, sums and
//! error counts add exactly.
//!
//! Layout (integers little-endian): the magic `PTS1`; the histogram
//! config (`highest` u64, `sigfig` u8); the key count (u32); then per key:
//! kind, status class and target system (one byte each: their index in
//! `SpanKind::ALL`, `StatusClass::ALL`, `System::ALL`), the name (u32
//! length, UTF-8), three optional target values (a byte 0/1, then a
//! string), sum (u128), min, max, clamped (u64 each), the V2 bytes (u32
//! length, bytes); then the operations' counts of spans answered 429 (u32
//! count; per operation: kind, system, name, target values as above, the
//! count as u64). Nothing here is on the request path.

use crate::histogram::{Histogram, HistogramConfig, Snapshot};
use crate::registry::{Entry, Registry, OVERFLOW_NAME};
use crate::span::{SpanKind, StatusClass};
use crate::target::{System, Target, TargetRef, MAX_VALUES};
use std::collections::HashMap;
use std::sync::Arc;

const MAGIC: &[u8; 4] = b"PTS1";

/// One key of a decoded state.
#[derive(Clone, Debug, PartialEq)]
pub struct StateEntry {
    pub kind: SpanKind,
    pub name: String,
    pub target: Target,
    pub class: StatusClass,
    pub snapshot: Snapshot,
}

/// A decoded state: the config its histograms were recorded with, and its keys.
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    pub config: HistogramConfig,
    pub entries: Vec<StateEntry>,
    /// Spans answered 429 per operation: (kind, name, target, count).
    pub rate_limited: Vec<(SpanKind, String, Target, u64)>,
}

impl State {
    /// Records over every key.
    pub fn count(&self) -> u64 {
        self.entries
            .iter()
            .fold(0u64, |a, e| a.saturating_add(e.snapshot.count()))
    }
}

/// The position of `x` in `all` (one of the enums' `ALL` tables).
fn index<T: PartialEq + Copy>(all: &[T], x: T) -> u8 {
    all.iter().position(|&y| y == x).unwrap_or(0) as u8
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Every key of `registry` with a non-empty histogram, as bytes.
pub fn encode(registry: &Registry) -> Vec<u8> {
    encode_with(registry, |_, s| s.to_v2_bytes())
}

/// [`encode`] for a publisher that encodes the same registry again and
/// again: a key's V2 bytes are reused while its histogram (the same one:
/// the encoder holds it, so no other can take its address) has the same
/// count, since a cumulative histogram's slots only grow. Holds the keys
/// of the last encoding only.
#[derive(Default)]
pub struct Encoder {
    cache: HashMap<usize, (Arc<Histogram>, u64, Vec<u8>)>,
}

impl Encoder {
    pub fn encode(&mut self, registry: &Registry) -> Vec<u8> {
        let mut next = HashMap::with_capacity(self.cache.len());
        let out = encode_with(registry, |e, s| {
            let id = Arc::as_ptr(&e.histogram) as usize;
            let v2 = match self.cache.remove(&id) {
                Some((_, count, v2)) if count == s.count() => v2,
                _ => s.to_v2_bytes(),
            };
            next.insert(id, (e.histogram.clone(), s.count(), v2.clone()));
            v2
        });
        self.cache = next;
        out
    }
}

fn encode_with(
    registry: &Registry,
    mut v2_of: impl FnMut(&Entry, &Snapshot) -> Vec<u8>,
) -> Vec<u8> {
    let cfg = registry.config();
    let entries: Vec<_> = registry
        .entries()
        .into_iter()
        .map(|e| (e.histogram.snapshot(), e))
        .filter(|(s, _)| s.count() > 0)
        .collect();
    let mut out = Vec::with_capacity(64 + entries.len() * 128);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&cfg.highest.to_le_bytes());
    out.push(cfg.sigfig);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (s, e) in entries {
        out.push(index(&SpanKind::ALL, e.kind));
        out.push(index(&StatusClass::ALL, e.class));
        out.push(index(&System::ALL, e.target.system()));
        put_str(&mut out, &e.name);
        put_target(&mut out, &e.target);
        out.extend_from_slice(&s.sum_ns().to_le_bytes());
        out.extend_from_slice(&s.min().to_le_bytes());
        out.extend_from_slice(&s.max().to_le_bytes());
        out.extend_from_slice(&s.clamped().to_le_bytes());
        let v2 = v2_of(&e, &s);
        out.extend_from_slice(&(v2.len() as u32).to_le_bytes());
        out.extend_from_slice(&v2);
    }
    let limited = registry.rate_limited_counts();
    out.extend_from_slice(&(limited.len() as u32).to_le_bytes());
    for (kind, name, target, n) in limited {
        out.push(index(&SpanKind::ALL, kind));
        out.push(index(&System::ALL, target.system()));
        put_str(&mut out, &name);
        put_target(&mut out, &target);
        out.extend_from_slice(&n.to_le_bytes());
    }
    out
}

fn put_target(out: &mut Vec<u8>, target: &Target) {
    for v in target.values() {
        match v {
            Some(v) => {
                out.push(1);
                put_str(out, v);
            }
            None => out.push(0),
        }
    }
}

/// A cheap summary of every key's histogram (key count, and each key's
/// count and sum), equal between two calls when nothing was recorded in
/// between: a publisher skips [`encode`] (which compresses every key)
/// while it is unchanged.
pub fn fingerprint(registry: &Registry) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |v: u64| {
        h ^= v;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    let entries = registry.entries();
    mix(entries.len() as u64);
    for e in entries {
        let s = e.histogram.snapshot();
        mix(s.count());
        mix(s.sum_ns() as u64);
    }
    for (_, _, _, n) in registry.rate_limited_counts() {
        mix(n);
    }
    h
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| format!("the state ends early (at byte {})", self.at))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn u128(&mut self) -> Result<u128, String> {
        Ok(u128::from_le_bytes(self.array()?))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn target(&mut self, system: System) -> Result<Target, String> {
        let mut values: [Option<&str>; MAX_VALUES] = [None; MAX_VALUES];
        for v in values.iter_mut() {
            if self.u8()? != 0 {
                *v = Some(self.str()?);
            }
        }
        Ok(TargetRef::new(system, values).to_owned_target())
    }

    fn str(&mut self) -> Result<&'a str, String> {
        let at = self.at;
        std::str::from_utf8(self.bytes()?)
            .map_err(|_| format!("text that is not UTF-8 at byte {at}"))
    }
}

fn pick<T: Copy>(all: &[T], i: u8, what: &str) -> Result<T, String> {
    all.get(i as usize)
        .copied()
        .ok_or_else(|| format!("no {what} number {i}"))
}

/// The state `encode` wrote; errors name what is wrong with the bytes.
pub fn decode(bytes: &[u8]) -> Result<State, String> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(4).ok() != Some(&MAGIC[..]) {
        return Err("not a pulsetrace state (no PTS1 magic)".to_string());
    }
    let config = HistogramConfig {
        highest: r.u64()?,
        sigfig: r.u8()?,
    }
    .validated()?;
    let n = r.u32()? as usize;
    let mut entries = Vec::with_capacity(n.min(1 << 16));
    for _ in 0..n {
        let kind = pick(&SpanKind::ALL, r.u8()?, "span kind")?;
        let class = pick(&StatusClass::ALL, r.u8()?, "status class")?;
        let system = pick(&System::ALL, r.u8()?, "target system")?;
        let name = r.str()?.to_owned();
        let target = r.target(system)?;
        let (sum, min, max, clamped) = (r.u128()?, r.u64()?, r.u64()?, r.u64()?);
        let snapshot = Snapshot::from_v2_bytes(r.bytes()?, sum, min, max, clamped)?;
        if snapshot.config() != config {
            return Err(format!(
                "a histogram of {name:?} with config {:?}, not the state's {config:?}",
                snapshot.config()
            ));
        }
        entries.push(StateEntry {
            kind,
            name,
            target,
            class,
            snapshot,
        });
    }
    let n = r.u32()? as usize;
    let mut rate_limited = Vec::with_capacity(n.min(1 << 16));
    for _ in 0..n {
        let kind = pick(&SpanKind::ALL, r.u8()?, "span kind")?;
        let system = pick(&System::ALL, r.u8()?, "target system")?;
        let name = r.str()?.to_owned();
        let target = r.target(system)?;
        rate_limited.push((kind, name, target, r.u64()?));
    }
    if r.at != bytes.len() {
        return Err(format!("{} bytes after the last key", bytes.len() - r.at));
    }
    Ok(State {
        config,
        entries,
        rate_limited,
    })
}

impl Registry {
    /// Adds every key of `state` into this registry's histograms (keys
    /// created as a record would create them, so the key bound and the
    /// `(overflow)` keys apply). Errors, adding nothing, if the state's
    /// histograms have another config.
    pub fn absorb(&self, state: &State) -> Result<(), String> {
        if state.config != self.config() {
            return Err(format!(
                "a state with histogram config {:?}, not this registry's {:?}",
                state.config,
                self.config()
            ));
        }
        for e in &state.entries {
            self.absorb_key(e.kind, &e.name, &e.target, e.class, &e.snapshot)?;
        }
        for (kind, name, target, n) in &state.rate_limited {
            self.add_rate_limited(*kind, name, target.view(), *n);
        }
        Ok(())
    }

    /// Adds every key of `other` (a live registry, read key by key) into
    /// this one, as [`absorb`](Self::absorb) does for a decoded state.
    pub fn absorb_registry(&self, other: &Registry) -> Result<(), String> {
        for e in other.entries() {
            let s = e.histogram.snapshot();
            if s.count() > 0 {
                self.absorb_key(e.kind, &e.name, &e.target, e.class, &s)?;
            }
        }
        for (kind, name, target, n) in other.rate_limited_counts() {
            self.add_rate_limited(kind, &name, target.view(), n);
        }
        Ok(())
    }

    fn absorb_key(
        &self,
        kind: SpanKind,
        name: &str,
        target: &Target,
        class: StatusClass,
        snapshot: &Snapshot,
    ) -> Result<(), String> {
        let h = if name == OVERFLOW_NAME && target.is_empty() {
            self.overflow_histogram(kind, target.system(), class)
        } else {
            self.histogram_for(kind, name, target.view(), class)
        };
        h.add(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        Registry::new(HistogramConfig::default(), 100)
    }

    #[test]
    fn a_state_round_trips_exactly() {
        let r = registry();
        for v in [1_000, 250_000, 3_000_000_000, 7] {
            r.record(SpanKind::Server, "GET /a", StatusClass::Http2xx, v);
        }
        r.record(SpanKind::Server, "GET /a", StatusClass::Http5xx, 42_000);
        let db = TargetRef::new(System::Db, [Some("postgresql"), Some("SELECT"), None]);
        r.record_target(
            SpanKind::Client,
            "SELECT users",
            db,
            StatusClass::Ok,
            90_000,
        );
        let state = decode(&encode(&r)).unwrap();
        assert_eq!(state.entries.len(), 3);
        assert_eq!(state.count(), 6);
        for e in &state.entries {
            let h = r
                .get_target(e.kind, &e.name, e.target.view(), e.class)
                .unwrap();
            assert_eq!(e.snapshot, h.snapshot(), "{}", e.name);
        }
    }

    #[test]
    fn absorbing_two_states_adds_them_exactly() {
        let (a, b) = (registry(), registry());
        for i in 1..=100u64 {
            a.record(SpanKind::Server, "GET /a", StatusClass::Http2xx, i * 1_000);
            b.record(SpanKind::Server, "GET /a", StatusClass::Http2xx, i * 7_000);
        }
        b.record(SpanKind::Server, "GET /a", StatusClass::Http5xx, 5);
        b.record(SpanKind::Internal, "job", StatusClass::Ok, 9);
        let merged = registry();
        merged.absorb(&decode(&encode(&a)).unwrap()).unwrap();
        merged.absorb(&decode(&encode(&b)).unwrap()).unwrap();
        let mut want = a
            .get(SpanKind::Server, "GET /a", StatusClass::Http2xx)
            .unwrap()
            .snapshot();
        want.merge(
            &b.get(SpanKind::Server, "GET /a", StatusClass::Http2xx)
                .unwrap()
                .snapshot(),
        )
        .unwrap();
        let got = merged
            .get(SpanKind::Server, "GET /a", StatusClass::Http2xx)
            .unwrap()
            .snapshot();
        assert_eq!(got, want);
        assert_eq!(got.count(), 200);
        assert_eq!(got.sum_ns(), (1..=100u128).map(|i| i * 8_000).sum::<u128>());
        let (all, errors) = merged.merged(SpanKind::Server, "GET /a").unwrap();
        assert_eq!((all.count(), errors), (201, 1));
        assert_eq!(
            merged.merged(SpanKind::Internal, "job").unwrap().0.count(),
            1
        );
    }

    #[test]
    fn rate_limited_counts_add_up() {
        let (a, b) = (registry(), registry());
        for r in [&a, &b] {
            r.record(SpanKind::Server, "GET /a", StatusClass::Http4xx, 10);
            r.record_rate_limited(SpanKind::Server, "GET /a", TargetRef::NONE);
        }
        b.record_rate_limited(SpanKind::Server, "GET /a", TargetRef::NONE);
        let merged = registry();
        merged.absorb(&decode(&encode(&a)).unwrap()).unwrap();
        merged.absorb_registry(&b).unwrap();
        let rows = merged.merged_by_target();
        assert_eq!((rows[0].snapshot.count(), rows[0].rate_limited), (2, 3));
    }

    #[test]
    fn overflow_keys_stay_overflow_keys() {
        let small = Registry::new(HistogramConfig::default(), 1);
        small.record(SpanKind::Server, "GET /a", StatusClass::Ok, 10);
        small.record(SpanKind::Server, "GET /b", StatusClass::Ok, 20);
        let merged = registry();
        merged.absorb(&decode(&encode(&small)).unwrap()).unwrap();
        assert_eq!(merged.key_count(), 1);
        let (overflow, _) = merged.merged(SpanKind::Server, OVERFLOW_NAME).unwrap();
        assert_eq!(overflow.count(), 1);
    }

    #[test]
    fn the_encoder_reuses_unchanged_keys_and_equals_encode() {
        let r = registry();
        let mut enc = Encoder::default();
        r.record(SpanKind::Server, "GET /a", StatusClass::Ok, 10);
        r.record(SpanKind::Server, "GET /b", StatusClass::Ok, 20);
        assert_eq!(enc.encode(&r), encode(&r));
        r.record(SpanKind::Server, "GET /a", StatusClass::Ok, 30_000);
        assert_eq!(enc.encode(&r), encode(&r));
        assert_eq!(enc.cache.len(), 2);
        // Another registry with keys of the same names and counts (a
        // reconfigured or forked core): its own histograms are encoded.
        let other = registry();
        other.record(SpanKind::Server, "GET /a", StatusClass::Ok, 7);
        other.record(SpanKind::Server, "GET /a", StatusClass::Ok, 7_000_000);
        other.record(SpanKind::Server, "GET /b", StatusClass::Ok, 99_999);
        assert_eq!(enc.encode(&other), encode(&other));
        assert_eq!(decode(&enc.encode(&other)).unwrap().count(), 3);
    }

    #[test]
    fn the_fingerprint_changes_with_a_record_only() {
        let r = registry();
        let empty = fingerprint(&r);
        r.record(SpanKind::Server, "GET /a", StatusClass::Ok, 10);
        let one = fingerprint(&r);
        assert_ne!(empty, one);
        assert_eq!(one, fingerprint(&r));
        r.record(SpanKind::Server, "GET /a", StatusClass::Ok, 10);
        assert_ne!(one, fingerprint(&r));
    }

    #[test]
    fn bad_bytes_are_named_errors() {
        assert!(decode(b"nope").unwrap_err().contains("magic"));
        let r = registry();
        r.record(SpanKind::Server, "GET /a", StatusClass::Ok, 10);
        let bytes = encode(&r);
        for cut in [5, 13, 20, bytes.len() - 1] {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).unwrap_err().contains("after the last key"));
        let other = Registry::new(
            HistogramConfig {
                highest: 1_000_000,
                sigfig: 3,
            },
            10,
        );
        other.record(SpanKind::Server, "GET /a", StatusClass::Ok, 10);
        let err = r.absorb(&decode(&encode(&other)).unwrap()).unwrap_err();
        assert!(err.contains("config"), "{err}");
    }
}
