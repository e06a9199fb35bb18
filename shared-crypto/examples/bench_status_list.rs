//! Status-list benchmark: size against the information bound, encode time and lookup cost for
//! 38,000,000 certificates (the national scale) at 0.5 %, 2 % and 5 % revoked at random.
//!
//! Run: `cargo run --release -p shared-crypto --features std --example bench_status_list`.
//! Prints a table; writes a flat JSON object of numbers to the file named by `BENCH_OUT` if set.

use std::hint::black_box;
use std::time::Instant;

use shared_crypto::status_list::{encode, StatusListView, HEADER_LEN};

const SIZE: u32 = 38_000_000;
const LOOKUPS: u32 = 2_000_000;
const CHECKS: u32 = 200_000;

/// xorshift64* (Vigna 2016), seeded: the same sets on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u32) -> u32 {
        (((self.next() >> 32) * u64::from(n)) >> 32) as u32
    }
}

/// A clock for the work of this thread: its CPU time from `/proc/thread-self/schedstat` (Linux),
/// so that other processes on a busy machine do not inflate the figures; wall time elsewhere.
struct Clock {
    wall: Instant,
    cpu: Option<u64>,
}

impl Clock {
    fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: cpu_ns(),
        }
    }
    fn elapsed_ns(&self) -> f64 {
        match (self.cpu, cpu_ns()) {
            (Some(a), Some(b)) => (b - a) as f64,
            _ => self.wall.elapsed().as_secs_f64() * 1e9,
        }
    }
}

fn cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Binary entropy in bits.
fn entropy(p: f64) -> f64 {
    if p <= 0.0 || p >= 1.0 {
        0.0
    } else {
        -p * p.log2() - (1.0 - p) * (1.0 - p).log2()
    }
}

struct Row {
    key: &'static str,
    label: &'static str,
    revoked: usize,
    bytes: usize,
    index_len: usize,
    bound: f64,
    encode_ms: f64,
    lookup_ns: f64,
}

fn run(key: &'static str, label: &'static str, rate: f64, seed: u64) -> Result<Row, String> {
    let mut rng = Rng(seed);
    let threshold = (rate * 2f64.powi(64)) as u64;
    let mut bitset = vec![false; SIZE as usize];
    let revoked: Vec<u32> = (0..SIZE)
        .filter(|&i| {
            let hit = rng.next() < threshold;
            bitset[i as usize] = hit;
            hit
        })
        .collect();

    let t = Clock::start();
    let bytes = encode(SIZE, revoked.iter().copied()).map_err(|e| e.to_string())?;
    let encode_ms = t.elapsed_ns() / 1e6;

    let view = StatusListView::parse(&bytes).map_err(|e| e.to_string())?;
    view.validate().map_err(|e| e.to_string())?;
    // The header's data_len (bytes 12..16) gives the share of the block index.
    let data_len = bytes
        .get(12..16)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_le_bytes) as usize;
    let index_len = bytes.len() - HEADER_LEN - data_len;

    // Correctness first (outside the timing): random lookups against the plain bitset.
    let mut check = Rng(seed ^ 0xA5A5);
    for _ in 0..CHECKS {
        let i = check.below(SIZE);
        if view.is_revoked(i).map_err(|e| e.to_string())? != bitset[i as usize] {
            return Err(format!("{label}: wrong answer for index {i}"));
        }
    }

    let indices: Vec<u32> = {
        let mut r = Rng(seed ^ 0x5A5A);
        (0..LOOKUPS).map(|_| r.below(SIZE)).collect()
    };
    let t = Clock::start();
    let mut hits = 0u32;
    for &i in &indices {
        if let Ok(true) = view.is_revoked(black_box(i)) {
            hits += 1;
        }
    }
    let lookup_ns = t.elapsed_ns() / f64::from(LOOKUPS);
    black_box(hits);

    let p = revoked.len() as f64 / f64::from(SIZE);
    Ok(Row {
        key,
        label,
        revoked: revoked.len(),
        bytes: bytes.len(),
        index_len,
        bound: f64::from(SIZE) * entropy(p) / 8.0,
        encode_ms,
        lookup_ns,
    })
}

fn main() {
    let cases = [
        ("0_5pct", "0.5 %", 0.005, 1),
        ("2pct", "2 %", 0.02, 2),
        ("5pct", "5 %", 0.05, 3),
    ];
    let mut rows = Vec::new();
    for (key, label, rate, seed) in cases {
        match run(key, label, rate, seed) {
            Ok(row) => rows.push(row),
            Err(e) => {
                eprintln!("bench_status_list: {e}");
                std::process::exit(1);
            }
        }
    }

    println!(
        "status list, {SIZE} entries, random revocations; {LOOKUPS} random lookups each \
         (times are this thread's CPU time)"
    );
    println!(
        "{:>7} {:>10} {:>12} {:>12} {:>7} {:>8} {:>10} {:>10}",
        "revoked", "count", "bytes", "bound", "ratio", "index %", "encode ms", "lookup ns"
    );
    for r in &rows {
        println!(
            "{:>7} {:>10} {:>12} {:>12.0} {:>7.4} {:>8.2} {:>10.1} {:>10.1}",
            r.label,
            r.revoked,
            r.bytes,
            r.bound,
            r.bytes as f64 / r.bound,
            100.0 * r.index_len as f64 / r.bytes as f64,
            r.encode_ms,
            r.lookup_ns
        );
    }

    if let Some(path) = std::env::var_os("BENCH_OUT").filter(|p| !p.is_empty()) {
        let mut fields = Vec::new();
        for r in &rows {
            let k = r.key;
            fields.push(format!("\"status_list_bytes_{k}\": {}", r.bytes));
            fields.push(format!("\"status_list_bound_bytes_{k}\": {:.0}", r.bound));
            fields.push(format!(
                "\"status_list_ratio_{k}\": {:.4}",
                r.bytes as f64 / r.bound
            ));
            fields.push(format!("\"status_list_encode_ms_{k}\": {:.1}", r.encode_ms));
            fields.push(format!("\"status_list_lookup_ns_{k}\": {:.1}", r.lookup_ns));
        }
        if let Some(r) = rows.iter().find(|r| r.key == "2pct") {
            fields.push(format!("\"status_list_lookup_ns\": {:.1}", r.lookup_ns));
        }
        let json = format!("{{{}}}\n", fields.join(", "));
        if let Err(e) = std::fs::write(&path, json) {
            eprintln!("bench_status_list: writing {}: {e}", path.to_string_lossy());
            std::process::exit(1);
        }
    }
}
