//! The shared pieces of Spool Live's fuzz targets (issue #16).
//!
//! There is no nightly toolchain here, so no cargo-fuzz: the targets are proptest
//! properties over arbitrary and mutated inputs, named `fuzz_*`, next to the code they
//! exercise (`proto`, `platform`, `delivery`, `ingest`). Every target checks that the code
//! never panics on arbitrary input, that valid inputs parse and invalid ones give an
//! error, and that what is written reads back the same.
//!
//! How long they run:
//! - `cargo test` / `make test`: [`DEFAULT_CASES`] cases per target from a fixed seed, so
//!   the run is bounded (well under a second a target) and the same every time;
//! - `make fuzz`: `SPOOL_FUZZ_CASES` cases per target (default 200,000 there), from a random
//!   seed each run, in the `fuzz` profile (optimised, with overflow checks and debug
//!   assertions). A failure prints the shrunk input; it becomes a regression test next to
//!   the target.
#![forbid(unsafe_code)]

pub mod sse;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

/// Cases per target in an ordinary test run.
pub const DEFAULT_CASES: u32 = 256;
/// The fixed seed of an ordinary test run.
pub const DEFAULT_SEED: u64 = 0x5b00_1f22;

/// The proptest configuration of a fuzz target: [`DEFAULT_CASES`] from [`DEFAULT_SEED`], or
/// `SPOOL_FUZZ_CASES` cases from a random seed. `scale` divides the count for the slower
/// targets (each still runs at least one case).
pub fn config(scale: u32) -> Config {
    let long: Option<u32> = std::env::var("SPOOL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok());
    let cases = (long.unwrap_or(DEFAULT_CASES) / scale.max(1)).max(1);
    Config {
        cases,
        rng_seed: match long {
            Some(_) => RngSeed::Random,
            None => RngSeed::Fixed(DEFAULT_SEED),
        },
        // A long run may meet many rejected inputs in a row: don't give up on them.
        max_global_rejects: cases.saturating_mul(4).max(1024),
        // A failure is turned into a named regression test by hand, not a seed file.
        failure_persistence: None,
        ..Config::default()
    }
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
pub enum Edit {
    Flip { at: usize, bit: u8 },
    Set { at: usize, byte: u8 },
    Insert { at: usize, bytes: Vec<u8> },
    Remove { at: usize, len: usize },
    Duplicate { at: usize, len: usize },
    Truncate { at: usize },
}

/// Bytes that matter to the parsers here: JSON and YAML punctuation, SSE line ends,
/// UTF-8 lead bytes, and the like.
const INTERESTING: &[u8] = b"{}[]\":,\\ \n\r\t\0-#&*!|>'%?/._0123456789eE+\xc3\xe2\xf0\xff\x80";

fn interesting_byte() -> impl Strategy<Value = u8> {
    prop_oneof![any::<u8>(), proptest::sample::select(INTERESTING)]
}

fn edit() -> impl Strategy<Value = Edit> {
    let at = any::<usize>();
    prop_oneof![
        (at, 0u8..8).prop_map(|(at, bit)| Edit::Flip { at, bit }),
        (at, interesting_byte()).prop_map(|(at, byte)| Edit::Set { at, byte }),
        (at, proptest::collection::vec(interesting_byte(), 1..8))
            .prop_map(|(at, bytes)| Edit::Insert { at, bytes }),
        (at, 1usize..16).prop_map(|(at, len)| Edit::Remove { at, len }),
        (at, 1usize..32).prop_map(|(at, len)| Edit::Duplicate { at, len }),
        at.prop_map(|at| Edit::Truncate { at }),
    ]
}

/// Applies `edits` to `bytes` (positions taken modulo the length at the time).
pub fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let len = bytes.len();
        match *e {
            Edit::Flip { at, bit } if len > 0 => bytes[at % len] ^= 1 << bit,
            Edit::Set { at, byte } if len > 0 => bytes[at % len] = byte,
            Edit::Insert { at, bytes: ref ins } => {
                let at = at % (len + 1);
                bytes.splice(at..at, ins.iter().copied());
            }
            Edit::Remove { at, len: n } if len > 0 => {
                let at = at % len;
                bytes.drain(at..(at + n).min(len));
            }
            Edit::Duplicate { at, len: n } if len > 0 => {
                let at = at % len;
                let copy: Vec<u8> = bytes[at..(at + n).min(len)].to_vec();
                bytes.splice(at..at, copy);
            }
            Edit::Truncate { at } => bytes.truncate(at % (len + 1)),
            _ => {}
        }
    }
    bytes
}

/// `seed`, changed by zero to eight random edits.
pub fn mutated(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(edit(), 0..8).prop_map(move |edits| apply(seed.clone(), &edits))
}

/// One of `seeds` (say, valid files or bodies), changed by a few random edits.
pub fn mutated_one_of(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::sample::select(seeds),
        proptest::collection::vec(edit(), 0..8),
    )
        .prop_map(|(seed, edits)| apply(seed, &edits))
}

/// Characters that have broken text protocols before: line ends of every kind (SSE ends
/// a line at `\r`, `\n` and `\r\n`), Unicode line separators, a BOM, NUL and other
/// controls, quotes and backslashes, placeholders, multi-byte and astral characters.
const AWKWARD: &[&str] = &[
    "\n",
    "\r",
    "\r\n",
    "\n\n",
    "\u{2028}",
    "\u{2029}",
    "\u{85}",
    "\u{feff}",
    "\0",
    "\u{1b}",
    "\u{7f}",
    "\"",
    "\\",
    "\\n",
    "data: ",
    "id: ",
    "event: ",
    ":",
    "{slug}",
    "{id}",
    "{",
    "}",
    "é",
    "日本",
    "🦀",
    "\u{10ffff}",
    " ",
    "\t",
    "/",
    "..",
    "?",
    "#",
    "%",
    "+",
    "&",
    "=",
    ";",
    ",",
];

/// Arbitrary text, weighted towards [`AWKWARD`] pieces.
pub fn awkward_string(max_pieces: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            proptest::sample::select(AWKWARD).prop_map(str::to_owned),
            any::<String>(),
            "[a-z0-9_-]{1,8}",
        ],
        0..max_pieces,
    )
    .prop_map(|pieces| pieces.concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_stay_in_bounds() {
        let edits = [
            Edit::Remove { at: 3, len: 100 },
            Edit::Duplicate { at: 99, len: 5 },
            Edit::Insert {
                at: 7,
                bytes: b"xy".to_vec(),
            },
            Edit::Truncate { at: 2 },
        ];
        assert_eq!(apply(b"abcdef".to_vec(), &edits), b"xy");
        assert_eq!(apply(b"abcdef".to_vec(), &edits[..3]), b"xyabcabc");
        assert_eq!(apply(Vec::new(), &edits), b"xy");
    }
}
