//! Unix-socket queues from the kernel's sock_diag netlink interface (what
//! `ss -x` shows): for each socket its inode, state, bound path, peer inode
//! and queue lengths. One dump of the node's unix sockets per call; the
//! netlink socket has a receive timeout, so a call cannot hang the agent.
use std::{io, os::fd::AsRawFd};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const UDIAG_SHOW_NAME: u32 = 0x1;
const UDIAG_SHOW_PEER: u32 = 0x4;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_RQLEN: u16 = 4;
/// `TCP_LISTEN` as unix sockets report it.
pub const STATE_LISTEN: u8 = 10;

/// One unix socket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnixSock {
    pub inode: u64,
    pub state: u8,
    /// The bound path (accepted sockets carry their listener's).
    pub name: Option<String>,
    pub peer: Option<u64>,
    /// Listening: (connections waiting for accept, backlog). Others: (bytes
    /// queued to be read by this socket, bytes it sent not yet consumed).
    pub rqlen: Option<(u32, u32)>,
}

impl UnixSock {
    pub fn listening(&self) -> bool {
        self.state == STATE_LISTEN
    }
}

struct Fd(i32);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: our own descriptor.
        unsafe { libc::close(self.0) };
    }
}

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> i32 {
        self.0
    }
}

fn cvt(r: i64) -> io::Result<i64> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Dump every unix socket of this network namespace.
pub fn dump() -> io::Result<Vec<UnixSock>> {
    // SAFETY: plain socket(2).
    let fd = Fd(cvt(i64::from(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    }))? as i32);
    let tv = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: valid option pointer and length.
    unsafe {
        libc::setsockopt(
            fd.0,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as u32,
        )
    };
    // nlmsghdr (16) + unix_diag_req (24).
    let mut req = [0u8; 40];
    req[0..4].copy_from_slice(&40u32.to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = libc::AF_UNIX as u8;
    req[20..24].copy_from_slice(&u32::MAX.to_ne_bytes()); // every state
    req[28..32]
        .copy_from_slice(&(UDIAG_SHOW_NAME | UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN).to_ne_bytes());
    // SAFETY: the kernel's address (zeroed sockaddr_nl, family set).
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: valid buffer and address.
    cvt(unsafe {
        libc::sendto(
            fd.0,
            req.as_ptr().cast(),
            req.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    } as i64)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: valid buffer.
        let n = cvt(unsafe { libc::recv(fd.0, buf.as_mut_ptr().cast(), buf.len(), 0) } as i64)?
            as usize;
        if n == 0 {
            return Ok(out);
        }
        if parse_messages(&buf[..n], &mut out)? {
            return Ok(out);
        }
    }
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_ne_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Parse one datagram of netlink messages; true at the end of the dump.
pub fn parse_messages(mut b: &[u8], out: &mut Vec<UnixSock>) -> io::Result<bool> {
    while b.len() >= 16 {
        let len = u32_at(b, 0) as usize;
        let ty = u16_at(b, 4);
        if len < 16 || len > b.len() {
            return Err(io::Error::other(format!(
                "sock_diag: bad netlink message length {len}"
            )));
        }
        match ty {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = if len >= 20 {
                    -(u32_at(b, 16) as i32)
                } else {
                    0
                };
                return Err(io::Error::from_raw_os_error(errno));
            }
            SOCK_DIAG_BY_FAMILY => {
                if let Some(s) = parse_unix(&b[16..len]) {
                    out.push(s);
                }
            }
            _ => {}
        }
        b = &b[len.next_multiple_of(4).min(b.len())..];
    }
    Ok(false)
}

/// unix_diag_msg (16 bytes) then attributes.
fn parse_unix(m: &[u8]) -> Option<UnixSock> {
    if m.len() < 16 {
        return None;
    }
    let mut s = UnixSock {
        state: m[2],
        inode: u64::from(u32_at(m, 4)),
        ..UnixSock::default()
    };
    let mut a = &m[16..];
    while a.len() >= 4 {
        let alen = u16_at(a, 0) as usize;
        let aty = u16_at(a, 2);
        if alen < 4 || alen > a.len() {
            break;
        }
        let data = &a[4..alen];
        match aty {
            UNIX_DIAG_NAME if !data.is_empty() && data[0] != 0 => {
                s.name = Some(crate::context::nul_terminated(data));
            }
            UNIX_DIAG_PEER if data.len() >= 4 => s.peer = Some(u64::from(u32_at(data, 0))),
            UNIX_DIAG_RQLEN if data.len() >= 8 => {
                s.rqlen = Some((u32_at(data, 0), u32_at(data, 4)))
            }
            _ => {}
        }
        a = &a[alen.next_multiple_of(4).min(a.len())..];
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumps_a_socket_pair_and_a_listener() {
        let dir = std::env::temp_dir().join(format!("wd-diag-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("l.sock");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let mut c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        use std::io::Write;
        c.write_all(b"hello").unwrap();
        let all = dump().unwrap();
        let listener = all
            .iter()
            .find(|s| s.listening() && s.name.as_deref() == Some(path.to_str().unwrap()))
            .expect("listener in the dump");
        // One connection not accepted yet.
        assert_eq!(listener.rqlen.map(|r| r.0), Some(1));
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(format!("/proc/self/fd/{}", c.as_raw_fd()))
            .unwrap()
            .ino();
        let client = all.iter().find(|s| s.inode == ino).expect("client");
        assert!(client.peer.is_some(), "{client:?}");
        // The server end is not in the dump before accept(): the client's
        // own send-side memory shows the unread bytes.
        assert!(!all.iter().any(|s| Some(s.inode) == client.peer));
        assert!(client.rqlen.is_some_and(|r| r.1 > 0), "{client:?}");
        let (server, _) = l.accept().unwrap();
        let all = dump().unwrap();
        let sino = std::fs::metadata(format!("/proc/self/fd/{}", server.as_raw_fd()))
            .unwrap()
            .ino();
        let peer = all.iter().find(|s| s.inode == sino).expect("accepted end");
        assert_eq!(
            peer.rqlen.map(|r| r.0),
            Some(5),
            "5 bytes unread by the server"
        );
        assert_eq!(
            peer.name.as_deref(),
            path.to_str(),
            "accepted ends carry the path"
        );
        assert_eq!(peer.peer, Some(ino));
        drop(l);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_messages_are_errors() {
        let mut out = Vec::new();
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&8u32.to_ne_bytes());
        assert!(parse_messages(&b, &mut out).is_err());
    }
}
