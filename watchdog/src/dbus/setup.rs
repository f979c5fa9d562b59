//! The tracker's kernel-map setup: the followed socket paths and this
//! architecture's socket syscalls go into the probes' tables.
use std::{collections::HashMap, path::Path};

use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use watchdog_common::{
    SOCK_CALLS_MAP, SOCK_CONNS_MAP, SOCK_PATH_LEN, SOCK_PATHS_MAP, SockCall, SockPath,
};

use super::{
    DbusTracker,
    options::{DbusOptions, RequestPath, SetupError, canonical_socket_path, validate_sockets},
};
use crate::{context::procfs::ProcReader, probes::Probes};

/// This architecture's socket syscalls and how the probes classify them
/// (the socket tracepoints read the buffer's place from it).
#[cfg(target_arch = "x86_64")]
const SOCK_SYSCALLS: &[(u32, SockCall)] = &[
    (0, SockCall::Read),
    (1, SockCall::Write),
    (3, SockCall::Close),
    (19, SockCall::Readv),
    (20, SockCall::Writev),
    (42, SockCall::Connect),
    (44, SockCall::Write),   // sendto
    (45, SockCall::Read),    // recvfrom
    (46, SockCall::Sendmsg), // sendmsg
    (47, SockCall::Recvmsg), // recvmsg
];
#[cfg(target_arch = "aarch64")]
const SOCK_SYSCALLS: &[(u32, SockCall)] = &[
    (63, SockCall::Read),
    (64, SockCall::Write),
    (57, SockCall::Close),
    (65, SockCall::Readv),
    (66, SockCall::Writev),
    (203, SockCall::Connect),
    (206, SockCall::Write),
    (207, SockCall::Read),
    (211, SockCall::Sendmsg),
    (212, SockCall::Recvmsg),
];

impl DbusTracker {
    /// Fill the path and syscall tables (the storage probes' watched set
    /// must be attached, and the programs of `path`).
    pub fn new(
        probes: &mut Probes,
        root: &Path,
        opts: &DbusOptions,
        path: RequestPath,
    ) -> Result<Self, SetupError> {
        validate_sockets(&opts.sockets)?;
        let map_err =
            |map| move |source| SetupError::Maps(crate::storage::SetupError::Map { map, source });
        let mut paths: Array<MapData, SockPath> =
            crate::storage::take(probes, SOCK_PATHS_MAP, Array::try_from)?;
        for (i, p) in opts.sockets.iter().enumerate() {
            let mut path = [0u8; SOCK_PATH_LEN];
            path[..p.len()].copy_from_slice(p.as_bytes());
            paths
                .set(
                    i as u32,
                    SockPath {
                        path,
                        len: p.len() as u32,
                    },
                    0,
                )
                .map_err(map_err(SOCK_PATHS_MAP))?;
        }
        let mut calls: Array<MapData, u8> =
            crate::storage::take(probes, SOCK_CALLS_MAP, Array::try_from)?;
        for (nr, call) in SOCK_SYSCALLS {
            calls
                .set(*nr, *call as u8, 0)
                .map_err(map_err(SOCK_CALLS_MAP))?;
        }
        Ok(Self {
            proc: ProcReader::new(root),
            path,
            opts: opts.clone(),
            paths: opts.sockets.clone(),
            real_paths: opts
                .sockets
                .iter()
                .map(|p| canonical_socket_path(p).unwrap_or_else(|| p.clone()))
                .collect(),
            conns: HashMap::new(),
            holders: HashMap::new(),
            probed: HashMap::new(),
            holders_scanned: None,
            sock_conns: crate::storage::take(probes, SOCK_CONNS_MAP, BpfHashMap::try_from)?,
        })
    }
}
