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

/// The first record in `buf` and its length, or None if `buf` does not start with a
/// well-formed record (which the kernel never produces).
pub fn first_entry(buf: &[u8]) -> Option<(RawDirEntry<'_>, usize)> {
    let header = buf.get(..HEADER)?;
    let ino = u64::from_ne_bytes(header[0..8].try_into().ok()?);
    let next_off = i64::from_ne_bytes(header[8..16].try_into().ok()?) as u64;
    let reclen = u16::from_ne_bytes(header[16..18].try_into().ok()?) as usize;
    let d_type = header[18];
    if reclen < HEADER {
        return None;
    }
    let name_field = buf.get(HEADER..reclen)?;
    let name_len = name_field
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(name_field.len());
    let entry = RawDirEntry {
        ino,
        next_off,
        d_type,
        name: &name_field[..name_len],
    };
    Some((entry, reclen))
}

/// Iterate over the records in `buf`; a malformed record ends the iteration.
pub fn entries(buf: &[u8]) -> impl Iterator<Item = RawDirEntry<'_>> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let (entry, reclen) = first_entry(buf.get(pos..)?)?;
        pos += reclen;
        Some(entry)
    })
}

/// The rest of a getdents64 batch the guest has not been sent yet, kept with the directory
/// handle. FUSE asks for a directory a page of entries at a time, each time naming the offset
/// to continue from; seeking back there and reading again makes filesystems like ext4 rebuild
/// their readdir state for every page. When the guest continues where the last reply ended,
/// the next page is served from here instead.
#[derive(Debug, Default)]
pub struct DirStream {
    /// The batch read last; its length is what the host filled.
    buf: Vec<u8>,
    /// The next record not yet sent.
    pos: usize,
    /// The FUSE offset a request must name to continue at `pos`; None when nothing is cached
    /// and the fd's position is unknown.
    resume: Option<u64>,
}

/// getdents64 batch size: a few replies' worth of entries.
const BATCH: usize = 8 * 1024;

impl DirStream {
    /// The stream of a freshly opened directory fd, which is at the start: the first READDIR
    /// (offset 0) needs no lseek.
    pub fn at_start() -> Self {
        Self {
            resume: Some(0),
            ..Self::default()
        }
    }

