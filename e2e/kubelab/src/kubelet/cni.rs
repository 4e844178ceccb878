//! Pod networking through the standard CNI plugins, called as a container runtime calls them:
//! `bridge` (bridge `cni0`, gateway, masquerade, hairpin) with `host-local` IPAM on the node's
//! pod CIDR, plus `loopback` for `lo`. The plugins' state (`host-local` leases) lives under the
//! kubelet's root dir, so lab nodes sharing the machine's filesystem never see each other's.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::error::{KubeletError, Result};

/// The CNI spec version the configs declare (Debian's plugins 1.1.x speak it).
pub const CNI_VERSION: &str = "1.0.0";
/// Network name in the configs (and `host-local`'s state directory name).
pub const NETWORK_NAME: &str = "wirekube-lab";
/// How long one plugin call may take.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The node's pod network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNetwork {
    pub subnet: Ipv4Net,
    /// `host-local`'s `dataDir`.
    pub ipam_dir: PathBuf,
    /// Where the plugin binaries are (`CNI_PATH`).
    pub bin_dir: PathBuf,
    /// Use the network configuration list found here (as a container runtime does with
    /// `/etc/cni/net.d`) instead of the built-in bridge; `None`: the built-in one.
    pub conf_dir: Option<PathBuf>,
}

/// `ADD` or `DEL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
}

impl Command {
    fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
        }
    }
}

/// The `bridge` plugin's network configuration.
pub fn bridge_config(net: &PodNetwork) -> Value {
    json!({
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipMasq": true,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": net.subnet.to_string()}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": net.ipam_dir,
        },
    })
}

/// The `loopback` plugin's configuration.
pub fn loopback_config() -> Value {
    json!({"cniVersion": CNI_VERSION, "name": format!("{NETWORK_NAME}-lo"), "type": "loopback"})
}

/// The `CNI_*` environment of one plugin call.
pub fn invocation_env(
    command: Command,
    container_id: &str,
    netns: &Path,
    ifname: &str,
    bin_dir: &Path,
) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_COMMAND", command.as_str().to_owned()),
        ("CNI_CONTAINERID", container_id.to_owned()),
        ("CNI_NETNS", netns.to_string_lossy().into_owned()),
        ("CNI_IFNAME", ifname.to_owned()),
        ("CNI_PATH", bin_dir.to_string_lossy().into_owned()),
    ]
}

#[derive(Deserialize)]
struct AddResult {
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<IpConfig>,
}

#[derive(Deserialize)]
struct Interface {
    #[serde(default)]
    sandbox: Option<String>,
}

#[derive(Deserialize)]
struct IpConfig {
    address: String,
    #[serde(default)]
    interface: Option<usize>,
}

#[derive(Deserialize)]
struct ErrorResult {
    #[serde(default)]
    code: Option<u32>,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

/// The pod's IPv4 address from an `ADD` result: the first IPv4 on an interface inside the
/// sandbox (or on no named interface).
pub fn parse_add_result(stdout: &[u8]) -> Result<Ipv4Addr, String> {
    let res: AddResult =
        serde_json::from_slice(stdout).map_err(|e| format!("unparsable result: {e}"))?;
    let in_sandbox = |ip: &IpConfig| match ip.interface {
        Some(i) => res.interfaces.get(i).is_some_and(|x| x.sandbox.is_some()),
        None => true,
    };
    res.ips
        .iter()
        .filter(|ip| in_sandbox(ip))
        .find_map(|ip| ip.address.parse::<Ipv4Net>().ok())
        .map(|net| net.addr())
        .ok_or_else(|| "result has no IPv4 address in the sandbox".to_owned())
}

/// A readable message from a failed plugin's output (a CNI error object, or the raw text).
pub fn describe_failure(stdout: &[u8], stderr: &[u8]) -> String {
    match serde_json::from_slice::<ErrorResult>(stdout) {
        Ok(e) if !e.msg.is_empty() => {
            let code = e.code.map(|c| format!(" (code {c})")).unwrap_or_default();
            let details = if e.details.is_empty() {
                String::new()
            } else {
                format!(": {}", e.details)
            };
            format!("{}{details}{code}", e.msg)
        }
        _ => {
            let text = [stdout, stderr].concat();
            let text = String::from_utf8_lossy(&text);
            let text = text.trim();
            if text.is_empty() {
                "no output".to_owned()
            } else {
                text.to_owned()
            }
        }
    }
}

/// Runs one plugin and returns its stdout.
async fn call(
    net: &PodNetwork,
    plugin: &str,
    env: Vec<(&'static str, String)>,
    config: &Value,
    command: Command,
) -> Result<Vec<u8>> {
    let err = |reason: String| KubeletError::Cni {
        plugin: plugin.to_owned(),
        command: command.as_str(),
        reason,
    };
    let mut child = tokio::process::Command::new(net.bin_dir.join(plugin))
        .envs(env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            err(format!(
                "cannot run {}: {e}",
                net.bin_dir.join(plugin).display()
            ))
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let bytes = serde_json::to_vec(config).map_err(|e| err(e.to_string()))?;
        stdin
            .write_all(&bytes)
            .await
            .map_err(|e| err(format!("stdin: {e}")))?;
    }
    let out = tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| err(format!("no answer within {PLUGIN_TIMEOUT:?}")))?
        .map_err(|e| err(e.to_string()))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(err(describe_failure(&out.stdout, &out.stderr)))
    }
}

