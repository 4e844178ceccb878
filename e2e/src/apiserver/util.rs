//! Small helpers: time, names, JSON access.

use rand::Rng;
use serde_json::Value;

/// Now as an RFC 3339 timestamp with second precision (`metav1.Time`).
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A random v4 UUID string.
pub fn new_uid() -> String {
    let b: [u8; 16] = rand::rng().random();
    let h = |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    let v = (b[6] & 0x0f) | 0x40;
    let var = (b[8] & 0x3f) | 0x80;
    format!(
        "{}-{}-{:02x}{:02x}-{:02x}{:02x}-{}",
        h(0..4),
        h(4..6),
        v,
        b[7],
        var,
        b[9],
        h(10..16)
    )
}

/// A random lowercase alphanumeric suffix, as for `generateName`.
pub fn random_suffix(n: usize) -> String {
    const ALPHA: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut r = rand::rng();
    (0..n)
        .map(|_| ALPHA[r.random_range(0..ALPHA.len())] as char)
        .collect()
}

/// A random token.
pub fn random_token() -> String {
    let b: [u8; 20] = rand::rng().random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub fn meta_name(v: &Value) -> &str {
    str_at(v, "/metadata/name")
}

pub fn meta_namespace(v: &Value) -> &str {
    str_at(v, "/metadata/namespace")
}

/// `metadata`, created if absent.
pub fn meta_mut(v: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !v.get("metadata").is_some_and(Value::is_object) {
        v["metadata"] = Value::Object(Default::default());
    }
    v["metadata"]
        .as_object_mut()
        .expect("metadata is an object")
}

/// Human-readable age of a timestamp, as kubectl prints it.
pub fn human_age(ts: &str) -> String {
    let Ok(t) = ts.parse::<jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let secs = (jiff::Timestamp::now().as_second() - t.as_second()).max(0);
    human_duration(secs)
}

pub fn human_duration(secs: i64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        if secs % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", secs % 60)
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}
