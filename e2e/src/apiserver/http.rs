//! HTTP routing: authentication, path parsing, authorization, dispatch to the verbs, and
//! content negotiation (JSON, Table, aggregated discovery).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::discovery;
use super::error::ApiError;
use super::mutate::FieldValidation;
use super::ops::{self, Ctx, DeleteOpts, ListOpts, PatchOpts, Target};
use super::patch::PatchType;
use super::rbac::{RequestAttributes, UserInfo};
use super::selectors::{FieldSelector, LabelSelector};
use super::server::Shared;
use super::table::{self, IncludeObject};
use super::watch::{self, WatchOpts};

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

async fn handle(State(sh): State<Arc<Shared>>, req: Request) -> Response {
    match dispatch(sh, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

fn json_response(code: StatusCode, v: &Value, content_type: &str, warnings: &[String]) -> Response {
    let mut b = Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, content_type);
    for w in warnings {
        b = b.header(
            "Warning",
            format!("299 - {}", serde_json::to_string(w).unwrap_or_default()),
        );
    }
    b.body(Body::from(serde_json::to_vec(v).unwrap_or_default()))
        .expect("static response parts")
}

fn ok(v: &Value) -> Result<Response, ApiError> {
    Ok(json_response(StatusCode::OK, v, "application/json", &[]))
}

fn query(uri: &axum::http::Uri) -> HashMap<String, String> {
    axum::extract::Query::<HashMap<String, String>>::try_from_uri(uri)
        .map(|q| q.0)
        .unwrap_or_default()
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> &str {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// The bearer token, from `Authorization: Bearer` or else from a `/t/<token>` path prefix
/// (kubectl does not send bearer tokens over plain HTTP, so kubeconfigs put it in the server
/// URL as well).
fn authenticate(
    sh: &Shared,
    headers: &HeaderMap,
    path_token: Option<&str>,
) -> Result<UserInfo, ApiError> {
    let auth = header_str(headers, header::AUTHORIZATION);
    let token = auth
        .strip_prefix("Bearer ")
        .or(path_token)
        .ok_or_else(ApiError::unauthorized)?;
    sh.tokens
        .lock()
        .expect("tokens lock")
        .user(token.trim())
        .ok_or_else(ApiError::unauthorized)
}

async fn dispatch(sh: Arc<Shared>, req: Request) -> Result<Response, ApiError> {
    if sh
        .fail_until
        .lock()
        .expect("fault lock")
        .is_some_and(|t| Instant::now() < t)
    {
        return Err(ApiError::unavailable(
            "the server is currently unable to handle the request (injected fault)",
        ));
    }
    let mut path = req.uri().path().trim_end_matches('/').to_string();
    let mut path_token = None;
    if let Some(rest) = path.strip_prefix("/t/") {
        let (tok, rest) = rest.split_once('/').unwrap_or((rest, ""));
        path_token = Some(tok.to_string());
        path = format!("/{rest}");
    }
    if matches!(path.as_str(), "/healthz" | "/livez" | "/readyz") {
        return Ok((StatusCode::OK, "ok").into_response());
    }
    let user = authenticate(&sh, req.headers(), path_token.as_deref())?;
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let accept = header_str(req.headers(), header::ACCEPT).to_string();
    let aggregated = discovery::wants_aggregated(&accept);
    let reg = || sh.store.lock().expect("store lock").registry.clone();
    let agg = |v: Value| {
        Ok(json_response(
            StatusCode::OK,
            &v,
            discovery::AGGREGATED_CT,
            &[],
        ))
    };
    if req.method() == Method::GET {
        match segs.as_slice() {
            ["version"] => return ok(&discovery::version()),
            ["api"] if aggregated => return agg(discovery::aggregated(&reg(), true)),
            ["api"] => {
                return ok(&discovery::api_versions(
                    &sh.server_url.lock().expect("url lock"),
                ));
            }
            ["apis"] if aggregated => return agg(discovery::aggregated(&reg(), false)),
            ["apis"] => return ok(&discovery::api_group_list(&reg())),
            ["apis", g] => {
                return discovery::api_group_one(&reg(), g)
                    .ok_or_else(ApiError::not_found_path)
                    .and_then(|v| ok(&v));
            }
            ["api", v] => {
                return discovery::resource_list(&reg(), "", v)
                    .ok_or_else(ApiError::not_found_path)
                    .and_then(|v| ok(&v));
            }
            ["apis", g, v] => {
                return discovery::resource_list(&reg(), g, v)
                    .ok_or_else(ApiError::not_found_path)
                    .and_then(|v| ok(&v));
            }
            ["openapi", "v3"] => return ok(&discovery::openapi_v3_root(&reg())),
            ["openapi", "v3", "api", v] => {
                return discovery::openapi_v3_gv(&reg(), "", v)
                    .ok_or_else(ApiError::not_found_path)
                    .and_then(|v| ok(&v));
            }
            ["openapi", "v3", "apis", g, v] => {
                return discovery::openapi_v3_gv(&reg(), g, v)
                    .ok_or_else(ApiError::not_found_path)
                    .and_then(|v| ok(&v));
            }
            _ => {}
        }
    }
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] if !rest.is_empty() => ("", *v, rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
        _ => return Err(ApiError::not_found_path()),
    };
    let registry = reg();
    let namespaced_path = rest.len() >= 3
        && rest[0] == "namespaces"
        && registry
            .get(group, version, rest[2])
            .is_some_and(|r| r.namespaced);
    let (ns, resource, name, sub) = if namespaced_path {
        if rest.len() > 5 {
            return Err(ApiError::not_found_path());
        }
        (
            Some(rest[1].to_string()),
            rest[2],
            rest.get(3).map(|s| s.to_string()),
            rest.get(4).map(|s| s.to_string()),
        )
    } else {
        if rest.len() > 3 {
            return Err(ApiError::not_found_path());
        }
        (
            None,
            rest[0],
            rest.get(1).map(|s| s.to_string()),
            rest.get(2).map(|s| s.to_string()),
        )
    };
    let ri = registry
        .get(group, version, resource)
        .ok_or_else(ApiError::not_found_path)?;
    if ri.namespaced && name.is_some() && ns.is_none() {
        return Err(ApiError::not_found_path());
    }
    if let Some(s) = &sub
        && !(s == "status" && ri.has_status)
    {
        return Err(ApiError::not_found_path());
    }
    let q = query(req.uri());
    let flag = |k: &str| q.get(k).is_some_and(|v| v == "true" || v == "1");
    let is_watch = flag("watch");
    let verb = match (req.method().clone(), name.is_some()) {
        (Method::GET, true) if is_watch => "watch",
        (Method::GET, true) => "get",
        (Method::GET, false) if is_watch => "watch",
        (Method::GET, false) => "list",
        (Method::POST, false) => "create",
        (Method::PUT, true) => "update",
        (Method::PATCH, true) => "patch",
        (Method::DELETE, true) => "delete",
        (Method::DELETE, false) => "deletecollection",
        (m, _) => {
            return Err(ApiError::method_not_allowed(format!(
                "{m} is not supported on this path"
            )));
        }
    };
    // Like kube-apiserver, a list or watch pinned to one name by `fieldSelector=metadata.name=X`
    // is authorized as a request for X, so RBAC rules with resourceNames cover it.
    let selected_name = match (verb, &name) {
        ("list" | "watch", None) => q.get("fieldSelector").and_then(|f| single_name_selector(f)),
        _ => None,
    };
    authorize(
        &sh,
        &user,
        verb,
        &ri.group,
        &ri.resource,
        sub.as_deref(),
        ns.as_deref(),
        name.as_deref().or(selected_name.as_deref()),
    )?;

    let mut lopts = ListOpts::default();
    if let Some(s) = q.get("labelSelector").filter(|s| !s.is_empty()) {
        lopts.labels = Some(LabelSelector::parse(s)?);
    }
    if let Some(s) = q.get("fieldSelector").filter(|s| !s.is_empty()) {
        lopts.fields = Some(FieldSelector::parse(s)?);
    }
    lopts.limit = q.get("limit").and_then(|l| l.parse().ok());
    lopts.cont = q.get("continue").filter(|s| !s.is_empty()).cloned();
    let include = match q.get("includeObject").map(String::as_str) {
        Some("None") => IncludeObject::None,
        Some("Object") => IncludeObject::Object,
        _ => IncludeObject::Metadata,
    };
    let want_table = table::wants_table(&accept);

    if verb == "watch" {
        if let Some(n) = &name {
            let existing = q.get("fieldSelector").filter(|s| !s.is_empty());
            let combined = match existing {
                Some(f) => format!("{f},metadata.name={n}"),
                None => format!("metadata.name={n}"),
            };
            lopts.fields = Some(FieldSelector::parse(&combined)?);
        }
        let opts = WatchOpts {
            resource_version: q.get("resourceVersion").cloned(),
            bookmarks: flag("allowWatchBookmarks"),
            timeout: q
                .get("timeoutSeconds")
                .and_then(|t| t.parse().ok())
                .map(Duration::from_secs),
            send_initial_events: flag("sendInitialEvents"),
            list: lopts,
            table: want_table.then_some(include),
        };
        return Ok(watch::watch(sh.clone(), ri, ns, opts));
    }

    let headers = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), 64 << 20)
        .await
        .map_err(|e| ApiError::bad_request(format!("reading body: {e}")))?;
    let ua = header_str(&headers, header::USER_AGENT);
    let mut ctx = Ctx {
        user,
        manager: q.get("fieldManager").cloned().unwrap_or_else(|| {
            match ua.split('/').next().unwrap_or_default() {
                "" => "unknown".to_string(),
                prefix => prefix.to_string(),
            }
        }),
        dry_run: q.get("dryRun").is_some_and(|d| d == "All"),
        validation: match q.get("fieldValidation").map(String::as_str) {
            Some("Strict") => FieldValidation::Strict,
            Some("Warn") => FieldValidation::Warn,
            _ => FieldValidation::Ignore,
        },
        internal: false,
        warnings: Vec::new(),
    };
    let ct = header_str(&headers, header::CONTENT_TYPE).to_string();
    let t = Target {
        ri: ri.clone(),
        ns: ns.clone().unwrap_or_default(),
        name: name.clone().unwrap_or_default(),
        sub,
    };
    let (code, out) = {
        match verb {
            "get" => (
                StatusCode::OK,
                ops::get(&sh.store.lock().expect("store lock"), &t)?,
            ),
            "list" => (
                StatusCode::OK,
                ops::list(
                    &sh.store.lock().expect("store lock"),
                    &ri,
                    ns.as_deref(),
                    &lopts,
                )?,
            ),
            "create" => {
                let obj = decode(&ct, &body, false)?;
                let o = ops::create(
                    &mut sh.store.lock().expect("store lock"),
                    &mut ctx,
                    &t,
                    obj,
                    false,
                )?;
                (StatusCode::CREATED, o)
            }
            "update" => {
                let obj = decode(&ct, &body, false)?;
                (
                    StatusCode::OK,
                    ops::update(
                        &mut sh.store.lock().expect("store lock"),
                        &mut ctx,
                        &t,
                        obj,
                        false,
                    )?,
                )
            }
            "patch" => {
                let kind = PatchType::from_content_type(&ct)?;
                if kind != PatchType::Apply && flag("force") {
                    return Err(ApiError::bad_request(
                        "force may only be set for apply patches",
                    ));
                }
                let p = decode(&ct, &body, kind == PatchType::Apply)?;
                let popts = PatchOpts {
                    kind,
                    force: flag("force"),
                };
                let (created, o) = ops::patch(
                    &mut sh.store.lock().expect("store lock"),
                    &mut ctx,
                    &t,
                    popts,
                    p,
                )?;
                (
                    if created {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    },
                    o,
                )
            }
            "delete" | "deletecollection" => {
                let mut d = DeleteOpts {
                    propagation: q.get("propagationPolicy").cloned(),
                    ..Default::default()
                };
                if !body.is_empty() {
                    let v: Value = serde_json::from_slice(&body).map_err(|e| {
                        ApiError::bad_request(format!("decoding DeleteOptions: {e}"))
                    })?;
                    if let Some(p) = v.get("propagationPolicy").and_then(Value::as_str) {
                        d.propagation = Some(p.to_string());
                    }
                    if v.get("orphanDependents").and_then(Value::as_bool) == Some(true) {
                        d.propagation = Some("Orphan".into());
                    }
                    d.uid = v
                        .pointer("/preconditions/uid")
                        .and_then(Value::as_str)
                        .map(String::from);
                    d.resource_version = v
                        .pointer("/preconditions/resourceVersion")
                        .and_then(Value::as_str)
                        .map(String::from);
                    if v.get("dryRun")
                        .and_then(Value::as_array)
                        .is_some_and(|a| !a.is_empty())
                    {
                        ctx.dry_run = true;
                    }
                }
                let mut st = sh.store.lock().expect("store lock");
                let o = if verb == "delete" {
                    ops::delete(&mut st, &mut ctx, &t, &d)?
                } else {
                    ops::delete_collection(&mut st, &mut ctx, &ri, ns.as_deref(), &lopts, &d)?
                };
                (StatusCode::OK, o)
            }
            _ => unreachable!("verbs matched above"),
        }
    };
    let out = if want_table && (verb == "get" || verb == "list") {
        let items: Vec<Value> = match out.get("items").and_then(Value::as_array) {
            Some(items) if verb == "list" => items.clone(),
            _ => vec![out.clone()],
        };
        let rv = out
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let cont = out.pointer("/metadata/continue").and_then(Value::as_str);
        table::table(&ri, &items, rv, cont, include)
    } else {
        out
    };
    Ok(json_response(code, &out, "application/json", &ctx.warnings))
}

