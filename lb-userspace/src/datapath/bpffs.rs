//! Making sure a pin path is on a bpffs.
//!
//! Pins elsewhere fail with a bare EPERM, and a host or a shell without bpffs mounted is common: a
//! minimal image, a container, or `ip netns exec`, which remounts `/sys`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

/// `statfs(2)` magic of bpffs (`BPF_FS_MAGIC`, include/uapi/linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where bpffs is mounted by convention; the only place this mounts one itself.
pub const DEFAULT_MOUNT: &str = "/sys/fs/bpf";

/// What [`ensure`] found or did.
#[derive(Debug, PartialEq, Eq)]
pub enum Bpffs {
    /// `pin_path` already is (or would be created) on a bpffs.
    Mounted,
    /// bpffs was not mounted at [`DEFAULT_MOUNT`]; this mounted it there.
    MountedNow,
}

/// The nearest ancestor of `path` (or `path` itself) that exists: where a created directory
/// would live.
pub fn existing_ancestor(path: &Path) -> PathBuf {
    let mut p = path;
    while !p.exists() {
        match p.parent() {
            Some(parent) => p = parent,
            None => return PathBuf::from("/"),
        }
    }
    p.to_owned()
}

/// Whether `path` (which must exist) is on a bpffs (`statfs` says so).
pub fn on_bpffs(path: &Path) -> anyhow::Result<bool> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .with_context(|| format!("{} contains a NUL byte", path.display()))?;
    // SAFETY: statfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut fs) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statfs {}", path.display()));
    }
    // `f_type` is i64 on x86_64, a narrower integer on some other targets.
    Ok(fs.f_type as i64 == BPF_FS_MAGIC)
}

/// Makes sure `pin_path` is on a bpffs. Under [`DEFAULT_MOUNT`] it mounts one there when none
/// is (as Cilium's agent does); anywhere else it refuses with the command that would fix it,
/// since mounting over an operator's directory would hide what is in it.
pub fn ensure(pin_path: &Path) -> anyhow::Result<Bpffs> {
    if on_bpffs(&existing_ancestor(pin_path))? {
        return Ok(Bpffs::Mounted);
    }
    let default = Path::new(DEFAULT_MOUNT);
    if !pin_path.starts_with(default) {
        bail!(
            "{} is not on a bpffs, so pinned state cannot be kept there; mount one \
             (`mount -t bpf bpf {}`) or use a pin_path under {DEFAULT_MOUNT}",
            pin_path.display(),
            existing_ancestor(pin_path).display()
        );
    }
    std::fs::create_dir_all(default).with_context(|| format!("creating {DEFAULT_MOUNT}"))?;
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL in constant strings");
    let (source, target, fstype, options) = (c("bpf"), c(DEFAULT_MOUNT), c("bpf"), c("mode=0700"));
    // SAFETY: all pointers are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            options.as_ptr().cast(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        let hint = match crate::datapath::caps::effective() {
            Ok(eff)
                if !crate::datapath::caps::missing(eff, &[crate::datapath::caps::MOUNT])
                    .is_empty() =>
            {
                " (mounting needs CAP_SYS_ADMIN, which this process lacks)"
            }
            _ => "",
        };
        return Err(err).with_context(|| {
            format!(
                "bpffs is not mounted at {DEFAULT_MOUNT} and mounting it failed{hint}; \
                 run `mount -t bpf bpf {DEFAULT_MOUNT}` as root"
            )
        });
    }
    if !on_bpffs(default)? {
        bail!("mounted bpffs at {DEFAULT_MOUNT}, but statfs does not see it there");
    }
    Ok(Bpffs::MountedNow)
}

/// Logs a bpffs mount made for the pins: it belongs to this mount namespace, so state pinned
/// from a shell with its own (`ip netns exec`) is not seen from the host's `/sys/fs/bpf`.
pub fn mount_note(found: Bpffs) {
    if found == Bpffs::MountedNow {
        log::warn!(
            "bpffs was not mounted at {0}; mounted it there. Pinned state lives in this mount namespace (a shell from `ip netns exec` has its own {0})",
            DEFAULT_MOUNT
        );
    }
}