/// The plugins to run on `eth0`, each with its full configuration: the built-in bridge, or
/// the first `*.conflist` in `conf_dir` (by name, as runtimes pick).
pub fn chain(net: &PodNetwork) -> Result<Vec<Value>> {
    let Some(dir) = &net.conf_dir else {
        return Ok(vec![bridge_config(net)]);
    };
    let not_ready = |reason: String| KubeletError::Cni {
        plugin: "(config)".into(),
        command: "ADD",
        reason: format!("network plugin not ready: {reason}"),
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| not_ready(format!("{}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "conflist"))
        .collect();
    files.sort();
    let file = files
        .first()
        .ok_or_else(|| not_ready(format!("no CNI configuration in {}", dir.display())))?;
    let text =
        std::fs::read_to_string(file).map_err(|e| not_ready(format!("{}: {e}", file.display())))?;
    let list: Value =
        serde_json::from_str(&text).map_err(|e| not_ready(format!("{}: {e}", file.display())))?;
    chain_from_list(&list, &net.ipam_dir).map_err(|e| not_ready(format!("{}: {e}", file.display())))
}

/// A configuration list's plugins as standalone configurations (name and version copied in).
/// `host-local` keeps its leases under the kubelet's root: lab nodes share one filesystem,
/// and the default `/var/lib/cni` would outlive the lab.
fn chain_from_list(list: &Value, ipam_dir: &Path) -> Result<Vec<Value>, String> {
    let plugins = list["plugins"].as_array().ok_or("no \"plugins\" list")?;
    let mut out = Vec::new();
    for p in plugins {
        let mut p = p.clone();
        let obj = p.as_object_mut().ok_or("a plugin is not an object")?;
        obj.insert("name".into(), list["name"].clone());
        obj.insert("cniVersion".into(), list["cniVersion"].clone());
        if let Some(ipam) = obj.get_mut("ipam").and_then(Value::as_object_mut)
            && ipam.get("type").and_then(Value::as_str) == Some("host-local")
        {
            ipam.insert("dataDir".into(), json!(ipam_dir));
        }
        out.push(p);
    }
    if out.is_empty() {
        return Err("empty \"plugins\" list".into());
    }
    Ok(out)
}

fn plugin_type(config: &Value) -> String {
    config["type"].as_str().unwrap_or_default().to_owned()
}

/// `ADD`: loopback, then the chain on `eth0` (each plugin gets the previous one's result).
/// Returns the pod IP.
pub async fn add(net: &PodNetwork, container_id: &str, netns: &Path) -> Result<Ipv4Addr> {
    let lo_env = invocation_env(Command::Add, container_id, netns, "lo", &net.bin_dir);
    call(net, "loopback", lo_env, &loopback_config(), Command::Add).await?;
    let mut prev: Option<Value> = None;
    let mut last = (String::new(), Vec::new());
    for mut config in chain(net)? {
        if let Some(p) = prev.take() {
            config["prevResult"] = p;
        }
        let plugin = plugin_type(&config);
        let env = invocation_env(Command::Add, container_id, netns, "eth0", &net.bin_dir);
        let out = call(net, &plugin, env, &config, Command::Add).await?;
        prev = serde_json::from_slice(&out).ok();
        last = (plugin, out);
    }
    parse_add_result(&last.1).map_err(|reason| KubeletError::Cni {
        plugin: last.0,
        command: "ADD",
        reason,
    })
}

/// `DEL` for the chain in reverse (releases the address) and loopback. Safe to repeat.
pub async fn del(net: &PodNetwork, container_id: &str, netns: &Path) -> Result<()> {
    let mut result = Ok(());
    for config in chain(net)?.iter().rev() {
        let plugin = plugin_type(config);
        let env = invocation_env(Command::Del, container_id, netns, "eth0", &net.bin_dir);
        let r = call(net, &plugin, env, config, Command::Del).await;
        result = result.and(r.map(|_| ()));
    }
    let lo_env = invocation_env(Command::Del, container_id, netns, "lo", &net.bin_dir);
    let lo = call(net, "loopback", lo_env, &loopback_config(), Command::Del).await;
    result.and(lo.map(|_| ()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> PodNetwork {
        PodNetwork {
            subnet: "10.244.1.0/24".parse().unwrap(),
            ipam_dir: "/lab/root/cni/networks".into(),
            bin_dir: "/usr/lib/cni".into(),
            conf_dir: None,
        }
    }

    #[test]
    fn bridge_config_is_a_runtime_style_network() {
        let c = bridge_config(&net());
        assert_eq!(c["cniVersion"], "1.0.0");
        assert_eq!(c["type"], "bridge");
        assert_eq!(c["bridge"], "cni0");
        for flag in ["isGateway", "ipMasq", "hairpinMode"] {
            assert_eq!(c[flag], true, "{flag}");
        }
        assert_eq!(c["ipam"]["type"], "host-local");
        assert_eq!(c["ipam"]["ranges"][0][0]["subnet"], "10.244.1.0/24");
        assert_eq!(c["ipam"]["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(c["ipam"]["dataDir"], "/lab/root/cni/networks");
        assert_eq!(loopback_config()["type"], "loopback");
    }

    #[test]
    fn invocation_env_names_everything() {
        let env = invocation_env(
            Command::Del,
            "uid",
            Path::new("/run/netns/x"),
            "eth0",
            Path::new("/cni"),
        );
        let want = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "uid"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/cni"),
        ];
        let got: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn parses_add_results() {
        let full = br#"{"cniVersion":"1.0.0","interfaces":[{"name":"cni0","mac":"x"},
            {"name":"veth1","mac":"y"},{"name":"eth0","mac":"z","sandbox":"/run/netns/p"}],
            "ips":[{"interface":0,"address":"10.244.1.1/24"},
                   {"interface":2,"address":"10.244.1.7/24","gateway":"10.244.1.1"}],
            "routes":[{"dst":"0.0.0.0/0"}],"dns":{}}"#;
        let cases: [(&[u8], Result<Ipv4Addr, ()>); 5] = [
            (full, Ok(Ipv4Addr::new(10, 244, 1, 7))),
            (br#"{"ips":[{"address":"fd00::5/64"},{"address":"10.0.0.9/16"}]}"#, Ok(Ipv4Addr::new(10, 0, 0, 9))),
            (br#"{"ips":[]}"#, Err(())),
            (br#"{"interfaces":[{"name":"cni0"}],"ips":[{"interface":0,"address":"10.1.1.1/24"}]}"#, Err(())),
            (b"not json", Err(())),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_add_result(input).map_err(|_| ()),
                want,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn describes_failures() {
        let cases: [(&[u8], &[u8], &str); 4] = [
            (
                br#"{"code":7,"msg":"failed to allocate","details":"range full"}"#,
                b"",
                "failed to allocate: range full (code 7)",
            ),
            (br#"{"msg":"no netns"}"#, b"", "no netns"),
            (b"", b"  panic: boom\n", "panic: boom"),
            (b"", b"", "no output"),
        ];
        for (out, err, want) in cases {
            assert_eq!(describe_failure(out, err), want);
        }
    }

    #[test]
    fn a_conflist_becomes_a_chain_with_the_lab_ipam_dir() {
        let list = json!({"cniVersion": "1.0.0", "name": "wirekube", "plugins": [
            {"type": "bridge", "bridge": "wkpod0",
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]]}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]});
        let c = chain_from_list(&list, Path::new("/lab/n1/cni")).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0]["name"], "wirekube");
        assert_eq!(c[1]["cniVersion"], "1.0.0");
        assert_eq!(c[0]["ipam"]["dataDir"], "/lab/n1/cni");
        assert!(chain_from_list(&json!({"name": "x"}), Path::new("/")).is_err());
    }
}
