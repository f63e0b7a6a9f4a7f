//! The agent's control API: typed requests and answers, and their transport.
//!
//! They travel as JSON lines over a root-only Unix socket (one request a line, one answer a line).
//! The CLI's `vip`, `backend`, `reload`, `status` and `check` commands, `stats --watch` and the
//! tests use these types.

use std::{
    net::IpAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};

use crate::config::{BackendConfig, BackendState, Protocol, Vip};

/// What a client can ask. Mutations are validated as a whole new config, applied as one
/// generation, and written back to the config file atomically.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Agent, datapath and per-backend health/idle state.
    Status,
    VipList,
    VipAdd {
        vip: Vip,
    },
    VipRemove {
        name: String,
    },
    BackendList {
        vip: Option<String>,
    },
    BackendAdd {
        vip: String,
        backend: BackendConfig,
    },
    BackendRemove {
        vip: String,
        address: IpAddr,
    },
    /// Keep the backend's flows, send it no new ones.
    BackendDrain {
        vip: String,
        address: IpAddr,
    },
    /// Undo a drain.
    BackendActivate {
        vip: String,
        address: IpAddr,
    },
    BackendWeight {
        vip: String,
        address: IpAddr,
        weight: u32,
    },
    /// Re-read the config file.
    Reload,
    /// Withdraw every VIP from the routers and keep forwarding what still arrives, until
    /// `BalancerResume`: takes this balancer out of the ECMP group without breaking a flow.
    BalancerDrain,
    /// Announce the servable VIPs again after a drain.
    BalancerResume,
    /// What applying this config text would change, without applying it.
    Plan {
        config: String,
    },
}

/// How a backend's health is known: by its VIP's health check, or not at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthState {
    Up,
    Down,
    /// The VIP has no health check.
    Unchecked,
}

/// One backend in [`Status`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub address: IpAddr,
    pub state: BackendState,
    pub weight: u32,
    pub health: HealthState,
    /// Written into the datapath (false while its MAC is unknown).
    pub in_service: bool,
    /// Seconds since its packet counter last moved, once the agent has seen it.
    pub idle_seconds: Option<u64>,
}

/// One VIP in [`Status`] (also the answer to `backend list`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VipStatus {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// Too few backends pass their health check: failures are ignored and every backend not
    /// draining is in the ring (the health check's `panic_threshold`).
    #[serde(default)]
    pub health_panic: bool,
    pub backends: Vec<BackendStatus>,
}

/// The answer to [`Request::Status`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub interface: String,
    /// How the program is attached, e.g. "attached to eth0 (native XDP)", or "down: " and why.
    pub datapath: String,
    /// The program is attached to the interface; false while the interface is gone.
    #[serde(default)]
    pub datapath_up: bool,
    /// True when this agent took over the maps a previous one left pinned.
    pub adopted_previous_state: bool,
    /// The config file the agent runs from.
    pub config: PathBuf,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// With `announce:`: the addresses BIRD was last told to announce (empty: all withdrawn),
    /// or null until BIRD has taken the first list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announced: Option<Vec<std::net::IpAddr>>,
    /// Why the last attempt to tell BIRD failed, while it keeps failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce_error: Option<String>,
    /// `xdplb drain-balancer` holds every VIP withdrawn (until `resume-balancer`).
    #[serde(default)]
    pub balancer_drained: bool,
    pub vips: Vec<VipStatus>,
}

/// The answer to [`Request::BalancerDrain`] and [`Request::BalancerResume`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BalancerState {
    pub drained: bool,
    /// What BIRD announces now.
    pub announced: Vec<IpAddr>,
    /// `announce.withdraw_delay`: how long the routers get to move flows after a withdrawal.
    pub withdraw_delay_ms: u64,
}

/// The answer to a change (`vip add`, `backend drain`, `reload`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    /// What the change did, one line each.
    pub applied: Vec<String>,
    /// The config file the change was saved to (changes through the API only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_to: Option<PathBuf>,
    /// Configured backends that are not in service after the change (their MAC is unknown):
    /// the change is applied, but a script must not take those backends as serving.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<LeftOut>,
}

/// A configured backend kept out of its VIP's ring, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeftOut {
    pub vip: String,
    pub backend: IpAddr,
    pub why: String,
}

/// The answer to [`Request::Plan`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub changes: Vec<String>,
}

/// Every answer the agent gives, by request. On the wire it is the `result` of a
/// [`Response`], serialized as the inner value.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Answer {
    Status(Status),
    Vips(Vec<Vip>),
    Backends(Vec<VipStatus>),
    Applied(Applied),
    Plan(Plan),
    Balancer(BalancerState),
}

/// One line on the wire: `ok`, and the answer or the error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub result: serde_json::Value,
}

impl Response {
    pub fn from_result(r: anyhow::Result<Answer>) -> Response {
        match r.and_then(|a| serde_json::to_value(a).context("encoding the answer")) {
            Ok(result) => Response {
                ok: true,
                error: None,
                result,
            },
            Err(e) => Response {
                ok: false,
                error: Some(format!("{e:#}")),
                result: serde_json::Value::Null,
            },
        }
    }
}

/// A request with the channel its answer goes back on.
pub type Call = (Request, oneshot::Sender<Response>);

/// The API socket's file, removed when this is dropped: on a clean stop and on every error
/// return of the agent after the bind, so only a killed agent leaves a socket behind (and
/// `check`, the CLI and the next `bind` know such a socket for what it is).
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds the API socket: a directory it creates is root-only (0700), a stale socket from a
/// dead agent is replaced, the socket itself is 0600.
pub fn bind(path: &Path) -> anyhow::Result<(UnixListener, SocketFile)> {
    if let Some(dir) = path.parent().filter(|d| !d.exists()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // Only a directory made here is ours to restrict (not /tmp or an operator's choice).
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {} to root", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another xdplb agent answers on {}; stop it or give this one another api_socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding API socket {}", path.display()))?;
    let file = SocketFile(path.to_owned());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {} to root", path.display()))?;
    Ok((listener, file))
}

