//! Makes a saga-record dictionary of zstd's own format: the engine's words (a raw dictionary,
//! `words-1.txt`) with entropy tables made from sample records, so that compressing a record
//! neither builds its Huffman and FSE tables nor stores them in the frame.
//!
//!   cargo run --release --manifest-path ops/record-dictionary/Cargo.toml -- \
//!     host/src/saga/dictionary/words-1.txt host/src/saga/testdata/exam-record.txt OUT
//!
//! The samples are the record given, 2,000 times, each time with its ids and digests made of
//! fresh hex digits (one id stays one id wherever it repeats) and its times moved: the services'
//! data is what the tables have to code, the engine's words the dictionary already holds. The
//! generator is seeded: the same inputs and zstd give the same dictionary.

use std::collections::HashMap;

/// The level the host packs records at (`packed.rs`); the tables are made for it.
const LEVEL: i32 = 3;
/// The dictionary's id, in the frame only if asked (the host does not). Above 32,767, the ids
/// zstd reserves.
const DICT_ID: u32 = 0x5a6a_0002;
const SAMPLES: usize = 2_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [words, record, out] = args.as_slice() else {
        eprintln!("usage: record-dictionary WORDS RECORD OUT (see the comment atop src/main.rs)");
        std::process::exit(2);
    };
    let words = std::fs::read(words).unwrap_or_else(|e| panic!("read {words}: {e}"));
    let record = std::fs::read_to_string(record).unwrap_or_else(|e| panic!("read {record}: {e}"));
    let mut random = Xorshift(0x1234_5678_9abc_def0);
    let samples: Vec<String> = (0..SAMPLES)
        .map(|_| variant(&record, &mut random))
        .collect();
    let dictionary = finalize(&words, &samples);
    std::fs::write(out, &dictionary).unwrap_or_else(|e| panic!("write {out}: {e}"));
    println!(
        "{out}: {} bytes ({} of words, the rest zstd's header and tables)",
        dictionary.len(),
        words.len()
    );
}

/// `ZDICT_finalizeDictionary`: the words as the dictionary's content, the samples' statistics
/// as its tables.
fn finalize(words: &[u8], samples: &[String]) -> Vec<u8> {
    let joined: Vec<u8> = samples.iter().flat_map(|s| s.bytes()).collect();
    let sizes: Vec<usize> = samples.iter().map(String::len).collect();
    let mut dictionary = vec![0u8; words.len() + 8_192];
    let params = zstd_sys::ZDICT_params_t {
        compressionLevel: LEVEL,
        notificationLevel: 0,
        dictID: DICT_ID,
    };
    // SAFETY: every pointer comes with its buffer's length, and `sizes` adds up to `joined`'s.
    let made = unsafe {
        zstd_sys::ZDICT_finalizeDictionary(
            dictionary.as_mut_ptr().cast(),
            dictionary.len(),
            words.as_ptr().cast(),
            words.len(),
            joined.as_ptr().cast(),
            sizes.as_ptr(),
            sizes.len() as u32,
            params,
        )
    };
    // SAFETY: plain functions of a return code.
    if unsafe { zstd_sys::ZDICT_isError(made) } != 0 {
        let name = unsafe { std::ffi::CStr::from_ptr(zstd_sys::ZDICT_getErrorName(made)) };
        panic!(
            "zstd could not make the dictionary: {}",
            name.to_string_lossy()
        );
    }
    dictionary.truncate(made);
    dictionary
}

/// The record with each run of hex digits that stands between quotes or dashes (ids, digests)
/// replaced by fresh digits, the same run always by the same ones, and each 13-digit time moved
/// by one offset.
fn variant(record: &str, random: &mut Xorshift) -> String {
    let mut fresh: HashMap<&str, String> = HashMap::new();
    let shift = random.next() % 100_000_000;
    let mut out = String::with_capacity(record.len());
    let bytes = record.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_hexdigit() {
            i += 1;
        }
        if i == start {
            out.push(bytes[i] as char);
            i += 1;
            continue;
        }
        let run = &record[start..i];
        let quoted = |at: usize| matches!(bytes.get(at), Some(b'"' | b'-'));
        if start > 0 && quoted(start - 1) && quoted(i) && run.len() >= 4 {
            let digits = fresh.entry(run).or_insert_with(|| {
                (0..run.len())
                    .map(|_| char::from_digit((random.next() % 16) as u32, 16).unwrap())
                    .collect()
            });
            out.push_str(digits);
        } else if run.len() == 13 && run.bytes().all(|b| b.is_ascii_digit()) {
            let time: u64 = run.parse().expect("13 digits");
            out.push_str(&(time + shift).to_string());
        } else {
            out.push_str(run);
        }
    }
    out
}

struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
