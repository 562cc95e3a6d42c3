//! No accepted saga is lost and no effect happens twice, whatever moment the host is killed at:
//! bursts of sagas are started, the host gets SIGKILL at a random moment (seeded; the seed is
//! printed, `SAGA_CRASH_SEED=… cargo test --release --test crash` replays a run), restarts, and
//! at the end every saga has ended as it should, with a ledger of the participant's effects
//! showing each happened exactly once.

mod common;

use std::time::{Duration, Instant};

use common::{Host, TempDir, components_dir};
use serde_json::json;

const ROUNDS: usize = 6;
/// Clients starting sagas in a loop until the host dies.
const CLIENTS: usize = 4;

/// xorshift64*: enough randomness for choosing moments, and replayable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Started {
    key: String,
    /// How many steps the saga has (THREE or NINE).
    steps: usize,
    /// The saga fails at its last step (after retries) and is compensated.
    failing: bool,
    /// The id, when the start was acknowledged (HTTP 200) before the kill.
    accepted: Option<String>,
}

#[tokio::test]
async fn sagas_survive_kill_9_at_random_moments() {
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
    println!("crash test seed: {seed} (replay with SAGA_CRASH_SEED={seed})");
    let mut rng = Rng(seed);
    let dir = TempDir::new("crash");
    let components = components_dir(&dir, &["test_orchestrator", "test_participant"]);
    let mut started: Vec<Started> = Vec::new();

    for round in 0..ROUNDS {
        // Half the rounds run steps inline, half through the queue: sagas started one way are
        // resumed the other way after the restart.
        let inline = if rng.below(2) == 0 { "true" } else { "false" };
        let args = [
            "--inline-steps",
            inline,
            "--retry-delay-ms",
            "50",
            "--step-timeout-s",
            "2",
        ];
        let host = Host::launch(&dir, &components, &args).expect("the host starts");
        let clients: Vec<_> = (0..CLIENTS)
            .map(|client| {
                let http = host.http().clone();
                let mut rng = Rng(rng.next() | 1);
                tokio::spawn(async move {
                    let mut started = Vec::new();
                    for i in 0.. {
                        let key = format!("r{round}-c{client}-k{i}-{seed}");
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
                            return started;
                        }
                    }
                    started
                })
            })
            .collect();
        let moment = Duration::from_millis(rng.below(600));
        tokio::time::sleep(moment).await;
        host.kill();
        println!(
            "round {round}: inline steps {inline}, killed after {} ms",
            moment.as_millis()
        );
        for client in clients {
            started.extend(client.await.expect("a client task"));
        }
    }

    let host = Host::launch(&dir, &components, &[]).expect("the host starts after the last kill");
    let http = host.http();
    let accepted = started.iter().filter(|s| s.accepted.is_some()).count();
    println!(
        "{accepted} of {} starts were acknowledged before a kill",
        started.len()
    );
    assert!(
        accepted > 0,
        "no start was acknowledged: the moments are too short to test anything"
    );

    // Every saga there is (acknowledged or not) must end.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut unfinished = Vec::new();
        for status in ["created", "running", "paused", "compensating"] {
            let listed = http
                .get(&format!("/sagas?status={status}&limit=1000"))
                .await
                .json();
            unfinished.extend(listed.as_array().cloned().unwrap_or_default());
        }
        if unfinished.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let mut details = Vec::new();
            for saga in &unfinished {
                let id = saga["id"].as_str().unwrap_or_default();
                details.push(http.get(&format!("/sagas/{id}")).await.body);
            }
            panic!(
                "{} sagas did not end within 90 s (seed {seed}):\n{}\nlog:\n{}",
                unfinished.len(),
                details.join("\n"),
                host.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    for saga in &started {
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
            for step in 1..=last {
                let name = format!("s{step}");
                assert_eq!(
                    count(&name),
                    0,
                    "{}: a failed saga's {name} must vanish: {counts}",
                    saga.key
                );
            }
            for step in 1..last {
                assert_eq!(
                    count(&format!("undo:s{step}")),
                    1,
                    "{}: s{step} is compensated once: {counts}\n{execution}",
                    saga.key
                );
            }
            // The last step fails with a system error, and is then not compensated; but when a
            // kill delayed its reply past the step timeout, it failed for want of a reply and is
            // compensated (it may have acted), once.
            let timed_out = execution["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("did not reply within"));
            assert_eq!(
                count(&format!("undo:s{last}")),
                u64::from(timed_out),
                "{}: the failed step's compensation (timed out: {timed_out}): {counts}\n{execution}",
                saga.key
            );
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

    // Copies of messages consumed before (resends after a timeout) drain from the queue.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut tables = host.table_counts().await;
    while tables["queue"] > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        tables = host.table_counts().await;
    }
    for table in [
        "staged_snapshots",
        "staged_events",
        "staged_messages",
        "queue",
    ] {
        assert_eq!(
            tables[table], 0,
            "{table} must be empty once every saga ended (seed {seed}): {tables:?}"
        );
    }
}
