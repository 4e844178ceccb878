//! The verbs: get, list, create, update, patch (incl. server-side apply), delete — the request
//! pipeline after authentication and authorization: decode checks, defaulting, schema
//! admission, managedFields, admission policies, storage.

use std::sync::Arc;

use base64::Engine;
use serde_json::{Value, json};

use super::admission::AdmissionRequest;
use super::error::ApiError;
use super::fieldset::Scope;
use super::mutate::{self, FieldValidation};
use super::patch::{self, PatchType};
use super::rbac::UserInfo;
use super::resources::ResourceInfo;
use super::selectors::{FieldSelector, LabelSelector};
use super::ssa;
use super::store::Store;
use super::util::{self, meta_mut};

/// Per-request context.
#[derive(Debug, Clone, Default)]
pub struct Ctx {
    pub user: UserInfo,
    pub manager: String,
    pub dry_run: bool,
    pub validation: FieldValidation,
    /// Server-internal writes (controllers) skip admission policies.
    pub internal: bool,
    pub warnings: Vec<String>,
}

impl Ctx {
    pub fn internal(manager: &str) -> Self {
        Ctx {
            user: UserInfo {
                name: "system:apiserver".into(),
                groups: vec!["system:masters".into()],
                ..Default::default()
            },
            manager: manager.into(),
            internal: true,
            ..Default::default()
        }
    }
}

/// The object a request addresses.
#[derive(Debug, Clone)]
pub struct Target {
    pub ri: Arc<ResourceInfo>,
    /// Empty for cluster-scoped resources.
    pub ns: String,
    pub name: String,
    pub sub: Option<String>,
}

impl Target {
    pub fn scope(&self) -> Scope {
        match (self.ri.has_status, self.sub.as_deref()) {
            (true, Some("status")) => Scope::OnlyStatus,
            (true, _) => Scope::ExceptStatus,
            _ => Scope::All,
        }
    }
}

/// The object as served at the resource's version.
pub fn present(ri: &ResourceInfo, mut obj: Value) -> Value {
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), json!(ri.api_version()));
        m.insert("kind".into(), json!(ri.kind));
    }
    obj
}

pub fn get(st: &Store, t: &Target) -> Result<Value, ApiError> {
    st.get(&t.ri.storage_key(), &t.ns, &t.name)
        .cloned()
        .map(|o| present(&t.ri, o))
        .ok_or_else(|| ApiError::not_found(&t.ri.resource, &t.ri.group, &t.name))
}

/// List options.
#[derive(Debug, Clone, Default)]
pub struct ListOpts {
    pub labels: Option<LabelSelector>,
    pub fields: Option<FieldSelector>,
    pub limit: Option<usize>,
    pub cont: Option<String>,
}

impl ListOpts {
    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.as_ref().is_none_or(|s| s.matches(obj))
            && self.fields.as_ref().is_none_or(|s| s.matches(obj))
    }
}

pub fn list(
    st: &Store,
    ri: &ResourceInfo,
    ns: Option<&str>,
    opts: &ListOpts,
) -> Result<Value, ApiError> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (rv, after) = match &opts.cont {
        Some(c) => {
            let raw = b64
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_default();
            let mut it = raw.splitn(3, '\n');
            match (
                it.next().and_then(|r| r.parse::<u64>().ok()),
                it.next(),
                it.next(),
            ) {
                (Some(rv), Some(n), Some(m)) => (rv, Some((n.to_string(), m.to_string()))),
                _ => return Err(ApiError::bad_request("invalid continue token")),
            }
        }
        None => (st.rv, None),
    };
    let mut items = Vec::new();
    let mut next = None;
    for o in st.list(&ri.storage_key(), ns) {
        let key = (
            util::meta_namespace(o).to_string(),
            util::meta_name(o).to_string(),
        );
        if after.as_ref().is_some_and(|a| key <= *a) || !opts.matches(o) {
            continue;
        }
        if opts.limit.is_some_and(|l| l > 0 && items.len() >= l) {
            // The token resumes after the last returned item.
            if let Some(last) = items.last() {
                let l: &Value = last;
                next = Some(b64.encode(format!(
                    "{rv}\n{}\n{}",
                    util::meta_namespace(l),
                    util::meta_name(l)
                )));
            }
            break;
        }
        items.push(present(ri, o.clone()));
    }
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(n) = next {
        meta["continue"] = json!(n);
    }
    Ok(
        json!({"apiVersion": ri.api_version(), "kind": ri.list_kind(), "metadata": meta, "items": items}),
    )
}

