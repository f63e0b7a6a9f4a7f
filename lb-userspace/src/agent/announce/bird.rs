//! A client for BIRD's control socket (the protocol `birdc` speaks).
//!
//! It sends one command, reads its reply lines, and turns BIRD's errors into errors that name the
//! socket.
//!
//! Replies are lines of a four-digit code and text; `-` after the code (or a leading space)
//! continues a reply, a space after the code ends it. 0xxx is success, 8xxx a run-time error,
//! 9xxx a parse error (BIRD's "Reply codes of BIRD command-line interface").

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::{bail, Context};

/// BIRD answers locally; a reply slower than this means it is stuck, not busy.
const TIMEOUT: Duration = Duration::from_secs(10);

/// One connection to BIRD's control socket.
pub struct Bird {
    reader: BufReader<UnixStream>,
    socket: String,
}

impl Bird {
    /// Connects and reads BIRD's welcome (code 0001).
    pub fn connect(socket: &Path) -> anyhow::Result<Bird> {
        let name = socket.display().to_string();
        let stream = UnixStream::connect(socket).with_context(|| {
            format!("cannot reach BIRD's control socket {name} (is bird running, and is this its `-s` socket?)")
        })?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        let mut bird = Bird {
            reader: BufReader::new(stream),
            socket: name,
        };
        let (code, welcome) = bird.reply()?;
        if code != 1 {
            bail!("{} did not greet as BIRD does: {welcome:?}", bird.socket);
        }
        Ok(bird)
    }

    /// Sends `command` and returns the final reply code and every line's text.
    pub fn command(&mut self, command: &str) -> anyhow::Result<(u16, Vec<String>)> {
        let stream = self.reader.get_mut();
        writeln!(stream, "{command}")
            .with_context(|| format!("sending {command:?} to BIRD at {}", self.socket))?;
        let mut lines = Vec::new();
        loop {
            let (code, text, last) = self.line(command)?;
            lines.push(text);
            if last {
                if code >= 8000 {
                    bail!(
                        "BIRD at {} refused {command:?}: {}",
                        self.socket,
                        lines.join("; ")
                    );
                }
                return Ok((code, lines));
            }
        }
    }

    /// `configure`: BIRD rereads its configuration (with the files it includes). Returns
    /// once BIRD has applied it.
    pub fn configure(&mut self) -> anyhow::Result<()> {
        let (code, lines) = self.command("configure")?;
        match code {
            // Reconfigured / in progress (applied asynchronously, protocol by protocol).
            3..=5 => Ok(()),
            _ => bail!(
                "BIRD at {} answered configure with {code:04}: {}",
                self.socket,
                lines.join("; ")
            ),
        }
    }

    fn reply(&mut self) -> anyhow::Result<(u16, String)> {
        let (code, text, _) = self.line("the welcome")?;
        Ok((code, text))
    }

    /// One reply line: (code, text, whether it ends the reply). A continuation line that
    /// starts with a space carries the code of the line before; it is reported as 0.
    fn line(&mut self, waiting_for: &str) -> anyhow::Result<(u16, String, bool)> {
        let mut raw = String::new();
        let n = self.reader.read_line(&mut raw).with_context(|| {
            format!(
                "reading BIRD's answer to {waiting_for} from {}",
                self.socket
            )
        })?;
        if n == 0 {
            bail!(
                "BIRD at {} closed the connection before answering {waiting_for}",
                self.socket
            );
        }
        let raw = raw.trim_end_matches(['\r', '\n']);
        if let Some(text) = raw.strip_prefix(' ') {
            return Ok((0, text.to_owned(), false));
        }
        let code = raw.get(..4).and_then(|c| c.parse::<u16>().ok());
        match (code, raw.as_bytes().get(4)) {
            (Some(code), Some(b'-')) => Ok((code, raw[5..].to_owned(), false)),
            (Some(code), Some(b' ')) => Ok((code, raw[5..].to_owned(), true)),
            (Some(code), None) => Ok((code, String::new(), true)),
            _ => bail!(
                "BIRD at {} sent a line that is not a reply: {raw:?}",
                self.socket
            ),
        }
    }
}