/// Longest request line accepted. The largest real one, a `plan` carrying a whole config, is
/// bounded by the config's own limit.
pub const MAX_REQUEST: usize = crate::config::MAX_CONFIG_BYTES as usize + (64 << 10);

/// Accepts clients forever, handing every request to the agent's loop through `calls`.
pub async fn serve(listener: UnixListener, calls: mpsc::Sender<Call>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut reader = BufReader::new(read);
            loop {
                // One request per line, each at most MAX_REQUEST bytes: a client cannot make the
                // agent buffer without bound. A slow client only holds its own task.
                let mut line = Vec::new();
                match (&mut reader)
                    .take(MAX_REQUEST as u64 + 1)
                    .read_until(b'\n', &mut line)
                    .await
                {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let too_long = line.len() > MAX_REQUEST;
                let response = match serde_json::from_slice::<Request>(&line) {
                    _ if too_long => Response::from_result(Err(anyhow!(
                        "bad request: longer than {MAX_REQUEST} bytes"
                    ))),
                    Err(e) => Response::from_result(Err(anyhow!("bad request: {e}"))),
                    Ok(req) => {
                        let (tx, rx) = oneshot::channel();
                        if calls.send((req, tx)).await.is_err() {
                            break;
                        }
                        rx.await.unwrap_or_else(|_| {
                            Response::from_result(Err(anyhow!("the agent is shutting down")))
                        })
                    }
                };
                let mut out = serde_json::to_string(&response).unwrap_or_default();
                out.push('\n');
                // After an oversized request the rest of its line is unread: close.
                if write.write_all(out.as_bytes()).await.is_err() || too_long {
                    break;
                }
            }
        });
    }
}

/// Sends one request to the agent at `socket` and returns its answer as `T` (the type
/// [`Answer`] holds for that request), or the agent's refusal as an error.
pub fn call<T: DeserializeOwned>(socket: &Path, request: &Request) -> anyhow::Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let stream = UnixStream::connect(socket).await.map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::ConnectionRefused {
                "nobody listens on it: the agent that made it has stopped"
            } else {
                "is `xdplb run` running? does --config/--socket name its api_socket?"
            };
            anyhow!(
                "cannot reach the xdplb agent at {}: {e} ({hint})",
                socket.display()
            )
        })?;
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_string(request)?;
        line.push('\n');
        write.write_all(line.as_bytes()).await?;
        let mut lines = BufReader::new(read).lines();
        // The agent answers from its event loop, which never waits on the kernel; a change
        // waits at most a few seconds for new backends' MACs.
        let answer = tokio::time::timeout(ANSWER_TIMEOUT, lines.next_line())
            .await
            .map_err(|_| {
                anyhow!(
                    "the agent at {} did not answer within {} s",
                    socket.display(),
                    ANSWER_TIMEOUT.as_secs()
                )
            })??
            .ok_or_else(|| {
                anyhow!(
                    "the agent at {} closed the connection without answering",
                    socket.display()
                )
            })?;
        let response: Response =
            serde_json::from_str(&answer).context("the agent's answer is not valid JSON")?;
        if response.ok {
            Ok(response.result)
        } else {
            Err(anyhow!(
                "{}",
                response
                    .error
                    .unwrap_or_else(|| "the agent refused without a reason".into())
            ))
        }
    })?;
    serde_json::from_value(result)
        .context("the agent's answer does not have the expected shape (another xdplb version?)")
}

/// How long a client waits for an answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// [`nobody_answers`]' reason when there is no socket file: no agent has run yet.
pub const NO_SOCKET: &str = "no socket there";

/// Whether an agent answers on `socket`: `Ok(None)` when one does, `Ok(Some(why))` when none
/// does (no socket, or a socket left behind by an agent that stopped), and an error when the
/// socket cannot be tried at all (permissions, not a socket).
pub fn nobody_answers(socket: &Path) -> anyhow::Result<Option<String>> {
    use std::io::ErrorKind;
    match std::os::unix::net::UnixStream::connect(socket) {
        Ok(_) => Ok(None),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Some(NO_SOCKET.into())),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(Some(
            "the socket was left behind by an agent that stopped".into(),
        )),
        Err(e) => Err(anyhow!(
            "cannot try the agent's socket {}: {e}",
            socket.display()
        )),
    }
}

/// The socket a CLI command talks to: `--socket`, else the config's `api_socket`. Never a
/// guess: with two agents on a host, a default could reach the wrong one. A config that does
/// not validate still names its agent (the running one keeps its last good config, and that
/// is when an operator needs `status` most): its `api_socket` is read on its own, with a
/// warning that names what is wrong with the file.
pub fn socket_for(socket: Option<PathBuf>, config: &Path) -> anyhow::Result<PathBuf> {
    if let Some(s) = socket {
        return Ok(s);
    }
    let broken = match crate::config::Config::load(config) {
        Ok(c) => return Ok(c.api_socket),
        Err(e) => e,
    };
    match crate::config::api_socket_of_broken(config) {
        Some(found) => {
            eprintln!(
                "{}xdplb: warning: the config does not validate ({broken:#}); asking the agent on {}, which runs its last good config",
                crate::logging::prefix(log::Level::Warn),
                found.display()
            );
            Ok(found)
        }
        None => Err(broken).context(
            "finding the agent's api_socket in its config (or name the socket with --socket)",
        ),
    }
}
