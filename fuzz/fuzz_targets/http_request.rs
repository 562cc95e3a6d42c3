//! An HTTP request for a component route: any content type, query, headers and body. It is
//! refused with a status and a reason, or passed on as what the component's WIT `request`
//! carries: a JSON payload no deeper than the limit, decoded query pairs and headers.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use saga_core::request::{self, Incoming, MAX_JSON_DEPTH};

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    content_type: Option<&'a [u8]>,
    query: Option<&'a str>,
    headers: Vec<(&'a str, &'a [u8])>,
    body: &'a [u8],
}

fuzz_target!(|input: Input| {
    let incoming = Incoming {
        content_type: input.content_type,
        query: input.query,
        headers: input.headers,
        body: input.body,
    };
    match request::check(&incoming) {
        Ok(checked) => {
            serde_json::from_str::<serde_json::Value>(&checked.payload)
                .expect("the payload passed on is JSON");
            assert!(request::json_depth(checked.payload.as_bytes()) <= MAX_JSON_DEPTH);
        }
        Err(refusal) => {
            assert!((400..=499).contains(&refusal.status), "{refusal:?}");
            assert!(!refusal.message.is_empty());
        }
    }
});
