//! What the remote commands print by default: the host's JSON as aligned tables, and one
//! saga's steps as a timeline drawn in text.

use saga_core::instant;
use serde_json::Value;

/// Rows under a header, each column as wide as its widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut lines = vec![line(header.to_vec())];
    lines.extend(
        rows.iter()
            .map(|row| line(row.iter().map(String::as_str).collect())),
    );
    lines.join("\n")
}

/// A field as text: strings as they are, nothing as "-", anything else as JSON.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn time(value: &Value) -> String {
    value.as_i64().map_or("-".into(), instant::format)
}

/// At most `max` characters, the rest cut with "…".
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(max - 1).collect::<String>())
    }
}

fn items(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

pub fn saga_list(page: &Value) -> String {
    let rows: Vec<Vec<String>> = items(&page["sagas"])
        .iter()
        .map(|s| {
            vec![
                text(&s["id"]),
                text(&s["service"]),
                text(&s["name"]),
                text(&s["status"]),
                text(&s["steps"]),
                time(&s["created_at"]),
                cut(&text(&s["error"]["message"]), 60),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "ID", "SERVICE", "NAME", "STATUS", "STEPS", "CREATED", "ERROR",
        ],
        &rows,
    );
    if let Some(next) = page["next"].as_str() {
        out.push_str(&format!("\nmore: --cursor {next}"));
    }
    out
}

/// One saga, its steps drawn on a time axis from its start to its last change.
pub fn saga(saga: &Value) -> String {
    let start = saga["created_at"].as_i64().unwrap_or(0);
    let end = saga["updated_at"].as_i64().unwrap_or(start).max(start + 1);
    let mut out = format!(
        "saga {}  {}/{}  {}\ncreated {}  updated {}  ({} ms)\ncontext {}\n",
        text(&saga["id"]),
        text(&saga["service"]),
        text(&saga["name"]),
        text(&saga["status"]),
        time(&saga["created_at"]),
        time(&saga["updated_at"]),
        end - start,
        saga["context"],
    );
    if !saga["error"].is_null() {
        out.push_str(&format!("error   {}\n", text(&saga["error"]["message"])));
    }
    const WIDTH: i64 = 30;
    let rows: Vec<Vec<String>> = items(&saga["steps"])
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let from = step["started_at"].as_i64().unwrap_or(start);
            let to = step["finished_at"].as_i64().unwrap_or(end);
            // A step that starts at the saga's last change still gets the last cell.
            let a = ((from - start) * WIDTH / (end - start)).min(WIDTH - 1);
            let b = ((to - start) * WIDTH / (end - start)).max(a + 1);
            let bar: String = (0..WIDTH)
                .map(|x| if x >= a && x < b { '█' } else { '·' })
                .collect();
            vec![
                (i + 1).to_string(),
                format!("{}#{}", text(&step["saga"]), step["index"]),
                text(&step["topic"]),
                text(&step["status"]),
                format!("+{} ms", from - start),
                step["finished_at"]
                    .as_i64()
                    .map_or("-".into(), |f| format!("{} ms", f - from)),
                text(&step["sent"]["attempts"]),
                text(&step["compensation"]["status"]),
                bar,
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "#",
            "STEP",
            "TOPIC",
            "STATUS",
            "START",
            "TOOK",
            "TRIES",
            "COMPENSATION",
            "TIMELINE",
        ],
        &rows,
    ));
    out
}

pub fn history(entries: &Value) -> String {
    let rows: Vec<Vec<String>> = items(entries)
        .iter()
        .map(|entry| {
            let mut rest = entry.clone();
            if let Some(fields) = rest.as_object_mut() {
                fields.remove("at");
                fields.remove("event");
            }
            vec![
                time(&entry["at"]),
                text(&entry["event"]),
                cut(&rest.to_string(), 100),
            ]
        })
        .collect();
    table(&["AT", "EVENT", "DETAIL"], &rows)
}