fn check_kind(ri: &ResourceInfo, obj: &Value) -> Result<(), ApiError> {
    let kind = util::str_at(obj, "/kind");
    if !kind.is_empty() && kind != ri.kind {
        return Err(ApiError::bad_request(format!(
            "the kind \"{kind}\" does not match the resource \"{}\"",
            ri.resource
        )));
    }
    let av = util::str_at(obj, "/apiVersion");
    let group = av.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
    if !av.is_empty() && group != ri.group {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            ri.api_version()
        )));
    }
    if !obj.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn admission(
    st: &Store,
    ctx: &Ctx,
    t: &Target,
    op: &str,
    name: &str,
    obj: Option<&Value>,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    if ctx.internal {
        return Ok(());
    }
    let req = AdmissionRequest {
        user: &ctx.user,
        operation: op,
        group: &t.ri.group,
        version: &t.ri.version,
        resource: &t.ri.resource,
        subresource: t.sub.as_deref(),
        namespace: if t.ns.is_empty() { None } else { Some(&t.ns) },
        name,
        object: obj,
        old_object: old,
    };
    st.policies
        .validate(&req)
        .map_err(|m| admission_error(t, name, &m))
}

/// A policy denial as kube-apiserver words it; the validation's `reason` (given by the
/// policy engine as a trailing `(reason: X)`) picks the code, default Invalid (422).
fn admission_error(t: &Target, name: &str, msg: &str) -> ApiError {
    let (msg, reason) = match msg.rsplit_once(" (reason: ") {
        Some((m, r)) if r.ends_with(')') => (m, r.trim_end_matches(')')),
        _ => (msg, "Invalid"),
    };
    let ri = &t.ri;
    let gr = if ri.group.is_empty() {
        ri.resource.clone()
    } else {
        format!("{}.{}", ri.resource, ri.group)
    };
    let gk = if ri.group.is_empty() {
        ri.kind.clone()
    } else {
        format!("{}.{}", ri.kind, ri.group)
    };
    let mut e = match reason {
        "Forbidden" => ApiError::forbidden(format!("{gr} \"{name}\" is forbidden: {msg}")),
        "Unauthorized" => ApiError::new(
            401,
            "Unauthorized",
            format!("{gr} \"{name}\" is unauthorized: {msg}"),
        ),
        "RequestEntityTooLarge" => ApiError::new(413, "RequestEntityTooLarge", msg.to_string()),
        _ => ApiError::new(422, "Invalid", format!("{gk} \"{name}\" is invalid: {msg}")),
    };
    e.details = Some(Box::new((
        ri.group.clone(),
        ri.resource.clone(),
        name.to_string(),
    )));
    e
}

fn check_namespace(st: &Store, t: &Target) -> Result<(), ApiError> {
    if !t.ri.namespaced {
        return Ok(());
    }
    match st.get("/namespaces", "", &t.ns) {
        None => Err(ApiError::not_found("namespaces", "", &t.ns)),
        Some(ns) if ns.pointer("/metadata/deletionTimestamp").is_some() => {
            Err(ApiError::forbidden(format!(
                "{} \"{}\" is forbidden: unable to create new content in namespace {} because it is being terminated",
                t.ri.resource, t.name, t.ns
            )))
        }
        Some(_) => Ok(()),
    }
}

