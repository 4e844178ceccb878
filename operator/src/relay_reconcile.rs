//! The relay half of a mesh reconcile (`controller.rs`): observe the managed relay's objects
//! (one GET each), decide (`decide::relay`), apply, and say what to publish.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::ResourceExt;
use tracing::{debug, info};
use wirekube_crds::WireKubeMesh;

use crate::controller::Context;
use crate::decide::{self, RelayChanges, RelayObserved, RelayOutcome};
use crate::error::{Error, Result};
use crate::managed_relay;
use crate::nodes::{ClusterNode, matches_selector};
use crate::placement::RelayPlacement;

/// The relay part: observe the relay objects, decide, apply, and say what to publish.
pub async fn reconcile_relay(mesh: &WireKubeMesh, ctx: &Context) -> Result<RelayOutcome> {
    let w = &ctx.writer;
    let name = managed_relay::relay_name(&mesh.name_any());
    // observe: one GET per relay object (the operator does not cache them), at once: one
    // after the other they were three round trips of every pass.
    let (secret, deployment, service) = tokio::try_join!(
        w.get::<Secret>(&name),
        w.get::<Deployment>(&name),
        w.get::<Service>(&name)
    )?;
    let observed = RelayObserved {
        secret,
        deployment,
        service,
    };
    let image = ctx.settings.relay_image_override.as_deref();
    match decide::relay(mesh, &observed, &w.namespace, image)? {
        RelayChanges::Remove { delete, outcome } => {
            if w.delete_relay_objects(mesh, &delete).await? {
                info!(reason = %outcome.cond.reason, "no managed relay: its objects deleted");
            }
            Ok(outcome)
        }
        RelayChanges::Blocked(outcome) => Ok(outcome),
        RelayChanges::Run {
            create_secret,
            deployment,
            service,
        } => {
            if create_secret {
                let token = managed_relay::generate_token();
                w.create_secret(&managed_relay::desired_secret(
                    mesh,
                    &w.namespace,
                    token.as_bytes(),
                )?)
                .await?;
                info!(secret = %name, "relay token generated");
            }
            let dep = w
                .apply_relay_object(observed.deployment, &deployment)
                .await?;
            let svc = w.apply_relay_object(observed.service, &service).await?;
            // Where the pods run is known only once they are scheduled: read it after applying.
            let hosts = relay_hosts(ctx, mesh, &svc).await?;
            let outcome = decide::relay_outcome(mesh, &dep, &svc, &hosts);
            if outcome.endpoints.is_empty() {
                debug!(reason = %outcome.cond.reason, "relay endpoints not available yet");
            }
            Ok(outcome)
        }
    }
}

/// How long a NodePort reconcile waits for the first list of relay pods.
const POD_CACHE_WAIT: Duration = Duration::from_secs(10);

/// Nodes running this mesh's relay pods, in publishing order (any node, not only the mesh's:
/// the relay may be pinned to a gateway that is not a member). Only a NodePort Service needs
/// them; its reconcile fails (keeping the published endpoints) rather than publish from a
/// pod cache that never synced, e.g. when the operator's Role cannot list pods. While no relay
/// pod is ready the published endpoints are held (`RelayPlacement::hosts`).
async fn relay_hosts(
    ctx: &Context,
    mesh: &WireKubeMesh,
    svc: &Service,
) -> Result<Vec<ClusterNode>> {
    let node_port = svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("NodePort");
    if !node_port {
        return Ok(Vec::new());
    }
    tokio::time::timeout(POD_CACHE_WAIT, ctx.relay_pods.wait_until_ready())
        .await
        .map_err(|_| Error::CacheNotSynced("relay pods"))?
        .map_err(|_| Error::CacheNotSynced("relay pods"))?;
    let labels = managed_relay::relay_labels(&mesh.name_any());
    let pods = ctx.relay_pods.state();
    let mine = pods
        .iter()
        .map(|p| p.as_ref())
        .filter(|p| matches_selector(p.labels(), &labels));
    let nodes = ctx.nodes.state();
    let published = mesh
        .status
        .as_ref()
        .map(|s| s.relay_endpoints.as_slice())
        .unwrap_or_default();
    Ok(RelayPlacement::from_pods(mine).hosts(nodes.iter().map(|n| n.as_ref()), published))
}
