//! Parsing `getdents64(2)` records.

/// One directory entry borrowed from a getdents64 buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct RawDirEntry<'a> {
    pub ino: u64,
    /// Position of the *next* entry: what FUSE calls this entry's offset.
    pub next_off: u64,
    pub d_type: u8,
    pub name: &'a [u8],
}

// struct linux_dirent64 { u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
const HEADER: usize = 8 + 8 + 2 + 1;

/// Iterate over the records in the first `len` bytes of `buf`. A malformed record (which the
/// kernel never produces) ends the iteration instead of panicking.
pub fn entries(buf: &[u8]) -> impl Iterator<Item = RawDirEntry<'_>> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let rec = buf.get(pos..)?;
        let header = rec.get(..HEADER)?;
        let ino = u64::from_ne_bytes(header[0..8].try_into().ok()?);
        let next_off = i64::from_ne_bytes(header[8..16].try_into().ok()?) as u64;
        let reclen = u16::from_ne_bytes(header[16..18].try_into().ok()?) as usize;
        let d_type = header[18];
        if reclen < HEADER {
            return None;
        }
        let name_field = rec.get(HEADER..reclen)?;
        let name_len = name_field
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(name_field.len());
        pos += reclen;
        Some(RawDirEntry {
            ino,
            next_off,
            d_type,
            name: &name_field[..name_len],
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ino: u64, off: i64, d_type: u8, name: &[u8]) -> Vec<u8> {
        let reclen = (HEADER + name.len() + 1).next_multiple_of(8);
        let mut v = Vec::with_capacity(reclen);
        v.extend_from_slice(&ino.to_ne_bytes());
        v.extend_from_slice(&off.to_ne_bytes());
        v.extend_from_slice(&(reclen as u16).to_ne_bytes());
        v.push(d_type);
        v.extend_from_slice(name);
        v.resize(reclen, 0);
        v
    }

    #[test]
    fn parses_records_in_order() {
        let mut buf = record(2, 10, libc::DT_DIR, b".");
        buf.extend(record(77, 20, libc::DT_REG, b"a-long-file-name.txt"));
        let got: Vec<_> = entries(&buf).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].ino, 77);
        assert_eq!(got[1].next_off, 20);
        assert_eq!(got[1].d_type, libc::DT_REG);
        assert_eq!(got[1].name, b"a-long-file-name.txt");
    }

    #[test]
    fn malformed_records_stop_iteration() {
        let mut buf = record(2, 10, libc::DT_DIR, b"x");
        buf[16] = 3; // reclen shorter than the header
        assert_eq!(entries(&buf).count(), 0);
        let mut buf = record(2, 10, libc::DT_DIR, b"x");
        buf[16] = 200; // reclen past the end
        assert_eq!(entries(&buf).count(), 0);
        assert_eq!(entries(&[1, 2, 3]).count(), 0);
    }
}
