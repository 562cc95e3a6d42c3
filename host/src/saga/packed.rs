//! A saga's record as stored (the `record` column of `sagas`): its state and its whole history in
//! one value, compressed.
//!
//! The text is the state as one JSON line, then one line per stored transition holding that
//! transition's history entries as a JSON array (`record.rs` writes each on one line). It is stored
//! as a tag byte and a zstd frame compressed with a dictionary of the engine's own words (the
//! keys and values every saga's state and history repeat). The dictionary takes what generic
//! compression cannot: a `POST /exams` saga's 1,545 bytes of text are stored in 445, where zstd
//! alone leaves about 650; what remains is mostly the services' own data (uuids, timestamps).
//! Packing one costs about 7 µs (90 K instructions).
//!
//! A record that starts with `{` is the text itself: the rows a host stored before records were
//! compressed (the migration that brought the history into the row wrote them so).

use std::cell::RefCell;
use std::sync::LazyLock;

use zstd::bulk::{Compressor, Decompressor};
use zstd::dict::{DecoderDictionary, EncoderDictionary};

/// The tag of a record compressed with `DICTIONARY_1`. A record compressed otherwise gets a tag
/// of its own; records already stored keep theirs, so `DICTIONARY_1` never changes.
const TAG_DICTIONARY_1: u8 = 1;

/// The engine's words, in the order its state and history serialise them (zstd uses these bytes
/// as if they preceded every record: `saga_core::engine`'s `Execution` as `record.rs` stores it,
/// and `Entry`). Nothing of any one service is in it.
const DICTIONARY_1: &[u8] = br#"{"error":{"status":500,"message":""},"compensating":[],"compensation":{"status":"pending","topic":"","sent":{"message_id":"","attempts":1,"sent_at":,"reply_due":,"retry_at":}},"status":"failed","acted":"maybe","awaiting-reply","awaiting-retry","compensation-failed","errored","compensating","paused","running","created","local","conditional","on-error","on-failure","prepare-compensation","ignored","what":"","why":"","operator","by":"","timer-fired","due":{"for":"reply-deadline","saga-deadline","retry","target":{"compensation":0}},"retry-scheduled","compensated","done":true,"inline":false,
{"digest":"","context":{},"user":"","frames":[{"saga":"","step":0}],"steps":[{"saga":"","index":0,"kind":"remote","status":"succeeded","acted":"yes","topic":"","sent":{"message_id":"","attempts":1,"sent_at":,"reply_due":},"started_at":,"finished_at":}],"deadline_at":}
[{"at":,"event":"started","name":"","digest":""},{"at":,"event":"called","step":0,"callback":"","kind":"prepare","wall_us":,"cpu_us":},{"at":,"event":"dispatched","target":{"step":0},"saga":"","index":0,"topic":"","message_id":"","attempt":1,"inline":true},{"at":,"event":"replied","target":{"step":0},"status":200,"after_ms":},{"at":,"event":"called","step":0,"callback":"","kind":"on-reply","wall_us":,"cpu_us":},{"at":,"event":"called","callback":"commit","kind":"execute","wall_us":,"cpu_us":},{"at":,"event":"ended","status":"finished"}]
"#;

/// zstd's level: 3, its default. Levels 1 and 2 took as long on a `POST /exams` record (about
/// 7.5 µs) and left 463 and 468 bytes of it, where 3 leaves 444.
const LEVEL: i32 = 3;

static ENCODER: LazyLock<EncoderDictionary<'static>> =
    LazyLock::new(|| EncoderDictionary::copy(DICTIONARY_1, LEVEL));
static DECODER: LazyLock<DecoderDictionary<'static>> =
    LazyLock::new(|| DecoderDictionary::copy(DICTIONARY_1));

thread_local! {
    /// A compression context per thread, reused (a context's tables are its cost).
    static COMPRESSOR: RefCell<Compressor<'static>> = RefCell::new({
        let mut compressor =
            Compressor::with_prepared_dictionary(&ENCODER).expect("a zstd compression context");
        // The record's length stays in the frame (what `unpack` sizes its buffer by); the
        // dictionary's id (0 for raw words) and a checksum would only add bytes.
        compressor.include_checksum(false).expect("a zstd parameter");
        compressor.include_dictid(false).expect("a zstd parameter");
        compressor
    });
    static DECOMPRESSOR: RefCell<Decompressor<'static>> = RefCell::new(
        Decompressor::with_prepared_dictionary(&DECODER).expect("a zstd decompression context"),
    );
}

/// The stored form of a record's text.
pub fn pack(text: &str) -> Vec<u8> {
    let mut packed = Vec::with_capacity(text.len() / 2 + 16);
    packed.push(TAG_DICTIONARY_1);
    let frame = COMPRESSOR.with_borrow_mut(|compressor| compressor.compress(text.as_bytes()));
    packed.extend_from_slice(&frame.expect("zstd compresses text in memory"));
    packed
}

/// A stored record's text.
pub fn unpack(packed: &[u8]) -> Result<String, String> {
    let bytes = match packed.split_first() {
        Some((b'{', _)) => packed.to_vec(),
        Some((&TAG_DICTIONARY_1, frame)) => {
            let length = zstd::zstd_safe::get_frame_content_size(frame)
                .ok()
                .flatten()
                .ok_or("its zstd frame does not say its length")?;
            DECOMPRESSOR
                .with_borrow_mut(|decompressor| decompressor.decompress(frame, length as usize))
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
    fn a_packed_record_unpacks_to_its_text_and_is_a_third_of_it_at_most() {
        let packed = pack(RECORD);
        println!("{} bytes packed from {}", packed.len(), RECORD.len());
        assert_eq!(packed[0], TAG_DICTIONARY_1);
        // zstd alone leaves about 650 of its 1,545 bytes; the dictionary takes most of the rest.
        assert!(
            packed.len() < RECORD.len() / 3,
            "{} bytes packed from {}",
            packed.len(),
            RECORD.len()
        );
        assert_eq!(unpack(&packed).unwrap(), RECORD);
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
