//! Where log lines go and how they look.
//!
//! On a terminal a line carries a timestamp. Under systemd, where stderr is the journal's stream,
//! it carries the sd-daemon priority prefix and no timestamp of our own, so `journalctl -p err`
//! finds the errors.

use std::io::Write as _;

/// The sd-daemon priority of a log level (`<3>` error … `<7>` debug; sd-daemon(3)).
pub fn priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// Whether stderr is the journal's stream: systemd sets `JOURNAL_STREAM=<dev>:<inode>` for a
/// unit whose output goes to the journal, and the variable is inherited by children whose
/// stderr may be redirected elsewhere, so the descriptor itself is compared (systemd.exec(5)).
pub fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    journal_stream_matches(&value, stderr_identity())
}

/// Whether `JOURNAL_STREAM`'s `<dev>:<inode>` names the file `identity` (device, inode).
pub fn journal_stream_matches(value: &str, identity: Option<(u64, u64)>) -> bool {
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    match (dev.parse::<u64>(), ino.parse::<u64>(), identity) {
        (Ok(dev), Ok(ino), Some(id)) => (dev, ino) == id,
        _ => false,
    }
}

/// Device and inode of file descriptor 2.
fn stderr_identity() -> Option<(u64, u64)> {
    // SAFETY: fstat writes into the zeroed struct it is given and reads nothing else.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return None;
    }
    Some((st.st_dev, st.st_ino))
}

/// Installs the logger: `RUST_LOG` filters (default `info`); journal lines carry their
/// priority, terminal lines a timestamp.
pub fn init() {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if stderr_is_journal() {
        builder
            .format(|buf, record| writeln!(buf, "<{}>{}", priority(record.level()), record.args()));
    } else {
        builder.format_timestamp_millis();
    }
    builder.init();
}

/// The prefix for a line of `level` written to stderr outside the logger (the CLI's final
/// error or warning): its priority when stderr is the journal, nothing otherwise.
pub fn prefix(level: log::Level) -> String {
    if stderr_is_journal() {
        format!("<{}>", priority(level))
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_is_matched_by_device_and_inode() {
        assert!(journal_stream_matches("8:12345", Some((8, 12345))));
        assert!(!journal_stream_matches("8:12345", Some((8, 12346))));
        assert!(!journal_stream_matches("8:12345", None));
        assert!(!journal_stream_matches("garbage", Some((8, 12345))));
        assert!(!journal_stream_matches("8:", Some((8, 0))));
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(log::Level::Error), 3);
        assert_eq!(priority(log::Level::Warn), 4);
        assert_eq!(priority(log::Level::Info), 6);
        assert_eq!(priority(log::Level::Debug), 7);
    }
}
