//! Processes under chosen names: the kernel names a task after the file it
//! executed, so a symlink to python3 called `runc` gives a process whose
//! comm is `runc` (what the agent watches) without touching any real runtime.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use crate::{ChildGuard, PYTHON, unix_ns};

/// A private directory of symlinks to python3, removed on drop.
pub struct ProcessNames {
    dir: PathBuf,
}

impl ProcessNames {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "wd-names-{}-{}",
            std::process::id(),
            unix_ns(SystemTime::now())
        ));
        fs::create_dir_all(&dir).expect("create names dir");
        Self { dir }
    }

    /// The directory, for other files of the test (fifos, targets).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `python3 -c script arg` as a process named `name`; stdin and
    /// stderr closed (a traceback after a released hang is expected).
    pub fn spawn(&self, name: &str, script: &str, arg: &Path) -> ChildGuard {
        let exe = self.dir.join(name);
        if !exe.exists() {
            std::os::unix::fs::symlink(PYTHON, &exe).expect("symlink python3");
        }
        let mut cmd = Command::new(&exe);
        cmd.args(["-c", script])
            .arg(arg)
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        ChildGuard::spawn(&mut cmd, &format!("{name} ({script})")).expect("spawn")
    }
}

impl Default for ProcessNames {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ProcessNames {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
