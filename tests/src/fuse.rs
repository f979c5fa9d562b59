//! [`HangingFuse`]: a FUSE file system of the test's own whose daemon reads
//! chosen requests and never answers them, so callers block in the kernel
//! (`request_wait_answer`) exactly like on a dead FUSE/NFS server.
//!
//! Layout of the mount (every name is relative to [`HangingFuse::mount_point`]):
//!
//! | path         | behaviour                                                    |
//! |--------------|--------------------------------------------------------------|
//! | `/`          | directory, answers                                           |
//! | `vol/`       | directory, answers (a docker `-v` source)                    |
//! | `file`       | 4 KiB regular file, answers                                  |
//! | `hang-read`  | regular file: lookup and open answer, `read` never does      |
//! | `hang*`, `vol/hang*` | lookup (stat, open, ...) never answers               |
//! | statfs       | never answers when started with [`FuseOpts::hang_statfs`]    |
//! | everything but `/` | lookup never answers after [`HangingFuse::hang_everything`] |
//!
//! A task blocked on a FUSE request sleeps interruptibly (`S`) until a
//! signal arrives; the daemon never answers the FUSE_INTERRUPT either, so the
//! task then waits in `TASK_KILLABLE` (`D`), and after SIGKILL in plain
//! `TASK_UNINTERRUPTIBLE` (`D`, unkillable). Go programs (dockerd) get there
//! by themselves: the runtime's preemption signal interrupts the first wait.
//!
//! Release: [`HangingFuse::abort`] writes to the fusectl `abort` file of this
//! connection, which fails every pending request with ENOTCONN. `Drop` always
//! aborts first, then kills the daemon (its own pid only), lazily unmounts and
//! removes its directory. Never needs anything but root and `/dev/fuse`.
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::{ChildGuard, PYTHON, skip_unless, skip_unless_root, wait};

/// The daemon (python3-fusepy, libfuse2). Blocked handlers wait on an event
/// that is never set; libfuse's other threads keep serving the rest.
const DAEMON: &str = r#"
import errno, os, stat, sys, threading
from fusepy import FUSE, FuseOSError, Operations
mnt, fsname, hang_statfs, flag = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
NEVER = threading.Event()
DIR = dict(st_mode=stat.S_IFDIR | 0o755, st_nlink=2)
FILE = dict(st_mode=stat.S_IFREG | 0o644, st_size=4096, st_nlink=1)
def hangs(path):
    name = path.rsplit("/", 1)[-1]
    return name.startswith("hang") and name != "hang-read"
class Ops(Operations):
    def getattr(self, path, fh=None):
        if hangs(path) or (path != "/" and os.path.exists(flag)):
            NEVER.wait()
        if path in ("/", "/vol"):
            return DIR
        if path in ("/file", "/hang-read", "/vol/file"):
            return FILE
        raise FuseOSError(errno.ENOENT)
    def readdir(self, path, fh):
        return [".", "..", "file", "hang-read", "vol"] if path == "/" else [".", "..", "file"]
    def open(self, path, flags):
        return 0
    def read(self, path, size, offset, fh):
        if path.endswith("/hang-read"):
            NEVER.wait()
        return b"x" * max(0, min(size, 4096 - offset))
    def statfs(self, path):
        if hang_statfs:
            NEVER.wait()
        return dict(f_bsize=4096, f_frsize=4096, f_blocks=1024, f_bfree=512, f_bavail=512,
                    f_files=100, f_ffree=50, f_namemax=255)
print("serving", flush=True)
FUSE(Ops(), mnt, foreground=True, nothreads=False, allow_other=True, fsname=fsname,
     attr_timeout=0, entry_timeout=0)
"#;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Options of [`HangingFuse::start_with`].
#[derive(Clone, Copy, Debug, Default)]
pub struct FuseOpts {
    /// `statfs` on the mount never answers either. Anything on the machine
    /// that statfs()es every mount (df) blocks while this is mounted: keep
    /// such a mount short-lived.
    pub hang_statfs: bool,
}

