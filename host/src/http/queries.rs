//! The operator's saga queries: `GET /sagas` (filters and cursor paging) and `GET /sagas/stats`
//! (counts and durations). The same filter, given as query parameters or as a JSON object,
//! selects the sagas of a bulk action (`actions.rs`) and of the console's list.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Api, ApiError};
use crate::saga::Status;
use crate::saga::record::{self, Stored};
use crate::storage::{Executions, SagaCount, SagaFilter, SagaKey};

/// The parameters that select sagas.
pub const FILTER_PARAMS: [&str; 8] = [
    "service",
    "name",
    "status",
    "created_from",
    "created_to",
    "updated_from",
    "updated_to",
    "id_prefix",
];

/// One page of a listing, as asked for.
#[derive(Debug, Clone, Default)]
pub struct SagaQuery {
    pub filter: SagaFilter,
    /// The last saga of the previous page.
    pub after: Option<SagaKey>,
    pub limit: u32,
}

/// One page of sagas, and the last of them when more follow (none: this was the last page).
#[derive(Debug, Clone)]
pub struct SagaPage {
    pub sagas: Vec<Value>,
    pub more_after: Option<SagaKey>,
}

impl SagaPage {
    /// The cursor of the next page.
    pub fn next(&self) -> Option<String> {
        self.more_after.as_ref().map(encode_cursor)
    }
}

fn bad(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

/// The filter in `params`; any other parameter than the filter's and `extra` is refused.
pub fn parse_filter(
    params: &HashMap<String, String>,
    extra: &[&str],
) -> Result<SagaFilter, ApiError> {
    if let Some(unknown) = params
        .keys()
        .find(|k| !FILTER_PARAMS.contains(&k.as_str()) && !extra.contains(&k.as_str()))
    {
        let mut accepted: Vec<&str> = FILTER_PARAMS.to_vec();
        accepted.extend_from_slice(extra);
        return Err(bad(format!(
            "unknown parameter {unknown:?}; accepted: {}",
            accepted.join(", ")
        )));
    }
    let text = |key: &str| params.get(key).filter(|v| !v.is_empty()).cloned();
    let time = |key: &str| -> Result<Option<i64>, ApiError> {
        text(key)
            .map(|v| saga_core::instant::parse(&v).map_err(|e| bad(format!("{key}: {e}"))))
            .transpose()
    };
    let status = match text("status") {
        None => None,
        Some(status) => Some(Status::parse(&status).ok_or_else(|| {
            let known: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
            bad(format!(
                "unknown saga status {status:?}; use one of {}",
                known.join(", ")
            ))
        })?),
    };
    let id_prefix = text("id_prefix").map(|p| p.to_ascii_lowercase());
    if let Some(prefix) = &id_prefix
        && !prefix.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
    {
        return Err(bad(format!(
            "id_prefix {prefix:?} cannot start a saga id: use hex digits and dashes"
        )));
    }
    Ok(SagaFilter {
        service: text("service"),
        name: text("name"),
        status,
        created_from: time("created_from")?,
        created_to: time("created_to")?,
        updated_from: time("updated_from")?,
        updated_to: time("updated_to")?,
        id_prefix,
    })
}

/// A listing's parameters: the filter, `limit` (1 to 1000, default 100) and `cursor`.
pub fn parse_query(params: &HashMap<String, String>) -> Result<SagaQuery, ApiError> {
    let filter = parse_filter(params, &["limit", "cursor"])?;
    let limit = match params.get("limit").map(|l| l.parse::<u32>()) {
        None => 100,
        Some(Ok(limit @ 1..=1000)) => limit,
        Some(_) => return Err(bad("limit must be a number from 1 to 1000".into())),
    };
    let after = params
        .get("cursor")
        .filter(|c| !c.is_empty())
        .map(|cursor| {
            decode_cursor(cursor).ok_or_else(|| {
                bad(format!(
                    "cursor {cursor:?} is not one this host gave out: pass the `next` of the previous page as it was"
                ))
            })
        })
        .transpose()?;
    Ok(SagaQuery {
        filter,
        after,
        limit,
    })
}

/// The cursor after `key`: opaque to clients (hex of "created_at:id").
fn encode_cursor(key: &SagaKey) -> String {
    format!("{}:{}", key.created_at, key.id)
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_cursor(cursor: &str) -> Option<SagaKey> {
    if !cursor.len().is_multiple_of(2) || !cursor.is_ascii() {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..cursor.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&cursor[i..i + 2], 16).ok())
        .collect();
    let text = String::from_utf8(bytes?).ok()?;
    let (at, id) = text.split_once(':')?;
    Some(SagaKey {
        created_at: at.parse().ok()?,
        id: id.to_string(),
    })
}

/// One page of sagas, newest first.
pub async fn page(api: &Api, query: &SagaQuery) -> Result<SagaPage, ApiError> {
    let mut rows = api
        .storage
        .list_sagas(&query.filter, query.after.as_ref(), query.limit + 1)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let more = rows.len() > query.limit as usize;
    rows.truncate(query.limit as usize);
    let more_after = rows.last().filter(|_| more).map(|row| SagaKey {
        created_at: row.created_at,
        id: row.id.clone(),
    });
    let sagas = rows
        .iter()
        .map(|row| match Stored::from_row(row) {
            Ok(stored) => record::to_summary(&stored.exec),
            Err(problem) => json!({"id": row.id, "status": row.status, "error": problem}),
        })
        .collect();
    Ok(SagaPage { sagas, more_after })
}

/// `GET /sagas?service=…&name=…&status=…&created_from=…&id_prefix=…&limit=…&cursor=…`:
/// executions, newest first, a page at a time.
pub async fn list_sagas(
    State(api): State<Arc<Api>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let query = match parse_query(&params) {
        Ok(query) => query,
        Err(refusal) => return refusal.into_response(),
    };
    match page(&api, &query).await {
        Ok(page) => Json(json!({"next": page.next(), "sagas": page.sagas})).into_response(),
        Err(failure) => failure.into_response(),
    }
}

/// How many sagas the filter selects, by status (every status named, zeros included).
pub fn by_status(counts: &[SagaCount]) -> BTreeMap<&'static str, i64> {
    let mut totals: BTreeMap<&'static str, i64> =
        Status::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    for count in counts {
        *totals.entry(count.status.as_str()).or_default() += count.count;
    }
    totals
}

