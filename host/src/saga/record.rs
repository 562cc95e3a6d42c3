//! An execution in its three other forms: the storage row (the few columns storage queries by,
//! and the rest with its history in `record`, packed by `packed.rs`), what a component sees
//! (`wit::Execution`), and what an operator sees (`GET /sagas/{id}`).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use saga_core::engine::{Context, Entry, ErrorInfo, Execution, Frame, Status, StepRecord};
use saga_core::ids::{Digest, SagaId, ServiceName};

use super::packed;
use crate::runtime::bindings::types as wit;
use crate::storage::SagaRow;

/// An execution as stored, with the revision it was read at (optimistic concurrency: a
/// transition stores only if the revision it read is still the stored one) and its history.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub exec: Execution,
    /// 0 for an execution not stored yet.
    pub revision: i64,
    /// The history stored so far: a line per stored transition, its entries as a JSON array.
    pub history: String,
}

/// The part of an execution kept in the record's first line (the version is a column).
#[derive(Serialize, Deserialize)]
struct State<F, S> {
    context: Context,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    frames: F,
    steps: S,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<ErrorInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deadline_at: Option<i64>,
}

impl Stored {
    /// A new execution, not stored yet.
    pub fn new(exec: Execution) -> Stored {
        Stored {
            exec,
            revision: 0,
            history: String::new(),
        }
    }

    /// The row that stores this execution's next revision, its history followed by what
    /// happened in this transition (appended to `self.history`); `owner` is the host storing it,
    /// which keeps the saga's timer if it has one.
    pub fn to_row(&mut self, owner: &str, happened: &[Entry]) -> SagaRow {
        if !happened.is_empty() {
            let line = serde_json::to_string(happened).expect("history serialises");
            self.history.push_str(&one_line(line));
            self.history.push('\n');
        }
        let exec = &self.exec;
        let timer_at = exec.timer_at();
        let state = State {
            context: exec.context.clone(),
            user: exec.user.clone(),
            frames: &exec.frames,
            steps: &exec.steps,
            error: exec.error.clone(),
            deadline_at: exec.deadline_at,
        };
        // The context and a command's payload are kept as the component wrote them, which may
        // be JSON spread over lines.
        let mut text = one_line(serde_json::to_string(&state).expect("saga state serialises"));
        text.push('\n');
        text.push_str(&self.history);
        SagaRow {
            id: exec.id.to_string(),
            service: exec.service.to_string(),
            name: exec.name.clone(),
            version: exec.digest.to_string(),
            status: exec.status,
            record: packed::pack(&text),
            created_at: exec.created_at,
            updated_at: exec.updated_at,
            revision: self.revision,
            timer_at,
            owner: timer_at.map(|_| owner.to_string()),
        }
    }

    pub fn from_row(row: &SagaRow) -> Result<Stored, String> {
        let unreadable = |e: &dyn std::fmt::Display| format!("saga {} is unreadable: {e}", row.id);
        let text = packed::unpack(&row.record).map_err(|e| unreadable(&e))?;
        let (state, history) = text.split_once('\n').unwrap_or((&text, ""));
        let state: State<Vec<Frame>, Vec<StepRecord>> =
            serde_json::from_str(state).map_err(|e| unreadable(&e))?;
        let id: SagaId = row.id.parse().map_err(|e| unreadable(&e))?;
        let mut exec = Execution::new(
            id,
            ServiceName(row.service.clone()),
            &row.name,
            Digest(row.version.clone()),
            state.context,
            state.user,
            row.created_at,
        );
        exec.status = row.status;
        exec.frames = state.frames;
        exec.steps = state.steps;
        exec.error = state.error;
        exec.deadline_at = state.deadline_at;
        exec.updated_at = row.updated_at;
        Ok(Stored {
            exec,
            revision: row.revision,
            history: history.to_string(),
        })
    }

    /// Everything that happened to the execution, oldest first.
    pub fn entries(&self) -> Result<Vec<Entry>, String> {
        let mut entries = Vec::new();
        for line in self.history.lines() {
            let mut batch: Vec<Entry> = serde_json::from_str(line)
                .map_err(|e| format!("saga {} has an unreadable history: {e}", self.exec.id))?;
            entries.append(&mut batch);
        }
        Ok(entries)
    }
}

/// JSON text on one line, the same value: a raw newline in JSON is whitespace between tokens (a
/// string holds it escaped), so a space can stand for it.
fn one_line(json: String) -> String {
    if json.contains('\n') {
        json.replace('\n', " ")
    } else {
        json
    }
}

/// The execution as `sagas.run` and `sagas.get` report it to a component.
pub fn to_wit(exec: &Execution) -> wit::Execution {
    wit::Execution {
        id: exec.id.to_string(),
        name: exec.name.clone(),
        status: match exec.status {
            Status::Created => wit::SagaStatus::Created,
            Status::Running => wit::SagaStatus::Running,
            Status::Paused => wit::SagaStatus::Paused,
            Status::Compensating => wit::SagaStatus::Compensating,
            Status::Finished => wit::SagaStatus::Finished,
            Status::Errored => wit::SagaStatus::Errored,
            Status::CompensationFailed => wit::SagaStatus::CompensationFailed,
        },
        context: exec.context.as_str().to_string(),
        error: exec.error.as_ref().map(|e| wit::Error {
            status: e.status,
            message: e.message.clone(),
        }),
    }
}

/// Everything an operator sees of an execution (`GET /sagas/{id}`).
pub fn to_json(exec: &Execution) -> Value {
    json!({
        "id": exec.id,
        "service": exec.service,
        "name": exec.name,
        "version": exec.digest,
        "status": exec.status,
        "context": exec.context,
        "error": exec.error,
        "steps": exec.steps,
        "deadline_at": exec.deadline_at,
        "next_timer_at": exec.timer_at(),
        "created_at": exec.created_at,
        "updated_at": exec.updated_at,
    })
}

/// The short form of an execution in a list (`GET /sagas`).
pub fn to_summary(exec: &Execution) -> Value {
    json!({
        "id": exec.id,
        "service": exec.service,
        "name": exec.name,
        "status": exec.status,
        "error": exec.error,
        "steps": exec.steps.len(),
        "created_at": exec.created_at,
        "updated_at": exec.updated_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use saga_core::engine::Recorded;

    #[test]
    fn a_stored_execution_reads_back_with_its_whole_history_even_from_json_over_lines() {
        let context =
            Context::parse("{\n  \"note\": \"two\\nlines\",\n  \"n\": 1\n}".into()).unwrap();
        let exec = Execution::new(
            SagaId::random(),
            ServiceName("exam".into()),
            "GET_USER_ATTEMPTS",
            Digest("d1".into()),
            context.clone(),
            None,
            1,
        );
        let mut stored = Stored::new(exec);
        let entry = |at| Entry {
            at,
            event: Recorded::Ignored {
                what: format!("event {at}"),
                why: "a test".into(),
            },
        };
        stored.to_row("host-a", &[entry(1), entry(2)]);
        stored.revision = 1;
        let row = stored.to_row("host-a", &[entry(3)]);
        assert_eq!(row.owner, None, "no timer, no owner");

        let read = Stored::from_row(&row).expect("it reads back");
        let value = |text: &str| serde_json::from_str::<Value>(text).unwrap();
        assert_eq!(value(read.exec.context.as_str()), value(context.as_str()));
        assert_eq!(read.exec.digest.as_str(), "d1");
        assert_eq!(read.entries().unwrap(), [entry(1), entry(2), entry(3)]);
    }
}
