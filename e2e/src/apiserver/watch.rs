//! Watch streams: events in resourceVersion order from a bounded history plus the live
//! broadcast, selector transitions, bookmarks, timeouts, 410 Gone, sendInitialEvents.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::error::ApiError;
use super::ops::{ListOpts, present};
use super::resources::ResourceInfo;
use super::server::Shared;
use super::store::{Event, EventType};
use super::table::{self, IncludeObject};
use super::util;

/// Watch request options.
#[derive(Debug, Clone, Default)]
pub struct WatchOpts {
    pub resource_version: Option<String>,
    pub bookmarks: bool,
    pub timeout: Option<Duration>,
    pub send_initial_events: bool,
    pub list: ListOpts,
    /// Render objects as single-row Tables (kubectl get -w).
    pub table: Option<IncludeObject>,
}

struct Filter {
    ri: Arc<ResourceInfo>,
    ns: Option<String>,
    opts: WatchOpts,
}

impl Filter {
    fn scoped(&self, ev: &Event) -> bool {
        ev.key == self.ri.storage_key() && self.ns.as_ref().is_none_or(|n| *n == ev.namespace)
    }
    /// The event type this watcher sees, if any (selector transitions become ADDED/DELETED).
    fn translate(&self, ev: &Event) -> Option<EventType> {
        if !self.scoped(ev) {
            return None;
        }
        let now = self.opts.list.matches(&ev.object);
        let before = ev.old.as_ref().is_some_and(|o| self.opts.list.matches(o));
        match ev.type_ {
            EventType::Added => now.then_some(EventType::Added),
            EventType::Deleted => (now || before).then_some(EventType::Deleted),
            EventType::Modified => match (before, now) {
                (true, true) => Some(EventType::Modified),
                (false, true) => Some(EventType::Added),
                (true, false) => Some(EventType::Deleted),
                (false, false) => None,
            },
        }
    }
    fn line(&self, type_: &str, obj: &Value) -> Bytes {
        let obj = present(&self.ri, obj.clone());
        let obj = match self.opts.table {
            Some(inc) => table::table(
                &self.ri,
                std::slice::from_ref(&obj),
                util::str_at(&obj, "/metadata/resourceVersion"),
                None,
                inc,
            ),
            None => obj,
        };
        let mut s = serde_json::to_vec(&json!({"type": type_, "object": obj})).unwrap_or_default();
        s.push(b'\n');
        Bytes::from(s)
    }
    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj =
            json!({"kind": self.ri.kind, "apiVersion": self.ri.api_version(), "metadata": meta});
        let mut s =
            serde_json::to_vec(&json!({"type": "BOOKMARK", "object": obj})).unwrap_or_default();
        s.push(b'\n');
        Bytes::from(s)
    }
}

fn error_line(e: &ApiError) -> Bytes {
    let mut s =
        serde_json::to_vec(&json!({"type": "ERROR", "object": e.to_status()})).unwrap_or_default();
    s.push(b'\n');
    Bytes::from(s)
}

fn stream_response(rx: mpsc::Receiver<Bytes>) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<Bytes, std::io::Error>(b), rx))
    });
    Response::builder()
        .header("content-type", "application/json")
        .header("cache-control", "no-cache, private")
        .body(Body::from_stream(stream))
        .expect("static response parts")
}

/// Starts a watch; the response body streams events until timeout, client disconnect, a
/// "drop watches" fault or server stop.
pub fn watch(
    shared: Arc<Shared>,
    ri: Arc<ResourceInfo>,
    ns: Option<String>,
    opts: WatchOpts,
) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let f = Filter { ri, ns, opts };
    let mut initial: Vec<Bytes> = Vec::new();
    let (brx, start_rv) = {
        let st = shared.store.lock().expect("store lock");
        let rv_opt = f
            .opts
            .resource_version
            .as_deref()
            .filter(|r| !r.is_empty() && *r != "0");
        let from: Option<u64> = match rv_opt.map(str::parse::<u64>) {
            Some(Ok(rv)) => Some(rv),
            Some(Err(_)) => {
                let e = ApiError::bad_request("invalid resourceVersion");
                return axum::response::IntoResponse::into_response(e);
            }
            None => None,
        };
        match from {
            Some(rv) if rv < st.compacted_rv && !f.opts.send_initial_events => {
                let e = ApiError::gone(format!(
                    "too old resource version: {rv} ({})",
                    st.compacted_rv + 1
                ));
                let _ = tx.try_send(error_line(&e));
                return stream_response(rx);
            }
            Some(rv) if !f.opts.send_initial_events => {
                for ev in st.history.iter().filter(|e| e.rv > rv) {
                    if let Some(t) = f.translate(ev) {
                        initial.push(f.line(t.as_str(), &ev.object));
                    }
                }
            }
            _ => {
                let ns = f.ns.as_deref();
                for o in st.list(&f.ri.storage_key(), ns) {
                    if f.opts.list.matches(o) {
                        initial.push(f.line("ADDED", o));
                    }
                }
                if f.opts.send_initial_events {
                    initial.push(f.bookmark(st.rv, true));
                }
            }
        }
        (st.tx.subscribe(), st.rv)
    };
    let epoch = shared.watch_epoch.subscribe();
    let bookmark_every = shared.bookmark_interval;
    tokio::spawn(run(f, tx, brx, start_rv, initial, epoch, bookmark_every));
    stream_response(rx)
}

async fn run(
    f: Filter,
    tx: mpsc::Sender<Bytes>,
    mut brx: broadcast::Receiver<Arc<Event>>,
    mut last_rv: u64,
    initial: Vec<Bytes>,
    mut epoch: tokio::sync::watch::Receiver<u64>,
    bookmark_every: Duration,
) {
    for b in initial {
        if tx.send(b).await.is_err() {
            return;
        }
    }
    let deadline = f.opts.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut ticker = tokio::time::interval(bookmark_every);
    ticker.tick().await;
    loop {
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = brx.recv() => match r {
                Ok(ev) => {
                    if ev.rv <= last_rv {
                        continue;
                    }
                    last_rv = ev.rv;
                    if let Some(t) = f.translate(&ev)
                        && tx.send(f.line(t.as_str(), &ev.object)).await.is_err()
                    {
                        return;
                    }
                }
                // A watcher that cannot keep up is closed; the client resumes from its last RV.
                Err(_) => return,
            },
            _ = ticker.tick(), if f.opts.bookmarks => {
                if tx.send(f.bookmark(last_rv, false)).await.is_err() {
                    return;
                }
            }
            _ = sleep => return,
            _ = epoch.changed() => return,
            _ = tx.closed() => return,
        }
    }
}
