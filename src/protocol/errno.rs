//! The errno of each reply, for the statistics (errors per opcode).
//!
//! An error reply is the FUSE out header alone, so a longer reply is a success. A reply of
//! just the header is an error or an empty success (RELEASE, FLUSH, ...): the filesystem notes
//! the errors it returns ([`note_error`]), and only when it noted none is the header read back
//! from guest memory, which takes a walk of the descriptor chain (about 1,700 instructions: on a
//! replayed `ls -lR`, whose GETXATTRs nearly all fail with ENODATA, that walk was 8% of the
//! daemon's user-space instructions).

use std::cell::Cell;
use std::io;
use std::mem::size_of;
use std::ops::Deref;

use fuse_backend_rs::abi::fuse_abi::OutHeader;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemory};

thread_local! {
    /// The errno of the error the filesystem last returned on this thread, 0 for none.
    static NOTED: Cell<i32> = const { Cell::new(0) };
}

/// The filesystem returned `e` for the request this thread serves: its reply carries `e`'s
/// errno (fuse-backend-rs's Server sends EIO for an error without one, as here).
pub fn note_error(e: &io::Error) {
    NOTED.with(|n| n.set(e.raw_os_error().unwrap_or(libc::EIO)));
}

/// Before a request: nothing noted yet.
pub(super) fn forget_noted() {
    NOTED.with(|n| n.set(0));
}

/// The errno of the reply written into `chain` (`used` bytes): 0 for success or no reply.
pub(super) fn reply_errno<M>(mem: &M::Target, chain: &DescriptorChain<M>, used: u32) -> i32
where
    M: Deref + Clone,
    M::Target: GuestMemory + Sized,
{
    let noted = NOTED.with(Cell::take);
    if used as usize != size_of::<OutHeader>() {
        return 0;
    }
    if noted != 0 {
        return noted;
    }
    // An error the Server or the dispatcher made (a malformed request, an opcode nobody
    // serves), or a success without data: read the header back.
    let Some(first) = chain.clone().writable().next() else {
        return 0;
    };
    if (first.len() as usize) < size_of::<OutHeader>() {
        return 0;
    }
    mem.read_obj::<OutHeader>(first.addr())
        .map_or(0, |h| h.error.saturating_neg())
}
