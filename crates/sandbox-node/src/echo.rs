//! `echo-server`: the sandbox's built-in test image. A small HTTP server that reports who it is,
//! resolves names and fetches from peers (from inside its pod), and keeps a data file on its volume.
//!
//! Endpoints: `GET /healthz`; `GET /whoami` (JSON: pod, namespace, ip, hostname);
//! `GET /resolve?name=N`; `GET /fetch?host=H&port=P&path=/p`; `GET /file?path=/abs` (read a
//! file as the pod sees it); `GET /env?name=V`; `GET /data` and `PUT /data` (the file
//! `$DATA_DIR/data`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

/// Runs the server on `0.0.0.0:port` until the process is terminated.
pub async fn serve(port: u16, data_dir: Option<PathBuf>) -> Result<()> {
    if let Some(dir) = &data_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating data dir {}", dir.display()))?;
    }
    let listener = TcpListener::bind(("0.0.0.0", port))
        .await
        .with_context(|| format!("binding port {port}"))?;
    info!(port, "echo-server listening");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing SIGTERM handler")?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted.context("accepting connection")?;
                let data_dir = data_dir.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, data_dir).await {
                        warn!(error = %format!("{e:#}"), "request failed");
                    }
                });
            }
            _ = term.recv() => {
                info!("SIGTERM received, shutting down");
                return Ok(());
            }
        }
    }
}

async fn handle(mut stream: TcpStream, data_dir: Option<PathBuf>) -> Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Read the head, then as much body as Content-Length announces.
    let (head_end, content_length) = loop {
        let n = stream.read(&mut chunk).await.context("reading request")?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..pos]).to_string();
            let len = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (pos + 4, len);
        }
    };
    while buf.len() < head_end + content_length {
        let n = stream.read(&mut chunk).await.context("reading body")?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let body = &buf[head_end..];
    let mut first = head.lines().next().unwrap_or_default().split_whitespace();
    let method = first.next().unwrap_or_default().to_string();
    let target = first.next().unwrap_or("/").to_string();
    let (path, query) = target.split_once('?').unwrap_or((target.as_str(), ""));
    let params: HashMap<&str, &str> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let (status, reply) = route(&method, path, &params, body, data_dir.as_deref()).await;
    let response = format!(
        "HTTP/1.0 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{reply}",
        if status < 400 { "OK" } else { "Error" },
        reply.len()
    );
    stream
        .write_all(response.as_bytes())
        .await
        .context("writing response")?;
    Ok(())
}

async fn route(
    method: &str,
    path: &str,
    params: &HashMap<&str, &str>,
    body: &[u8],
    data_dir: Option<&std::path::Path>,
) -> (u16, String) {
    match (method, path) {
        ("GET", "/healthz") => (200, "ok".into()),
        ("GET", "/whoami") => {
            let hostname = nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default();
            let who = serde_json::json!({
                "pod": std::env::var("POD_NAME").unwrap_or_default(),
                "namespace": std::env::var("POD_NAMESPACE").unwrap_or_default(),
                "ip": std::env::var("POD_IP").unwrap_or_default(),
                "hostname": hostname,
            });
            (200, who.to_string())
        }
        ("GET", "/resolve") => {
            let Some(name) = params.get("name") else {
                return (400, "missing query parameter `name`".into());
            };
            match tokio::net::lookup_host((*name, 0)).await {
                Ok(addrs) => {
                    let ips: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
                    (200, ips.join(","))
                }
                Err(e) => (502, format!("resolving {name}: {e}")),
            }
        }
        ("GET", "/fetch") => {
            let (Some(host), Some(port)) = (
                params.get("host"),
                params.get("port").and_then(|p| p.parse::<u16>().ok()),
            ) else {
                return (
                    400,
                    "need query parameters `host` and numeric `port`".into(),
                );
            };
            let path = params.get("path").copied().unwrap_or("/whoami");
            match crate::http::get(host, port, path, Duration::from_secs(3)).await {
                Ok(r) if r.status == 200 => (200, r.body),
                Ok(r) => (502, format!("peer answered {}: {}", r.status, r.body)),
                Err(e) => (502, format!("{e:#}")),
            }
        }
        ("GET", "/file") => {
            let Some(path) = params.get("path") else {
                return (400, "missing query parameter `path`".into());
            };
            match std::fs::read_to_string(path) {
                Ok(s) => (200, s),
                Err(e) => (404, format!("reading {path}: {e}")),
            }
        }
        ("GET", "/env") => {
            let Some(name) = params.get("name") else {
                return (400, "missing query parameter `name`".into());
            };
            match std::env::var(name) {
                Ok(v) => (200, v),
                Err(_) => (404, format!("{name} is not set")),
            }
        }
        (_, "/data") => {
            let Some(dir) = data_dir else {
                return (404, "no DATA_DIR configured".into());
            };
            let file = dir.join("data");
            if method == "PUT" {
                match std::fs::write(&file, body) {
                    Ok(()) => (200, "stored".into()),
                    Err(e) => (500, format!("writing {}: {e}", file.display())),
                }
            } else {
                match std::fs::read_to_string(&file) {
                    Ok(s) => (200, s),
                    Err(e) => (404, format!("reading {}: {e}", file.display())),
                }
            }
        }
        _ => (404, format!("no route for {method} {path}")),
    }
}
