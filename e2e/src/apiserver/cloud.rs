//! The "cloud": LoadBalancer Services get `status.loadBalancer.ingress` from an address pool.
//! (NodePorts and cluster IPs are allocated synchronously on write, see `mutate`.)

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::ops::{self, Ctx, Target};
use super::server::Shared;
use super::store::Store;
use super::util;

pub async fn run(shared: Arc<Shared>, pool: Vec<IpAddr>) {
    let mut rx = shared.store.lock().expect("store lock").tx.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut dirty = true;
    loop {
        tokio::select! {
            r = rx.recv() => match r {
                Ok(ev) => dirty |= ev.key == "/services",
                Err(RecvError::Lagged(_)) => dirty = true,
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => {
                if dirty {
                    dirty = false;
                    let mut st = shared.store.lock().expect("store lock");
                    pass(&mut st, &pool);
                }
            }
        }
    }
}

fn ingress_ip(svc: &Value) -> Option<&str> {
    svc.pointer("/status/loadBalancer/ingress/0/ip")
        .and_then(Value::as_str)
}

pub fn pass(st: &mut Store, pool: &[IpAddr]) {
    let services: Vec<Value> = st.list("/services", None).into_iter().cloned().collect();
    let mut used: Vec<String> = services
        .iter()
        .filter_map(ingress_ip)
        .map(String::from)
        .collect();
    let Some(ri) = st.registry.get("", "v1", "services") else {
        return;
    };
    let mut ctx = Ctx::internal("cloud-controller-manager");
    for svc in services {
        let is_lb = util::str_at(&svc, "/spec/type") == "LoadBalancer"
            && svc.pointer("/metadata/deletionTimestamp").is_none();
        let has = ingress_ip(&svc).is_some();
        let status = if is_lb && !has {
            let requested = util::str_at(&svc, "/spec/loadBalancerIP");
            let ip = if !requested.is_empty() {
                Some(requested.to_string())
            } else {
                pool.iter()
                    .map(|i| i.to_string())
                    .find(|i| !used.contains(i))
            };
            let Some(ip) = ip else { continue };
            used.push(ip.clone());
            json!({"loadBalancer": {"ingress": [{"ip": ip, "ipMode": "VIP"}]}})
        } else if !is_lb && has {
            json!({"loadBalancer": {}})
        } else {
            continue;
        };
        let mut new = svc.clone();
        new["status"] = status;
        let t = Target {
            ri: ri.clone(),
            ns: util::meta_namespace(&svc).to_string(),
            name: util::meta_name(&svc).to_string(),
            sub: Some("status".into()),
        };
        let _ = ops::update(st, &mut ctx, &t, new, false);
    }
}
