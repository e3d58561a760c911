//! How a fuzz step lays its FUSE request into a descriptor chain: as Linux does, as one
//! readable and one writable buffer, or segment by segment as the fuzz bytes say.

use crate::bytes::{Enc, Input};
use crate::guest::{Layout, Place, Seg, MAX_SEG};
use crate::script::{HDR, OUT};

/// How a step lays its request into a chain; see [`LayoutSpec`].
pub fn layout(input: &mut Input, request_len: usize, out_len: u32) -> Layout {
    let kind = input.u8();
    let req = request_len as u32;
    let seg = |writable, len| Seg {
        writable,
        len,
        place: Place::Next,
    };
    let mut l = Layout::default();
    match kind {
        // As Linux lays it out: one buffer per argument, header and body apart.
        0 | 1 => {
            l.segs.push(seg(false, HDR.min(req)));
            if req > HDR {
                l.segs.push(seg(false, req - HDR));
            }
            if out_len > 0 {
                l.segs.push(seg(true, OUT.min(out_len)));
            }
            if out_len > OUT {
                l.segs.push(seg(true, out_len - OUT));
            }
            l.indirect = kind == 1;
        }
        // One readable and one writable buffer.
        2 | 3 => {
            l.segs.push(seg(false, req));
            if out_len > 0 {
                l.segs.push(seg(true, out_len));
            }
            l.indirect = kind == 3;
        }
        // Anything: segment by segment.
        _ => {
            let n = input.u8() % 8 + 1;
            let mut left = req;
            for _ in 0..n {
                let spec = input.u8();
                let writable = spec & 1 != 0;
                let place = Place::from_index((spec >> 1) & 7);
                let full = if writable { out_len } else { left };
                let len = match spec >> 4 {
                    0 => full,
                    1 => u32::from(input.u16()),
                    2 => 0,
                    3 => full / 2,
                    _ => u32::from(input.u8()),
                }
                .min(MAX_SEG);
                if !writable {
                    left = left.saturating_sub(len);
                }
                l.segs.push(Seg {
                    writable,
                    len,
                    place,
                });
            }
            let flags = input.u8();
            l.indirect = flags & 1 != 0;
            l.looped = flags & 2 != 0;
        }
    }
    l
}

/// A step as a value, for writing seeds. Field bytes are the opcode's, in
/// [`next_request`](crate::script::next_request)'s order; the generator writes them with [`Enc`].
pub struct LayoutSpec {
    /// (writable, place, length) per segment; None length: "the rest" (readable) or the
    /// reply size (writable).
    pub segs: Vec<(bool, Place, Option<u16>)>,
    pub indirect: bool,
    pub looped: bool,
}

impl LayoutSpec {
    pub fn encode(&self, e: &mut Enc) {
        e.u8(4).u8((self.segs.len() as u8).saturating_sub(1));
        for (writable, place, len) in &self.segs {
            let base = u8::from(*writable) | (place.index() << 1);
            match len {
                None => {
                    e.u8(base);
                }
                Some(n) => {
                    e.u8(base | (1 << 4)).u16(*n);
                }
            }
        }
        e.u8(u8::from(self.indirect) | (u8::from(self.looped) << 1));
    }
}
