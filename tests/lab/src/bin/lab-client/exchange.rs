//! One exchange with the VIP (TCP or UDP, a name back), bulk transfers, and bursts of them.

use super::*;

/// Uploads `up` bytes as one line, reads the name; asks for `down` bytes, reads them and the
/// name again (which must be the same backend: the connection never moved).
pub(super) async fn bulk(target: SocketAddr, up: usize, down: usize) -> Result<String> {
    use tokio::io::AsyncReadExt;
    let stream = TcpStream::connect(target)
        .await
        .with_context(|| format!("connect {target}"))?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = vec![b'u'; up];
    line.push(b'\n');
    w.write_all(&line).await.context("upload")?;
    let mut name = String::new();
    r.read_line(&mut name).await.context("reply to upload")?;
    w.write_all(format!("bulk {down}\n").as_bytes())
        .await
        .context("download request")?;
    let mut data = vec![0u8; down + 1];
    r.read_exact(&mut data).await.context("download")?;
    if data[..down].iter().any(|b| *b != b'x') || data[down] != b'\n' {
        bail!("downloaded data is corrupt");
    }
    let mut again = String::new();
    r.read_line(&mut again)
        .await
        .context("name after download")?;
    if again != name {
        bail!("connection moved from {name:?} to {again:?}");
    }
    Ok(name.trim().to_owned())
}
/// `n` independent exchanges, `parallel` at a time.
pub(super) async fn burst(
    target: SocketAddr,
    n: usize,
    parallel: usize,
    binds: Vec<IpAddr>,
    proto: Proto,
) -> BurstReport {
    let next = Arc::new(AtomicUsize::new(0));
    let report = Arc::new(Mutex::new(BurstReport::default()));
    let binds = Arc::new(binds);
    let mut workers = JoinSet::new();
    for _ in 0..parallel.clamp(1, n.max(1)) {
        let (next, report, binds) = (next.clone(), report.clone(), binds.clone());
        workers.spawn(async move {
            loop {
                let j = next.fetch_add(1, Ordering::Relaxed);
                if j >= n {
                    break;
                }
                let bind = pick_bind(&binds, j);
                let result = match proto {
                    Proto::Tcp => tcp_once(target, bind).await,
                    Proto::Udp => udp_once(target, bind).await,
                };
                report.lock().unwrap().record(result);
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let r = report.lock().unwrap().clone();
    r
}

pub(super) async fn tcp_connect(
    target: SocketAddr,
    bind: Option<IpAddr>,
) -> Result<TcpStream, String> {
    let sock = if target.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| format!("socket: {e}"))?;
    if let Some(ip) = bind {
        let _ = sys::set_bind_address_no_port(sock.as_raw_fd());
        sock.bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    let stream = timeout(CONNECT_TIMEOUT, sock.connect(target))
        .await
        .map_err(|_| "connect: timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Sends `msg` and reads one line: the name of the backend that answered.
pub(super) async fn exchange(
    stream: &mut BufReader<TcpStream>,
    msg: &[u8],
) -> Result<String, String> {
    exchange_within(stream, msg, READ_TIMEOUT).await
}

/// [`exchange`] waiting up to `wait` for the reply.
pub(super) async fn exchange_within(
    stream: &mut BufReader<TcpStream>,
    msg: &[u8],
    wait: Duration,
) -> Result<String, String> {
    stream
        .get_mut()
        .write_all(msg)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut line = String::new();
    let n = timeout(wait, stream.read_line(&mut line))
        .await
        .map_err(|_| "read: timed out".to_string())?
        .map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Err("read: connection closed".into());
    }
    let name = line.trim();
    if name.is_empty() {
        return Err("read: empty reply".into());
    }
    Ok(name.to_string())
}

pub(super) async fn tcp_once(target: SocketAddr, bind: Option<IpAddr>) -> Result<String, String> {
    let stream = tcp_connect(target, bind).await?;
    exchange(&mut BufReader::new(stream), b"hello\n").await
}

pub(super) async fn udp_once(target: SocketAddr, bind: Option<IpAddr>) -> Result<String, String> {
    let local = SocketAddr::new(bind.unwrap_or_else(|| unspecified(target)), 0);
    let sock = UdpSocket::bind(local)
        .await
        .map_err(|e| format!("bind {local}: {e}"))?;
    sock.send_to(b"hello\n", target)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = [0u8; 512];
    // Unconnected on purpose: a reply from the wrong source (a backend answering from its own
    // address instead of the VIP) is reported as such rather than silently filtered.
    let (n, from) = timeout(UDP_TIMEOUT, sock.recv_from(&mut buf))
        .await
        .map_err(|_| "recv: timed out".to_string())?
        .map_err(|e| format!("recv: {e}"))?;
    if from != target {
        return Err(format!("reply from {from}, not {target}"));
    }
    let name = String::from_utf8_lossy(&buf[..n]).trim().to_string();
    if name.is_empty() {
        return Err("recv: empty reply".into());
    }
    Ok(name)
}
