//! The pids cgroup hierarchy: where it is mounted (v1 `pids` controller or the
//! v2 unified tree), reading its control files, mapping kernel cgroup ids to
//! paths. cgroupfs is kernfs: reading it never touches user storage. Every
//! read goes through the [`ProcReader`], allowed below the hierarchy's mount.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::{
    context::procfs::ProcReader,
    model::{
        PidsCgroupState,
        cgroup::{ancestry, is_below, normalize},
    },
    paths,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CgroupVersion {
    V1,
    V2,
}

/// Where the pids controller's hierarchy is mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PidsHierarchy {
    pub mount: PathBuf,
    pub version: CgroupVersion,
    /// Reads /proc, /sys and this mount (a cgroupfs) only.
    reader: ProcReader,
}

impl PidsHierarchy {
    fn new(reader: &ProcReader, mount: PathBuf, version: CgroupVersion) -> Self {
        Self {
            reader: reader.with_cgroupfs(&mount),
            mount,
            version,
        }
    }
}

/// Find the pids hierarchy from a mountinfo text. `root` prefixes the mount
/// point (recorded trees); on a live system it is `/`.
pub fn find_pids_hierarchy(
    reader: &ProcReader,
    root: &Path,
    mountinfo: &str,
) -> Option<PidsHierarchy> {
    let mut v2 = None;
    for line in mountinfo.lines() {
        // id parent maj:min root mountpoint opts [optional...] - fstype source superopts
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = left.split(' ').nth(4)?;
        let mut r = right.split(' ');
        let fstype = r.next().unwrap_or("");
        let superopts = r.nth(1).unwrap_or("");
        let mp = root.join(crate::context::mounts::unescape(mount_point).trim_start_matches('/'));
        if fstype == "cgroup" && superopts.split(',').any(|o| o == "pids") {
            return Some(PidsHierarchy::new(reader, mp, CgroupVersion::V1));
        }
        if fstype == "cgroup2" && v2.is_none() {
            // A cgroup2 mount by mountinfo: cgroupfs, readable.
            let controllers = reader
                .with_cgroupfs(&mp)
                .read(&mp.join("cgroup.controllers"))
                .unwrap_or_default();
            if controllers.split_whitespace().any(|c| c == "pids") {
                v2 = Some(PidsHierarchy::new(reader, mp, CgroupVersion::V2));
            }
        }
    }
    v2
}

/// The pids hierarchy of a root: from its mountinfo, else the conventional
/// mount points (recorded trees).
pub fn discover(reader: &ProcReader) -> Option<PidsHierarchy> {
    let root = reader.root();
    let mountinfo = reader
        .read(&reader.rooted(paths::MOUNTINFO))
        .unwrap_or_default();
    find_pids_hierarchy(reader, root, &mountinfo).or_else(|| {
        let v1 = reader.rooted(paths::CGROUP_V1_PIDS);
        if reader.exists(&v1.join("cgroup.procs")) || reader.is_dir(&v1) {
            return Some(PidsHierarchy::new(reader, v1, CgroupVersion::V1));
        }
        let v2 = reader.rooted(paths::CGROUP_V2);
        let controllers = reader.read(&v2.join("cgroup.controllers")).ok()?;
        controllers
            .split_whitespace()
            .any(|c| c == "pids")
            .then(|| PidsHierarchy::new(reader, v2, CgroupVersion::V2))
    })
}

impl PidsHierarchy {
    pub fn dir(&self, path: &str) -> PathBuf {
        self.mount.join(path.trim_start_matches('/'))
    }

