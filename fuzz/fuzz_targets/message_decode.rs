//! A message read from the queue or the network: any bytes. Decoding refuses what is not a
//! well-formed message; what it accepts encodes and decodes back to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use saga_core::message::Message;

fuzz_target!(|body: &[u8]| {
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    if let Ok(message) = Message::decode(text) {
        let again = Message::decode(&message.encode()).expect("an encoded message decodes");
        assert_eq!(again, message);
        let _ = message.visible_headers();
    }
});
