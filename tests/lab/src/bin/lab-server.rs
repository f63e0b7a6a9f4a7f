//! Lab backend: answers every TCP line and every UDP datagram with its own name.
//!
//! So clients can tell which backend served them; `bulk N` lines get N bytes first (path-MTU
//! tests).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::signal::unix::{signal, SignalKind};

use xdplb_lab::sys;

/// A connection silent this long is dropped, so abandoned clients cannot pile up forever.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// How often new local addresses are looked for (see `serve_udp_addrs`).
const ADDR_RESCAN: Duration = Duration::from_millis(500);

#[derive(Parser, Debug)]
#[command(about = "Lab backend: replies `<name>\\n` to each TCP line and each UDP datagram")]
struct Args {
    /// Name to answer with.
    #[arg(long)]
    name: String,
    /// TCP and UDP port (both address families).
    #[arg(long, default_value_t = 8080)]
    port: u16,
}

#[derive(Default)]
struct Stats {
    connections: AtomicU64,
    lines: AtomicU64,
    datagrams: AtomicU64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    sys::raise_nofile_limit();
    let reply: Arc<[u8]> = format!("{}\n", args.name).into_bytes().into();
    let stats = Arc::new(Stats::default());

    let sock = TcpSocket::new_v6()?;
    sys::set_v6only(sock.as_raw_fd(), false)?;
    sock.set_reuseaddr(true)?;
    let addr = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), args.port);
    sock.bind(addr)
        .with_context(|| format!("bind tcp {addr}"))?;
    let listener = sock.listen(4096)?;

    // Bind UDP once up front so a port clash is reported before READY.
    let bound = bind_initial_udp(args.port, &reply, &stats)?;
    tokio::spawn(serve_udp_addrs(
        bound,
        args.port,
        reply.clone(),
        stats.clone(),
    ));

    {
        let reply = reply.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        stats.connections.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(serve_tcp(stream, reply.clone(), stats.clone()));
                    }
                    // EMFILE and the like: back off instead of spinning.
                    Err(e) => {
                        eprintln!("accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
    }

    eprintln!("READY {} port {}", args.name, args.port);
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    eprintln!(
        "{}: {} tcp connections, {} lines, {} datagrams",
        args.name,
        stats.connections.load(Ordering::Relaxed),
        stats.lines.load(Ordering::Relaxed),
        stats.datagrams.load(Ordering::Relaxed)
    );
    Ok(())
}

async fn serve_tcp(stream: TcpStream, reply: Arc<[u8]>, stats: Arc<Stats>) {
    let _ = stream.set_nodelay(true);
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Ok(Ok(Some(line))) = tokio::time::timeout(IDLE_TIMEOUT, lines.next_line()).await {
        stats.lines.fetch_add(1, Ordering::Relaxed);
        // `bulk N`: N bytes of data and a newline before the name, so replies fill full-size
        // segments (capped at 64 MiB so a typo cannot exhaust memory).
        if let Some(n) = line
            .strip_prefix("bulk ")
            .and_then(|n| n.trim().parse::<usize>().ok())
        {
            let mut data = vec![b'x'; n.min(64 << 20)];
            data.push(b'\n');
            if w.write_all(&data).await.is_err() {
                break;
            }
        }
        if w.write_all(&reply).await.is_err() {
            break;
        }
    }
}

/// UDP sockets are bound to each local address rather than to the wildcard: a reply must leave
/// from the address the datagram was sent to (the VIP, in DSR), and a wildcard socket would
/// pick the source by route instead (the backend's segment address). Addresses added later are
/// picked up by rescanning.
async fn serve_udp_addrs(
    mut bound: HashSet<IpAddr>,
    port: u16,
    reply: Arc<[u8]>,
    stats: Arc<Stats>,
) {
    let mut warned = HashSet::new();
    loop {
        tokio::time::sleep(ADDR_RESCAN).await;
        let addrs = match sys::local_addrs() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("udp: getifaddrs: {e}");
                continue;
            }
        };
        for ip in addrs {
            if bound.contains(&ip) {
                continue;
            }
            match bind_udp(ip, port, &reply, &stats) {
                Ok(()) => {
                    bound.insert(ip);
                }
                // Retried on the next scan; reported once so a stuck address cannot flood the log.
                Err(e) => {
                    if warned.insert(ip) {
                        eprintln!("udp: {e:#}");
                    }
                }
            }
        }
    }
}

fn bind_initial_udp(port: u16, reply: &Arc<[u8]>, stats: &Arc<Stats>) -> Result<HashSet<IpAddr>> {
    let mut bound = HashSet::new();
    for ip in sys::local_addrs()? {
        bind_udp(ip, port, reply, stats)?;
        bound.insert(ip);
    }
    Ok(bound)
}

fn bind_udp(ip: IpAddr, port: u16, reply: &Arc<[u8]>, stats: &Arc<Stats>) -> Result<()> {
    let addr = SocketAddr::new(ip, port);
    let std_sock = std::net::UdpSocket::bind(addr).with_context(|| format!("bind udp {addr}"))?;
    std_sock.set_nonblocking(true)?;
    let sock = UdpSocket::from_std(std_sock)?;
    tokio::spawn(serve_udp(sock, reply.clone(), stats.clone()));
    Ok(())
}

async fn serve_udp(sock: UdpSocket, reply: Arc<[u8]>, stats: Arc<Stats>) {
    let mut buf = vec![0u8; 65536];
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((_, peer)) => {
                stats.datagrams.fetch_add(1, Ordering::Relaxed);
                let _ = sock.send_to(&reply, peer).await;
            }
            Err(e) => {
                // ICMP errors from earlier replies surface here; they are not fatal.
                if e.kind() != std::io::ErrorKind::ConnectionRefused {
                    eprintln!("udp {:?}: {e}", sock.local_addr().ok());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}
