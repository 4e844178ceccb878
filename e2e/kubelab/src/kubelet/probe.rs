//! Readiness and liveness probes: what to check (pure, from the spec), the threshold logic
//! (pure), and one probe run (effect: HTTP GET, TCP connect, or a command inside the
//! container's namespaces).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::error::{KubeletError, Result};

/// What one probe run checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Http {
        host: String,
        port: u16,
        path: String,
    },
    Tcp {
        host: String,
        port: u16,
    },
    Exec {
        argv: Vec<String>,
    },
}

/// A probe with its timing and thresholds (API defaults applied).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    pub action: Action,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

fn secs(v: Option<i32>, default: u64, min: u64) -> Duration {
    let s = v.and_then(|v| u64::try_from(v).ok()).unwrap_or(default);
    Duration::from_secs(s.max(min))
}

fn count(v: Option<i32>, default: u32) -> u32 {
    v.and_then(|v| u32::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(default)
}

/// A probe port: a number, or the name of one of the container's ports.
fn port(p: &IntOrString, container: &Container) -> Result<u16> {
    let n = match p {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => match name.parse::<i32>() {
            Ok(n) => n,
            Err(_) => container
                .ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(name))
                .map(|cp| cp.container_port)
                .ok_or_else(|| KubeletError::Probe(format!("no container port named {name:?}")))?,
        },
    };
    u16::try_from(n)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| KubeletError::Probe(format!("invalid port {n}")))
}

/// The probe of `container` as the kubelet runs it; `pod_ip` is the address it targets
/// (127.0.0.1 for hostNetwork pods).
pub fn resolve(probe: &Probe, container: &Container, pod_ip: &str) -> Result<ProbeSpec> {
    let action = if let Some(h) = &probe.http_get {
        if h.scheme
            .as_deref()
            .is_some_and(|s| !s.eq_ignore_ascii_case("http"))
        {
            return Err(KubeletError::Probe(
                "only HTTP (not HTTPS) httpGet probes are supported".into(),
            ));
        }
        let path = h
            .path
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "/".into());
        Action::Http {
            host: h.host.clone().unwrap_or_else(|| pod_ip.to_owned()),
            port: port(&h.port, container)?,
            path: if path.starts_with('/') {
                path
            } else {
                format!("/{path}")
            },
        }
    } else if let Some(t) = &probe.tcp_socket {
        Action::Tcp {
            host: t.host.clone().unwrap_or_else(|| pod_ip.to_owned()),
            port: port(&t.port, container)?,
        }
    } else if let Some(e) = &probe.exec {
        let argv = e.command.clone().unwrap_or_default();
        if argv.is_empty() {
            return Err(KubeletError::Probe("exec probe without a command".into()));
        }
        Action::Exec { argv }
    } else {
        return Err(KubeletError::Probe(
            "only httpGet, tcpSocket and exec probes are supported".into(),
        ));
    };
    Ok(ProbeSpec {
        action,
        initial_delay: secs(probe.initial_delay_seconds, 0, 0),
        period: secs(probe.period_seconds, 10, 1),
        timeout: secs(probe.timeout_seconds, 1, 1),
        success_threshold: count(probe.success_threshold, 1),
        failure_threshold: count(probe.failure_threshold, 3),
    })
}

/// Consecutive results → the probe's verdict. Starts failed (a readiness probe's container is
/// unready until it passes once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracker {
    pub passing: bool,
    successes: u32,
    failures: u32,
}

impl Tracker {
    /// A tracker with `passing` as the initial verdict.
    pub fn new(passing: bool) -> Self {
        Self {
            passing,
            successes: 0,
            failures: 0,
        }
    }

    /// Records one result; returns the verdict afterwards.
    pub fn record(&mut self, ok: bool, spec: &ProbeSpec) -> bool {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if self.successes >= spec.success_threshold {
                self.passing = true;
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.failures >= spec.failure_threshold {
                self.passing = false;
            }
        }
        self.passing
    }
}