    /// Read one cgroup's pids files. None when the cgroup is gone or is the
    /// root (which has no pids.max).
    pub fn state(&self, path: &str) -> Option<PidsCgroupState> {
        let dir = self.dir(path);
        let max = self.reader.read_trim(&dir.join("pids.max"))?;
        let current = self
            .reader
            .read_trim(&dir.join("pids.current"))?
            .parse()
            .ok()?;
        let events_max = self
            .reader
            .read_trim(&dir.join("pids.events"))
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("max ").and_then(|v| v.trim().parse().ok()))
            })
            .unwrap_or(0);
        Some(PidsCgroupState {
            path: normalize(path),
            current,
            max: if max == "max" { None } else { max.parse().ok() },
            events_max,
        })
    }

    /// `path` and its ancestors that have pids files, leaf first.
    pub fn chain(&self, path: &str) -> Vec<PidsCgroupState> {
        ancestry(path)
            .iter()
            .filter_map(|p| self.state(p))
            .collect()
    }

    /// Every cgroup below the mount, as (path, directory inode).
    pub fn walk(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut stack = vec!["/".to_owned()];
        while let Some(p) = stack.pop() {
            let dir = self.dir(&p);
            if let Ok(ino) = self.reader.inode(&dir) {
                out.push((p.clone(), ino));
            }
            let Ok(entries) = self.reader.list(&dir) else {
                continue;
            };
            for e in entries {
                if e.is_dir {
                    let name = e.name;
                    stack.push(if p == "/" {
                        format!("/{name}")
                    } else {
                        format!("{p}/{name}")
                    });
                }
            }
        }
        out
    }

    /// Every cgroup with a finite pids.max, and every cgroup below one: on
    /// cgroup v1 a rejection is counted in the forking task's own cgroup.
    pub fn limited_and_below(&self) -> Vec<PidsCgroupState> {
        let mut paths: Vec<String> = self.walk().into_iter().map(|(p, _)| p).collect();
        paths.sort();
        let mut limited: Vec<String> = Vec::new();
        let mut out = Vec::new();
        for p in paths {
            let Some(max) = self.reader.read_trim(&self.dir(&p).join("pids.max")) else {
                continue;
            };
            if max == "max" && !limited.iter().any(|l| is_below(&p, l)) {
                continue;
            }
            if let Some(s) = self.state(&p) {
                if s.max.is_some() {
                    limited.push(p);
                }
                out.push(s);
            }
        }
        out
    }

    /// Process ids in `path` and its descendants.
    pub fn procs_below(&self, path: &str) -> Vec<u32> {
        let base = self.dir(path);
        let mut out = Vec::new();
        let mut stack = vec![base];
        while let Some(dir) = stack.pop() {
            if let Ok(s) = self.reader.read(&dir.join("cgroup.procs")) {
                out.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
            }
            if let Ok(entries) = self.reader.list(&dir) {
                stack.extend(
                    entries
                        .into_iter()
                        .filter(|e| e.is_dir)
                        .map(|e| dir.join(e.name)),
                );
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Kernfs id (directory inode) -> cgroup path, rebuilt when an id is unknown.
#[derive(Debug, Default)]
pub struct CgroupIndex {
    by_id: HashMap<u64, String>,
    /// When the hierarchy was last walked: an id that is still unknown
    /// (cgroup already removed) must not cost a walk per event in a storm.
    walked: Option<std::time::Instant>,
}

/// Minimum time between two walks of the hierarchy for unknown ids.
const REWALK_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

impl CgroupIndex {
    pub fn lookup(&mut self, h: &PidsHierarchy, id: u64) -> Option<String> {
        if id == 0 {
            return None;
        }
        if let Some(p) = self.by_id.get(&id) {
            return Some(p.clone());
        }
        if self.walked.is_some_and(|t| t.elapsed() < REWALK_EVERY) {
            return None;
        }
        self.walked = Some(std::time::Instant::now());
        self.by_id = h.walk().into_iter().map(|(p, ino)| (ino, p)).collect();
        self.by_id.get(&id).cloned()
    }
}

/// The pids-hierarchy path of a process from its /proc/<pid>/cgroup text.
pub fn pids_path_from_proc_cgroup(text: &str, version: CgroupVersion) -> Option<String> {
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (_id, ctrls, path) = (f.next()?, f.next()?, f.next()?);
        match version {
            CgroupVersion::V1 if ctrls.split(',').any(|c| c == "pids") => {
                return Some(normalize(path));
            }
            CgroupVersion::V2 if ctrls.is_empty() => return Some(normalize(path)),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_v1_pids_mount() {
        let r = ProcReader::new(Path::new("/"));
        let h = find_pids_hierarchy(&r, Path::new("/"), HYBRID_MOUNTINFO).unwrap();
        assert_eq!(h.mount, Path::new("/sys/fs/cgroup/pids"));
        assert_eq!(h.version, CgroupVersion::V1);
    }

    #[test]
    fn proc_cgroup_lines() {
        let v1 = "12:pids:/kubepods/burstable/podabc/0123456789abcdef\n11:memory:/x\n0::/\n";
        assert_eq!(
            pids_path_from_proc_cgroup(v1, CgroupVersion::V1).as_deref(),
            Some("/kubepods/burstable/podabc/0123456789abcdef")
        );
        let v2 = "0::/kubepods.slice/kubepods-pod1.slice\n";
        assert_eq!(
            pids_path_from_proc_cgroup(v2, CgroupVersion::V2).as_deref(),
            Some("/kubepods.slice/kubepods-pod1.slice")
        );
        assert_eq!(
            pids_path_from_proc_cgroup("garbage", CgroupVersion::V1),
            None
        );
    }

    #[test]
    fn mount_point_escapes() {
        assert_eq!(crate::context::mounts::unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(crate::context::mounts::unescape("/plain"), "/plain");
    }
}
