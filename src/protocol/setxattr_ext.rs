//! FUSE_SETXATTR_EXT, which fuse-backend-rs 0.14 does not know.
//!
//! Under FUSE_POSIX_ACL the guest kernel leaves the mode change that comes with setting an
//! access ACL to the daemon. POSIX wants the setgid bit cleared then when the caller is neither
//! in the file's group nor has CAP_FSETID (xfstests generic/375). Only the guest knows the
//! caller's supplementary groups and capabilities, so it says so in a flag of SETXATTR
//! (FUSE_SETXATTR_ACL_KILL_SGID), which travels only in the longer SETXATTR header that
//! FUSE_SETXATTR_EXT announces. The Server cannot negotiate the flag (its options type drops
//! the bit) nor read that header, so the dispatcher does both: it adds the bit to the INIT
//! reply the Server wrote when the guest offered it, and from then on decodes SETXATTR itself.

use std::ffi::CStr;
use std::mem::size_of;
use std::ops::Deref;

use fuse_backend_rs::abi::fuse_abi::{InHeader, InitIn, OutHeader};
use fuse_backend_rs::api::filesystem::Context;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use log::warn;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemory};

use super::{reply_error, reply_io_error, reply_ok, writable_at, Dispatcher};

/// In INIT's flags: SETXATTR requests carry a second word of flags.
pub const FUSE_SETXATTR_EXT: u32 = 1 << 29;
/// In that word: setting this ACL must clear the setgid bit.
pub const FUSE_SETXATTR_ACL_KILL_SGID: u32 = 1;
/// Where INIT's reply keeps its flags: after the header, major, minor and max_readahead.
const INIT_OUT_FLAGS: usize = size_of::<OutHeader>() + 12;
/// The extended SETXATTR header: size, flags, setxattr_flags, padding.
type SetxattrInExt = [u32; 4];
/// The largest name and value a SETXATTR may carry (XATTR_NAME_MAX + 1, XATTR_SIZE_MAX).
const MAX_BODY: usize = 256 + 65536;

/// Whether an INIT request offers FUSE_SETXATTR_EXT.
pub fn init_offers_it<S: vm_memory::bitmap::BitmapSlice>(reader: &Reader<'_, S>) -> bool {
    let mut peek = reader.clone();
    peek.read_obj::<InHeader>().is_ok()
        && peek
            .read_obj::<InitIn>()
            .is_ok_and(|i| i.flags & FUSE_SETXATTR_EXT != 0)
}

impl Dispatcher {
    /// After the Server answered INIT (`used` bytes into `chain`): accept FUSE_SETXATTR_EXT
    /// when the guest offered it and the filesystem wants it, by adding it to the reply's
    /// flags. Whatever happens, the filesystem learns whether it is on.
    pub(super) fn negotiate_setxattr_ext<M>(
        &self,
        mem: &M::Target,
        chain: &DescriptorChain<M>,
        used: u32,
        offered: bool,
    ) where
        M: Deref + Clone,
        M::Target: GuestMemory + Sized,
    {
        let on = offered
            && self.fs.wants_setxattr_ext()
            && used as usize >= INIT_OUT_FLAGS + 4
            && super::reply_errno(mem, chain, used) == 0
            && add_flag(mem, chain, FUSE_SETXATTR_EXT);
        self.fs.set_setxattr_ext(on);
    }

    /// SETXATTR with the extended header (FUSE_SETXATTR_EXT negotiated).
    pub(super) fn setxattr_ext<S: vm_memory::bitmap::BitmapSlice>(
        &self,
        header: &InHeader,
        r: &mut Reader<'_, S>,
        w: VirtioFsWriter<'_, S>,
    ) -> usize {
        let fixed = size_of::<InHeader>() + size_of::<SetxattrInExt>();
        let body_len = (header.len as usize).saturating_sub(fixed);
        let Ok([size, flags, setxattr_flags, _]) = r.read_obj::<SetxattrInExt>() else {
            return reply_error(w, header.unique, libc::EINVAL);
        };
        if body_len > MAX_BODY {
            return reply_error(w, header.unique, libc::E2BIG);
        }
        let mut body = vec![0u8; body_len];
        if std::io::Read::read_exact(r, &mut body).is_err() {
            return reply_error(w, header.unique, libc::EINVAL);
        }
        // The name, NUL-terminated, then the value.
        let Some(nul) = body.iter().position(|&b| b == 0) else {
            return reply_error(w, header.unique, libc::EINVAL);
        };
        let (name, value) = body.split_at(nul + 1);
        let Ok(name) = CStr::from_bytes_with_nul(name) else {
            return reply_error(w, header.unique, libc::EINVAL);
        };
        if value.len() != size as usize {
            return reply_error(w, header.unique, libc::EINVAL);
        }
        let ctx = Context {
            uid: header.uid,
            gid: header.gid,
            pid: header.pid as i32,
        };
        let kill_sgid = setxattr_flags & FUSE_SETXATTR_ACL_KILL_SGID != 0;
        match self
            .fs
            .setxattr_killing_sgid(&ctx, header.nodeid, name, value, flags, kill_sgid)
        {
            Ok(()) => reply_ok(w, header.unique, &[]),
            Err(e) => reply_io_error(w, header.unique, e),
        }
    }
}

/// OR `flag` into the flags of the INIT reply written into `chain`.
fn add_flag<M>(mem: &M::Target, chain: &DescriptorChain<M>, flag: u32) -> bool
where
    M: Deref + Clone,
    M::Target: GuestMemory + Sized,
{
    let Some(parts) = writable_at(mem, chain, INIT_OUT_FLAGS, 4) else {
        return false;
    };
    let mut word = [0u8; 4];
    for (addr, range) in &parts {
        if mem.read_slice(&mut word[range.clone()], *addr).is_err() {
            return false;
        }
    }
    let word = (u32::from_le_bytes(word) | flag).to_le_bytes();
    for (addr, range) in parts {
        if let Err(e) = mem.write_slice(&word[range], addr) {
            warn!("cannot update the INIT reply in the guest's buffer: {e}");
            return false;
        }
    }
    true
}
