//! A frozen ext4 file system of the test's own: an image file on a loop
//! device, mounted on a private directory and frozen with `fsfreeze -f`.
//! Writers block in uninterruptible sleep (`percpu_rwsem_wait` under
//! `sb_start_write`) until `fsfreeze -u`. The guard thaws, unmounts and
//! detaches the loop device on drop, also when the test fails.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use crate::{skip_unless, skip_unless_root, unix_ns};

/// The tools the fixture runs (util-linux, e2fsprogs).
const TOOLS: &[&str] = &["losetup", "mkfs.ext4", "fsfreeze", "mount", "umount"];

fn have(tool: &str) -> bool {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(tool).exists())
}

/// Root, the tools and loop devices (else skip, or fail in CI).
pub fn skip_unless_freeze_prereqs() -> bool {
    if !skip_unless_root() {
        return false;
    }
    let missing: Vec<&str> = TOOLS.iter().copied().filter(|t| !have(t)).collect();
    if !skip_unless(
        missing.is_empty(),
        &format!("missing {missing:?} (apt-get install util-linux e2fsprogs mount)"),
    ) {
        return false;
    }
    skip_unless(
        Path::new("/dev/loop-control").exists(),
        "/dev/loop-control is missing (kernel without loop devices?)",
    )
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let what = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

pub struct FrozenExt4 {
    dir: PathBuf,
    image: PathBuf,
    mnt: PathBuf,
    loopdev: Option<String>,
    mounted: bool,
    frozen: bool,
}

impl FrozenExt4 {
    /// Makes, mounts (not yet frozen) a 32 MiB ext4 file system.
    pub fn mount() -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!(
            "wd-freeze-{}-{}",
            std::process::id(),
            unix_ns(SystemTime::now())
        ));
        fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let mut me = Self {
            image: dir.join("fs.img"),
            mnt: dir.join("mnt"),
            dir,
            loopdev: None,
            mounted: false,
            frozen: false,
        };
        fs::create_dir(&me.mnt).map_err(|e| format!("create {}: {e}", me.mnt.display()))?;
        let f = fs::File::create(&me.image).map_err(|e| format!("create image: {e}"))?;
        f.set_len(32 << 20)
            .map_err(|e| format!("size image: {e}"))?;
        drop(f);
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&me.image))?;
        let dev = run(Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&me.image))?;
        me.loopdev = Some(dev.clone());
        run(Command::new("mount")
            .args(["-t", "ext4"])
            .arg(&dev)
            .arg(&me.mnt))?;
        me.mounted = true;
        Ok(me)
    }

    pub fn mount_point(&self) -> &Path {
        &self.mnt
    }

    /// The loop device (`/dev/loopN`), the mount's source.
    pub fn device(&self) -> &str {
        self.loopdev.as_deref().unwrap_or("")
    }

    pub fn freeze(&mut self) -> Result<(), String> {
        run(Command::new("fsfreeze").arg("-f").arg(&self.mnt))?;
        self.frozen = true;
        Ok(())
    }

    pub fn thaw(&mut self) -> Result<(), String> {
        if self.frozen {
            run(Command::new("fsfreeze").arg("-u").arg(&self.mnt))?;
            self.frozen = false;
        }
        Ok(())
    }
}

impl Drop for FrozenExt4 {
    fn drop(&mut self) {
        if let Err(e) = self.thaw() {
            eprintln!("warning: {e}");
        }
        if self.mounted
            && let Err(e) = run(Command::new("umount").arg(&self.mnt))
        {
            eprintln!("warning: {e}; detaching lazily");
            let _ = run(Command::new("umount").arg("-l").arg(&self.mnt));
        }
        if let Some(dev) = self.loopdev.take()
            && let Err(e) = run(Command::new("losetup").arg("-d").arg(&dev))
        {
            eprintln!("warning: {e}");
        }
        let _ = fs::remove_file(&self.image);
        let _ = fs::remove_dir(&self.mnt);
        let _ = fs::remove_dir(&self.dir);
    }
}
