//! A saga's record as stored (the `record` column of `sagas`): its state and its whole history in
//! one value, compressed.
//!
//! The text is the state as one JSON line, then one line per stored transition holding that
//! transition's history entries as a JSON array (`record.rs` writes each on one line). It is stored
//! as a tag byte and a zstd frame compressed with a dictionary of the engine's own words (the
//! keys and values every saga's state and history repeat) and of entropy tables made for
//! records. The dictionary takes what generic compression cannot: a `POST /exams` saga's 1,545
//! bytes of text are stored in 373, where zstd alone leaves about 650 and the words without the
//! tables 445; what remains is mostly the services' own data (uuids, timestamps). Packing one
//! costs about 4 µs.
//!
//! A record that starts with `{` is the text itself: the rows a host stored before records were
//! compressed (the migration that brought the history into the row wrote them so).

use std::cell::RefCell;
use std::sync::LazyLock;

use zstd::bulk::{Compressor, Decompressor};
use zstd::dict::{DecoderDictionary, EncoderDictionary};

/// The tag of a record compressed with `DICTIONARY_1`. A record compressed otherwise gets a tag
/// of its own; records already stored keep theirs, so a dictionary never changes once it has a
/// tag.
const TAG_DICTIONARY_1: u8 = 1;
/// The tag of a record compressed with `DICTIONARY_2`: what `pack` writes.
const TAG_DICTIONARY_2: u8 = 2;

/// The engine's words, in the order its state and history serialise them (zstd uses these bytes
/// as if they preceded every record: `saga_core::engine`'s `Execution` as `record.rs` stores it,
/// and `Entry`). Nothing of any one service is in it. A raw dictionary: each record compressed
/// with it builds its entropy tables and stores them in its frame.
const DICTIONARY_1: &[u8] = include_bytes!("dictionary/words-1.txt");

/// The same words with zstd's entropy tables for records (made from sample records by
/// `ops/record-dictionary`): a record coded with them needs neither to build tables nor to store
/// them, which takes about 40% off packing one and 70 bytes off a `POST /exams` record.
const DICTIONARY_2: &[u8] = include_bytes!("dictionary/2.zdict");

/// zstd's level: 3, its default, which the tables of `DICTIONARY_2` were made for. With them,
/// levels 1 and 2 packed a `POST /exams` record in about 10% less time and left 392 and 401
/// bytes of its frame, where 3 leaves 372.
const LEVEL: i32 = 3;

static ENCODER: LazyLock<EncoderDictionary<'static>> =
    LazyLock::new(|| EncoderDictionary::copy(DICTIONARY_2, LEVEL));
static DECODER_1: LazyLock<DecoderDictionary<'static>> =
    LazyLock::new(|| DecoderDictionary::copy(DICTIONARY_1));
static DECODER_2: LazyLock<DecoderDictionary<'static>> =
    LazyLock::new(|| DecoderDictionary::copy(DICTIONARY_2));

thread_local! {
    /// A compression context per thread, reused (a context's tables are its cost).
    static COMPRESSOR: RefCell<Compressor<'static>> = RefCell::new({
        let mut compressor =
            Compressor::with_prepared_dictionary(&ENCODER).expect("a zstd compression context");
        // The record's length stays in the frame (what `unpack` sizes its buffer by); the
        // dictionary's id (the tag says it) and a checksum would only add bytes.
        compressor.include_checksum(false).expect("a zstd parameter");
        compressor.include_dictid(false).expect("a zstd parameter");
        compressor
    });
    /// A decompression context per thread and dictionary.
    static DECOMPRESSORS: [RefCell<Decompressor<'static>>; 2] = [&DECODER_1, &DECODER_2].map(|d| {
        RefCell::new(
            Decompressor::with_prepared_dictionary(d).expect("a zstd decompression context"),
        )
    });
}

/// The stored form of a record's text.
pub fn pack(text: &str) -> Vec<u8> {
    let mut packed = Vec::with_capacity(text.len() / 2 + 16);
    packed.push(TAG_DICTIONARY_2);
    let frame = COMPRESSOR.with_borrow_mut(|compressor| compressor.compress(text.as_bytes()));
    packed.extend_from_slice(&frame.expect("zstd compresses text in memory"));
    packed
}

/// A stored record's text.
pub fn unpack(packed: &[u8]) -> Result<String, String> {
    let bytes = match packed.split_first() {
        Some((b'{', _)) => packed.to_vec(),
        Some((&tag @ (TAG_DICTIONARY_1 | TAG_DICTIONARY_2), frame)) => {
            let length = zstd::zstd_safe::get_frame_content_size(frame)
                .ok()
                .flatten()
                .ok_or("its zstd frame does not say its length")?;
            DECOMPRESSORS
                .with(|all| {
                    all[usize::from(tag - TAG_DICTIONARY_1)]
                        .borrow_mut()
                        .decompress(frame, length as usize)
                })
                .map_err(|e| format!("its zstd frame does not decompress: {e}"))?
        }
        Some((tag, _)) => return Err(format!("it has an unknown format (tag {tag})")),
        None => return Err("it is empty".into()),
    };
    String::from_utf8(bytes).map_err(|e| format!("it is not UTF-8: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record of a real `POST /exams` saga (finished in one transition).
    const RECORD: &str = include_str!("testdata/exam-record.txt");

    #[test]
    fn a_packed_record_unpacks_to_its_text_and_is_a_quarter_of_it_at_most() {
        let packed = pack(RECORD);
        println!("{} bytes packed from {}", packed.len(), RECORD.len());
        assert_eq!(packed[0], TAG_DICTIONARY_2);
        // zstd alone leaves about 650 of its 1,545 bytes, the words alone (tag 1) 445.
        assert!(
            packed.len() < RECORD.len() / 4,
            "{} bytes packed from {}",
            packed.len(),
            RECORD.len()
        );
        assert_eq!(unpack(&packed).unwrap(), RECORD);
    }

    #[test]
    fn a_record_packed_with_the_first_dictionary_still_unpacks() {
        let stored = include_bytes!("testdata/exam-record.tag1");
        assert_eq!(stored[0], TAG_DICTIONARY_1);
        assert_eq!(unpack(stored).unwrap(), RECORD);
    }

    #[test]
    fn the_second_dictionary_holds_the_words_of_the_first() {
        // A finalised zstd dictionary ends with its content.
        assert!(DICTIONARY_2.ends_with(DICTIONARY_1));
        assert!(
            DICTIONARY_2.starts_with(&[0x37, 0xa4, 0x30, 0xec]),
            "zstd's dictionary magic"
        );
    }

    #[test]
    fn a_record_stored_as_text_reads_as_it_is() {
        assert_eq!(unpack(RECORD.as_bytes()).unwrap(), RECORD);
    }

    #[test]
    fn a_damaged_record_is_an_error_that_says_what_is_wrong() {
        let mut packed = pack(RECORD);
        packed.truncate(packed.len() - 5);
        assert!(unpack(&packed).unwrap_err().contains("does not decompress"));
        assert!(
            unpack(&[7, 1, 2])
                .unwrap_err()
                .contains("unknown format (tag 7)")
        );
        assert!(unpack(&[]).unwrap_err().contains("empty"));
    }
}
