//! The parent's picture of the pool: the task queue, the workers and what
//! each one holds, and the choice of which worker gets the next task.
//!
//! Each worker has its own task pipe, so the parent schedules: a task goes
//! to the ready worker holding the fewest, up to that worker's *window*.
//! The window adapts to how long tasks take (the worker reports its busy
//! time with every result): about [`TARGET_QUEUED`] of work is kept queued
//! at each worker, so tiny tasks travel in batches (hundreds per `write`)
//! while long ones go one at a time and balance like Python's shared
//! queue.
//!
//! Tasks are written from whichever thread holds the state lock: the
//! submitting thread (so `apply` costs no thread hop on the way out) or the
//! collector thread when results free a worker's window. Writes never
//! block: what a pipe does not take waits in the worker's [`OutQueue`] for
//! the collector to flush when the pipe drains.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::control::{self, Request};
use crate::error::Error;
use crate::fds::PoolFd;
use crate::frame::{self, FrameReader, FromWorker, OutQueue, ResultFrame, TaskHeader};
use crate::mailbox::Postman;
use crate::stats::{Counters, Exited};

/// How much work (by the workers' own timing) to keep queued at a worker.
const TARGET_QUEUED_NS: f64 = 1_000_000.0;
/// Most tasks in flight at one worker.
const MAX_WINDOW: usize = 1024;

/// The finished (or failed) task, sent to whoever submitted it.
#[derive(Debug)]
pub(crate) struct Completion {
    pub(crate) meta: TaskMeta,
    /// Pid of the worker that ran it (0 if none did).
    pub(crate) pid: i32,
    /// The worker's result frame, or why the task failed as a whole (the
    /// error names `meta.first`).
    pub(crate) outcome: Result<ResultFrame, Error>,
}

/// What the submitter needs back with a task's completion.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TaskMeta {
    /// Index of the task in its job.
    pub(crate) chunk: usize,
    /// Index of the task's first item in the job's input.
    pub(crate) first: usize,
    /// How many items the task holds.
    pub(crate) items: usize,
    /// Size of the encoded task.
    pub(crate) bytes: usize,
}

/// A task's way home: its description and its job's mailbox.
pub(crate) struct Reply {
    meta: TaskMeta,
    sink: Postman,
}

/// A completion to post once the state lock is released (posting wakes the
/// submitter, which would then wait for the lock we hold).
pub(crate) struct Delivery {
    reply: Reply,
    pid: i32,
    outcome: Result<ResultFrame, Error>,
}

impl Delivery {
    /// The task failed as a whole: `err`, for the task's first item.
    fn failed(reply: Reply, pid: i32, err: &Error) -> Self {
        let outcome = Err(err.for_item(reply.meta.first));
        Delivery {
            reply,
            pid,
            outcome,
        }
    }

    pub(crate) fn post(self) {
        self.reply.sink.send(Completion {
            meta: self.reply.meta,
            pid: self.pid,
            outcome: self.outcome,
        });
    }
}

/// An encoded task waiting for a worker.
pub(crate) struct Task {
    frame: Vec<u8>,
    reply: Reply,
    /// Set when the submitter no longer wants it run (imap dropped early).
    cancel: Option<Arc<AtomicBool>>,
}

impl Task {
    pub(crate) fn new(
        frame: Vec<u8>,
        meta: TaskMeta,
        sink: Postman,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Self {
        Task {
            frame,
            reply: Reply { meta, sink },
            cancel,
        }
    }

    pub(crate) fn meta(&self) -> TaskMeta {
        self.reply.meta
    }
}

struct InFlight {
    id: u64,
    reply: Reply,
}

/// Where the pool is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting for the first workers' initializers.
    Starting,
    Running,
    /// `close()`: finish the queue, take nothing new.
    Closed,
    /// `terminate()`, a failed start, or a dead zygote: everything stops.
    Terminating,
    /// The collector thread is done; all processes are reaped.
    Finished,
}

