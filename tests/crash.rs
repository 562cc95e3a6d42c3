//! No accepted saga is lost and no effect happens twice, whatever moment the host is killed at:
//! bursts of sagas are started, the host gets SIGKILL at a random moment (seeded; the seed is
//! printed, `SAGA_CRASH_SEED=… cargo test --release --test crash` replays a run), restarts, and
//! at the end every saga has ended as it should, with a ledger of the participant's effects
//! showing each happened exactly once.

mod common;

use std::time::Duration;

use common::sagas::{Rng, Started, check_all_ended_once, seed, start_sagas};
use common::{Host, TempDir, components_dir};

const ROUNDS: usize = 6;
/// Clients starting sagas in a loop until the host dies.
const CLIENTS: usize = 4;

#[tokio::test]
async fn sagas_survive_kill_9_at_random_moments() {
    let seed = seed("crash test");
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
                let rng = Rng(rng.next() | 1);
                tokio::spawn(start_sagas(
                    host.http().clone(),
                    rng,
                    format!("r{round}-c{client}"),
                    seed,
                    Default::default(),
                ))
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
    check_all_ended_once(http, &started, seed, Duration::from_secs(90), || host.log()).await;

    // Copies of messages consumed before (resends after a timeout) drain from the queue.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut tables = host.table_counts().await;
    while tables["queue"] > 0 && std::time::Instant::now() < deadline {
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