/// A mount point whose FUSE daemon never answers chosen requests.
pub struct HangingFuse {
    dir: PathBuf,
    mnt: PathBuf,
    fsname: String,
    /// `major:minor` of the mount; the minor is the fusectl connection id.
    dev: (u32, u32),
    /// Where fusectl is mounted (ours if `own_ctl`).
    ctl: PathBuf,
    own_ctl: bool,
    daemon: Option<ChildGuard>,
    aborted: bool,
}

/// Root, /dev/fuse, python3 with fusepy.
pub fn skip_unless_fuse_prereqs() -> bool {
    if !skip_unless_root() {
        return false;
    }
    if !skip_unless(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing (kernel without FUSE?)",
    ) {
        return false;
    }
    let fusepy = Command::new(PYTHON)
        .args(["-c", "import fusepy"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    skip_unless(
        fusepy,
        &format!("{PYTHON} cannot import fusepy (apt-get install python3-fusepy)"),
    )
}

/// One mountinfo line's fields we need.
struct MountLine {
    mount_point: String,
    dev: (u32, u32),
    fs_type: String,
    source: String,
}

fn mountinfo() -> Vec<MountLine> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let f: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            let (maj, min) = f.get(2)?.split_once(':')?;
            Some(MountLine {
                mount_point: crate::unescape_mountinfo(f.get(4)?),
                dev: (maj.parse().ok()?, min.parse().ok()?),
                fs_type: (*r.first()?).to_owned(),
                source: crate::unescape_mountinfo(r.get(1)?),
            })
        })
        .collect()
}

