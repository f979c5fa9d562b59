//! `force_unmount`: `umount2(MNT_FORCE)` of a hung network mount (`umount
//! -f`), never `MNT_DETACH`. The kernel first calls the file system's
//! `umount_begin`: NFS kills its pending RPCs, CIFS/SMB, Ceph and 9p fail
//! their pending requests, so tasks blocked on the server get an error;
//! the unmount itself then succeeds once no file is open on it (else
//! `EBUSY`, retried for a moment: the released tasks close their files).
//!
//! Which mount: the one the finding named, in the mount table the agent
//! read it from (the host's: this process's when the host root is `/`, PID
//! 1's when the agent runs in a pod with the host at `/host`), re-checked
//! in that table (mountinfo, never a stat of the mount). The unmount runs
//! in that namespace, on a thread of its own that leaves the agent's
//! file-system context (`unshare(CLONE_FS)`) and enters it (`setns`); no
//! fork. The thread has a deadline: an unmount that blocks does not hold
//! the agent.
//!
//! Which types ([`UNMOUNT_TYPES`]): the network file systems whose kernel
//! client has `umount_begin`: `nfs`, `nfs4`, `cifs`, `smb3`, `ceph`, `9p`.
//! FUSE mounts (`fuse`, `fuse.sshfs`...) are refused: `abort_fuse` is the
//! precise action for them (the same abort, without unmounting).
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{NodeExecutor, with_deadline};
use crate::context::mounts::{self, MountEntry};
use crate::paths;

/// The file system types `force_unmount` acts on.
pub const UNMOUNT_TYPES: [&str; 6] = ["nfs", "nfs4", "cifs", "smb3", "ceph", "9p"];
/// How long one unmount may take before the agent gives up on it.
const UNMOUNT_DEADLINE: Duration = Duration::from_secs(5);
/// How long an `EBUSY` unmount is retried (the released tasks close their
/// files).
const BUSY_RETRY: Duration = Duration::from_secs(1);

/// A mount that passed the `force_unmount` re-check.
pub(super) struct Unmountable {
    pub entry: MountEntry,
    pub ns: String,
}

impl Unmountable {
    pub fn describe(&self) -> String {
        format!(
            "umount -f {} ({} from {}) in {}",
            self.entry.mount_point, self.entry.fs_type, self.entry.source, self.ns
        )
    }
}

/// Why `force_unmount` must not touch a mount of type `fs_type` at
/// `mount_point`, or None.
pub(super) fn unmount_refusal(
    mount_point: &str,
    fs_type: &str,
    allowed: &[String],
) -> Option<String> {
    if mount_point == "/" {
        return Some("refusing the root file system".into());
    }
    if allowed.iter().any(|t| t == fs_type) {
        return None;
    }
    if fs_type == "fuse" || fs_type.starts_with("fuse.") || fs_type == "fuseblk" {
        return Some(format!(
            "{mount_point} is a FUSE mount ({fs_type}): abort_fuse is the action for it"
        ));
    }
    Some(format!(
        "{mount_point} is {fs_type}, not a network file system force_unmount acts on ({})",
        allowed.join(", ")
    ))
}

impl NodeExecutor {
    /// The mount table and namespace `force_unmount` works in: (mountinfo
    /// path relative to the root, the pid whose mount namespace to enter
    /// (None: this process's), words for records).
    fn unmount_ns(&self) -> (String, Option<u32>, String) {
        match self.mount_ns {
            Some(pid) => (
                format!("{}/{pid}/mountinfo", paths::PROC),
                Some(pid),
                format!("the mount namespace of process {pid}"),
            ),
            None if paths::host::get().is_host() => (
                paths::MOUNTINFO.to_owned(),
                None,
                "the host's mount namespace".to_owned(),
            ),
            None => (
                paths::host::mountinfo().to_owned(),
                Some(1),
                "the host's mount namespace (PID 1's)".to_owned(),
            ),
        }
    }

    pub(super) fn recheck_force_unmount(&self, mount_point: &str) -> Result<Unmountable, String> {
        let (table, _, ns) = self.unmount_ns();
        let text = self
            .reader
            .read(&self.reader.rooted(&table))
            .map_err(|e| format!("mount table: {e}"))?;
        // The top one of the mounts stacked there.
        let entry = mounts::parse(&text)
            .into_iter()
            .rfind(|m| m.mount_point == mount_point)
            .ok_or_else(|| format!("{mount_point} is no longer mounted in {ns}"))?;
        if let Some(why) = unmount_refusal(mount_point, &entry.fs_type, &self.unmount_types) {
            return Err(why);
        }
        Ok(Unmountable { entry, ns })
    }

