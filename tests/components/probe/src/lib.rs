//! A service for tests and benchmarks: `GET /probe/noop` does nothing (what one
//! instantiate-and-call costs), the others misbehave the way a hostile or buggy component would.

use saga_sdk::prelude::*;

fn noop(_request: Request) -> Result<Response> {
    Ok(Response::empty())
}

fn trap(_request: Request) -> Result<Response> {
    panic!("the probe panics on purpose")
}

fn endless_loop(_request: Request) -> Result<Response> {
    let mut counter: u64 = 0;
    loop {
        counter = std::hint::black_box(counter.wrapping_add(1));
    }
}

fn memory_bomb(_request: Request) -> Result<Response> {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1u8; 16 << 20]);
        std::hint::black_box(&hoard);
    }
}

fn service() -> Service {
    Service::new("probe")
        .rest_query("GET", "/probe/noop", noop)
        .broker_command("ProbeNoop", noop)
        .rest_query("GET", "/probe/trap", trap)
        .rest_query("GET", "/probe/loop", endless_loop)
        .rest_query("GET", "/probe/memory", memory_bomb)
}

saga_sdk::export_service!(service);