/// The status code from an HTTP response's first line.
pub fn parse_status_line(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

/// Runs one probe; `pid` is the container's main process (for exec probes). A probe that
/// cannot even be attempted counts as failed.
pub async fn run_once(spec: &ProbeSpec, pid: u32) -> bool {
    let attempt = async {
        match &spec.action {
            Action::Http { host, port, path } => http_get(host, *port, path).await,
            Action::Tcp { host, port } => TcpStream::connect((host.as_str(), *port)).await.is_ok(),
            Action::Exec { argv } => exec_in(pid, argv).await,
        }
    };
    tokio::time::timeout(spec.timeout, attempt)
        .await
        .unwrap_or(false)
}

async fn http_get(host: &str, port: u16, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect((host, port)).await else {
        return false;
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.34\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    parse_status_line(&head).is_some_and(|c| (200..400).contains(&c))
}

/// Runs `argv` in the network and mount namespaces of `pid`; success is exit status 0.
#[allow(unsafe_code)]
async fn exec_in(pid: u32, argv: &[String]) -> bool {
    let (Ok(net), Ok(mnt)) = (
        File::open(format!("/proc/{pid}/ns/net")),
        File::open(format!("/proc/{pid}/ns/mnt")),
    ) else {
        return false;
    };
    let (net_fd, mnt_fd) = (net.as_raw_fd(), mnt.as_raw_fd());
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only raw syscalls on descriptors opened before fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(net_fd, libc::CLONE_NEWNET) != 0
                || libc::setns(mnt_fd, libc::CLONE_NEWNS) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let status = cmd.status().await;
    drop((net, mnt));
    status.is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn container() -> Container {
        serde_json::from_value(
            json!({"name": "c", "ports": [{"name": "metrics", "containerPort": 8080}]}),
        )
        .unwrap()
    }

    fn probe(v: serde_json::Value) -> Probe {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn resolves_probes() {
        let http = |host: &str, port, path: &str| Action::Http {
            host: host.into(),
            port,
            path: path.into(),
        };
        let cases = [
            (
                json!({"httpGet": {"port": "metrics", "path": "/readyz"}}),
                Some(http("10.244.1.5", 8080, "/readyz")),
            ),
            (
                json!({"httpGet": {"port": 9473}}),
                Some(http("10.244.1.5", 9473, "/")),
            ),
            (
                json!({"httpGet": {"port": "9000", "path": "healthz", "host": "1.2.3.4"}}),
                Some(http("1.2.3.4", 9000, "/healthz")),
            ),
            (json!({"httpGet": {"port": "nope"}}), None),
            (json!({"httpGet": {"port": 70000}}), None),
            (json!({"httpGet": {"port": 80, "scheme": "HTTPS"}}), None),
            (
                json!({"tcpSocket": {"port": 53}}),
                Some(Action::Tcp {
                    host: "10.244.1.5".into(),
                    port: 53,
                }),
            ),
            (
                json!({"exec": {"command": ["cat", "/tmp/ok"]}}),
                Some(Action::Exec {
                    argv: vec!["cat".into(), "/tmp/ok".into()],
                }),
            ),
            (json!({"exec": {}}), None),
            (json!({"grpc": {"port": 9000}}), None),
        ];
        for (p, want) in cases {
            let got = resolve(&probe(p.clone()), &container(), "10.244.1.5")
                .ok()
                .map(|s| s.action);
            assert_eq!(got, want, "{p}");
        }
    }

    #[test]
    fn timing_defaults_and_overrides() {
        let d = resolve(&probe(json!({"tcpSocket": {"port": 1}})), &container(), "x").unwrap();
        let s = Duration::from_secs;
        assert_eq!((d.initial_delay, d.period, d.timeout), (s(0), s(10), s(1)));
        assert_eq!((d.success_threshold, d.failure_threshold), (1, 3));
        let o = resolve(
            &probe(
                json!({"tcpSocket": {"port": 1}, "initialDelaySeconds": 2, "periodSeconds": 0,
                          "timeoutSeconds": 5, "successThreshold": 2, "failureThreshold": -1}),
            ),
            &container(),
            "x",
        )
        .unwrap();
        assert_eq!((o.initial_delay, o.period, o.timeout), (s(2), s(1), s(5)));
        assert_eq!((o.success_threshold, o.failure_threshold), (2, 3));
    }

    #[test]
    fn tracker_applies_thresholds() {
        let mut spec =
            resolve(&probe(json!({"tcpSocket": {"port": 1}})), &container(), "x").unwrap();
        spec.success_threshold = 2;
        spec.failure_threshold = 2;
        let mut t = Tracker::new(false);
        let steps = [
            (true, false),
            (true, true),
            (false, true),
            (true, true),
            (false, true),
            (false, false),
            (true, false),
        ];
        for (i, (ok, want)) in steps.into_iter().enumerate() {
            assert_eq!(t.record(ok, &spec), want, "step {i}");
        }
    }

    #[test]
    fn status_lines() {
        let cases: [(&[u8], Option<u16>); 5] = [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n", Some(200)),
            (b"HTTP/1.0 503 Service Unavailable\r\n", Some(503)),
            (b"HTTP/1.1 302", Some(302)),
            (b"SSH-2.0-OpenSSH\r\n", None),
            (b"", None),
        ];
        for (head, want) in cases {
            assert_eq!(
                parse_status_line(head),
                want,
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[tokio::test]
    async fn http_and_tcp_probes_against_a_local_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let ok = String::from_utf8_lossy(&buf[..n]).starts_with("GET /ok ");
                let line = if ok {
                    "HTTP/1.1 200 OK"
                } else {
                    "HTTP/1.1 500 Oops"
                };
                let _ = s
                    .write_all(format!("{line}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let spec = |action| ProbeSpec {
            action,
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            success_threshold: 1,
            failure_threshold: 1,
        };
        let http = |path: &str| Action::Http {
            host: "127.0.0.1".into(),
            port,
            path: path.into(),
        };
        assert!(run_once(&spec(http("/ok")), 0).await);
        assert!(!run_once(&spec(http("/bad")), 0).await);
        assert!(
            run_once(
                &spec(Action::Tcp {
                    host: "127.0.0.1".into(),
                    port
                }),
                0
            )
            .await
        );
        let own = std::process::id();
        assert!(
            run_once(
                &spec(Action::Exec {
                    argv: vec!["true".into()]
                }),
                own
            )
            .await
        );
        assert!(
            !run_once(
                &spec(Action::Exec {
                    argv: vec!["false".into()]
                }),
                own
            )
            .await
        );
    }
}