/// Create. `managed_done`: managedFields were already computed (server-side apply).
pub fn create(
    st: &mut Store,
    ctx: &mut Ctx,
    t: &Target,
    mut obj: Value,
    managed_done: bool,
) -> Result<Value, ApiError> {
    check_kind(&t.ri, &obj)?;
    let ri = t.ri.clone();
    obj["apiVersion"] = json!(ri.api_version());
    obj["kind"] = json!(ri.kind);
    let m = meta_mut(&mut obj);
    let body_ns = m
        .get("namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if ri.namespaced {
        if !body_ns.is_empty() && body_ns != t.ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        m.insert("namespace".into(), json!(t.ns));
    } else {
        m.remove("namespace");
    }
    let mut name = m
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if name.is_empty()
        && let Some(g) = m.get("generateName").and_then(Value::as_str)
    {
        name = format!("{g}{}", util::random_suffix(5));
        m.insert("name".into(), json!(name));
    }
    for k in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
    ] {
        m.remove(k);
    }
    if !managed_done {
        m.remove("managedFields");
    }
    mutate::validate_name(&ri, &name)?;
    let t = Target {
        name: name.clone(),
        ..t.clone()
    };
    check_namespace(st, &t)?;
    if st.get(&ri.storage_key(), &t.ns, &name).is_some() {
        return Err(ApiError::already_exists(&ri.resource, &ri.group, &name));
    }
    if ri.custom
        && ri.has_status
        && let Some(o) = obj.as_object_mut()
    {
        o.remove("status");
    }
    mutate::builtin(st, &ri, &mut obj, None)?;
    let w = mutate::schema_admit(&ri, &mut obj, None, ctx.validation)?;
    ctx.warnings.extend(w);
    if !managed_done {
        ssa::record_update(&ri, None, &mut obj, &ctx.manager, Scope::All);
    }
    admission(st, ctx, &t, "CREATE", &name, Some(&obj), None)?;
    if ctx.dry_run {
        return Ok(present(&ri, obj));
    }
    Ok(present(&ri, st.insert_new(&ri, obj)))
}

/// Update (PUT) and the common tail of patch and apply.
pub fn update(
    st: &mut Store,
    ctx: &mut Ctx,
    t: &Target,
    obj: Value,
    managed_done: bool,
) -> Result<Value, ApiError> {
    check_kind(&t.ri, &obj)?;
    let ri = t.ri.clone();
    let name = util::meta_name(&obj);
    if !name.is_empty() && name != t.name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({name}) does not match the name on the URL ({})",
            t.name
        )));
    }
    let old = st
        .get(&ri.storage_key(), &t.ns, &t.name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(&ri.resource, &ri.group, &t.name))?;
    let rv = util::str_at(&obj, "/metadata/resourceVersion");
    if !rv.is_empty() && rv != util::str_at(&old, "/metadata/resourceVersion") {
        return Err(ApiError::conflict(&ri.resource, &ri.group, &t.name));
    }
    let scope = t.scope();
    let mut new = match scope {
        Scope::OnlyStatus => {
            let mut n = old.clone();
            match obj.get("status") {
                Some(s) => n["status"] = s.clone(),
                None => {
                    n.as_object_mut().map(|m| m.remove("status"));
                }
            }
            if managed_done {
                n["metadata"]["managedFields"] = obj
                    .pointer("/metadata/managedFields")
                    .cloned()
                    .unwrap_or(Value::Null);
            }
            n
        }
        _ => {
            let mut n = obj;
            if scope == Scope::ExceptStatus {
                match old.get("status") {
                    Some(s) => n["status"] = s.clone(),
                    None => {
                        n.as_object_mut().map(|m| m.remove("status"));
                    }
                }
            }
            n
        }
    };
    new["apiVersion"] = json!(ri.api_version());
    new["kind"] = json!(ri.kind);
    {
        let om = old["metadata"].as_object().cloned().unwrap_or_default();
        let m = meta_mut(&mut new);
        for k in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match om.get(k) {
                Some(v) => m.insert(k.into(), v.clone()),
                None => m.remove(k),
            };
        }
        m.insert(
            "resourceVersion".into(),
            om.get("resourceVersion").cloned().unwrap_or(Value::Null),
        );
        if !managed_done {
            match om.get("managedFields") {
                Some(v) => m.insert("managedFields".into(), v.clone()),
                None => m.remove("managedFields"),
            };
        }
        if m.get("managedFields").is_some_and(Value::is_null) {
            m.remove("managedFields");
        }
        if m.contains_key("deletionTimestamp") {
            // Finalizers may be removed but not added while deleting.
            let old_f: Vec<Value> = om
                .get("finalizers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if let Some(f) = m.get("finalizers").and_then(Value::as_array)
                && f.iter().any(|x| !old_f.contains(x))
            {
                return Err(ApiError::forbidden(format!(
                    "{} \"{}\" is forbidden: no new finalizers can be added if the object is being deleted",
                    ri.resource, t.name
                )));
            }
        }
    }
    mutate::builtin(st, &ri, &mut new, Some(&old))?;
    let w = mutate::schema_admit(&ri, &mut new, Some(&old), ctx.validation)?;
    ctx.warnings.extend(w);
    if !managed_done {
        ssa::record_update(&ri, Some(&old), &mut new, &ctx.manager, scope);
    }
    admission(st, ctx, t, "UPDATE", &t.name, Some(&new), Some(&old))?;
    if ctx.dry_run {
        return Ok(present(&ri, new));
    }
    Ok(present(&ri, st.replace(&ri, &old, new)))
}

