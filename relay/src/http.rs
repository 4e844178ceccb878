//! Operational HTTP endpoints: /metrics, /healthz, /readyz.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::token::TokenStore;

#[derive(Clone)]
struct Ops {
    metrics: Arc<Metrics>,
    tokens: TokenStore,
    shutdown: CancellationToken,
}

async fn metrics(State(s): State<Ops>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready while a token is loaded and we are not draining, so a load balancer stops
/// sending new clients during shutdown.
async fn readyz(State(s): State<Ops>) -> (StatusCode, &'static str) {
    if s.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
    } else if !s.tokens.is_loaded() {
        (StatusCode::SERVICE_UNAVAILABLE, "no token")
    } else {
        (StatusCode::OK, "ready")
    }
}

/// Serves until `stop` fires.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics_: Arc<Metrics>,
    tokens: TokenStore,
    shutdown: CancellationToken,
    stop: CancellationToken,
) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Ops {
            metrics: metrics_,
            tokens,
            shutdown,
        });
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "metrics server failed");
    }
}
