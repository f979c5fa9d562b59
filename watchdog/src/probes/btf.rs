//! A minimal reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): just
//! enough to find struct member offsets and enum values, which the probes need
//! because Rust eBPF has no CO-RE relocations. Format: Documentation/bpf/btf.rst.
use std::{collections::HashMap, path::Path};

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read BTF from {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not BTF: {why}")]
    Format { path: String, why: String },
    #[error("BTF has no struct `{0}`")]
    NoStruct(String),
    #[error("BTF struct `{ty}` has no member `{member}`")]
    NoMember { ty: String, member: String },
    #[error("BTF has no enumerator `{0}`")]
    NoEnumerator(String),
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;

#[derive(Clone, Copy)]
struct TypeRec {
    /// Byte offset of the type record in `data`.
    at: usize,
    name_off: u32,
    kind: u32,
    vlen: u32,
    kind_flag: bool,
}

pub struct Btf {
    data: Vec<u8>,
    str_start: usize,
    str_len: usize,
    /// Index 0 is the void type; BTF ids start at 1.
    types: Vec<Option<TypeRec>>,
    by_name: HashMap<String, Vec<u32>>,
}

fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    d.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(data).map_err(|why| BtfError::Format {
            path: path.display().to_string(),
            why,
        })
    }

    pub fn parse(data: Vec<u8>) -> Result<Self, String> {
        if data.len() < 24 || data[0..2] != [0x9f, 0xeb] {
            return Err("bad magic (only little-endian BTF is supported)".into());
        }
        let hdr_len = u32_at(&data, 4).ok_or("short header")? as usize;
        let type_off = u32_at(&data, 8).ok_or("short header")? as usize;
        let type_len = u32_at(&data, 12).ok_or("short header")? as usize;
        let str_off = u32_at(&data, 16).ok_or("short header")? as usize;
        let str_len = u32_at(&data, 20).ok_or("short header")? as usize;
        let (t0, s0) = (hdr_len + type_off, hdr_len + str_off);
        if t0 + type_len > data.len() || s0 + str_len > data.len() {
            return Err("sections extend past the end of the file".into());
        }
        let mut types = vec![None];
        let mut at = t0;
        while at < t0 + type_len {
            let name_off = u32_at(&data, at).ok_or("truncated type")?;
            let info = u32_at(&data, at + 4).ok_or("truncated type")?;
            let vlen = info & 0xffff;
            let kind = (info >> 24) & 0x1f;
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen as usize,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen as usize,
                0..=19 => 0,
                _ => return Err(format!("unknown BTF kind {kind} at offset {at}")),
            };
            types.push(Some(TypeRec {
                at,
                name_off,
                kind,
                vlen,
                kind_flag: info >> 31 == 1,
            }));
            at += 12 + extra;
        }
        let mut btf = Self {
            data,
            str_start: s0,
            str_len,
            types,
            by_name: HashMap::new(),
        };
        for id in 1..btf.types.len() {
            let Some(t) = btf.types[id] else { continue };
            if matches!(t.kind, KIND_STRUCT | KIND_UNION) && t.name_off != 0 {
                let name = btf.str(t.name_off).to_owned();
                btf.by_name.entry(name).or_default().push(id as u32);
            }
        }
        Ok(btf)
    }

    fn str(&self, off: u32) -> &str {
        let start = self.str_start + off as usize;
        let end_limit = self.str_start + self.str_len;
        if start >= end_limit {
            return "";
        }
        let bytes = &self.data[start..end_limit];
        let len = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        std::str::from_utf8(&bytes[..len]).unwrap_or("")
    }

    /// Members of a struct/union type: (name, type id, bit offset).
    fn members(&self, t: TypeRec) -> impl Iterator<Item = (&str, u32, u32)> + '_ {
        (0..t.vlen as usize).filter_map(move |i| {
            let m = t.at + 12 + i * 12;
            let name = self.str(u32_at(&self.data, m)?);
            let ty = u32_at(&self.data, m + 4)?;
            let off = u32_at(&self.data, m + 8)?;
            let bit_off = if t.kind_flag { off & 0x00ff_ffff } else { off };
            Some((name, ty, bit_off))
        })
    }

    fn find_member(&self, t: TypeRec, member: &str) -> Option<u32> {
        for (name, ty, bit_off) in self.members(t) {
            if name == member {
                return Some(bit_off);
            }
            // Anonymous struct/union members: search inside them.
            if name.is_empty()
                && let Some(Some(inner)) = self.types.get(ty as usize)
                && matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                && let Some(o) = self.find_member(*inner, member)
            {
                return Some(bit_off + o);
            }
        }
        None
    }

    /// Byte offset of `member` in `struct ty` (anonymous nested members included).
    pub fn member_offset(&self, ty: &str, member: &str) -> Result<u64, BtfError> {
        let ids = self
            .by_name
            .get(ty)
            .ok_or_else(|| BtfError::NoStruct(ty.into()))?;
        for &id in ids {
            let Some(t) = self.types[id as usize] else {
                continue;
            };
            if let Some(bits) = self.find_member(t, member) {
                return Ok(u64::from(bits / 8));
            }
        }
        Err(BtfError::NoMember {
            ty: ty.into(),
            member: member.into(),
        })
    }

    /// Whether a type of this name exists, of any kind: the kernel's
    /// `btf_trace_<tracepoint>` typedefs say which BTF tracepoints it has.
    pub fn has_type(&self, name: &str) -> bool {
        self.types
            .iter()
            .flatten()
            .any(|t| t.name_off != 0 && self.str(t.name_off) == name)
    }

    /// Value of an enumerator (e.g. `pids_cgrp_id` of `enum cgroup_subsys_id`).
    pub fn enumerator(&self, name: &str) -> Result<i64, BtfError> {
        for t in self.types.iter().flatten() {
            let stride = match t.kind {
                KIND_ENUM => 8,
                KIND_ENUM64 => 12,
                _ => continue,
            };
            for i in 0..t.vlen as usize {
                let e = t.at + 12 + i * stride;
                let Some(n) = u32_at(&self.data, e) else {
                    continue;
                };
                if self.str(n) == name {
                    let lo = u32_at(&self.data, e + 4).unwrap_or(0);
                    return Ok(if t.kind == KIND_ENUM {
                        i64::from(lo as i32)
                    } else {
                        let hi = u32_at(&self.data, e + 8).unwrap_or(0);
                        ((u64::from(hi) << 32) | u64::from(lo)) as i64
                    });
                }
            }
        }
        Err(BtfError::NoEnumerator(name.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths;

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(vec![0; 10]).is_err());
        assert!(Btf::parse(b"not btf at all, definitely not".to_vec()).is_err());
    }

    #[test]
    fn reads_this_kernels_offsets() {
        let path = Path::new(paths::KERNEL_BTF);
        if !path.exists() {
            // Unit tests also run on build machines without BTF; the kernel
            // tests (tests/) require it and fail there instead.
            eprintln!("skipped: {} absent on this kernel", paths::KERNEL_BTF);
            return;
        }
        let btf = Btf::from_file(path).expect("parse vmlinux BTF");
        // Stable facts of every 64-bit kernel: task_struct's first member is
        // thread_info or __state, so `cgroups` is well past it.
        assert!(btf.member_offset("task_struct", "cgroups").unwrap() > 0);
        assert_eq!(
            btf.member_offset("cgroup_subsys_state", "cgroup").unwrap(),
            0
        );
        assert!(btf.enumerator("pids_cgrp_id").unwrap() >= 0);
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(btf.member_offset("pt_regs", "orig_ax").unwrap(), 120);
            assert_eq!(btf.member_offset("pt_regs", "di").unwrap(), 112);
        }
        assert!(btf.has_type("btf_trace_sched_switch"));
        assert!(!btf.has_type("btf_trace_no_such_tracepoint"));
        assert!(matches!(
            btf.member_offset("task_struct", "nope"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("no_such_struct", "x"),
            Err(BtfError::NoStruct(_))
        ));
    }
}
