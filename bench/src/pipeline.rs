//! Many requests in flight on one request queue, driven by one thread.
//!
//! Workloads are written as async tasks (`pipe.call(ops::open_file(..)).await?`); a tiny
//! executor polls them, and when all are blocked it waits on the queue's call eventfd and
//! hands completions back to the tasks that own them. No runtime, no wakers: each round
//! polls every live task, which is cheap at the queue depths virtio allows.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::MutexGuard;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::fuse_req::{decode_reply, Creds};
use crate::ops::{self, Call};
use crate::queue::{Completion, QueueDriver, Ticket};

/// A boxed task for [`Pipeline::run`].
pub type Task<'a> = Pin<Box<dyn Future<Output = Result<()>> + 'a>>;

/// Per-thread driver of one request queue with many requests in flight.
pub struct Pipeline<'d> {
    dev: &'d Device,
    queue: RefCell<MutexGuard<'d, QueueDriver>>,
    done: RefCell<HashMap<Ticket, Completion>>,
    creds: Creds,
    timeout: Duration,
    requests: Cell<u64>,
}

impl<'d> Pipeline<'d> {
    /// Takes request queue `i` (0-based) for this thread.
    pub fn new(dev: &'d Device, i: u16) -> Result<Self> {
        Ok(Pipeline {
            dev,
            queue: RefCell::new(dev.request_queue(i)?),
            done: RefCell::new(HashMap::new()),
            creds: Creds::default(),
            timeout: dev.config().timeout,
            requests: Cell::new(0),
        })
    }

    /// The device.
    pub fn device(&self) -> &'d Device {
        self.dev
    }

    /// FUSE requests completed or in flight so far (FORGETs included).
    pub fn requests(&self) -> u64 {
        self.requests.get()
    }

    /// A future running one typed call on this queue.
    pub fn call<T>(&self, call: Call<T>) -> CallFuture<'_, 'd, T> {
        CallFuture {
            pipe: self,
            call,
            state: State::New,
        }
    }

    /// Sends FORGET on the high-priority queue without waiting for it, as Linux does; its
    /// descriptors are reclaimed when the daemon returns them.
    pub fn forget(&self, nodeid: u64, nlookup: u64) -> Result<()> {
        let call = ops::forget(nodeid, nlookup);
        let chain = call.req.to_chain(self.dev.next_unique(), self.creds);
        let mut hp = self.dev.hiprio()?;
        hp.poll()?;
        let t = loop {
            match hp.submit(&chain) {
                Err(Error::QueueFull) => {
                    hp.wait(self.timeout)?;
                }
                r => break r?,
            }
        };
        hp.abandon(t);
        self.requests.set(self.requests.get() + 1);
        Ok(())
    }

    /// Runs tasks to completion concurrently; the first error aborts the run. A round with
    /// requests in flight and no completion within the timeout is [`Error::Timeout`].
    pub fn run(&self, tasks: Vec<Task<'_>>) -> Result<()> {
        let res = self.run_inner(tasks);
        if res.is_err() {
            if let Ok(mut q) = self.queue.try_borrow_mut() {
                q.abandon_all();
            }
            self.done.borrow_mut().clear();
        }
        res
    }

    fn run_inner(&self, tasks: Vec<Task<'_>>) -> Result<()> {
        let mut tasks: Vec<Option<Task<'_>>> = tasks.into_iter().map(Some).collect();
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            let mut live = 0;
            for slot in tasks.iter_mut() {
                if let Some(t) = slot {
                    match t.as_mut().poll(&mut cx) {
                        Poll::Ready(Ok(())) => *slot = None,
                        Poll::Ready(Err(e)) => return Err(e),
                        Poll::Pending => live += 1,
                    }
                }
            }
            if live == 0 {
                return Ok(());
            }
            let mut q = self.queue.borrow_mut();
            if q.in_flight() == 0 {
                return Err(Error::Config(
                    "tasks are blocked but no request is in flight (request too large?)".into(),
                ));
            }
            let got = q.wait(self.timeout)?;
            self.done.borrow_mut().extend(got);
        }
    }
}

enum State {
    New,
    Waiting { ticket: Ticket, unique: u64 },
    Finished,
}

/// Future of one typed call in a [`Pipeline`].
pub struct CallFuture<'p, 'd, T> {
    pipe: &'p Pipeline<'d>,
    call: Call<T>,
    state: State,
}

impl<T> Future for CallFuture<'_, '_, T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<T>> {
        let this = &mut *self;
        match this.state {
            State::New => {
                if this.call.req.no_reply {
                    return Poll::Ready(Err(Error::Config(
                        "no-reply requests go through Pipeline::forget".into(),
                    )));
                }
                let unique = this.pipe.dev.next_unique();
                let chain = this.call.req.to_chain(unique, this.pipe.creds);
                match this.pipe.queue.borrow_mut().submit(&chain) {
                    Ok(ticket) => {
                        this.pipe.requests.set(this.pipe.requests.get() + 1);
                        this.state = State::Waiting { ticket, unique };
                        Poll::Pending
                    }
                    Err(Error::QueueFull) => Poll::Pending,
                    Err(e) => {
                        this.state = State::Finished;
                        Poll::Ready(Err(e))
                    }
                }
            }
            State::Waiting { ticket, unique } => {
                let Some(c) = this.pipe.done.borrow_mut().remove(&ticket) else {
                    return Poll::Pending;
                };
                this.state = State::Finished;
                Poll::Ready(
                    decode_reply(&this.call.req, unique, &c).and_then(|r| (this.call.parse)(&r)),
                )
            }
            State::Finished => {
                Poll::Ready(Err(Error::Config("future polled after completion".into())))
            }
        }
    }
}
