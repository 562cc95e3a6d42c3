//! The Minos tutorial's services written in Python with the SDK (examples/python-tutorial),
//! through a real host: the Rust pair's exam flow (tests/common/exam_flow.rs) for the Python
//! pair, and for each Python service next to the Rust service it replaces.

mod common;

use std::path::PathBuf;

use common::exam_flow::exam_flow;
use common::{component, example};

fn python_exam() -> PathBuf {
    example("python-tutorial", "exam")
}

fn python_attempt() -> PathBuf {
    example("python-tutorial", "attempt")
}

#[tokio::test]
async fn the_python_pair_runs_the_tutorial_flow() {
    exam_flow("python-pair", [python_exam(), python_attempt()]).await;
}

#[tokio::test]
async fn the_python_exam_service_runs_with_the_rust_attempt_service() {
    exam_flow("python-exam", [python_exam(), component("guest_attempt")]).await;
}

#[tokio::test]
async fn the_rust_exam_service_runs_with_the_python_attempt_service() {
    exam_flow(
        "python-attempt",
        [component("guest_exam"), python_attempt()],
    )
    .await;
}
