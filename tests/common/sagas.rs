//! Batches of the test orchestrator's sagas started by clients while a host dies, and the check
//! that, once every saga has ended, each ended as it should: a finished saga's effects are in
//! the participant's ledger exactly once, a failed saga left nothing there and its history shows
//! each step that acted compensated exactly once (shared by the crash and cluster tests).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;

use super::Http;

/// xorshift64*: enough randomness for choosing moments, and replayable from its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A seed from `SAGA_CRASH_SEED` (to replay a run) or the clock; printed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("SAGA_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("{test} seed: {seed} (replay with SAGA_CRASH_SEED={seed})");
    seed
}

pub struct Started {
    pub key: String,
    /// How many steps the saga has (THREE or NINE).
    pub steps: usize,
    /// The saga fails at its last step (after retries) and is compensated.
    pub failing: bool,
    /// The id, when the start was acknowledged (HTTP 200) before the kill.
    pub accepted: Option<String>,
}

/// Starts sagas on `http` one after the other until the host stops answering or `stop` is set;
/// a third of them fail at their last step. Keys are `{label}-k{n}-{seed}`.
pub async fn start_sagas(
    http: Http,
    mut rng: Rng,
    label: String,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> Vec<Started> {
    let mut started = Vec::new();
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let key = format!("{label}-k{i}-{seed}");
        let steps = if rng.below(2) == 0 { 3 } else { 9 };
        let failing = rng.below(3) == 0;
        let mut context = json!({"key": key});
        if failing {
            context["behaviors"] = json!({format!("s{steps}"): "system"});
        }
        let saga = if steps == 3 { "THREE" } else { "NINE" };
        let answer = http
            .try_post_json(&format!("/start/{saga}"), &context)
            .await;
        let accepted = match &answer {
            Some(answer) if answer.status == 200 => {
                answer.json()["id"].as_str().map(str::to_string)
            }
            _ => None,
        };
        let dead = answer.is_none();
        started.push(Started {
            key,
            steps,
            failing,
            accepted,
        });
        if dead {
            break;
        }
    }
    started
}

/// Waits until no saga is unfinished (at most `within`), then checks every started saga: each
/// acknowledged one ended as it should, and no effect happened twice. `log` is shown on failure.
pub async fn check_all_ended_once(
    http: &Http,
    started: &[Started],
    seed: u64,
    within: std::time::Duration,
    log: impl Fn() -> String,
) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let mut unfinished = Vec::new();
        for status in ["created", "running", "paused", "compensating"] {
            let listed = http
                .get(&format!("/sagas?status={status}&limit=1000"))
                .await
                .json();
            unfinished.extend(listed["sagas"].as_array().cloned().unwrap_or_default());
        }
        if unfinished.is_empty() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let mut details = Vec::new();
            for saga in &unfinished {
                let id = saga["id"].as_str().unwrap_or_default();
                details.push(http.get(&format!("/sagas/{id}")).await.body);
            }
            panic!(
                "{} sagas did not end within {within:?} (seed {seed}):\n{}\nlog:\n{}",
                unfinished.len(),
                details.join("\n"),
                log()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    for saga in started {
        let ledger = http.get(&format!("/effects/{}", saga.key)).await.json();
        let counts = &ledger["counts"];
        for (effect, count) in counts.as_object().expect("a ledger") {
            assert_eq!(
                count, 1,
                "{}: effect {effect} happened {count} times (seed {seed})",
                saga.key
            );
        }
        let Some(id) = &saga.accepted else { continue };
        let execution = http.get(&format!("/sagas/{id}")).await.json();
        let count = |effect: &str| counts[effect].as_u64().unwrap_or(0);
        let last = saga.steps;
        if saga.failing {
            assert_eq!(
                execution["status"], "errored",
                "{} (seed {seed}): {execution}",
                saga.key
            );
            // Every effect of a failed saga vanished: its steps' and its compensations' (these
            // run inside the saga and their writes vanish with its own).
            assert_eq!(
                counts.as_object().map(|c| c.len()),
                Some(0),
                "{}: a failed saga leaves nothing in storage: {counts}",
                saga.key
            );
            // Each step that acted was compensated, once: steps 1 to last-1 answered SUCCESS;
            // the last failed with a system error (it did nothing) — unless a kill delayed its
            // reply past the step timeout, and then it may have acted and is compensated too.
            let timed_out = execution["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("did not reply within"));
            let history = http.get(&format!("/sagas/{id}/history")).await.json();
            for step in 1..=last {
                let compensated = history
                    .as_array()
                    .expect("a history")
                    .iter()
                    .filter(|e| e["event"] == "compensated" && e["step"] == step - 1)
                    .collect::<Vec<_>>();
                let expected = usize::from(step < last || timed_out);
                assert_eq!(
                    compensated.len(),
                    expected,
                    "{}: s{step} is compensated {expected} time(s): {history}",
                    saga.key
                );
                if expected == 1 {
                    assert_eq!(compensated[0]["done"], true, "{}: {history}", saga.key);
                    assert_eq!(
                        execution["steps"][step - 1]["compensation"]["status"],
                        "done",
                        "{}: {execution}",
                        saga.key
                    );
                }
            }
        } else {
            assert_eq!(
                execution["status"], "finished",
                "{} (seed {seed}): {execution}",
                saga.key
            );
            for step in 1..=last {
                assert_eq!(
                    count(&format!("s{step}")),
                    1,
                    "{} (seed {seed}): {counts}",
                    saga.key
                );
            }
            assert_eq!(
                counts.as_object().map(|c| c.len()),
                Some(last),
                "{}: only its steps: {counts}",
                saga.key
            );
        }
    }
}
