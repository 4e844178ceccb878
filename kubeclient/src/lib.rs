//! The Kubernetes API client the agent and the operator share: kube's own stack (TLS, auth,
//! base URI, server retries, timeouts), with TCP keepalive on every connection to the API
//! server, and HTTP/2 offered beside HTTP/1.1 (the private `https_connector` says why).
//!
//! Why keepalive: a watch is a long response the client only reads. When the path to the API
//! server dies without a FIN or RST reaching the client (the node's NAT gateway rebooted to a new
//! public address, a firewall's connection state flushed), kube's default client waits for bytes
//! that never come until the watch's own timeout, and everything the watch should have delivered
//! in between is late: in the lab, a NAT reboot behind which the operator ran kept a new node
//! address out of its peers' specs for 15 s. A keepalive probe after a few idle seconds either
//! reaches a server that no longer knows the connection (it answers RST; the NAT case, detected
//! at the first probe) or is lost (detected after the retries). Either way the connection fails,
//! and the watcher re-watches on a fresh one from its last resource version, so nothing is missed.
//! The cost is one empty segment and its ACK per idle interval per connection.
//!
//! Also here: how a failed watch retries ([`WatchRetry`]), for the same two clients.

#![forbid(unsafe_code)]

use std::time::Duration;

use hyper_timeout::TimeoutConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt;
use kube::client::retry::RetryPolicy;
use tower::ServiceBuilder;
use tower::retry::RetryLayer;
use tower_http::trace::TraceLayer;

/// The error type kube's middleware (retry, auth, headers) works in.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// TCP keepalive on the API server connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the first probe: how long a dead connection that the server would reset
    /// goes unnoticed.
    pub idle: Duration,
    /// Time between unanswered probes.
    pub interval: Duration,
    /// Unanswered probes before the connection is declared dead: a silently dropped path is
    /// noticed after `idle + interval * retries`.
    pub retries: u32,
}

impl Keepalive {
    /// 5 s idle, then 3 probes 2 s apart: a reset path is noticed within 5 s of going quiet, a
    /// black-holed one within 11 s. A watch that carries events is never idle, so this costs
    /// nothing while the cluster is busy; on a quiet one, 40 bytes each way every 5 s.
    pub const DEFAULT: Keepalive = Keepalive {
        idle: Duration::from_secs(5),
        interval: Duration::from_secs(2),
        retries: 3,
    };
}

impl Default for Keepalive {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("building the TLS connector for the API server {url}: {source}")]
    Tls {
        url: String,
        #[source]
        source: kube::Error,
    },
    #[error("setting up authentication to the API server {url}: {source}")]
    Auth {
        url: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "the kubeconfig's tls-server-name {name:?} is not a valid DNS name or IP address \
         ({reason}); correct or remove it"
    )]
    TlsServerName { name: String, reason: String },
    #[error("building the extra request headers of the kubeconfig: {0}")]
    Headers(#[source] kube::Error),
    #[error(
        "the kubeconfig names the proxy {0}, and WireKube does not support API server proxies; \
         remove `proxy-url` from the cluster entry"
    )]
    Proxy(String),
}

/// The plain TCP connector under TLS, with `keepalive` on every socket it opens.
pub fn tcp_connector(keepalive: &Keepalive) -> HttpConnector {
    let mut tcp = HttpConnector::new();
    // The TLS layer above decides the scheme; this one only opens sockets.
    tcp.enforce_http(false);
    tcp.set_keepalive(Some(keepalive.idle));
    tcp.set_keepalive_interval(Some(keepalive.interval));
    tcp.set_keepalive_retries(Some(keepalive.retries));
    tcp
}

/// TLS over `tcp` as kube builds it (`rustls_https_connector_with_connector`), offering HTTP/2
/// as well as HTTP/1.1.
///
/// Why HTTP/2: over HTTP/1.1 a request the client drops keeps its place in the API server's
/// priority-and-fairness queue, because the server notices a closed connection only after it
/// has read the request body, which it reads when the request leaves the queue; it then runs
/// (if only up to its storage update) and a newer request queued behind it waits for it. Over
/// HTTP/2 a dropped request resets its stream, the server cancels the request at once and
/// takes it out of the queue unexecuted. The agent's status writer relies on that when a newer
/// path replaces a write in flight. All requests also share one connection per client.
fn https_connector(
    config: &kube::Config,
    tcp: HttpConnector,
    url: &str,
) -> Result<hyper_rustls::HttpsConnector<HttpConnector>, Error> {
    let tls = config.rustls_client_config().map_err(|source| Error::Tls {
        url: url.to_string(),
        source,
    })?;
    let mut builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    if let Some(name) = &config.tls_server_name {
        let server = rustls::pki_types::ServerName::try_from(name.clone()).map_err(|e| {
            Error::TlsServerName {
                name: name.clone(),
                reason: e.to_string(),
            }
        })?;
        builder =
            builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(server));
    }
    Ok(builder.enable_http1().enable_http2().wrap_connector(tcp))
}

/// A client for `config`, built like kube's `Client::try_from(config)` except for the TCP
/// keepalive (see the crate's documentation). A proxy (`proxy_url`) is refused: kube needs its
/// optional proxy features for one, which this build does not enable either.
pub fn client(config: kube::Config, keepalive: &Keepalive) -> Result<kube::Client, Error> {
    if let Some(proxy) = &config.proxy_url {
        return Err(Error::Proxy(proxy.to_string()));
    }
    let url = config.cluster_url.to_string();
    let https = https_connector(&config, tcp_connector(keepalive), &url)?;
    let mut timed = TimeoutConnector::new(https);
    timed.set_connect_timeout(config.connect_timeout);
    timed.set_read_timeout(config.read_timeout);
    timed.set_write_timeout(config.write_timeout);
    timed.set_reset_reader_on_write(config.reset_reader_on_write);
    let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(timed);

    let retry = config
        .default_retry
        .then(|| RetryLayer::new(RetryPolicy::server_retry()));
    let auth = config
        .auth_layer()
        .map_err(|source| Error::Auth { url, source })?;
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(retry)
        .option_layer(auth)
        .layer(config.extra_headers_layer().map_err(Error::Headers)?)
        .layer(TraceLayer::new_for_http())
        .map_err(BoxError::from)
        .service(http);
    Ok(kube::Client::new(service, config.default_namespace))
}

mod retry;
pub use retry::{WatchBackoff, WatchRetry};

#[cfg(test)]
mod tests;
