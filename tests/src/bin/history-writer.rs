//! Test helper for the history crash test: writes buckets to a history
//! database forever, bucket `i` holding `ROWS` cells of count `i + 1`, and
//! prints `committed <i>` after each commit. The test kills it with SIGKILL
//! at an arbitrary moment and checks what survived.

use std::{io::Write, path::PathBuf};

use router_ctl::history::{History, Settings};

const ROWS: usize = 2_000;

fn main() {
    let path = PathBuf::from(std::env::args().nth(1).expect("usage: history-writer DB"));
    let mut h = History::open(&path, Settings::default()).expect("open");
    let topics: Vec<String> = (0..ROWS).map(|i| format!("topic/{i}")).collect();
    let base = 1_800_000_000u64;
    let mut out = std::io::stdout().lock();
    for i in 0u64.. {
        let ts = base + i * 60;
        h.add(topics.iter().map(|t| (ts, t.as_str(), "g", i + 1)), ts + 60)
            .expect("add");
        writeln!(out, "committed {i}").expect("stdout");
        out.flush().expect("stdout");
    }
}
