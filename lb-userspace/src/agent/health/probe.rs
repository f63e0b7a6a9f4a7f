//! One health probe: a TCP connect, or an HTTP GET whose status line is checked.
//!
//! The status is compared with the expected one; a failure says how far the probe got.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::config::{HealthCheck, HealthCheckKind};

/// Probes once: TCP = connect within the timeout; HTTP = connect, send a GET for `check.path`
/// and read the status line, all within the timeout, then compare the status with
/// `check.expect_status`. Returns a description of the failure.
pub async fn probe(addr: SocketAddr, check: &HealthCheck) -> Result<(), String> {
    // The probe records how far it got, so a timeout can say what it was waiting for.
    let mut phase = format!("connect to {addr}");
    let result = tokio::time::timeout(check.timeout, probe_inner(addr, check, &mut phase)).await;
    match result {
        Ok(r) => r,
        Err(_) => Err(format!("{phase}: timeout after {:?}", check.timeout)),
    }
}

async fn probe_inner(
    addr: SocketAddr,
    check: &HealthCheck,
    phase: &mut String,
) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    if check.kind == HealthCheckKind::Tcp {
        return Ok(());
    }
    let what = format!("HTTP GET {} on {addr}", check.path);
    *phase = format!("{what}: sending the request");
    // SocketAddr's Display brackets IPv6 addresses, which is the form a Host header needs.
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: xdplb-health\r\n\r\n",
        check.path
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("{what}: sending the request: {e}"))?;
    *phase = format!("{what}: waiting for the status line");
    let line = read_status_line(&mut stream)
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    let status = parse_status(&line)
        .ok_or_else(|| format!("{what}: malformed status line {:?}", line.trim_end()))?;
    if status != check.expect_status {
        return Err(format!(
            "{what}: status {status}, expected {}",
            check.expect_status
        ));
    }
    Ok(())
}

/// Longest status line accepted; a real one is a few dozen bytes, and the cap keeps a
/// misbehaving backend from feeding the prober an endless line.
const MAX_STATUS_LINE: usize = 1024;

/// Reads up to the first `\n`. Bytes after it (headers, body) are left unread: the probe only
/// needs the status, and the connection is dropped right after.
async fn read_status_line(stream: &mut TcpStream) -> Result<String, String> {
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    loop {
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            buf.truncate(end);
            return Ok(String::from_utf8_lossy(&buf).into_owned());
        }
        if buf.len() >= MAX_STATUS_LINE {
            return Err(format!(
                "no status line in the first {MAX_STATUS_LINE} bytes"
            ));
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the status line: {e}"))?;
        if n == 0 {
            return Err("connection closed before a status line".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The status code of `HTTP/1.x NNN reason`.
pub(super) fn parse_status(line: &str) -> Option<u16> {
    let mut parts = line.trim_end().splitn(3, ' ');
    let version = parts.next()?;
    let code = parts.next()?;
    if !version.starts_with("HTTP/") || code.len() != 3 {
        return None;
    }
    code.parse().ok()
}