/// The outcome of a bulk action (or of its dry run).
pub fn bulk(done: &Value) -> String {
    let rows: Vec<Vec<String>> = items(&done["sagas"])
        .iter()
        .map(|s| {
            let outcome = match (&s["would"], &s["now"], &s["refused"]) {
                (Value::String(would), _, _) => format!("would {would}"),
                (_, Value::String(now), _) => format!("done: now {now}"),
                (_, _, refused) => format!("refused: {}", text(refused)),
            };
            vec![text(&s["id"]), text(&s["status"]), cut(&outcome, 120)]
        })
        .collect();
    let verb = if done["dry_run"] == true {
        "would apply to"
    } else {
        "applied to"
    };
    format!(
        "{}\n{} matched; {} {verb} {} of them",
        table(&["ID", "STATUS", "OUTCOME"], &rows),
        done["matched"],
        text(&done["action"]),
        done["count"],
    )
}

pub fn stats(stats: &Value) -> String {
    let counts: Vec<Vec<String>> = items(&stats["counts"])
        .iter()
        .map(|c| {
            vec![
                text(&c["service"]),
                text(&c["name"]),
                text(&c["status"]),
                text(&c["count"]),
            ]
        })
        .collect();
    let durations: Vec<Vec<String>> = items(&stats["durations"])
        .iter()
        .map(|d| {
            vec![
                text(&d["service"]),
                text(&d["name"]),
                text(&d["finished"]),
                format!("{} ms", d["p50_ms"]),
                format!("{} ms", d["p99_ms"]),
            ]
        })
        .collect();
    format!(
        "{}\n\nfinished since {}:\n{}",
        table(&["SERVICE", "NAME", "STATUS", "COUNT"], &counts),
        time(&stats["since"]),
        table(&["SERVICE", "NAME", "FINISHED", "P50", "P99"], &durations)
    )
}

pub fn components(list: &Value) -> String {
    let rows: Vec<Vec<String>> = items(list)
        .iter()
        .map(|c| {
            let running: i64 = items(&c["versions"])
                .iter()
                .filter_map(|v| v["running_sagas"].as_i64())
                .sum();
            vec![
                text(&c["name"]),
                cut(&text(&c["digest"]), 12),
                time(&c["loaded_at"]),
                items(&c["sagas"])
                    .iter()
                    .map(text)
                    .collect::<Vec<_>>()
                    .join(","),
                items(&c["versions"]).len().to_string(),
                running.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "SERVICE",
            "DIGEST",
            "LOADED",
            "SAGAS",
            "VERSIONS",
            "RUNNING SAGAS",
        ],
        &rows,
    )
}

pub fn dead_letters(list: &Value) -> String {
    let rows: Vec<Vec<String>> = items(list)
        .iter()
        .map(|l| {
            vec![
                text(&l["id"]),
                text(&l["consumer"]),
                text(&l["topic"]),
                text(&l["attempts"]),
                time(&l["failed_at"]),
                cut(&text(&l["error"]), 80),
            ]
        })
        .collect();
    table(
        &["ID", "CONSUMER", "TOPIC", "ATTEMPTS", "FAILED", "ERROR"],
        &rows,
    )
}

/// What `components deploy` did, in a line.
pub fn deployed(v: &Value) -> String {
    let replaced = match v["replaced"].as_str() {
        Some(old) => format!(", replacing version {}", cut(old, 12)),
        None => String::new(),
    };
    let mut said = format!(
        "deployed {} version {}{replaced}",
        text(&v["service"]),
        cut(&text(&v["digest"]), 12)
    );
    // On a cluster: each host's result, the host deployed to first.
    for host in items(&v["hosts"]) {
        let here = if host["here"] == true { " (here)" } else { "" };
        let error = host["error"]
            .as_str()
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        said.push_str(&format!(
            "\n  host {}{here}: {}{error}",
            cut(&text(&host["host"]), 8),
            text(&host["result"])
        ));
    }
    said
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn a_step_that_starts_at_the_sagas_last_change_is_drawn() {
        // A saga of 1 ms whose second step began in that last millisecond (a fast machine).
        let shown = super::saga(&json!({
            "id": "s", "service": "orchestrator", "name": "THREE", "status": "paused",
            "created_at": 1000, "updated_at": 1001, "context": {},
            "steps": [
                {"saga": "THREE", "index": 0, "started_at": 1001, "finished_at": 1001},
                {"saga": "THREE", "index": 1, "started_at": 1001},
            ],
        }));
        let bars: Vec<&str> = shown
            .lines()
            .filter(|line| line.contains("THREE#"))
            .collect();
        assert_eq!(bars.len(), 2, "{shown}");
        for bar in bars {
            assert!(bar.ends_with('█'), "drawn in the last cell: {shown}");
        }
    }
}
