//! Service account tokens for projected volumes, from the TokenRequest API, bound to the pod
//! (that binding is what makes the API server record the node in the token).

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};

use super::error::{KubeletError, Result};

/// The expiration a `serviceAccountToken` projection gets when it names none (the API default
/// of the injected `kube-api-access-*` volume).
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3607;
/// Part of a token's lifetime after which it is renewed.
const REFRESH_FRACTION: f64 = 0.8;
/// Never renew more often than this.
const MIN_REFRESH: Duration = Duration::from_secs(1);

/// The TokenRequest for one projection of `pod`.
pub fn token_request(pod: &Pod, audience: Option<&str>, expiration: Option<i64>) -> TokenRequest {
    TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.map(|a| vec![a.to_owned()]).unwrap_or_default(),
            expiration_seconds: Some(expiration.unwrap_or(DEFAULT_EXPIRATION_SECONDS)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..TokenRequest::default()
    }
}

/// How long after issuing a token is renewed: 80 % of its lifetime. The lifetime is what was
/// asked for, or less if the API server shortened it (it may also extend it, which is ignored,
/// as a kubelet does).
pub fn refresh_after(requested_secs: i64, issued: Timestamp, expires: Timestamp) -> Duration {
    let granted = expires.as_second().saturating_sub(issued.as_second());
    let lifetime = requested_secs.min(granted).max(0);
    let secs = u64::try_from(lifetime).unwrap_or(0);
    Duration::from_secs(secs)
        .mul_f64(REFRESH_FRACTION)
        .max(MIN_REFRESH)
}

/// A token and when it expires.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    pub token: String,
    pub expires: Timestamp,
}

/// Asks the API server for a token of `pod`'s service account.
pub async fn request(client: &Client, pod: &Pod, req: &TokenRequest) -> Result<IssuedToken> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let resp: TokenRequest = api
        .create_subresource("token", sa, &PostParams::default(), req)
        .await
        .map_err(|e| KubeletError::api(format!("TokenRequest for serviceaccount {ns}/{sa}"), e))?;
    let status = resp.status.ok_or_else(|| KubeletError::Volume {
        volume: "serviceAccountToken".into(),
        reason: "TokenRequest answer has no status".into(),
    })?;
    Ok(IssuedToken {
        token: status.token,
        expires: status.expiration_timestamp.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn refresh_at_eighty_percent_of_the_lifetime() {
        let t0 = 1_700_000_000;
        let cases = [
            (3607, t0 + 3607, 2885.6),
            (3600, t0 + 3600, 2880.0),
            // Extended by the API server to a year: still renewed as if it lived an hour.
            (3607, t0 + 365 * 86_400, 2885.6),
            // Shortened by the API server (max expiration): the real lifetime counts.
            (86_400, t0 + 600, 480.0),
            // Already expired, or nonsense: renew soon, never in a busy loop.
            (3600, t0 - 5, 1.0),
            (0, t0, 1.0),
        ];
        for (requested, expires, want) in cases {
            let got = refresh_after(requested, ts(t0), ts(expires)).as_secs_f64();
            assert!(
                (got - want).abs() < 0.01,
                "{requested} {expires}: {got} != {want}"
            );
        }
    }

    #[test]
    fn request_is_bound_to_the_pod() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u-1"},
            "spec": {"containers": []}
        }))
        .unwrap();
        let r = token_request(&pod, Some("vault"), Some(600));
        assert_eq!(r.spec.audiences, ["vault"]);
        assert_eq!(r.spec.expiration_seconds, Some(600));
        let b = r.spec.bound_object_ref.unwrap();
        assert_eq!(
            (
                b.kind.as_deref(),
                b.api_version.as_deref(),
                b.name.as_deref(),
                b.uid.as_deref()
            ),
            (Some("Pod"), Some("v1"), Some("p"), Some("u-1"))
        );
        let d = token_request(&pod, None, None);
        assert!(d.spec.audiences.is_empty());
        assert_eq!(d.spec.expiration_seconds, Some(DEFAULT_EXPIRATION_SECONDS));
    }
}
