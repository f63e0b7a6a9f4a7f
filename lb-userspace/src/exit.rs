//! The exit codes of every `xdplb` command.
//!
//! It also holds the marker of a start-up failure that no restart can fix, which systemd is told
//! not to retry.

/// Done.
pub const OK: i32 = 0;
/// Refused or failed (nothing changed; the message says why).
pub const FAILED: i32 = 1;
/// A usage error: an unknown command, option or value (clap's own code).
pub const USAGE: i32 = 2;
/// Applied, but some configured backend is not in service (named on stderr).
pub const NOT_IN_SERVICE: i32 = 3;
/// `xdplb run` cannot start for a reason that restarting it will not change ([`CannotStart`]).
/// 78 is `EX_CONFIG` of sysexits.h, which systemd shows as `78/CONFIG`; the unit's
/// `RestartPreventExitStatus=78` stops at the first such failure.
pub const CANNOT_START: i32 = 78;

/// Context for a start-up error that restarting the agent cannot fix: a missing capability, a
/// config that cannot be read or does not validate, pinned state this build must not reuse.
/// `xdplb run` exits with [`CANNOT_START`] when its error carries this, so systemd does not
/// retry and `systemctl status` shows the run that failed, its reason included. (Restarting
/// until the start limit would end on a start that never ran, and systemd 252 shows that one.)
#[derive(Debug, Clone, Copy)]
pub struct CannotStart;

impl std::fmt::Display for CannotStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cannot start (a restart will not fix this)")
    }
}

impl std::error::Error for CannotStart {}

/// The exit code for an error of `xdplb run`: the marker must be the outermost context (anyhow
/// finds a context by downcasting the error itself, not its chain's links).
pub fn code_of(e: &anyhow::Error) -> i32 {
    if e.downcast_ref::<CannotStart>().is_some() {
        CANNOT_START
    } else {
        FAILED
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;

    use super::*;

    #[test]
    fn only_errors_marked_cannot_start_exit_78() {
        let plain = anyhow::anyhow!("interface eth9 does not exist");
        assert_eq!(code_of(&plain), FAILED);
        let marked: anyhow::Error = Err::<(), _>(anyhow::anyhow!("missing capability: CAP_BPF"))
            .context(CannotStart)
            .unwrap_err();
        assert_eq!(code_of(&marked), CANNOT_START);
        assert_eq!(
            format!("{marked:#}"),
            "cannot start (a restart will not fix this): missing capability: CAP_BPF"
        );
    }
}
