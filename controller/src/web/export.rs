//! The Action center's CSV export: the current filtered, sorted view, every page of it, in
//! RFC 4180 form (CRLF, quoted fields, UTF-8 with a byte-order mark so that
//! spreadsheets pick the encoding), each cell that a spreadsheet would read as a formula
//! neutralised with a leading apostrophe.

use std::sync::Arc;

use crate::api::Params;
use axum::extract::{Query, State};
use axum::http::{Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::api::{ApiError, ApiResult, require};
use crate::auth::{Permission, Principal};
use crate::service::Controller;
use crate::store::actions::{self, ActionRecord, Filter};

/// Most rows one export holds. A view with more is refused whole (HTTP 400,
/// `too_many_rows`), never cut short: a file that silently lacks rows would pass for the
/// whole history.
pub const MAX_ROWS: u32 = 100_000;

/// The refusal of a view of `total` rows, more than one export holds.
pub fn too_many_rows(total: u64) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::BAD_REQUEST,
        "too_many_rows",
        format!(
            "the view holds {total} actions, more than one export holds ({MAX_ROWS}): narrow it (time window, kind, status, device, group, requester) and export the parts"
        ),
    )
}
const PAGE: u32 = 5_000;

type Cell = fn(&ActionRecord) -> String;

/// Every exportable column: its API name, its heading, and how a record fills it.
pub const COLUMNS: [(&str, &str, Cell); 21] = [
    ("id", "Id", |a| a.id.to_string()),
    ("kind", "Action", |a| a.kind.label().to_owned()),
    ("device", "Device", |a| {
        a.hostname.clone().unwrap_or_default()
    }),
    ("device_id", "Device id", |a| {
        a.device_id
            .as_ref()
            .map(|d| d.to_string())
            .unwrap_or_default()
    }),
    ("device_group", "Device group", |a| {
        a.device_group.clone().unwrap_or_default()
    }),
    ("source", "Action source", |a| a.source.label().to_owned()),
    ("status", "Status", |a| a.status.label().to_owned()),
    ("requested_by", "Requested by", |a| a.requested_by.clone()),
    ("created_at", "Requested at", |a| time(Some(a.created_at))),
    ("comment", "Comment", |a| a.comment.clone()),
    ("decided_by", "Decided by", |a| {
        a.decided_by.clone().unwrap_or_default()
    }),
    ("decided_at", "Decided at", |a| time(a.decided_at)),
    ("decision_comment", "Decision comment", |a| {
        a.decision_comment.clone().unwrap_or_default()
    }),
    ("finished_at", "Finished at", |a| time(a.finished_at)),
    ("result_summary", "Result summary", |a| {
        a.result_summary.clone().unwrap_or_default()
    }),
    ("parent_id", "Parent", |a| opt_id(a.parent_id)),
    ("undo_of", "Undo of", |a| opt_id(a.undo_of)),
    ("undone_by", "Undone by", |a| opt_id(a.undone_by)),
    ("external_id", "External id", |a| {
        a.external_id.clone().unwrap_or_default()
    }),
    ("params", "Parameters", |a| {
        serde_json::to_string(&a.params).unwrap_or_default()
    }),
    ("entity", "Entity / target", |a| a.entity.clone()),
];

/// The columns of an export when none are named.
pub const DEFAULT_COLUMNS: [&str; 14] = [
    "id",
    "kind",
    "device",
    "entity",
    "device_group",
    "source",
    "status",
    "requested_by",
    "created_at",
    "comment",
    "decided_by",
    "decided_at",
    "finished_at",
    "result_summary",
];

fn opt_id(id: Option<palisade_common::ActionId>) -> String {
    id.map(|i| i.to_string()).unwrap_or_default()
}

