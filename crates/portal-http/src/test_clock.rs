//! The test clock of demo and staging deployments (`/api/v1/test-clock`): read the
//! deployment's date, or move it forward N days with every daily job run for each day. A
//! deployment without one (production) answers 404 to everyone.

use crate::AppState;
use crate::problem::{Body, Problem};
use crate::support::agent;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use portal_core::error::Validator;
use portal_core::services::ServiceError;
use serde_json::json;

fn present(s: &AppState) -> Result<(), Problem> {
    if s.portal.has_test_clock() {
        Ok(())
    } else {
        Err(ServiceError::NotFound("test clock").into())
    }
}

pub(crate) async fn show(
    State(s): State<AppState>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    present(&s)?;
    agent(&s, &method, &headers).await?;
    let today = s.portal.test_clock_today()?;
    Ok(axum::Json(json!({ "today": today })).into_response())
}

pub(crate) async fn advance(
    State(s): State<AppState>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    present(&s)?;
    agent(&s, &method, &headers).await?;
    let b = Body::parse(&body)?;
    let mut v = Validator::new();
    b.only(&["days"], &mut v);
    let days = b.uint("days", &mut v);
    let days = v.finish(days)?;
    let moved = s.portal.advance_test_clock(days).await?;
    Ok(axum::Json(json!({
        "from": moved.from,
        "today": moved.today,
        "jobs": { "done": moved.jobs.done, "skipped": moved.jobs.skipped, "failed": moved.jobs.failed },
    }))
    .into_response())
}
