//! A tiny HTTP/1.0 client over TCP: enough for probes, the test server's fetch and e2e tests.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Response body as text (lossy UTF-8).
    pub body: String,
}

/// Sends one request (`GET`, `PUT`, ...) to `host:port` and reads the whole response, within `timeout`.
pub async fn request(
    method: &str,
    host: &str,
    port: u16,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<Response> {
    tokio::time::timeout(timeout, request_inner(method, host, port, path, body))
        .await
        .with_context(|| {
            format!("{method} http://{host}:{port}{path} timed out after {timeout:?}")
        })?
}

/// `GET` shorthand.
pub async fn get(host: &str, port: u16, path: &str, timeout: Duration) -> Result<Response> {
    request("GET", host, port, path, b"", timeout).await
}

async fn request_inner(
    method: &str,
    host: &str,
    port: u16,
    path: &str,
    body: &[u8],
) -> Result<Response> {
    let mut stream = TcpStream::connect((host, port))
        .await
        .with_context(|| format!("connecting to {host}:{port}"))?;
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {host}:{port}\r\nUser-Agent: sandbox-node\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .await
        .context("sending request")?;
    stream
        .write_all(body)
        .await
        .context("sending request body")?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .await
        .context("reading response")?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Result<Response> {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!(
            "malformed HTTP response: no header terminator in {} bytes",
            raw.len()
        );
    };
    let status_line = head.lines().next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/") {
        bail!("malformed HTTP status line {status_line:?}");
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("malformed HTTP status line {status_line:?}"))?;
    Ok(Response {
        status,
        body: body.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_body() {
        let r = parse_response(b"HTTP/1.1 503 Service Unavailable\r\nA: b\r\n\r\nnope")
            .expect("parses");
        assert_eq!(
            r,
            Response {
                status: 503,
                body: "nope".into()
            }
        );
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"SMTP 220\r\n\r\n").is_err());
    }
}
