//! The model catalog routes (API.md §9.3). The catalog lives in the core; handlers parse bodies
//! strictly and ask the core.

use api::catalog::{ModelRecord, RegisterModel, SetModelState};
use api::{ErrorCode, ErrorEnvelope};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use daemon::correlation::CorrelationId;
use daemon::errors::ApiError;

use super::meta::required_body;
use super::App;
use crate::core::runner::Msg;

fn gone() -> ApiError {
    ApiError(ErrorEnvelope::new(
        ErrorCode::Internal,
        "orchestratord is shutting down",
    ))
}

fn not_found(id: &str) -> ApiError {
    ApiError(ErrorEnvelope::new(
        ErrorCode::NotFound,
        format!("no catalog model {id}"),
    ))
}

pub async fn register(
    State(app): State<App>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let req: RegisterModel = required_body(&app, &headers, body, false).await?;
    if req.model_ref.is_empty() {
        return Err(ApiError(ErrorEnvelope::invalid("ref", "required")));
    }
    let (r, durable) = app
        .core
        .ask(|reply| Msg::CatalogRegister { req, reply })
        .await
        .ok_or_else(gone)?;
    durable.wait().await?;
    let (rec, created) = r?;
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(rec),
    )
        .into_response())
}

pub async fn list(State(app): State<App>) -> Result<Json<api::catalog::ModelsResponse>, ApiError> {
    let models = app
        .core
        .ask(|reply| Msg::CatalogList { reply })
        .await
        .ok_or_else(gone)?;
    Ok(Json(api::catalog::ModelsResponse { models }))
}

pub async fn get(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<ModelRecord>, ApiError> {
    let key = id.clone();
    app.core
        .ask(|reply| Msg::CatalogGet { id: key, reply })
        .await
        .ok_or_else(gone)?
        .map(Json)
        .ok_or_else(|| not_found(&id))
}

pub async fn delete(
    State(app): State<App>,
    Path(id): Path<String>,
    Extension(cid): Extension<CorrelationId>,
) -> Result<StatusCode, ApiError> {
    let (r, durable) = app
        .core
        .ask(|reply| Msg::CatalogDelete {
            id,
            correlation_id: cid.0,
            reply,
        })
        .await
        .ok_or_else(gone)?;
    durable.wait().await?;
    r?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn verify(
    State(app): State<App>,
    Path(id): Path<String>,
    Extension(cid): Extension<CorrelationId>,
) -> Result<Response, ApiError> {
    let rec = app
        .core
        .ask(|reply| Msg::CatalogVerify {
            id,
            correlation_id: cid.0,
            reply,
        })
        .await
        .ok_or_else(gone)??;
    Ok((StatusCode::ACCEPTED, Json(rec)).into_response())
}

pub async fn set_state(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<ModelRecord>, ApiError> {
    let req: SetModelState = required_body(&app, &headers, body, false).await?;
    let (r, durable) = app
        .core
        .ask(|reply| Msg::CatalogSetState {
            id,
            state: req.state,
            reply,
        })
        .await
        .ok_or_else(gone)?;
    durable.wait().await?;
    Ok(Json(r?))
}

pub async fn availability(
    State(app): State<App>,
) -> Result<Json<api::catalog::AvailabilityResponse>, ApiError> {
    Ok(Json(
        app.core
            .ask(|reply| Msg::Availability { reply })
            .await
            .ok_or_else(gone)?,
    ))
}
