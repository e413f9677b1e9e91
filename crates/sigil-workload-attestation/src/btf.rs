//! Kernel structure offsets from the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF programs cannot use CO-RE field relocations, so the loader reads the offsets the
//! program needs here and patches them into the program's configuration. Only what that needs is
//! parsed: type kinds, struct and union members, and names.

use sigil_ebpf_common::Offsets;

/// Why the offsets could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BtfError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed kernel BTF: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {0} has no member {1}")]
    NoMember(String, String),
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One BTF type, reduced to what offset lookups need.
#[derive(Debug)]
struct Type {
    name_off: u32,
    kind: u32,
    kflag: bool,
    size_or_type: u32,
    members: Vec<Member>,
}

#[derive(Debug, Clone, Copy)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Bit offset (with the bitfield size in the top byte when the struct's kflag is set).
    offset: u32,
}

/// A parsed BTF blob.
#[derive(Debug)]
pub(crate) struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
}

// === impl Btf ===

impl Btf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        let path = "/sys/kernel/btf/vmlinux";
        let bytes = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&bytes)
    }

    pub fn parse(b: &[u8]) -> Result<Self, BtfError> {
        let u32_at = |o: usize| -> Result<u32, BtfError> {
            b.get(o..o + 4)
                .and_then(|s| s.try_into().ok())
                .map(u32::from_le_bytes)
                .ok_or(BtfError::Malformed("truncated"))
        };
        if b.get(0..2) != Some(&[0x9f, 0xeb]) {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let strings = b
            .get(hdr + str_off..hdr + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();
        // Type id 0 is void.
        let mut types = vec![Type {
            name_off: 0,
            kind: 0,
            kflag: false,
            size_or_type: 0,
            members: Vec::new(),
        }];
        let (mut p, end) = (hdr + type_off, hdr + type_off + type_len);
        while p < end {
            let (name_off, info, size_or_type) = (u32_at(p)?, u32_at(p + 4)?, u32_at(p + 8)?);
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            p += 12;
            let mut members = Vec::new();
            p += match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let q = p + i * 12;
                        members.push(Member {
                            name_off: u32_at(q)?,
                            type_id: u32_at(q + 4)?,
                            offset: u32_at(q + 8)?,
                        });
                    }
                    12 * vlen
                }
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                _ => 0,
            };
            types.push(Type {
                name_off,
                kind,
                kflag: info >> 31 == 1,
                size_or_type,
                members,
            });
        }
        Ok(Self { types, strings })
    }

    fn name(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or_default();
        let end = s.iter().position(|&c| c == 0).unwrap_or(0);
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    fn struct_id(&self, name: &str) -> Result<u32, BtfError> {
        self.types
            .iter()
            .position(|t| {
                matches!(t.kind, KIND_STRUCT | KIND_UNION)
                    && !t.members.is_empty()
                    && self.name(t.name_off) == name
            })
            .map(|i| i as u32)
            .ok_or_else(|| BtfError::NoStruct(name.into()))
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> u32 {
        while let Some(t) = self.types.get(id as usize) {
            if !matches!(
                t.kind,
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
            ) {
                break;
            }
            id = t.size_or_type;
        }
        id
    }

    /// Bit offset and type of `field` in struct/union `id`, looking inside anonymous members.
    fn member(&self, id: u32, field: &str) -> Option<(u64, u32)> {
        let t = self.types.get(id as usize)?;
        for m in &t.members {
            let bits = if t.kflag {
                u64::from(m.offset & 0xff_ffff)
            } else {
                u64::from(m.offset)
            };
            if self.name(m.name_off) == field {
                return Some((bits, m.type_id));
            }
            if m.name_off == 0
                && let Some((inner, ty)) = self.member(self.resolve(m.type_id), field)
            {
                return Some((bits + inner, ty));
            }
        }
        None
    }

    /// Byte offset of `path` (`a.b.c`, each a member of the previous one's type) in `strukt`.
    pub fn offset(&self, strukt: &str, path: &str) -> Result<u32, BtfError> {
        let mut id = self.struct_id(strukt)?;
        let mut bits = 0u64;
        for field in path.split('.') {
            let (off, ty) = self
                .member(id, field)
                .ok_or_else(|| BtfError::NoMember(strukt.into(), path.into()))?;
            bits += off;
            id = self.resolve(ty);
        }
        Ok((bits / 8) as u32)
    }

    /// `sizeof(struct strukt)`.
    pub fn size(&self, strukt: &str) -> Result<u32, BtfError> {
        let id = self.struct_id(strukt)?;
        Ok(self.types[id as usize].size_or_type)
    }

    /// Everything the eBPF program reads.
    pub fn offsets(&self) -> Result<Offsets, BtfError> {
        Ok(Offsets {
            sock_family: self.offset("sock", "__sk_common.skc_family")?,
            unix_sock_path_dentry: self.offset("unix_sock", "path")?
                + self.offset("path", "dentry")?,
            dentry_inode: self.offset("dentry", "d_inode")?,
            inode_ino: self.offset("inode", "i_ino")?,
            inode_sb: self.offset("inode", "i_sb")?,
            sb_dev: self.offset("super_block", "s_dev")?,
            task_group_leader: self.offset("task_struct", "group_leader")?,
            task_start_boottime: self.offset("task_struct", "start_boottime")?,
            task_mm: self.offset("task_struct", "mm")?,
            mm_exe_file: self.offset("mm_struct", "exe_file")?,
            file_inode: self.offset("file", "f_inode")?,
            task_nsproxy: self.offset("task_struct", "nsproxy")?,
            nsproxy_mnt_ns: self.offset("nsproxy", "mnt_ns")?,
            mnt_ns_inum: self.offset("mnt_namespace", "ns.inum")?,
            task_thread_pid: self.offset("task_struct", "thread_pid")?,
            pid_level: self.offset("pid", "level")?,
            pid_numbers: self.offset("pid", "numbers")?,
            upid_size: self.size("upid")?,
            upid_ns: self.offset("upid", "ns")?,
            pid_ns_inum: self.offset("pid_namespace", "ns.inum")?,
            socket_sk: self.offset("socket", "sk")?,
            sock_cookie: self.offset("sock", "__sk_common.skc_cookie")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_kernel_offsets() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("skipping: no /sys/kernel/btf/vmlinux");
            return;
        };
        let off = btf.offsets().unwrap();
        // Stable for decades on 64-bit: skc_family follows two 4-byte address fields and a
        // 4-byte hash union (after the 8-byte addrpair / portpair unions).
        assert_eq!(off.sock_family, 16);
        assert_eq!(off.upid_size, 16);
        assert_eq!(off.upid_ns, 8);
        assert!(off.task_start_boottime > 0 && off.task_group_leader > 0);
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all, no").is_err());
        assert!(Btf::parse(&[0x9f, 0xeb]).is_err());
    }
}
