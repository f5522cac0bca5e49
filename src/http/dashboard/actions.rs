//! The dashboard's JSON endpoints: a series' chart data, and the actions a page takes with the
//! token (acknowledge an alert, add or remove a silence). The token goes in the `Authorization`
//! header, never in a cookie, so another site cannot make a browser send it.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use crate::chart::{self, ChartPoint, Range};
use crate::control::service::{Service, off_the_loop};
use crate::http::api::{ApiError, State, check_write};
use crate::model::{HealthAlert, HealthMetric, ResourceType, Silence, validate_id};
use crate::store::{self, query};

/// Longest silence the page may ask for: a week.
const MAX_SILENCE_SECS: i64 = 7 * 86_400;

/// Each metric of `latest` with its chart points over `range`: the rollups in the database,
/// then the minute still open in memory.
pub(crate) async fn chart_data(
    service: &Service,
    resource_type: ResourceType,
    id: &str,
    latest: &[HealthMetric],
    range: Range,
    now: DateTime<Utc>,
) -> Result<Vec<(HealthMetric, Vec<ChartPoint>)>, ApiError> {
    let since = now.timestamp() - range.secs();
    let open: Vec<Option<crate::rollup::Acc>> = {
        let rollups = service.deps.analyzer.rollups();
        latest
            .iter()
            .map(|m| rollups.open_bucket(resource_type, id, &m.metric_name))
            .collect()
    };
    let db = service.deps.settings.db_path.clone();
    let names: Vec<String> = latest.iter().map(|m| m.metric_name.to_string()).collect();
    let id_owned = id.to_string();
    let stored = off_the_loop(move || {
        let Some(conn) = store::open_read_only(&db).map_err(|e| format!("{e:#}"))? else {
            return Ok(vec![Vec::new(); names.len()]);
        };
        names
            .iter()
            .map(|name| {
                query::rollups(&conn, resource_type, &id_owned, name, range.width(), since)
                    .map_err(|e| format!("cannot read the rollups: {e}"))
            })
            .collect::<Result<Vec<_>, String>>()
    })
    .await
    .map_err(ApiError::from_service)?;
    Ok(latest
        .iter()
        .cloned()
        .zip(stored.into_iter().zip(open))
        .map(|(m, (mut buckets, open))| {
            buckets.extend(open);
            let points = chart::downsample(&buckets, since, now.timestamp(), chart::MAX_POINTS);
            (m, points)
        })
        .collect())
}

/// The newest alerts of one resource.
pub(crate) async fn history(
    service: &Service,
    resource_type: ResourceType,
    id: &str,
    limit: usize,
) -> Result<Vec<HealthAlert>, ApiError> {
    let db = service.deps.settings.db_path.clone();
    let id = id.to_string();
    off_the_loop(move || match store::open_read_only(&db) {
        Ok(Some(conn)) => query::resource_alerts(&conn, resource_type, &id, limit)
            .map_err(|e| format!("cannot read the alerts: {e}")),
        Ok(None) => Ok(Vec::new()),
        Err(e) => Err(format!("{e:#}")),
    })
    .await
    .map_err(ApiError::from_service)
}

/// `GET /api/v1/series/{type}/{id}/{metric}?range=7d`: a series downsampled on the server to
/// at most 360 points (min, avg and max each), with its unit and thresholds.
pub(crate) async fn series(
    state: web::Data<State>,
    path: web::Path<(String, String, String)>,
    query: web::Query<super::RangeQuery>,
) -> Result<HttpResponse, ApiError> {
    let (resource_type, id, metric) = path.into_inner();
    let resource_type: ResourceType = resource_type.parse().map_err(ApiError::bad_request)?;
    let range = Range::from_query(query.range.as_deref()).map_err(ApiError::bad_request)?;
    let service = &state.service;
    let snapshot = service.deps.analyzer.snapshot().await.unwrap_or_default();
    let latest: Vec<HealthMetric> = snapshot
        .latest
        .into_iter()
        .filter(|m| {
            m.resource_type == resource_type
                && m.resource_id == id
                && m.metric_name == metric.as_str()
        })
        .collect();
    let latest = if latest.is_empty() {
        // Not reported now: its history still answers, without unit or thresholds.
        vec![HealthMetric::from_measurement(
            crate::model::Measurement {
                metric_name: metric.clone().into(),
                ..crate::model::Measurement::now(resource_type, &id, "", f64::NAN, "")
            },
            None,
        )]
    } else {
        latest
    };
    let now = Utc::now();
    let mut data = chart_data(service, resource_type, &id, &latest, range, now).await?;
    let (m, points) = data.pop().unwrap_or((latest[0].clone(), Vec::new()));
    Ok(HttpResponse::Ok().json(json!({
        "resource_type": resource_type,
        "resource_id": id,
        "metric": metric,
        "range": range.as_str(),
        "unit": m.unit,
        "threshold_warning": m.threshold_warning,
        "threshold_critical": m.threshold_critical,
        "points": points,
    })))
}