/// Patch options.
#[derive(Debug, Clone, Copy)]
pub struct PatchOpts {
    pub kind: PatchType,
    pub force: bool,
}

/// Patch; returns (created, object). Only server-side apply can create.
pub fn patch(
    st: &mut Store,
    ctx: &mut Ctx,
    t: &Target,
    p: PatchOpts,
    body: Value,
) -> Result<(bool, Value), ApiError> {
    let ri = t.ri.clone();
    let old = st.get(&ri.storage_key(), &t.ns, &t.name).cloned();
    if p.kind == PatchType::Apply {
        if ctx.manager.is_empty() {
            return Err(ApiError::new(
                422,
                "Invalid",
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            ));
        }
        check_kind(&ri, &body)?;
        if util::str_at(&body, "/kind").is_empty() || util::str_at(&body, "/apiVersion").is_empty()
        {
            return Err(ApiError::bad_request(
                "apply patches must set apiVersion and kind",
            ));
        }
        let name = util::meta_name(&body);
        if !name.is_empty() && name != t.name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({name}) does not match the name on the URL ({})",
                t.name
            )));
        }
        let rv = util::str_at(&body, "/metadata/resourceVersion");
        if !rv.is_empty()
            && old
                .as_ref()
                .is_none_or(|o| util::str_at(o, "/metadata/resourceVersion") != rv)
        {
            return Err(ApiError::conflict(&ri.resource, &ri.group, &t.name));
        }
        let mut body = body;
        meta_mut(&mut body).insert("name".into(), json!(t.name));
        if ri.namespaced && util::meta_namespace(&body).is_empty() {
            meta_mut(&mut body).insert("namespace".into(), json!(t.ns));
        }
        let new = ssa::apply(&ri, old.as_ref(), &body, &ctx.manager, p.force, t.scope())?;
        return match old {
            None if t.sub.is_some() => Err(ApiError::not_found(&ri.resource, &ri.group, &t.name)),
            None => create(st, ctx, t, new, true).map(|o| (true, o)),
            Some(_) => update(st, ctx, t, new, true).map(|o| (false, o)),
        };
    }
    let mut doc = present(
        &ri,
        old.ok_or_else(|| ApiError::not_found(&ri.resource, &ri.group, &t.name))?,
    );
    match p.kind {
        PatchType::Json => patch::json_patch(&mut doc, &body)?,
        PatchType::Merge => patch::merge_patch(&mut doc, &body),
        PatchType::Strategic if ri.custom => {
            return Err(ApiError::unsupported_media_type(
                "the body of the request was in an unknown format - accepted media types include: \
                 application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            ));
        }
        PatchType::Strategic => patch::strategic_merge(&mut doc, &body, &ri.structure)?,
        PatchType::Apply => unreachable!("handled above"),
    }
    update(st, ctx, t, doc, false).map(|o| (false, o))
}

/// Delete options (from the body or query).
#[derive(Debug, Clone, Default)]
pub struct DeleteOpts {
    pub propagation: Option<String>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

pub fn delete(
    st: &mut Store,
    ctx: &mut Ctx,
    t: &Target,
    opts: &DeleteOpts,
) -> Result<Value, ApiError> {
    let ri = t.ri.clone();
    let old = st
        .get(&ri.storage_key(), &t.ns, &t.name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(&ri.resource, &ri.group, &t.name))?;
    let uid = util::str_at(&old, "/metadata/uid").to_string();
    if opts.uid.as_ref().is_some_and(|u| *u != uid)
        || opts
            .resource_version
            .as_ref()
            .is_some_and(|r| r != util::str_at(&old, "/metadata/resourceVersion"))
    {
        let mut e = ApiError::conflict(&ri.resource, &ri.group, &t.name);
        e.message = format!(
            "Operation cannot be fulfilled on {} \"{}\": Precondition failed: UID or resourceVersion mismatch",
            ri.resource, t.name
        );
        return Err(e);
    }
    admission(st, ctx, t, "DELETE", &t.name, None, Some(&old))?;
    if ctx.dry_run {
        return Ok(present(&ri, old));
    }
    if opts.propagation.as_deref() == Some("Orphan") {
        orphan_dependents(st, &uid);
    }
    let has_finalizers = old
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    if has_finalizers || ri.kind == "Namespace" {
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            return Ok(present(&ri, old));
        }
        let mut new = old.clone();
        let m = meta_mut(&mut new);
        m.insert("deletionTimestamp".into(), json!(util::now_rfc3339()));
        m.insert("deletionGracePeriodSeconds".into(), json!(0));
        if ri.kind == "Namespace" {
            new["status"]["phase"] = json!("Terminating");
        }
        return Ok(present(&ri, st.replace(&ri, &old, new)));
    }
    st.remove(&ri, &t.ns, &t.name)
        .map(|o| present(&ri, o))
        .ok_or_else(|| ApiError::not_found(&ri.resource, &ri.group, &t.name))
}

/// Removes owner references to `uid` from every object.
fn orphan_dependents(st: &mut Store, uid: &str) {
    let mut todo = Vec::new();
    for objs in st.objects.values() {
        for o in objs.values() {
            let refs = o
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array);
            if refs.is_some_and(|r| r.iter().any(|x| util::str_at(x, "/uid") == uid)) {
                todo.push(o.clone());
            }
        }
    }
    for old in todo {
        let Some(ri) = st.registry.by_kind(
            util::str_at(&old, "/apiVersion"),
            util::str_at(&old, "/kind"),
        ) else {
            continue;
        };
        let mut new = old.clone();
        if let Some(r) = new
            .pointer_mut("/metadata/ownerReferences")
            .and_then(Value::as_array_mut)
        {
            r.retain(|x| util::str_at(x, "/uid") != uid);
        }
        st.replace(&ri, &old, new);
    }
}

pub fn delete_collection(
    st: &mut Store,
    ctx: &mut Ctx,
    ri: &Arc<ResourceInfo>,
    ns: Option<&str>,
    lopts: &ListOpts,
    dopts: &DeleteOpts,
) -> Result<Value, ApiError> {
    let names: Vec<(String, String)> = st
        .list(&ri.storage_key(), ns)
        .into_iter()
        .filter(|o| lopts.matches(o))
        .map(|o| {
            (
                util::meta_namespace(o).to_string(),
                util::meta_name(o).to_string(),
            )
        })
        .collect();
    let mut items = Vec::new();
    for (n, name) in names {
        let t = Target {
            ri: ri.clone(),
            ns: n,
            name,
            sub: None,
        };
        items.push(delete(st, ctx, &t, dopts)?);
    }
    Ok(
        json!({"apiVersion": ri.api_version(), "kind": ri.list_kind(), "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
    )
}
