//! `abort_fuse`: the hung mount's connection in fusectl.
use std::path::PathBuf;

use super::{NodeExecutor, write_file};
use crate::context::procfs::ProcReader;
use crate::paths;

impl NodeExecutor {
    /// The fusectl directory of a FUSE mount's connection (`0:NN` -> NN):
    /// where mountinfo shows fusectl mounted (systemd mounts it at
    /// /sys/fs/fuse/connections), else that default.
    fn fuse_dir(&self, dev: &str) -> Result<(PathBuf, ProcReader), String> {
        let (major, minor) = dev
            .split_once(':')
            .and_then(|(a, m)| Some((a.parse::<u32>().ok()?, m.parse::<u32>().ok()?)))
            .ok_or_else(|| format!("{dev:?} is not a major:minor device"))?;
        if major != 0 {
            // fusectl names a connection by the whole device number; a
            // block-device FUSE mount (fuseblk) is not aborted by its minor.
            return Err(format!(
                "{dev} is a block-device FUSE mount (fuseblk): abort its connection by hand in fusectl"
            ));
        }
        let mountinfo = self
            .reader
            .read(&self.reader.rooted(paths::MOUNTINFO))
            .unwrap_or_default();
        let ctl = mountinfo
            .lines()
            .find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                right
                    .starts_with("fusectl ")
                    .then(|| left.split(' ').nth(4))
                    .flatten()
                    .map(crate::context::mounts::unescape)
            })
            .map(|mp| self.root.join(mp.trim_start_matches('/')))
            .unwrap_or_else(|| self.root.join(paths::FUSE_CONNECTIONS));
        // fusectl is a kernel file system: reading it never hangs.
        let reader = self.reader.with_cgroupfs(&ctl);
        Ok((ctl.join(minor.to_string()), reader))
    }

    pub(super) fn recheck_abort_fuse(
        &self,
        mount_point: &str,
        dev: &str,
    ) -> Result<String, String> {
        let (dir, ctl) = self.fuse_dir(dev)?;
        if !ctl.exists(&dir.join("abort")) {
            return Err(format!(
                "no FUSE connection {dev} in {} (unmounted, or fusectl not mounted: mount -t fusectl none /sys/fs/fuse/connections)",
                dir.display()
            ));
        }
        let mountinfo = self
            .reader
            .read(&self.reader.rooted(paths::MOUNTINFO))
            .map_err(|e| format!("mountinfo: {e}"))?;
        let mounted = mountinfo.lines().any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.len() > 4
                && f[2] == dev
                && crate::context::mounts::unescape(f[4]) == mount_point
                && l.split_once(" - ")
                    .is_some_and(|(_, r)| r.starts_with("fuse"))
        });
        if !mounted {
            return Err(format!("{mount_point} is no longer a FUSE mount of {dev}"));
        }
        let waiting = ctl
            .read_trim(&dir.join("waiting"))
            .unwrap_or_else(|| "?".into());
        Ok(format!(
            "abort FUSE connection {dev} of {mount_point} ({waiting} requests waiting)"
        ))
    }

    pub(super) fn abort_fuse(&self, mount_point: &str, dev: &str) -> Result<String, String> {
        let (dir, _) = self.fuse_dir(dev)?;
        write_file(&dir.join("abort"), "1")?;
        Ok(format!(
            "aborted FUSE connection {dev} of {mount_point}: its waiting requests fail with ENOTCONN"
        ))
    }
}