/// Unix milliseconds as RFC 3339 UTC, empty for none.
fn time(ms: Option<i64>) -> String {
    ms.and_then(|ms| {
        time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
            .ok()?
            .format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
    .unwrap_or_default()
}

/// One CSV field: neutralised against formula injection, then quoted when needed.
pub fn field(value: &str) -> String {
    // Control characters from devices and users are escaped (`\n`, `\u{1b}` …): a cell
    // cannot break into new records nor carry terminal escapes.
    let value = palisade_common::text::escape_control(value);
    let neutral = match value.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{value}"),
        _ => value.into_owned(),
    };
    if neutral.contains([',', '"', '\r', '\n']) || neutral.starts_with(' ') {
        format!("\"{}\"", neutral.replace('"', "\"\""))
    } else {
        neutral
    }
}

/// Appends one record (CRLF-terminated).
pub fn row(out: &mut String, fields: impl IntoIterator<Item = String>) {
    let mut first = true;
    for f in fields {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(&field(&f));
    }
    out.push_str("\r\n");
}

/// Chooses the columns from `columns=a,b,c` (the default set when absent).
pub fn choose(columns: Option<&str>) -> Result<Vec<usize>, String> {
    let names: Vec<&str> = match columns {
        Some(c) if !c.trim().is_empty() => c.split(',').map(str::trim).collect(),
        _ => DEFAULT_COLUMNS.to_vec(),
    };
    names
        .into_iter()
        .map(|n| {
            COLUMNS.iter().position(|(k, _, _)| *k == n).ok_or_else(|| {
                format!(
                    "no column {n:?}; columns: {}",
                    COLUMNS.map(|(k, _, _)| k).join(", ")
                )
            })
        })
        .collect()
}

/// Writes the CSV document of `records` with the chosen columns.
pub fn document(records: &[ActionRecord], columns: &[usize]) -> String {
    let mut out = String::from("\u{feff}");
    row(&mut out, columns.iter().map(|&i| COLUMNS[i].1.to_owned()));
    for r in records {
        row(&mut out, columns.iter().map(|&i| (COLUMNS[i].2)(r)));
    }
    out
}

#[derive(Deserialize)]
pub struct Columns {
    columns: Option<String>,
}

/// The filtered view as CSV. Takes the list's filters and sort (not its page) and
/// `columns=a,b,c`.
#[utoipa::path(get, path = "/api/v1/actions/export.csv", tag = "actions",
    params(Filter, ("columns" = Option<String>, Query, description = "comma-separated column names")),
    responses((status = 200, description = "text/csv, RFC 4180, UTF-8", content_type = "text/csv")))]
pub async fn export_csv(
    State(ctl): State<Arc<Controller>>,
    who: Principal,
    uri: Uri,
    Params(cols): Params<Columns>,
) -> ApiResult<Response> {
    require(&who, Permission::View)?;
    let columns = choose(cols.columns.as_deref()).map_err(ApiError::bad_request)?;
    // The list's own filter, from the query without `columns`.
    let rest: Vec<&str> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("columns="))
        .collect();
    let bare: Uri = format!("/?{}", rest.join("&"))
        .parse()
        .map_err(|_| ApiError::bad_request("invalid query string"))?;
    let Query(mut filter) =
        Query::<Filter>::try_from_uri(&bare).map_err(|e| ApiError::bad_request(e.body_text()))?;
    let groups = who.group_scope();
    let records = ctl
        .store
        .read(move |c| {
            let mut all = Vec::new();
            filter.limit = Some(PAGE);
            let mut offset = 0;
            loop {
                filter.offset = Some(offset);
                let (page, total) = actions::list(c, &filter, groups.as_deref())?;
                if total > u64::from(MAX_ROWS) {
                    return Ok(Err(total));
                }
                let n = page.len() as u32;
                all.extend(page);
                offset += n;
                if n < PAGE || offset as u64 >= total {
                    break;
                }
            }
            Ok(Ok(all))
        })
        .await?;
    let records = match records {
        Ok(r) => r,
        Err(total) => return Err(too_many_rows(total)),
    };
    let body = document(&records, &columns);
    let name = format!(
        "palisade-actions-{}.csv",
        time(Some(crate::store::now_ms())).replace(':', "")
    );
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_quoted_as_rfc_4180_says() {
        assert_eq!(field("plain"), "plain");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("two\r\nlines"), "two\\r\\nlines");
        assert_eq!(field("a\u{1b}[2J,b"), "\"a\\u{1b}[2J,b\"");
        assert_eq!(field("héllo ✓"), "héllo ✓");
        let mut out = String::new();
        row(&mut out, ["a".to_owned(), "b,c".to_owned(), String::new()]);
        assert_eq!(out, "a,\"b,c\",\r\n");
    }

    #[test]
    fn cells_that_look_like_formulas_are_neutralised() {
        assert_eq!(field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(field("+1"), "'+1");
        assert_eq!(field("-cmd"), "'-cmd");
        assert_eq!(field("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(field("\tx"), "\\tx");
        assert_eq!(field("a=b"), "a=b");
    }

    /// Kinds, statuses and sources in the words of the web page and `palisadectl`, and the
    /// action's target, instead of identifiers.
    #[test]
    fn cells_are_in_words_and_name_the_target() {
        let rec = ActionRecord::for_test(
            7,
            palisade_common::ActionParams::RequestSample(
                palisade_common::action::RequestSampleParams {
                    path: "/srv/evil.bin".into(),
                },
            ),
        );
        let doc = document(&[rec], &choose(Some("kind,status,source,entity")).unwrap());
        assert_eq!(
            doc,
            "\u{feff}Action,Status,Action source,Entity / target\r\n\
             Collect file sample,Succeeded,Manual device action,/srv/evil.bin\r\n"
        );
    }

    #[test]
    fn columns_are_chosen_by_name_and_unknown_ones_named() {
        assert_eq!(choose(None).unwrap().len(), DEFAULT_COLUMNS.len());
        assert_eq!(choose(Some("id,status")).unwrap(), vec![0, 6]);
        assert!(choose(Some("id,nope")).unwrap_err().contains("\"nope\""));
    }
}