/// The counts of the sagas `filter` selects.
pub async fn counts(api: &Api, filter: &SagaFilter) -> Result<Vec<SagaCount>, ApiError> {
    api.storage
        .count_sagas(filter)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// The value at percentile `p` of `sorted` (nearest rank).
fn percentile(sorted: &[i64], p: usize) -> i64 {
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// `GET /sagas/stats?since=…` (and the filter): counts by service, definition and status; and
/// per definition, the p50 and p99 durations of the sagas that finished since `since`
/// (default: the last 24 hours).
pub async fn stats(
    State(api): State<Arc<Api>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let filter = match parse_filter(&params, &["since"]) {
        Ok(filter) => filter,
        Err(refusal) => return refusal.into_response(),
    };
    let since = match params.get("since").map(|s| saga_core::instant::parse(s)) {
        None => crate::storage::now_ms() - 24 * 3600 * 1000,
        Some(Ok(since)) => since,
        Some(Err(e)) => return bad(format!("since: {e}")).into_response(),
    };
    let counts = match counts(&api, &filter).await {
        Ok(counts) => counts,
        Err(failure) => return failure.into_response(),
    };
    let durations = match api.storage.finished_durations(since).await {
        Ok(durations) => durations,
        Err(e) => {
            return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
        }
    };
    let mut by_service: BTreeMap<&str, i64> = BTreeMap::new();
    let mut by_name: BTreeMap<String, i64> = BTreeMap::new();
    for count in &counts {
        *by_service.entry(count.service.as_str()).or_default() += count.count;
        *by_name
            .entry(format!("{}/{}", count.service, count.name))
            .or_default() += count.count;
    }
    let durations: Vec<Value> = durations
        .iter()
        .filter(|d| filter.service.as_ref().is_none_or(|s| *s == d.service))
        .filter(|d| filter.name.as_ref().is_none_or(|n| *n == d.name))
        .map(|d| {
            json!({
                "service": d.service,
                "name": d.name,
                "finished": d.took_ms.len(),
                "p50_ms": percentile(&d.took_ms, 50),
                "p99_ms": percentile(&d.took_ms, 99),
            })
        })
        .collect();
    let rows: Vec<Value> = counts
        .iter()
        .map(
            |c| json!({"service": c.service, "name": c.name, "status": c.status, "count": c.count}),
        )
        .collect();
    Json(json!({
        "total": counts.iter().map(|c| c.count).sum::<i64>(),
        "by_status": by_status(&counts),
        "by_service": by_service,
        "by_name": by_name,
        "counts": rows,
        "since": since,
        "durations": durations,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_comes_back_as_the_key_it_was_made_of() {
        let key = SagaKey {
            created_at: 1_764_389_400_250,
            id: "0b9f6c1e-2d7a-4f3e-9a51-3c2b1d0e9f8a".into(),
        };
        assert_eq!(decode_cursor(&encode_cursor(&key)), Some(key));
        for bad in ["", "zz", "abc", "3a", "é1"] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }

    #[test]
    fn percentiles_are_nearest_ranks() {
        let sorted: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 50), 50);
        assert_eq!(percentile(&sorted, 99), 99);
        assert_eq!(percentile(&[7], 99), 7);
    }
}