/// `POST /api/v1/alerts/{id}/ack`: acknowledges an active alert (token required).
pub(crate) async fn ack(
    state: web::Data<State>,
    req: HttpRequest,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    check_write(&state, &req)?;
    let reply = state
        .service
        .ack(path.into_inner(), "dashboard".into())
        .await
        .map_err(|e| {
            if e.starts_with("no active alert") {
                ApiError::new(actix_web::http::StatusCode::NOT_FOUND, e)
            } else {
                ApiError::from_service(e)
            }
        })?;
    Ok(HttpResponse::Ok().json(reply))
}

/// The body of `POST /api/v1/silences`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SilenceBody {
    resource_type: ResourceType,
    resource_id: String,
    #[serde(default)]
    metric: Option<String>,
    duration_secs: i64,
    #[serde(default)]
    comment: Option<String>,
}

/// `POST /api/v1/silences` with `{resource_type, resource_id, metric?, duration_secs,
/// comment?}`: silences a resource's alerts (or one of them) for a while (token required).
pub(crate) async fn silence_add(
    state: web::Data<State>,
    req: HttpRequest,
    body: Result<web::Json<SilenceBody>, actix_web::Error>,
) -> Result<HttpResponse, ApiError> {
    check_write(&state, &req)?;
    let body = body
        .map_err(|e| ApiError::from_extractor("body", &e))?
        .into_inner();
    if !(1..=MAX_SILENCE_SECS).contains(&body.duration_secs) {
        return Err(ApiError::bad_request(format!(
            "duration_secs must be between 1 and {MAX_SILENCE_SECS}"
        )));
    }
    let now = Utc::now();
    let silence = Silence {
        resource_type: body.resource_type,
        resource_id: body.resource_id,
        metric: body.metric.filter(|m| !m.is_empty()),
        created_at: now,
        expires_at: now + chrono::Duration::seconds(body.duration_secs),
        comment: body.comment.or(Some("from the dashboard".into())),
    };
    let outcome = state
        .service
        .silence_add(silence.clone())
        .await
        .map_err(ApiError::bad_request)?;
    Ok(HttpResponse::Ok().json(json!({ "outcome": outcome, "silence": silence })))
}

/// The query of `DELETE /api/v1/silences/{type}/{id}`.
#[derive(Debug, Deserialize)]
pub(crate) struct UnsilenceQuery {
    metric: Option<String>,
}

/// `DELETE /api/v1/silences/{type}/{id}?metric=M`: removes a resource's silences (or the one
/// on `metric`) (token required).
pub(crate) async fn silence_remove(
    state: web::Data<State>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<UnsilenceQuery>,
) -> Result<HttpResponse, ApiError> {
    check_write(&state, &req)?;
    let (resource_type, id) = path.into_inner();
    let resource_type: ResourceType = resource_type.parse().map_err(ApiError::bad_request)?;
    if resource_type != ResourceType::Filesystem && resource_type != ResourceType::Database {
        validate_id(&id).map_err(ApiError::bad_request)?;
    }
    let metric = query.into_inner().metric.filter(|m| !m.is_empty());
    let outcome = state
        .service
        .silence_remove(resource_type, id, metric)
        .await
        .map_err(ApiError::bad_request)?;
    Ok(HttpResponse::Ok().json(outcome))
}

/// `GET /api/v1/silences`: the silences in force.
pub(crate) async fn silences(state: web::Data<State>) -> Result<HttpResponse, ApiError> {
    let silences = state
        .service
        .silences()
        .await
        .map_err(ApiError::from_service)?;
    Ok(HttpResponse::Ok().json(silences))
}
