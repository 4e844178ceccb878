use super::*;
use serde_json::json;

fn pod(v: serde_json::Value) -> Pod {
    serde_json::from_value(v).unwrap()
}

#[test]
fn deletion_grace_table() {
    let s = Duration::from_secs;
    let cases = [
        (json!({"metadata": {}}), None),
        (
            json!({"metadata": {"deletionTimestamp": "2025-01-01T00:00:00Z", "deletionGracePeriodSeconds": 3}}),
            Some(s(3)),
        ),
        (
            json!({"metadata": {"deletionTimestamp": "2025-01-01T00:00:00Z", "deletionGracePeriodSeconds": 0}}),
            Some(s(0)),
        ),
        (
            json!({"metadata": {"deletionTimestamp": "2025-01-01T00:00:00Z", "deletionGracePeriodSeconds": 30}}),
            Some(MAX_GRACE),
        ),
        (
            json!({"metadata": {"deletionTimestamp": "2025-01-01T00:00:00Z"},
                "spec": {"containers": [], "terminationGracePeriodSeconds": 2}}),
            Some(s(2)),
        ),
        (
            json!({"metadata": {"deletionTimestamp": "2025-01-01T00:00:00Z"}}),
            Some(MAX_GRACE),
        ),
    ];
    for (p, want) in cases {
        assert_eq!(deletion_grace(&pod(p.clone())), want, "{p}");
    }
}

#[test]
fn initial_observation() {
    let p = pod(
        json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u"},
        "spec": {"hostNetwork": true, "containers": [{"name": "a", "image": "img:1"}, {"name": "b"}]}}),
    );
    let o = initial_obs(&p, "10.0.0.11");
    assert_eq!(o.pod_ip.as_deref(), Some("10.0.0.11"));
    assert_eq!(o.sandbox, None);
    let names: Vec<(&str, &str)> = o
        .containers
        .iter()
        .map(|c| (c.name.as_str(), c.image.as_str()))
        .collect();
    assert_eq!(names, [("a", "img:1"), ("b", "")]);
    assert!(
        o.containers
            .iter()
            .all(|c| c.state == State::waiting("ContainerCreating", None))
    );
    let q = pod(json!({"metadata": {}, "spec": {"containers": []}}));
    assert_eq!(initial_obs(&q, "10.0.0.11").pod_ip, None);
    assert_eq!(key(&p), "ns/p");
}