fn decode(ct: &str, body: &[u8], yaml_ok: bool) -> Result<Value, ApiError> {
    if ct.contains("protobuf") {
        return Err(ApiError::unsupported_media_type(
            "protobuf request bodies are not supported; send JSON",
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => Ok(v),
        Err(_) if yaml_ok => serde_yaml::from_slice::<Value>(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}"))),
        Err(e) => Err(ApiError::bad_request(format!(
            "error decoding JSON body: {e}"
        ))),
    }
}

/// `metadata.name=X` (or `==`) as the whole selector gives X.
fn single_name_selector(selector: &str) -> Option<String> {
    let rest = selector
        .strip_prefix("metadata.name==")
        .or_else(|| selector.strip_prefix("metadata.name="))?;
    (!rest.is_empty() && !rest.contains(',')).then(|| rest.to_string())
}

#[allow(clippy::too_many_arguments)]
fn authorize(
    sh: &Shared,
    user: &UserInfo,
    verb: &str,
    group: &str,
    resource: &str,
    sub: Option<&str>,
    ns: Option<&str>,
    name: Option<&str>,
) -> Result<(), ApiError> {
    if !sh.rbac || user.groups.iter().any(|g| g == "system:masters") {
        return Ok(());
    }
    let attrs = RequestAttributes {
        verb: verb.into(),
        api_group: group.into(),
        resource: resource.into(),
        subresource: sub.map(String::from),
        namespace: ns.map(String::from),
        name: name.map(String::from),
    };
    let st = sh.store.lock().expect("store lock");
    st.authorizer.authorize(user, &attrs).map_err(|reason| {
        let res = match sub {
            Some(s) => format!("{resource}/{s}"),
            None => resource.to_string(),
        };
        let gres = if group.is_empty() { res.clone() } else { format!("{res}.{group}") };
        let what = match name {
            Some(n) => format!("{gres} \"{n}\""),
            None => gres,
        };
        let scope = match ns {
            Some(n) => format!(" in the namespace \"{n}\""),
            None => " at the cluster scope".into(),
        };
        ApiError::forbidden(format!(
            "{what} is forbidden: User \"{}\" cannot {verb} resource \"{res}\" in API group \"{group}\"{scope}: {reason}",
            user.name
        ))
    })
}
