use std::time::Duration;

use hyper_util::rt::TokioIo;
use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tower::ServiceExt;

use super::*;

const VERSION: &str = r#"{"major":"1","minor":"34","gitVersion":"v1.34.2","gitCommit":"c","gitTreeState":"clean","buildDate":"2026-01-01T00:00:00Z","goVersion":"go1.26","compiler":"gc","platform":"linux/amd64"}"#;

#[tokio::test]
async fn every_socket_the_connector_opens_has_the_keepalive() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uri: http::Uri = format!("http://{}", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let keepalive = Keepalive {
        idle: Duration::from_secs(7),
        interval: Duration::from_secs(3),
        retries: 4,
    };
    let io: TokioIo<tokio::net::TcpStream> = tcp_connector(&keepalive).oneshot(uri).await.unwrap();
    let socket = SockRef::from(io.inner());
    assert!(socket.keepalive().unwrap());
    assert_eq!(socket.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
    assert_eq!(
        socket.tcp_keepalive_interval().unwrap(),
        Duration::from_secs(3)
    );
    assert_eq!(socket.tcp_keepalive_retries().unwrap(), 4);
}

/// Answers one request with the API server's version document, and returns its request line.
async fn serve_version_once(listener: TcpListener) -> String {
    let (mut conn, _) = listener.accept().await.unwrap();
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "the client closed before sending a whole request");
        request.extend_from_slice(&buf[..n]);
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{VERSION}",
        VERSION.len()
    );
    conn.write_all(response.as_bytes()).await.unwrap();
    let text = String::from_utf8_lossy(&request).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn the_client_reaches_an_api_server_through_the_whole_stack() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(serve_version_once(listener));
    let config = kube::Config::new(url.parse().unwrap());
    let client = client(config, &Keepalive::DEFAULT).unwrap();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.git_version, "v1.34.2");
    assert_eq!(server.await.unwrap(), "GET /version HTTP/1.1");
}

#[test]
fn a_proxy_is_refused_and_named() {
    let mut config = kube::Config::new("https://10.0.0.1:6443".parse().unwrap());
    config.proxy_url = Some("http://proxy.example:3128".parse().unwrap());
    let Err(err) = client(config, &Keepalive::DEFAULT) else {
        panic!("a client was built for a kubeconfig with a proxy");
    };
    let text = err.to_string();
    assert!(text.contains("http://proxy.example:3128/"), "{text}");
    assert!(text.contains("proxy-url"), "{text}");
}

#[test]
fn an_invalid_tls_server_name_is_refused_and_named() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = kube::Config::new("https://10.0.0.1:6443".parse().unwrap());
    config.tls_server_name = Some("not a host name!".into());
    let Err(err) = client(config, &Keepalive::DEFAULT) else {
        panic!("a client was built for an invalid tls-server-name");
    };
    let text = err.to_string();
    assert!(
        text.contains("tls-server-name \"not a host name!\""),
        "{text}"
    );
    assert!(text.contains("correct or remove it"), "{text}");
}
