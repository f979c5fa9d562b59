//! Cgroup paths inside a hierarchy (`/kubepods/burstable/pod.../...`): pure
//! string operations shared by the node context and the engine.

/// `path` and its ancestors up to `/`, self first.
pub fn ancestry(path: &str) -> Vec<String> {
    let mut out = vec![normalize(path)];
    while let Some(last) = out.last().filter(|p| p.as_str() != "/") {
        let parent = match last.rsplit_once('/') {
            Some(("", _)) | None => "/".to_owned(),
            Some((parent, _)) => parent.to_owned(),
        };
        out.push(parent);
    }
    out
}

/// Whether `path` is strictly below `ancestor`.
pub fn is_below(path: &str, ancestor: &str) -> bool {
    path != ancestor
        && (ancestor == "/"
            || path
                .strip_prefix(ancestor)
                .is_some_and(|r| r.starts_with('/')))
}

pub fn normalize(path: &str) -> String {
    let t = path.trim_end_matches('/');
    if t.is_empty() {
        "/".to_owned()
    } else if t.starts_with('/') {
        t.to_owned()
    } else {
        format!("/{t}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestry_and_below() {
        assert_eq!(ancestry("/a/b"), vec!["/a/b", "/a", "/"]);
        assert_eq!(ancestry("/"), vec!["/"]);
        assert!(is_below("/a/b", "/a") && is_below("/a", "/"));
        assert!(!is_below("/ab", "/a") && !is_below("/a", "/a"));
    }

    #[test]
    fn normalizes() {
        assert_eq!(normalize(""), "/");
        assert_eq!(normalize("/a/b/"), "/a/b");
        assert_eq!(normalize("a"), "/a");
    }
}