    /// Feed `add` entries from `offset` on, until it returns 0 (reply full) or the directory
    /// ends. `fill` appends the next batch from the host (getdents64) to the empty vector it
    /// is given, whose capacity is the batch size; `seek` positions the host fd. An error
    /// from `add` or `fill` ends the reply: it is returned only if nothing was added yet, so
    /// that entries already placed in the reply (and counted for the guest) are not lost.
    pub fn serve(
        &mut self,
        offset: u64,
        mut seek: impl FnMut(u64) -> std::io::Result<()>,
        mut fill: impl FnMut(&mut Vec<u8>) -> std::io::Result<usize>,
        mut add: impl FnMut(&RawDirEntry<'_>) -> std::io::Result<usize>,
    ) -> std::io::Result<()> {
        if self.resume != Some(offset) {
            self.resume = None;
            self.buf.clear();
            self.pos = 0;
            seek(offset)?;
        }
        let mut last = offset;
        let mut added_any = false;
        loop {
            if self.pos >= self.buf.len() {
                self.buf.clear();
                self.buf.reserve(BATCH);
                self.pos = 0;
                match fill(&mut self.buf) {
                    Ok(0) => {
                        // The end: keep the position, drop the memory.
                        self.buf = Vec::new();
                        self.resume = Some(last);
                        return Ok(());
                    }
                    Ok(_) => {}
                    Err(e) => {
                        // Where the fd stands is not known for sure: seek next time.
                        self.buf.clear();
                        self.resume = None;
                        return if added_any { Ok(()) } else { Err(e) };
                    }
                }
            }
            let Some((entry, reclen)) = first_entry(&self.buf[self.pos..]) else {
                // Cannot happen with a real kernel; start over from a seek next time.
                self.resume = None;
                return Ok(());
            };
            match add(&entry) {
                Ok(0) => break,
                Ok(_) => {
                    added_any = true;
                    last = entry.next_off;
                    self.pos += reclen;
                }
                Err(e) if !added_any => {
                    self.resume = Some(last);
                    return Err(e);
                }
                Err(_) => break,
            }
        }
        self.resume = Some(last);
        Ok(())
    }
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

    /// A directory of `n` one-letter-ish entries served through DirStream in pages of
    /// `per_page`, continuing or seeking as a FUSE guest would.
    fn listing(n: u64, per_page: usize, restart_at: Option<u64>) -> (Vec<String>, usize, usize) {
        listing_from(DirStream::default(), n, per_page, restart_at)
    }

    fn listing_from(
        mut stream: DirStream,
        n: u64,
        per_page: usize,
        restart_at: Option<u64>,
    ) -> (Vec<String>, usize, usize) {
        let all: Vec<u8> = (0..n)
            .flat_map(|i| {
                record(
                    i + 100,
                    (i + 1) as i64,
                    libc::DT_REG,
                    format!("f{i}").as_bytes(),
                )
            })
            .collect();
        let pos = std::cell::Cell::new(0usize); // byte position of the host fd
        let (seeks, fills) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
        let mut names = Vec::new();
        let mut offset = 0u64;
        loop {
            let mut page = Vec::new();
            let before = names.len();
            stream
                .serve(
                    offset,
                    |off| {
                        seeks.set(seeks.get() + 1);
                        // Offsets are entry indexes here: find the byte position.
                        let bytes = entries(&all)
                            .take(off as usize)
                            .map(|e| (HEADER + e.name.len() + 1).next_multiple_of(8))
                            .sum();
                        pos.set(bytes);
                        Ok(())
                    },
                    |buf| {
                        fills.set(fills.get() + 1);
                        assert!(buf.is_empty(), "a batch is read into an empty buffer");
                        // Three small records per batch, to cross batch boundaries often.
                        let p = pos.get();
                        let take = (all.len() - p).min(3 * 32).min(buf.capacity());
                        buf.extend_from_slice(&all[p..p + take]);
                        pos.set(p + take);
                        Ok(take)
                    },
                    |e| {
                        if page.len() == per_page {
                            return Ok(0);
                        }
                        page.push((String::from_utf8_lossy(e.name).into_owned(), e.next_off));
                        Ok(1)
                    },
                )
                .unwrap();
            if page.is_empty() {
                break;
            }
            offset = page.last().unwrap().1;
            names.extend(page.into_iter().map(|(n, _)| n));
            if let Some(at) = restart_at.filter(|_| before == 0) {
                offset = at;
            }
        }
        (names, seeks.get(), fills.get())
    }

    #[test]
    fn pages_continue_without_seeking() {
        let (names, seeks, _) = listing(50, 7, None);
        assert_eq!(names.len(), 50);
        assert_eq!(names[49], "f49");
        assert_eq!(seeks, 1, "only the first request seeks");
    }

    #[test]
    fn a_fresh_handle_lists_from_the_start_without_seeking() {
        let (names, seeks, _) = listing_from(DirStream::at_start(), 50, 7, None);
        assert_eq!(names.len(), 50);
        assert_eq!(seeks, 0);
    }

    #[test]
    fn a_failed_batch_keeps_what_was_added_and_seeks_next_time() {
        let first = record(1, 1, libc::DT_REG, b"a");
        let mut stream = DirStream::at_start();
        let mut fills = 0;
        let mut added = 0;
        let r = stream.serve(
            0,
            |_| panic!("a fresh handle at offset 0 needs no seek"),
            |buf| {
                fills += 1;
                if fills == 1 {
                    buf.extend_from_slice(&first);
                    Ok(first.len())
                } else {
                    Err(std::io::Error::from_raw_os_error(libc::EIO))
                }
            },
            |_| {
                added += 1;
                Ok(1)
            },
        );
        assert!(r.is_ok(), "one entry was added: the reply stands");
        assert_eq!(added, 1);
        let mut seeks = Vec::new();
        let r = stream.serve(
            1,
            |off| {
                seeks.push(off);
                Ok(())
            },
            |_| Err(std::io::Error::from_raw_os_error(libc::EIO)),
            |_| Ok(1),
        );
        assert!(r.is_err(), "nothing added: the error is the reply");
        assert_eq!(
            seeks,
            [1],
            "after a failed batch the position is re-established"
        );
    }

    #[test]
    fn a_jump_seeks_and_lists_from_there() {
        // After the first page the guest asks for offset 30: the rest must be f30..f49.
        let (names, seeks, _) = listing(50, 7, Some(30));
        assert_eq!(&names[..7], &["f0", "f1", "f2", "f3", "f4", "f5", "f6"]);
        assert_eq!(names[7], "f30");
        assert_eq!(names.len(), 7 + 20);
        assert_eq!(seeks, 2);
    }

    #[test]
    fn an_error_after_some_entries_ends_the_reply_without_losing_them() {
        let all: Vec<u8> = (0..5u64)
            .flat_map(|i| record(i, (i + 1) as i64, libc::DT_REG, b"x"))
            .collect();
        let mut stream = DirStream::default();
        let mut calls = 0;
        let r = stream.serve(
            0,
            |_| Ok(()),
            |buf| {
                let n = all.len().min(buf.capacity());
                buf.extend_from_slice(&all[..n]);
                Ok(n)
            },
            |_| {
                calls += 1;
                if calls == 3 {
                    Err(std::io::Error::from_raw_os_error(libc::EMFILE))
                } else {
                    Ok(1)
                }
            },
        );
        assert!(r.is_ok(), "two entries were added: the reply stands");
        let r = stream.serve(
            2,
            |_| Ok(()),
            |_| Ok(0),
            |_| Err(std::io::Error::from_raw_os_error(libc::EMFILE)),
        );
        assert!(r.is_err(), "nothing added: the error is the reply");
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