/// One worker, as the parent sees it.
pub(crate) struct Worker {
    /// Tasks, items and busy time of the results it returned.
    pub(crate) counters: Counters,
    pub(crate) slot: u32,
    pub(crate) pid: i32,
    /// It sent READY: its initializer succeeded.
    pub(crate) ready: bool,
    /// Write end of its task pipe; `None` once retired (EOF tells it to exit).
    pub(crate) task_fd: Option<Arc<PoolFd>>,
    /// Read end of its result pipe.
    pub(crate) result_fd: Arc<PoolFd>,
    pub(crate) reader: FrameReader,
    /// Its result pipe reported EOF: it is exiting.
    pub(crate) eof: bool,
    /// Its task and result pipes were enlarged (see [`frame::PIPE_BIG`]).
    task_pipe_big: bool,
    pub(crate) result_pipe_big: bool,
    out: OutQueue,
    in_flight: VecDeque<InFlight>,
    window: usize,
    avg_ns: Option<f64>,
    /// Tasks sent to it, for `max_tasks_per_child`.
    sent: usize,
    /// Why it is being killed, if the parent decided so (bad frame).
    pub(crate) failure: Option<Error>,
}

impl Worker {
    pub(crate) fn new(slot: u32, pid: i32, task_fd: PoolFd, result_fd: PoolFd) -> Self {
        Worker {
            counters: Counters::default(),
            slot,
            pid,
            ready: false,
            task_fd: Some(Arc::new(task_fd)),
            result_fd: Arc::new(result_fd),
            reader: FrameReader::default(),
            eof: false,
            task_pipe_big: false,
            result_pipe_big: false,
            out: OutQueue::default(),
            in_flight: VecDeque::new(),
            window: 1,
            avg_ns: None,
            sent: 0,
            failure: None,
        }
    }

    /// Whether the collector must poll its task pipe for room.
    pub(crate) fn wants_write(&self) -> bool {
        self.task_fd.is_some() && !self.out.is_empty()
    }

    pub(crate) fn holds_tasks(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// Writes what its pipe takes without blocking; `true` when nothing is
    /// left. A broken pipe means it is dying: its frames are dropped, and
    /// its tasks fail when the zygote reports the exit.
    pub(crate) fn flush(&mut self) -> bool {
        let Some(fd) = &self.task_fd else {
            return true;
        };
        match self.out.flush(fd.as_fd()) {
            Ok(done) => done,
            Err(_) => {
                self.out = OutQueue::default();
                true
            }
        }
    }

    fn record_busy(&mut self, busy_ns: u64) {
        let sample = busy_ns as f64;
        let avg = match self.avg_ns {
            Some(a) => 0.75 * a + 0.25 * sample,
            None => sample,
        };
        self.avg_ns = Some(avg);
        self.window = ((TARGET_QUEUED_NS / avg.max(1.0)) as usize).clamp(1, MAX_WINDOW);
    }
}

/// The pool's mutable state, behind one lock.
pub(crate) struct State {
    /// What the workers that exited did (for `Pool::stats`).
    pub(crate) exited: Exited,
    pub(crate) phase: Phase,
    /// Set once the pool cannot run work; every later call returns it.
    pub(crate) broken: Option<Error>,
    pub(crate) queue: VecDeque<Task>,
    pub(crate) workers: Vec<Worker>,
    pub(crate) ctrl: Arc<PoolFd>,
    pub(crate) processes: usize,
    pub(crate) max_tasks_per_child: Option<usize>,
    /// The parent shut the control socket's sending side down.
    pub(crate) ctrl_shut: bool,
    /// `close()` was called and the queue ran dry: task pipes were closed.
    pub(crate) draining: bool,
    /// The pool went through `Terminating` (rather than `close` and `join`).
    pub(crate) terminated: bool,
    /// Completions to post when the lock is released.
    pub(crate) done: Vec<Delivery>,
    next_id: u64,
}

impl State {
    pub(crate) fn new(ctrl: PoolFd, processes: usize, max_tasks_per_child: Option<usize>) -> Self {
        State {
            exited: Exited::default(),
            phase: Phase::Starting,
            broken: None,
            queue: VecDeque::new(),
            workers: Vec::with_capacity(processes),
            ctrl: Arc::new(ctrl),
            processes,
            max_tasks_per_child,
            ctrl_shut: false,
            draining: false,
            terminated: false,
            done: Vec::new(),
            next_id: 0,
        }
    }

