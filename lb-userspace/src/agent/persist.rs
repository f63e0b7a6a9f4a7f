//! The agent's config file: written back after API changes, and watched for edits.
//!
//! It is written atomically, so a restart comes back to the state the API left. An edit is applied
//! only once the file reads the same twice, so a half-written file is never applied.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::config::{read_text, Config};

/// The file the agent runs from, and what it last saw in it.
pub struct ConfigFile {
    pub path: PathBuf,
    /// The text last applied or written by the agent (to tell its own writes from an edit).
    text: String,
    /// A text already refused, so a broken file is reported once, not every second.
    rejected: Option<String>,
    /// A changed text seen once, offered when the next read agrees.
    pending: Option<String>,
    /// Why the file last could not be read, and whether that was reported (once, not every
    /// second).
    unreadable: Option<(String, bool)>,
}

impl ConfigFile {
    /// Reads and validates the file the agent starts from.
    pub fn open(path: &Path) -> anyhow::Result<(ConfigFile, Config)> {
        let text = read_text(path)?;
        let cfg = Config::from_yaml(&text, &path.display().to_string())?;
        let file = ConfigFile {
            path: path.to_path_buf(),
            text,
            rejected: None,
            pending: None,
            unreadable: None,
        };
        Ok((file, cfg))
    }

    /// The file's current text, to re-apply (SIGHUP, `xdplb reload`).
    pub fn read(&self) -> anyhow::Result<String> {
        read_text(&self.path)
    }

    /// Parses `text` as read from this file.
    pub fn parse(&self, text: &str) -> anyhow::Result<Config> {
        Config::from_yaml(text, &self.path.display().to_string())
    }

    /// A changed text to try, when someone edited the file. Editors and `echo >` truncate
    /// before they write, so a read can catch a half-written file: a changed text is offered
    /// only once two reads a tick apart agree. Call once per tick.
    /// A file that cannot be read (gone, too big, not text) is reported once per cause, when
    /// two reads agree (an editor may remove the file for a moment).
    pub fn poll(&mut self) -> Option<anyhow::Result<String>> {
        let text = match read_text(&self.path) {
            Ok(t) => t,
            Err(e) => {
                let why = format!("{e:#}");
                self.pending = None;
                return match &self.unreadable {
                    Some((seen, reported)) if *seen == why => {
                        if *reported {
                            return None;
                        }
                        self.unreadable = Some((why, true));
                        Some(Err(e))
                    }
                    _ => {
                        self.unreadable = Some((why, false));
                        None
                    }
                };
            }
        };
        self.unreadable = None;
        if text == self.text || self.rejected.as_deref() == Some(text.as_str()) {
            self.pending = None;
            return None;
        }
        if self.pending.as_deref() != Some(text.as_str()) {
            self.pending = Some(text);
            return None;
        }
        self.pending = None;
        Some(Ok(text))
    }

    /// Records the outcome of applying `text`: accepted texts become the file's known state,
    /// a refused one is not offered again until the file changes.
    pub fn outcome(&mut self, text: String, accepted: bool) {
        if accepted {
            self.text = text;
            self.rejected = None;
        } else {
            self.rejected = Some(text);
        }
    }

    /// Writes `cfg` to the file so that readers see the old or the new file, never a torn
    /// one (temp file, fsync, rename).
    pub fn write(&mut self, cfg: &Config) -> anyhow::Result<()> {
        use std::io::Write as _;
        let text = format!(
            "# Written by xdplb after a change through its API; comments are not kept.\n{}",
            serde_yaml::to_string(cfg).context("encoding the config")?
        );
        let tmp = self.path.with_extension("yaml.xdplb-tmp");
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("replacing {}", self.path.display()))?;
        self.text = text;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MAX_CONFIG_BYTES;

    const CONFIG: &str = "interface: lo\nvips: []\n";

    #[test]
    fn an_edit_is_offered_once_two_reads_agree_and_a_refusal_once() {
        let dir = std::env::temp_dir().join(format!("xdplb-persist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lb.yaml");
        std::fs::write(&path, CONFIG).unwrap();
        let (mut file, cfg) = ConfigFile::open(&path).unwrap();
        assert!(file.poll().is_none());
        std::fs::write(&path, "interface: lo\nvips: [").unwrap();
        assert!(file.poll().is_none(), "first read of a change is held back");
        let broken = file.poll().unwrap().unwrap();
        file.outcome(broken, false);
        assert!(file.poll().is_none(), "a refused text is not offered again");
        file.write(&cfg).unwrap();
        assert!(file.poll().is_none(), "our own write is no edit");
        assert_eq!(file.parse(&file.read().unwrap()).unwrap(), cfg);
        // A file that cannot be read is reported once two reads agree, and then not again.
        std::fs::write(&path, vec![b'#'; MAX_CONFIG_BYTES as usize + 1]).unwrap();
        assert!(file.poll().is_none());
        let err = file.poll().unwrap().unwrap_err();
        assert!(format!("{err:#}").contains("larger than 4 MiB"), "{err:#}");
        assert!(file.poll().is_none(), "reported once");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