fn umount_detach(p: &Path) -> io::Result<()> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: valid C string; MNT_DETACH never blocks on the file system.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl HangingFuse {
    /// Mounts a fresh hanging file system (statfs answers). Panics with the
    /// reason when it cannot (the prerequisites are [`skip_unless_fuse_prereqs`]).
    pub fn start() -> Self {
        Self::start_with(FuseOpts::default()).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn start_with(opts: FuseOpts) -> Result<Self, String> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tag = format!("wd-fuse-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(&tag);
        let mnt = dir.join("mnt");
        fs::create_dir_all(&mnt).map_err(|e| format!("create {}: {e}", mnt.display()))?;
        let script = dir.join("hangfs.py");
        fs::write(&script, DAEMON).map_err(|e| format!("write {}: {e}", script.display()))?;
        let mut cmd = Command::new(PYTHON);
        cmd.arg(&script)
            .arg(&mnt)
            .arg(&tag)
            .arg(if opts.hang_statfs { "1" } else { "0" })
            .arg(dir.join("hang-all"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let daemon = ChildGuard::spawn(&mut cmd, &format!("FUSE daemon {tag}"))
            .map_err(|e| e.to_string())?;
        let mut me = Self {
            dir,
            mnt,
            fsname: tag,
            dev: (0, 0),
            ctl: PathBuf::new(),
            own_ctl: false,
            daemon: Some(daemon),
            aborted: false,
        };
        let what = format!("FUSE daemon {} to mount {}", me.fsname, me.mnt.display());
        let (fsname, mnt) = (me.fsname.clone(), me.mnt.clone());
        let daemon = me.daemon.as_mut().expect("just started");
        me.dev = wait::until_every(
            &what,
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                if let Some(m) = mountinfo()
                    .into_iter()
                    .find(|m| m.source == fsname && Path::new(&m.mount_point) == mnt)
                {
                    return Ok(Ok(m.dev));
                }
                match daemon.try_wait() {
                    Some(status) => {
                        let mut err = String::new();
                        if let Some(mut e) = daemon.child_mut().stderr.take() {
                            let _ = io::Read::read_to_string(&mut e, &mut err);
                        }
                        Ok(Err(format!(
                            "FUSE daemon {fsname} exited ({status}) before mounting: {err}"
                        )))
                    }
                    None => Err("not in /proc/self/mountinfo"),
                }
            },
        )??;
        me.attach_fusectl()?;
        Ok(me)
    }

    /// fusectl is a single super block: reuse a mount of it if there is one,
    /// else mount it in our own directory (unmounted on drop).
    fn attach_fusectl(&mut self) -> Result<(), String> {
        if let Some(m) = mountinfo().into_iter().find(|m| m.fs_type == "fusectl") {
            self.ctl = PathBuf::from(m.mount_point);
            return Ok(());
        }
        let ctl = self.dir.join("fusectl");
        fs::create_dir_all(&ctl).map_err(|e| format!("create {}: {e}", ctl.display()))?;
        let out = Command::new("mount")
            .args(["-t", "fusectl", "fusectl"])
            .arg(&ctl)
            .output()
            .map_err(|e| format!("mount fusectl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t fusectl fusectl {}: {}",
                ctl.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        self.ctl = ctl;
        self.own_ctl = true;
        Ok(())
    }

    pub fn mount_point(&self) -> &Path {
        &self.mnt
    }

    /// A path whose lookup never answers (stat, open, mkdir... block).
    pub fn hang_path(&self) -> PathBuf {
        self.mnt.join("hang")
    }

    /// A file whose lookup and open answer but whose `read` never does.
    pub fn read_hang_path(&self) -> PathBuf {
        self.mnt.join("hang-read")
    }

    /// A directory that answers; `vol/hang` below it hangs (docker volume source).
    pub fn vol_dir(&self) -> PathBuf {
        self.mnt.join("vol")
    }

    /// A regular file that answers.
    pub fn file_path(&self) -> PathBuf {
        self.mnt.join("file")
    }

    /// The source shown in mountinfo (unique per mount).
    pub fn fsname(&self) -> &str {
        &self.fsname
    }

    /// `major:minor` of the mount, as in mountinfo.
    pub fn dev(&self) -> String {
        format!("{}:{}", self.dev.0, self.dev.1)
    }

    /// The fusectl connection id (the mount's minor number).
    pub fn connection(&self) -> u32 {
        self.dev.1
    }

    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(ChildGuard::pid)
    }

    pub fn is_aborted(&self) -> bool {
        self.aborted
    }

    /// From now on every lookup but the root's never answers (`vol`, `file`
    /// too): what a daemon that died mid-way looks like to new callers.
    pub fn hang_everything(&self) -> Result<(), String> {
        let f = self.dir.join("hang-all");
        fs::write(&f, "1").map_err(|e| format!("create {}: {e}", f.display()))
    }

    /// Fail every pending and future request of this connection (ENOTCONN):
    /// releases all blocked tasks, even unkillable ones.
    pub fn abort(&mut self) -> Result<(), String> {
        if self.aborted {
            return Ok(());
        }
        let f = self.ctl.join(self.dev.1.to_string()).join("abort");
        match fs::write(&f, "1") {
            Ok(()) => {
                self.aborted = true;
                Ok(())
            }
            // The connection is gone already (daemon died and closed /dev/fuse).
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.aborted = true;
                Ok(())
            }
            Err(e) => Err(format!("write 1 to {}: {e}", f.display())),
        }
    }
}

impl Drop for HangingFuse {
    fn drop(&mut self) {
        if let Err(e) = self.abort() {
            eprintln!(
                "warning: could not abort FUSE connection {}: {e}",
                self.fsname
            );
        }
        // Only our own daemon (ChildGuard kills its process group).
        drop(self.daemon.take());
        if mountinfo()
            .iter()
            .any(|m| m.source == self.fsname && Path::new(&m.mount_point) == self.mnt)
            && let Err(e) = umount_detach(&self.mnt)
        {
            eprintln!("warning: umount {}: {e}", self.mnt.display());
        }
        if self.own_ctl
            && let Err(e) = umount_detach(&self.ctl)
        {
            eprintln!("warning: umount {}: {e}", self.ctl.display());
        }
        // remove_dir_all would descend into a mount still attached: only
        // remove what we created, non-recursively for the mount points.
        let _ = fs::remove_file(self.dir.join("hangfs.py"));
        let _ = fs::remove_file(self.dir.join("hang-all"));
        let _ = fs::remove_dir(&self.mnt);
        let _ = fs::remove_dir(self.dir.join("fusectl"));
        let _ = fs::remove_dir(&self.dir);
    }
}
