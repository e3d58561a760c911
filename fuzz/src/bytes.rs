//! The fuzz input as a stream of little-endian numbers, and the encoder the seed generator uses
//! to write the same format.
//!
//! Reading past the end yields zeros instead of failing: every prefix of an input is a valid
//! input, which keeps libFuzzer's truncations and splices meaningful.

pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = end;
        &self.data[start..end]
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.bytes(N);
        a[..b.len()].copy_from_slice(b);
        a
    }

    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    /// A count or size: one byte, or (0xff) a full u64. Small values are what exercise the
    /// filesystem; the escape keeps the extremes reachable.
    pub fn small(&mut self) -> u64 {
        match self.u8() {
            0xff => self.u64(),
            b => u64::from(b),
        }
    }

    /// A byte string: a one-byte length, then the bytes.
    pub fn blob(&mut self) -> &'a [u8] {
        let n = self.u8() as usize;
        self.bytes(n)
    }
}

/// Writes what [`Input`] reads.
#[derive(Default)]
pub struct Enc {
    pub buf: Vec<u8>,
}

impl Enc {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn small(&mut self, v: u64) -> &mut Self {
        match u8::try_from(v) {
            Ok(b) if b != 0xff => self.u8(b),
            _ => self.u8(0xff).u64(v),
        }
    }

    pub fn blob(&mut self, b: &[u8]) -> &mut Self {
        let n = b.len().min(255);
        self.u8(n as u8);
        self.buf.extend_from_slice(&b[..n]);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_zero_padding() {
        let mut e = Enc::default();
        e.u8(7)
            .u16(513)
            .u32(70000)
            .u64(1 << 40)
            .small(3)
            .small(300)
            .blob(b"abc");
        let mut i = Input::new(&e.buf);
        assert_eq!(i.u8(), 7);
        assert_eq!(i.u16(), 513);
        assert_eq!(i.u32(), 70000);
        assert_eq!(i.u64(), 1 << 40);
        assert_eq!(i.small(), 3);
        assert_eq!(i.small(), 300);
        assert_eq!(i.blob(), b"abc");
        assert!(i.is_empty());
        assert_eq!(i.u64(), 0);
        let mut short = Input::new(&[1]);
        assert_eq!(short.u32(), 1);
    }
}
