//! A fixed pool of worker threads for `--thread-pool-size`.

use std::io;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;

type Job = Box<dyn FnOnce() + Send + 'static>;

pub struct ThreadPool {
    // Behind a mutex only so the pool is Sync; sending is cheap and uncontended in practice.
    tx: Mutex<Sender<Job>>,
}

impl ThreadPool {
    pub fn new(threads: usize) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            thread::Builder::new()
                .name(format!("vufsd-pool-{i}"))
                .spawn(move || worker(&rx))?;
        }
        Ok(Self { tx: Mutex::new(tx) })
    }

    pub fn execute(&self, job: impl FnOnce() + Send + 'static) {
        if let Ok(tx) = self.tx.lock() {
            // Fails only when every worker is gone, i.e. while the process exits.
            let _ = tx.send(Box::new(job));
        }
    }
}

fn worker(rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}
