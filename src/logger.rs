//! A minimal stderr logger: one line per record, with a UTC timestamp, the level and the
//! thread, so interleaved queue threads can be told apart.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{LevelFilter, Log, Metadata, Record};

struct StderrLogger;

/// fuse-backend-rs logs every FUSE_INIT at info, in several lines, and every error reply it
/// sends at error — including the ones a guest provokes at will (a failed READDIR). What a user
/// must see about requests, vufsd's own dispatcher logs; the crate's lines belong to debug.
fn effective_level(metadata: &Metadata<'_>) -> log::Level {
    if metadata.target().starts_with("fuse_backend_rs") {
        metadata.level().max(log::Level::Debug)
    } else {
        metadata.level()
    }
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        effective_level(metadata) <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let secs = now.as_secs();
        let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("-");
        // One write per line so lines from different threads do not interleave.
        let line = format!(
            "[{h:02}:{m:02}:{s:02}.{:03} {:5} vufsd {name}] {}\n",
            now.subsec_millis(),
            effective_level(record.metadata()),
            record.args()
        );
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

pub fn init(level: LevelFilter) {
    // Only fails if a logger is already set, which would be ours.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
