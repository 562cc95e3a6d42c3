//! The tutorial's Exam service written in JavaScript with the SDK (examples/js-tutorial), an
//! orchestrator: the Rust pair's exam flow (tests/common/exam_flow.rs) with the Rust Attempt
//! service and with the Python one.

mod common;

use std::path::PathBuf;

use common::exam_flow::exam_flow;
use common::{component, example};

fn javascript_exam() -> PathBuf {
    example("js-tutorial", "exam")
}

#[tokio::test]
async fn the_javascript_exam_service_runs_with_the_rust_attempt_service() {
    exam_flow("js-exam", [javascript_exam(), component("guest_attempt")]).await;
}

#[tokio::test]
async fn the_javascript_exam_service_runs_with_the_python_attempt_service() {
    exam_flow(
        "js-exam-python-attempt",
        [javascript_exam(), example("python-tutorial", "attempt")],
    )
    .await;
}
