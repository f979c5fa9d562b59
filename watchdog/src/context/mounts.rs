//! Mount tables from `/proc/<pid>/mountinfo`, and which mount a path is on.
//!
//! Only /proc is read: a path is matched against the mount points by its
//! text (longest prefix), never by stat() or open() of the path itself, which
//! would block on the very mount that hangs.
use serde::{Deserialize, Serialize};

/// One mountinfo line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountEntry {
    pub mount_id: u32,
    /// `major:minor` of the file system (shared by bind mounts of it).
    pub dev: String,
    /// Path inside the file system that is mounted here (bind mounts).
    pub root: String,
    pub mount_point: String,
    pub fs_type: String,
    pub source: String,
}

/// Decodes mountinfo's octal escapes (`\040` for a space, ...).
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a whole mountinfo file; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    // 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    let (left, right) = line.split_once(" - ")?;
    let f: Vec<&str> = left.split(' ').collect();
    let r: Vec<&str> = right.split(' ').collect();
    Some(MountEntry {
        mount_id: f.first()?.parse().ok()?,
        dev: (*f.get(2)?).to_owned(),
        root: unescape(f.get(3)?),
        mount_point: unescape(f.get(4)?),
        fs_type: (*r.first()?).to_owned(),
        source: r.get(1).map(|s| unescape(s)).unwrap_or_default(),
    })
}

/// Lexically normalises an absolute path: removes `.`, empty components and
/// resolves `..` (without following symlinks, which would need the mount).
pub fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Joins `rel` to the directory `base` (both as text); an absolute `rel`
/// stands alone.
pub fn join(base: &str, rel: &str) -> String {
    if rel.starts_with('/') {
        normalize(rel)
    } else if rel.is_empty() {
        normalize(base)
    } else {
        normalize(&format!("{base}/{rel}"))
    }
}

/// The mount `path` (absolute, normalised) is on: the longest mount point
/// that is a prefix of it at a component boundary. With several mounts on
/// the same point, the last one (the visible one) wins.
pub fn mount_of<'a>(mounts: &'a [MountEntry], path: &str) -> Option<&'a MountEntry> {
    let mut best: Option<&MountEntry> = None;
    for m in mounts {
        let mp = m.mount_point.as_str();
        let under = mp == "/"
            || path == mp
            || (path.starts_with(mp) && path.as_bytes().get(mp.len()) == Some(&b'/'));
        if under && best.is_none_or(|b| mp.len() >= b.mount_point.len()) {
            best = Some(m);
        }
    }
    best
}

/// The mount of the same file system in another table (e.g. the host's view
/// of a container's bind mount): same device, preferring the file system's
/// root being mounted.
pub fn same_fs<'a>(mounts: &'a [MountEntry], dev: &str) -> Option<&'a MountEntry> {
    mounts
        .iter()
        .filter(|m| m.dev == dev)
        .min_by_key(|m| (m.root != "/", m.mount_point.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
22 27 0:21 / /proc rw,relatime - proc proc rw
42 27 0:39 / /tmp/wd\\040fuse/mnt rw,nosuid,nodev,relatime - fuse wdhang rw,user_id=0
43 27 0:40 / /mnt/nfs rw - nfs4 server:/export rw,vers=4.2
44 27 0:41 / /var/lib/docker/overlay2/x/merged rw - overlay overlay rw
bad line
";

    #[test]
    fn parses_fields_and_escapes() {
        let m = parse(HOST);
        assert_eq!(m.len(), 5);
        assert_eq!(m[2].mount_point, "/tmp/wd fuse/mnt");
        assert_eq!(m[2].fs_type, "fuse");
        assert_eq!(m[2].source, "wdhang");
        assert_eq!(m[2].dev, "0:39");
        assert_eq!(m[3].source, "server:/export");
    }

    #[test]
    fn longest_prefix_at_component_boundary() {
        let m = parse(HOST);
        assert_eq!(mount_of(&m, "/tmp/wd fuse/mnt/hang").unwrap().dev, "0:39");
        assert_eq!(mount_of(&m, "/tmp/wd fuse/mnt").unwrap().dev, "0:39");
        // Not a component boundary.
        assert_eq!(mount_of(&m, "/tmp/wd fuse/mntx").unwrap().dev, "254:0");
        assert_eq!(mount_of(&m, "/mnt/nfs/a/b").unwrap().fs_type, "nfs4");
        assert_eq!(mount_of(&m, "/").unwrap().fs_type, "ext4");
    }

    #[test]
    fn stacked_mounts_last_wins() {
        let m = parse(
            "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n\
             2 1 0:50 / /data rw - ext4 /dev/sdb rw\n\
             3 2 0:51 / /data rw - fuse sshfs rw\n",
        );
        assert_eq!(mount_of(&m, "/data/x").unwrap().fs_type, "fuse");
    }

    #[test]
    fn joins_and_normalises() {
        assert_eq!(join("/a/b", "c/../d"), "/a/b/d");
        assert_eq!(join("/a/b", "/x/./y//z"), "/x/y/z");
        assert_eq!(join("/a", ""), "/a");
        assert_eq!(normalize("/../.."), "/");
    }

    #[test]
    fn same_fs_prefers_the_root_mount() {
        let m = parse(
            "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n\
             2 1 0:39 /vol /other/bind rw - fuse x rw\n\
             3 1 0:39 / /mnt/fuse rw - fuse x rw\n",
        );
        assert_eq!(same_fs(&m, "0:39").unwrap().mount_point, "/mnt/fuse");
        assert!(same_fs(&m, "9:9").is_none());
    }
}