    pub(super) fn force_unmount(&self, mount_point: &str) -> Result<String, String> {
        let m = self.recheck_force_unmount(mount_point)?;
        let (_, pid, ns) = self.unmount_ns();
        // The namespace is opened here (the file stays valid if the
        // process exits); /proc/<pid>/ns/mnt is nsfs, not a user mount.
        let ns_file = match pid {
            Some(p) => Some(
                std::fs::File::open(self.reader.pid_file(p, "ns/mnt"))
                    .map_err(|e| format!("mount namespace of process {p}: {e}"))?,
            ),
            None => None,
        };
        let target = PathBuf::from(&m.entry.mount_point);
        let t0 = Instant::now();
        let outcome = with_deadline(
            &format!("umount -f {mount_point}"),
            UNMOUNT_DEADLINE,
            move || unmount_in(ns_file, &target),
        )??;
        let took = t0.elapsed().as_secs_f64() * 1000.0;
        Ok(match outcome {
            Unmounted { busy_retries: 0 } => format!(
                "unmounted {mount_point} ({}) with MNT_FORCE in {ns} in {took:.0} ms",
                m.entry.fs_type
            ),
            Unmounted { busy_retries } => format!(
                "unmounted {mount_point} ({}) with MNT_FORCE in {ns} in {took:.0} ms (busy {busy_retries} times first: its pending requests were aborted, the blocked tasks let go)",
                m.entry.fs_type
            ),
            StillBusy => format!(
                "umount -f {mount_point} ({}) in {ns}: its pending requests were aborted, but it is still busy after {took:.0} ms (open files keep it mounted; the blocked tasks got errors)",
                m.entry.fs_type
            ),
        })
    }
}

enum UnmountOutcome {
    Unmounted { busy_retries: u32 },
    StillBusy,
}
use UnmountOutcome::*;

/// On the calling thread (a thread of its own): leave the process's
/// file-system context, enter `ns` (None: stay), `umount2(MNT_FORCE)`,
/// retried on `EBUSY` for [`BUSY_RETRY`].
fn unmount_in(
    ns: Option<std::fs::File>,
    target: &std::path::Path,
) -> Result<UnmountOutcome, String> {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::ffi::OsStrExt as _;
    if let Some(f) = &ns {
        // SAFETY: plain syscalls on this thread only; the thread ends after.
        if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
            return Err(format!(
                "unshare(CLONE_FS): {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: a valid nsfs fd.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
            return Err(format!(
                "setns to the mount namespace: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    let c = std::ffi::CString::new(target.as_os_str().as_bytes())
        .map_err(|_| "NUL in the mount point".to_string())?;
    let start = Instant::now();
    let mut busy = 0;
    loop {
        // SAFETY: a valid C string; MNT_FORCE only, never MNT_DETACH.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_FORCE) } == 0 {
            return Ok(Unmounted { busy_retries: busy });
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(format!("umount2({}, MNT_FORCE): {e}", target.display()));
        }
        busy += 1;
        if start.elapsed() >= BUSY_RETRY {
            return Ok(StillBusy);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types() -> Vec<String> {
        UNMOUNT_TYPES.iter().map(|t| (*t).to_owned()).collect()
    }

    #[test]
    fn only_network_file_systems_are_force_unmounted() {
        for t in UNMOUNT_TYPES {
            assert_eq!(unmount_refusal("/mnt/data", t, &types()), None, "{t}");
        }
        let e = unmount_refusal("/mnt/x", "fuse.sshfs", &types()).unwrap();
        assert!(e.contains("abort_fuse"), "{e}");
        let e = unmount_refusal("/var/lib/kubelet", "ext4", &types()).unwrap();
        assert!(e.contains("ext4, not a network file system"), "{e}");
        let e = unmount_refusal("/run", "tmpfs", &types()).unwrap();
        assert!(e.contains("nfs, nfs4, cifs, smb3, ceph, 9p"), "{e}");
        assert!(unmount_refusal("/", "nfs", &types()).is_some());
        // A test's relaxed list.
        assert_eq!(unmount_refusal("/tmp/t", "tmpfs", &["tmpfs".into()]), None);
    }
}