    /// Whether new work is accepted; the error says why not.
    pub(crate) fn accepting(&self) -> Result<(), Error> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        match self.phase {
            Phase::Starting | Phase::Running => Ok(()),
            Phase::Closed => Err(Error::Closed),
            Phase::Terminating => Err(Error::Terminated),
            Phase::Finished if self.terminated => Err(Error::Terminated),
            Phase::Finished => Err(Error::Closed),
        }
    }

    /// Queues tasks and hands out what it can. Returns whether a pipe is
    /// full, so the collector must watch it.
    pub(crate) fn submit(&mut self, tasks: impl IntoIterator<Item = Task>) -> Result<bool, Error> {
        self.accepting()?;
        for mut task in tasks {
            TaskHeader::set_id(&mut task.frame, self.next_id);
            self.next_id += 1;
            self.queue.push_back(task);
        }
        Ok(self.dispatch())
    }

    /// Gives queued tasks to workers with room, and writes them (under the
    /// lock: measured on one core, writing after releasing it made `apply`
    /// slower, 14.2 against 11.9 µs). Returns whether output is left for the
    /// collector to flush when the pipe has room.
    pub(crate) fn dispatch(&mut self) -> bool {
        while let Some(task) = self.queue.front() {
            if task
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::Relaxed))
            {
                self.queue.pop_front();
                continue;
            }
            let Some(w) = self.pick_worker() else {
                break;
            };
            let mut task = self.queue.pop_front().expect("front exists");
            let worker = &mut self.workers[w];
            let id = TaskHeader::id_of(&task.frame);
            if task.frame.len() > frame::PIPE_DEFAULT && !worker.task_pipe_big {
                worker.task_pipe_big = true;
                if let Some(fd) = &worker.task_fd {
                    frame::enlarge_pipe(fd.as_fd());
                }
            }
            worker.out.push(std::mem::take(&mut task.frame));
            worker.in_flight.push_back(InFlight {
                id,
                reply: task.reply,
            });
            worker.sent += 1;
        }
        let mut pending = false;
        for w in &mut self.workers {
            if !w.out.is_empty() {
                pending |= !w.flush();
            }
        }
        pending
    }

    fn pick_worker(&self) -> Option<usize> {
        let mut best: Option<(usize, usize)> = None;
        for (i, w) in self.workers.iter().enumerate() {
            let held = w.in_flight.len();
            let room = w.ready
                && !w.eof
                && w.failure.is_none()
                && w.task_fd.is_some()
                && held < w.window
                && self.max_tasks_per_child.is_none_or(|m| w.sent < m);
            if room && best.is_none_or(|(_, b)| held < b) {
                best = Some((i, held));
            }
        }
        best.map(|(i, _)| i)
    }

    /// A result frame from worker `w`: completes the task it answers.
    pub(crate) fn on_result(&mut self, w: usize, result: ResultFrame) -> Result<(), String> {
        let worker = &mut self.workers[w];
        let id = result.id;
        let Some(front) = worker.in_flight.pop_front() else {
            return Err(format!(
                "a result for task {id}, but the worker holds no task"
            ));
        };
        if front.id != id {
            let expected = front.id;
            worker.in_flight.push_front(front);
            return Err(format!(
                "a result for task {id}, but task {expected} was next"
            ));
        }
        worker.record_busy(result.busy_ns);
        worker
            .counters
            .record(front.reply.meta.items, result.busy_ns);
        let pid = worker.pid;
        self.done.push(Delivery {
            reply: front.reply,
            pid,
            outcome: Ok(result),
        });
        self.retire_if_spent(w);
        Ok(())
    }

    /// Checks the header of a result frame still arriving from worker `w`:
    /// a frame that is not for the task the worker holds next is an error
    /// now, not after a body that may never come.
    pub(crate) fn check_pending(&self, w: usize) -> Result<(), String> {
        let worker = &self.workers[w];
        let body = worker.reader.pending_body();
        FromWorker::pending_kind_ok(body, worker.ready)?;
        if let Some(id) = ResultFrame::peek_id(body) {
            match worker.in_flight.front() {
                Some(f) if f.id == id => {}
                Some(f) => {
                    return Err(format!(
                        "a result for task {id}, but task {} was next",
                        f.id
                    ));
                }
                None => {
                    return Err(format!(
                        "a result for task {id}, but the worker holds no task"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Closes a worker's task pipe once it did `max_tasks_per_child` tasks
    /// and holds none: it exits on EOF and the zygote reports it.
    fn retire_if_spent(&mut self, w: usize) {
        let worker = &mut self.workers[w];
        let spent = self.max_tasks_per_child.is_some_and(|m| worker.sent >= m);
        if spent && worker.in_flight.is_empty() && worker.out.is_empty() {
            worker.task_fd = None;
        }
    }

    /// Removes a worker that exited and fails what it held with `err`
    /// (`err` names the first item; each task gets its own index).
    pub(crate) fn remove_worker(&mut self, w: usize, err: &Error) -> Worker {
        let mut worker = self.workers.remove(w);
        for f in worker.in_flight.drain(..) {
            self.done.push(Delivery::failed(f.reply, worker.pid, err));
        }
        worker
    }

    /// Fails every queued task with `err`.
    pub(crate) fn fail_queue(&mut self, err: &Error) {
        for task in self.queue.drain(..) {
            self.done.push(Delivery::failed(task.reply, 0, err));
        }
    }

    /// Stops everything: the workers are killed, all work fails with `err`.
    pub(crate) fn terminate(&mut self, err: &Error) {
        if !matches!(self.phase, Phase::Terminating | Phase::Finished) {
            self.phase = Phase::Terminating;
        }
        self.terminated = true;
        self.fail_all(err);
    }

    /// Fails everything: the queue and what every worker holds.
    pub(crate) fn fail_all(&mut self, err: &Error) {
        self.fail_queue(err);
        for worker in &mut self.workers {
            for f in worker.in_flight.drain(..) {
                self.done.push(Delivery::failed(f.reply, worker.pid, err));
            }
            worker.out = OutQueue::default();
        }
    }

    /// Asks the zygote for a worker in `slot`.
    pub(crate) fn request_spawn(&mut self, slot: u32) -> Result<(), Error> {
        control::send(self.ctrl.as_fd(), &Request::Spawn { slot }, &[])
            .map_err(|e| Error::io("asking the zygote for a worker", e))
    }

    /// Asks the zygote to kill a worker (only the zygote, which reaps it,
    /// knows the pid is still that worker's).
    pub(crate) fn request_kill(&mut self, pid: i32) {
        let _ = control::send(self.ctrl.as_fd(), &Request::Kill { pid }, &[]);
    }

    /// Shuts the control socket's sending side: the zygote kills its
    /// workers and exits.
    pub(crate) fn shut_ctrl(&mut self) {
        if !self.ctrl_shut {
            self.ctrl_shut = true;
            let _ = nix::sys::socket::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(&self.ctrl.as_fd()),
                nix::sys::socket::Shutdown::Write,
            );
        }
    }

    /// Whether all submitted work is done.
    pub(crate) fn idle(&self) -> bool {
        self.queue.is_empty() && self.workers.iter().all(|w| !w.holds_tasks())
    }

    /// Pids of the workers alive now.
    pub(crate) fn pids(&self) -> Vec<i32> {
        self.workers.iter().map(|w| w.pid).collect()
    }
}
