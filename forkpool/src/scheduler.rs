//! The parent's picture of the pool: the jobs waiting, the workers and
//! what each one holds, and the choice of which worker gets the next task.
//!
//! # Commit work late
//!
//! A task written into one worker's pipe cannot move to an idle worker, so
//! the scheduler writes a task only when a worker is about to need it.
//!
//! - **Jobs, not tasks, wait in the parent.** A job (one `map`, one `imap`,
//!   one `apply`) is its items, each encoded once at submit into one buffer
//!   ([`Items`]). Task frames are cut out of consecutive items at dispatch
//!   time, so a task's size is chosen when it is sent, from what the job has
//!   shown so far.
//! - **Each worker holds a small, time-bounded amount of work**, measured
//!   in *this job's* task times (the worker reports its busy time with every
//!   result). A worker takes another task while the work it holds is
//!   estimated under [`HOLD_NS`] (about the time a result takes to come back
//!   and a refill to reach it), or while it holds fewer than two tasks that
//!   are not long ([`LONG_NS`]): the second one keeps the worker busy while
//!   the first one's result travels. So tiny tasks travel hundreds per
//!   `write`, and long ones go one at a time, like Python's shared queue.
//! - **No window carries from one job to the next.** A new job may have
//!   one task per worker out, and its allowance grows by one per worker
//!   with each of its completed tasks (so it doubles per round trip, TCP's
//!   slow start), while the estimate from its own completions says how
//!   much fits in [`HOLD_NS`] and how big a guided chunk is. A job that
//!   follows a job of tiny tasks therefore starts as cautiously as on a
//!   fresh pool, and reaches every worker. The one thing that does carry
//!   over is what the same *function's* items cost lately ([`Recent`]),
//!   and only as the estimate of a task whose job has no completion of its
//!   own yet: a loop of `apply_async` is a stream of one-task jobs, and
//!   without it each task would wait for the previous one's round trip. A
//!   task with nothing known at all goes only to a worker that holds none.
//! - **Tasks are written in batches.** A submitting thread writes to a
//!   worker once what waits for it is at least what it has written and not
//!   yet answered (an idle worker at once, a busy one in doubling batches);
//!   the collector writes the rest when results come in, many in one
//!   `write` (see [`State::dispatch`]).
//! - **Consecutive tasks go to one worker, and come back as one
//!   completion.** A worker given several tasks at once gets consecutive
//!   ones (up to its share of the job's window and of the items waiting),
//!   cut into one buffer when they are small. Their small results are read
//!   in place and appended to one completion ([`Completion::parts`]), so a
//!   batch of tiny tasks costs one allocation and one hand-over to the
//!   submitter, not one per task (at chunksize 1 the per-result buffer,
//!   allocated by the collector and freed by the submitter's thread, was
//!   the largest cost of both threads).
//! - **Guided self-scheduling for `map`'s default chunks** (OpenMP's
//!   `guided`; Polychronopoulos and Kuck, 1987): a task gets about
//!   [`TASK_NS`] of items by the job's per-item estimate, never more than
//!   the remaining items over twice the workers, and a single item while
//!   nothing is known. Chunks shrink as the job drains, and shrink at once
//!   when items turn out costlier (the estimate follows a costlier item up
//!   immediately, and comes down by halves).
//!
//! What this cannot do: undo a commitment. When a job's items change cost
//! abruptly (thousands of 20 µs items, then 25 ms ones), each worker may
//! already hold up to [`HOLD_NS`] of what it *thought* was cheap work, and
//! those tasks run where they are. The same holds for one-task jobs of a
//! function whose cost depends on its argument: estimated by its cheap
//! calls, up to [`HOLD_NS`] of them may wait behind a costly one.
//!
//! Tasks are written from whichever thread holds the state lock: the
//! submitting thread (so `apply` costs no thread hop on the way out) or the
//! collector thread when results free a worker. A submitter never waits
//! for the lock with a job of one block in hand: if another thread holds
//! it, the job is left for that thread to open (see
//! `collector::Shared::submit_whole`). Writes never block: what a
//! pipe does not take waits in the worker's [`OutQueue`] for the collector
//! to flush when the pipe drains.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use crate::control::{self, Request};
use crate::error::Error;
use crate::fds::PoolFd;
use crate::frame::{self, FrameReader, FromWorker, OutQueue, PlainResult, ResultFrame, TaskHeader};
use crate::mailbox::Postman;
use crate::side::ParentSide;
use crate::stats::{Counters, Exited};
use crate::task::{Cut, Items, cut_small_into, cut_task, plain_size};

/// Estimated work (by the job's own task times) a worker may hold: about
/// what covers a result's trip back and the refill's trip out, results
/// being held up to 200 µs by the worker for company. It is also the most
/// work a worker can be stuck with when a job's items turn costly at once:
/// measured on 2 quiet cores (`compare --only sched`), 1 ms here left
/// `imap_unordered(chunksize 1)` of 3000 x 20 µs then 40 x 25 ms at 0.77
/// of ideal (about 50 cheap-looking tasks held per worker), 250 µs at 0.99,
/// with the same tiny-task rate (100 000 tasks at chunksize 1: 67-77 ms
/// against 62-71 ms, alternated).
pub(crate) const HOLD_NS: f64 = 250_000.0;
/// A task estimated at least this long goes to a worker only when it holds
/// nothing (a round trip is then under 2 % of the task).
pub(crate) const LONG_NS: f64 = 5_000_000.0;
/// What a guided chunk aims to take, by the job's per-item estimate: above
/// the 200 µs a worker holds a result for company, so each guided chunk's
/// result comes home at once and the next chunk goes to whichever worker
/// finished, not to one that returned a batch.
pub(crate) const TASK_NS: f64 = 250_000.0;
/// Most tasks in flight at one worker.
pub(crate) const MAX_WINDOW: usize = 1024;
/// Tasks a new job may give each worker before any of them finished.
const FIRST_WINDOW: usize = 1;

/// Names a job in the pool's state.
pub(crate) type JobId = u64;

/// Hashes job ids, which the pool numbers itself, one after another (no
/// adversary chooses them), so that jobs opened one after another sit one
/// after another in the table: the hash is the id itself in its low bits
/// (the table's bucket, modulo its size) and the id's low 7 bits again in
/// its top 7 (the tag the table compares first, so neighbouring jobs'
/// tags differ). The live jobs are nearly always a run of consecutive ids,
/// which then never collide. A loop of 20 000 `apply_async` keeps
/// thousands of jobs open; with ids scattered over the table (Fibonacci
/// hashing, before) each lookup missed the cache, and the loop took about
/// 20 % more CPU (alternated on 2 cores: 1 180-1 320 against 920-1 030 ms
/// of `perf stat` task-clock for 15 loops). SipHash was about 3 % of the
/// collector's time at chunksize 1; a `BTreeMap` allocated and freed a
/// node of eleven jobs as such a loop went by.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(self.0 ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        let n = self.0 ^ n;
        self.0 = n ^ (n << 57);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The finished (or failed) task, sent to whoever submitted it.
#[derive(Debug)]
pub(crate) struct Completion {
    pub(crate) meta: TaskMeta,
    /// Pid of the worker that ran it (0 if none did).
    pub(crate) pid: Pid,
    /// The worker's result frame, or why the task failed as a whole (the
    /// error names `meta.first`).
    pub(crate) outcome: Result<ResultFrame, Error>,
    /// Empty for one task's completion. When the collector merged the
    /// results of consecutive tasks of the job from one worker into this
    /// one (their outcomes appended to the first one's frame: one
    /// allocation and one hand-over for many tiny tasks), every task, in
    /// order: `meta` then covers them all.
    pub(crate) parts: Vec<Part>,
}

impl Completion {
    /// How many of the job's tasks it completes (from `meta.chunk` on).
    pub(crate) fn tasks(&self) -> usize {
        self.parts.len().max(1)
    }
}

/// One task in a merged [`Completion`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Part {
    /// Its items.
    pub(crate) items: usize,
    /// Bytes of its outcomes in the merged frame's payload.
    pub(crate) payload: usize,
}

/// Results of at most this many bytes are read without a copy of their
/// own and merged with the result before them when they can be (see
/// [`Completion::parts`]).
const SMALL_RESULT: usize = 4096;
/// Room left in a merged result's buffer for the results that may follow.
const MERGE_ROOM: usize = 512;
/// Tasks of at most this many encoded bytes are cut into a buffer shared
/// with the worker's other waiting tasks (see [`OutQueue::tail`]).
const SMALL_TASK: usize = 4096;
/// How big such a shared buffer grows before the next one starts.
const TAIL_BYTES: usize = 64 * 1024;

/// What the submitter needs back with a task's completion.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TaskMeta {
    /// Index of the task in its job (tasks are cut in item order).
    pub(crate) chunk: usize,
    /// Index of the task's first item in the job's input.
    pub(crate) first: usize,
    /// How many items the task holds.
    pub(crate) items: usize,
    /// Encoded size of those items.
    pub(crate) bytes: usize,
}

/// Completions of one job to post once the state lock is released
/// (posting wakes the submitter, which would then wait for the lock we
/// hold): all that one pass under the lock produced for the job, in order,
/// so they cost one mailbox lock and one wake-up.
pub(crate) struct Delivery {
    job: JobId,
    sink: Postman,
    first: Completion,
    /// The completions after `first` (none for an `apply`: no allocation).
    more: Vec<Completion>,
}

impl Delivery {
    pub(crate) fn post(self) {
        self.sink
            .send_all(std::iter::once(self.first).chain(self.more));
    }
}

/// Where a completion goes: the mailbox of a job that goes on (its sender
/// is cloned for the delivery), or the sender of a job that is over, moved
/// (for a one-task job, no lock to count a sender in and out again).
enum To<'a> {
    Job(&'a Postman),
    Last(Postman),
}

/// Queues completion `c` of job `job` in `done`: with the completions
/// before it when they are the same job's.
fn deliver(done: &mut Vec<Delivery>, job: JobId, to: To<'_>, c: Completion) {
    match done.last_mut() {
        // (A job's last sender dropped here leaves the delivery's own.)
        Some(d) if d.job == job => d.more.push(c),
        _ => done.push(Delivery {
            job,
            sink: match to {
                To::Job(sink) => sink.clone(),
                To::Last(sink) => sink,
            },
            first: c,
            more: Vec::new(),
        }),
    }
}

/// The completion of a task that failed as a whole: `err`, for the task's
/// first item.
fn failed(meta: TaskMeta, pid: Pid, err: &Error) -> Completion {
    Completion {
        meta,
        pid,
        outcome: Err(err.for_item(meta.first)),
        parts: Vec::new(),
    }
}

/// Queues the completion of a task of job `job` that worker `pid`
/// answered with the plain result `result` (read in place): appended to
/// the completion before it when that is the same job's, the same
/// worker's, and the task just before (one buffer, one completion for a
/// batch of tiny tasks), else copied into a completion of its own, with
/// room for more unless the job is over.
fn deliver_plain(
    done: &mut Vec<Delivery>,
    job: JobId,
    to: To<'_>,
    meta: TaskMeta,
    pid: Pid,
    result: PlainResult<'_>,
) {
    let payload = result.payload();
    if let Some(d) = done.last_mut()
        && d.job == job
    {
        let prev = d.more.last_mut().unwrap_or(&mut d.first);
        let next = prev.meta.chunk + prev.tasks() == meta.chunk
            && prev.meta.first + prev.meta.items == meta.first
            && prev.pid == pid;
        if next && let Ok(frame) = &mut prev.outcome {
            let before = frame.payload_len();
            if frame.extend_plain(payload) {
                if prev.parts.is_empty() {
                    prev.parts.push(Part {
                        items: prev.meta.items,
                        payload: before,
                    });
                }
                prev.parts.push(Part {
                    items: meta.items,
                    payload: payload.len(),
                });
                prev.meta.items += meta.items;
                prev.meta.bytes += meta.bytes;
                return;
            }
        }
    }
    let room = match to {
        To::Job(_) => MERGE_ROOM,
        To::Last(_) => 0,
    };
    let c = Completion {
        meta,
        pid,
        outcome: Ok(result.to_frame(room)),
        parts: Vec::new(),
    };
    deliver(done, job, to, c);
}

/// How a job's items are split into tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunking {
    /// This many items per task (the last task may hold fewer).
    Fixed(usize),
    /// Guided self-scheduling over `total` items (see the module docs).
    Guided { total: usize },
}

/// What a job is: how to run its tasks and where their results go.
pub(crate) struct JobSpec {
    /// The trampoline and function of every task (the id is set per task).
    pub(crate) header: TaskHeader,
    pub(crate) chunking: Chunking,
    pub(crate) sink: Postman,
}

/// A job as the scheduler keeps it.
struct Job {
    spec: JobSpec,
    /// Items appended and not yet cut, oldest first.
    queue: VecDeque<Items>,
    /// Items appended so far, and the index of the first one not yet cut.
    appended: usize,
    next_item: usize,
    next_chunk: usize,
    /// The submitter will append nothing more.
    input_done: bool,
    /// Tasks of this job that workers hold.
    in_flight: usize,
    /// Estimated nanoseconds per item, from this job's own completions.
    item_ns: Option<f64>,
    /// Tasks of this job workers may hold, per worker (grows by one per
    /// completed task: slow start).
    window: usize,
}

impl Job {
    fn uncut(&self) -> usize {
        self.appended - self.next_item
    }

    /// The submitter no longer wants the rest run (an `IMap` dropped
    /// early, a handle cancelled or dropped, a `map` whose input failed to
    /// encode).
    fn cancelled(&self) -> bool {
        self.spec.sink.cancelled()
    }

    /// Whether it will never need the state again.
    fn finished(&self) -> bool {
        self.in_flight == 0 && (self.cancelled() || (self.input_done && self.uncut() == 0))
    }

    /// Items in the next task, if one can be cut now.
    fn next_len(&self, processes: usize) -> Option<usize> {
        let uncut = self.uncut();
        if uncut == 0 || self.cancelled() {
            return None;
        }
        match self.spec.chunking {
            Chunking::Fixed(n) if uncut >= n => Some(n),
            Chunking::Fixed(_) => self.input_done.then_some(uncut),
            Chunking::Guided { total } => {
                let guided = total.saturating_sub(self.next_item).div_ceil(2 * processes);
                let by_time = self
                    .item_ns
                    .map_or(1, |ns| (TASK_NS / ns.max(1.0)) as usize);
                Some(by_time.min(guided).min(uncut).max(1))
            }
        }
    }

    /// Estimated nanoseconds of a task of `n` items: by this job's own
    /// completions, or before it has any, by `recent` (what its function's
    /// items cost lately, in any job); `None`: not known.
    fn estimate(&self, n: usize, recent: &Recent) -> Option<f64> {
        self.item_ns
            .or_else(|| recent.get(&self.function()).copied())
            .map(|ns| ns * n as f64)
    }

    /// Which function its tasks run.
    fn function(&self) -> Function {
        (self.spec.header.tramp, self.spec.header.func)
    }

    /// Whether it may give workers another task (slow start: `window` per
    /// worker, over all `processes`).
    fn window_open(&self, processes: usize) -> bool {
        self.in_flight < self.window.saturating_mul(processes)
    }

    /// How much estimated work a worker may hold when it takes this job's
    /// next task: [`HOLD_NS`], and for a guided job also no more than its
    /// share of what is left (so the last tasks are not all committed to
    /// the worker that asked first).
    fn hold_cap(&self, processes: usize) -> f64 {
        match (self.spec.chunking, self.item_ns) {
            (Chunking::Guided { total }, Some(ns)) => {
                let left = total.saturating_sub(self.next_item) as f64 * ns;
                HOLD_NS.min(left / processes as f64)
            }
            _ => HOLD_NS,
        }
    }

    /// Learns from a completed task: its busy time over its items.
    fn learn(&mut self, sample: f64) {
        self.item_ns = Some(follow(self.item_ns, sample));
        self.window = (self.window + 1).min(MAX_WINDOW);
    }
}

/// A task's function: its trampoline and function addresses.
type Function = (u64, u64);

/// The per-item time of each function's latest tasks, whatever their job.
///
/// It only estimates the tasks of a job that has no completion of its own
/// yet, and so never sizes a chunk (a guided job cuts single items until
/// its own tasks report) nor lifts a job's slow start. What it does: a
/// stream of one-task jobs (`apply_async` in a loop) each start with no
/// history, and with nothing known, a worker takes a task only when it
/// holds none, one round trip per task; known tiny, a worker holds up to
/// [`HOLD_NS`] of them, as it would within one job.
type Recent = BTreeMap<Function, f64>;

/// The next per-item estimate after `sample`: costlier items are believed
/// at once (smaller tasks follow), cheaper ones come in by halves.
fn follow(old: Option<f64>, sample: f64) -> f64 {
    match old {
        Some(old) if sample < old => 0.5 * (old + sample),
        _ => sample,
    }
}

/// A task a worker holds.
struct InFlight {
    id: u64,
    job: JobId,
    meta: TaskMeta,
    /// What it was estimated to cost when sent (unknown counts as
    /// [`HOLD_NS`]).
    est_ns: f64,
}

/// Which thread dispatches (see [`State::dispatch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Writer {
    /// A thread submitting work.
    Submitter,
    /// The collector, which reads the results.
    Collector,
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
    pub(crate) pid: Pid,
    /// It sent READY: its initializer succeeded.
    pub(crate) ready: bool,
    /// Write end of its task pipe; `None` once retired (EOF tells it to exit).
    pub(crate) task_fd: Option<Arc<PoolFd>>,
    /// Read end of its result pipe.
    pub(crate) result_fd: Arc<PoolFd>,
    /// Its side channel, for the descriptors of buffers.
    pub(crate) side: ParentSide,
    pub(crate) reader: FrameReader,
    /// Its result pipe reported EOF: it is exiting.
    pub(crate) eof: bool,
    /// Its task and result pipes were enlarged (see [`frame::PIPE_BIG`]).
    task_pipe_big: bool,
    pub(crate) result_pipe_big: bool,
    out: OutQueue,
    /// Tasks at the end of `in_flight` not yet wholly written (may count
    /// too many after a partial write, never too few).
    unwritten: usize,
    in_flight: VecDeque<InFlight>,
    /// Sum of the estimates of `in_flight`.
    held_ns: f64,
    /// Tasks sent to it, for `max_tasks_per_child`.
    sent: usize,
    /// Why it is being killed, if the parent decided so (bad frame).
    pub(crate) failure: Option<Error>,
    /// When the task at the head of `in_flight` started (as the parent
    /// knows it: when it was written to an idle worker, or when the result
    /// before it arrived), for `task_timeout`; kept only when there is one.
    head_since: Option<Instant>,
}

impl Worker {
    pub(crate) fn new(
        slot: u32,
        pid: Pid,
        task_fd: PoolFd,
        result_fd: PoolFd,
        side: PoolFd,
    ) -> Self {
        Worker {
            counters: Counters::default(),
            slot,
            pid,
            ready: false,
            task_fd: Some(Arc::new(task_fd)),
            result_fd: Arc::new(result_fd),
            side: ParentSide::new(side),
            reader: FrameReader::default(),
            eof: false,
            task_pipe_big: false,
            result_pipe_big: false,
            out: OutQueue::default(),
            unwritten: 0,
            in_flight: VecDeque::new(),
            held_ns: 0.0,
            sent: 0,
            failure: None,
            head_since: None,
        }
    }

    /// Whether the collector must poll its task pipe for room.
    pub(crate) fn wants_write(&self) -> bool {
        self.task_fd.is_some() && !self.out.is_empty()
    }

    /// Sends the buffer descriptors waiting for room on its side channel;
    /// `false` when the channel failed (then stop the worker).
    pub(crate) fn flush_side(&mut self) -> bool {
        match self.side.flush() {
            Ok(()) => true,
            Err(e) => {
                self.side_failed(e);
                false
            }
        }
    }

    /// Its side channel failed with `e`: it is to be killed, and its tasks
    /// fail saying why.
    fn side_failed(&mut self, e: std::io::Error) {
        self.failure.get_or_insert_with(|| {
            Error::io("sending the descriptors of a task's buffers to a worker", e)
        });
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
        let done = match self.out.flush(fd.as_fd()) {
            Ok(done) => done,
            Err(_) => {
                self.out = OutQueue::default();
                true
            }
        };
        if done {
            self.unwritten = 0;
        }
        done
    }

    /// Drops what waits to be written (the worker is being stopped).
    fn drop_out(&mut self) {
        self.out = OutQueue::default();
        self.unwritten = 0;
    }

    /// Whether a submitting thread should write what waits for it: at
    /// least as much as it has written and not answered (everything, when
    /// it is idle).
    fn submitter_writes(&self) -> bool {
        self.unwritten > 0 && self.in_flight.len() - self.unwritten <= self.unwritten
    }

    /// Whether it may take a task estimated at `est` (`None`: unknown),
    /// holding at most `cap` of estimated work (beyond the two-task
    /// pipeline).
    fn has_room(&self, est: Option<f64>, cap: f64) -> bool {
        let held = self.in_flight.len();
        if held == 0 {
            return true;
        }
        if held >= MAX_WINDOW {
            return false;
        }
        match est {
            None => held < FIRST_WINDOW,
            Some(e) => (held < 2 && e < LONG_NS) || self.held_ns < cap,
        }
    }

    fn pop_front(&mut self) -> Option<InFlight> {
        pop_held(&mut self.in_flight, &mut self.held_ns, &mut self.unwritten)
    }
}

/// Whether a result for task `id` answers the task a worker holding
/// `in_flight` holds next (results come back in the order tasks were
/// written); what is wrong if not.
fn answers_next(in_flight: &VecDeque<InFlight>, id: u64) -> Result<(), String> {
    match in_flight.front() {
        Some(f) if f.id == id => Ok(()),
        Some(f) => Err(format!(
            "a result for task {id}, but task {} was next",
            f.id
        )),
        None => Err(format!(
            "a result for task {id}, but the worker holds no task"
        )),
    }
}

/// Takes the oldest task a worker holds off its in-flight list
/// `in_flight`, whose estimates sum to `held_ns`, `unwritten` of them not
/// yet written.
fn pop_held(
    in_flight: &mut VecDeque<InFlight>,
    held_ns: &mut f64,
    unwritten: &mut usize,
) -> Option<InFlight> {
    let f = in_flight.pop_front()?;
    *held_ns = if in_flight.is_empty() {
        0.0
    } else {
        (*held_ns - f.est_ns).max(0.0)
    };
    *unwritten = (*unwritten).min(in_flight.len());
    Some(f)
}

/// The pool's mutable state, behind one lock.
pub(crate) struct State {
    /// What the workers that exited did (for `Pool::stats`).
    pub(crate) exited: Exited,
    pub(crate) phase: Phase,
    /// Set once the pool cannot run work; every later call returns it.
    pub(crate) broken: Option<Error>,
    /// Every job that has items to cut or tasks out.
    jobs: HashMap<JobId, Job, BuildHasherDefault<IdHasher>>,
    /// What each function's items cost lately (see [`Recent`]).
    recent: Recent,
    /// Jobs that may still have items to cut, in submission order.
    order: VecDeque<JobId>,
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
    next_job: JobId,
    /// `PoolBuilder::task_timeout`: a worker whose head task runs longer
    /// is killed and the task fails alone (see [`State::expire_tasks`]).
    pub(crate) task_timeout: Option<Duration>,
}

impl State {
    pub(crate) fn new(ctrl: PoolFd, processes: usize, max_tasks_per_child: Option<usize>) -> Self {
        State {
            exited: Exited::default(),
            phase: Phase::Starting,
            broken: None,
            jobs: HashMap::default(),
            recent: BTreeMap::new(),
            order: VecDeque::new(),
            workers: Vec::with_capacity(processes),
            ctrl: Arc::new(ctrl),
            processes,
            max_tasks_per_child,
            ctrl_shut: false,
            draining: false,
            terminated: false,
            done: Vec::new(),
            next_id: 0,
            next_job: 0,
            task_timeout: None,
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

    /// Starts a job; its items come with [`append`](Self::append).
    pub(crate) fn open_job(&mut self, spec: JobSpec) -> Result<JobId, Error> {
        self.accepting()?;
        let id = self.next_job;
        self.next_job += 1;
        self.jobs.insert(
            id,
            Job {
                spec,
                // Most jobs hold one block at a time (`apply`: one item).
                queue: VecDeque::with_capacity(1),
                appended: 0,
                next_item: 0,
                next_chunk: 0,
                input_done: false,
                in_flight: 0,
                item_ns: None,
                window: FIRST_WINDOW,
            },
        );
        self.order.push_back(id);
        Ok(id)
    }

    /// Adds encoded items to a job (`done`: they are its last) and hands
    /// out what it can. Returns whether a pipe is full, so the collector
    /// must watch it. On error nothing was added: the caller still owns
    /// the items' outcome.
    pub(crate) fn append(&mut self, job: JobId, items: Items, done: bool) -> Result<bool, Error> {
        self.accepting()?;
        let Some(j) = self.jobs.get_mut(&job) else {
            // Only a job failed by a broken pool is gone while its
            // submitter appends; `accepting` said so above.
            return Err(Error::Terminated);
        };
        j.appended += items.len();
        if items.len() > 0 {
            j.queue.push_back(items);
        }
        j.input_done |= done;
        if j.finished() {
            self.jobs.remove(&job);
        }
        // With a task timeout the collector must also learn of the clocks
        // started here, to wake when the first one runs out.
        Ok(self.dispatch(Writer::Submitter) || self.task_timeout.is_some())
    }

    /// Opens a job for `spec` whose items are all of `items` (at least
    /// one), and hands out what it can; returns whether a pipe is full, as
    /// [`append`](Self::append). If the pool no longer takes work, the job
    /// fails at once instead: its handle gets the error.
    pub(crate) fn open_whole(&mut self, spec: JobSpec, items: Items) -> bool {
        if let Err(e) = self.accepting() {
            let job = self.next_job;
            self.next_job += 1;
            let meta = TaskMeta {
                chunk: 0,
                first: items.first_index(),
                items: items.len(),
                bytes: items.bytes(),
            };
            let c = failed(meta, Pid::from_raw(0), &e);
            deliver(&mut self.done, job, To::Last(spec.sink), c);
            return false;
        }
        let id = self.open_job(spec).expect("accepting: checked above");
        self.append(id, items, true)
            .expect("accepting: checked above, and the job was just opened")
    }

    /// The submitter gave up on job `id` (an `IMap` dropped): its uncut
    /// items are dropped now; what workers hold still runs.
    pub(crate) fn cancel(&mut self, id: JobId) {
        if let Some(job) = self.jobs.get(&id) {
            job.spec.sink.cancel();
            self.drop_uncut(id);
        }
    }

    /// Items queued in the parent, not yet cut into tasks.
    pub(crate) fn queued_items(&self) -> usize {
        self.jobs.values().map(Job::uncut).sum()
    }

    /// Gives tasks to workers with room, cutting them from the oldest job
    /// with items, and writes them (under the lock: measured on one core,
    /// writing after releasing it made `apply` slower, 14.2 against 11.9
    /// µs). Returns whether output is left for the collector to flush when
    /// the pipe has room.
    ///
    /// A submitting thread writes to a worker once what waits for it is at
    /// least what it already has written (an idle worker at once; then
    /// batches that double): the collector, which reads the results, writes
    /// the rest, many tasks in one `write`. Writing each task of a loop of
    /// `apply_async` at once woke the worker for every task, which ran it,
    /// slept again and preempted the submitter (measured: 3 to 4 times the
    /// context switches and 2.5 times the CPU of writing them in batches);
    /// writing only to idle workers left the others waiting for the
    /// collector, which on a loaded machine waits for a CPU (a loop of
    /// `apply_async` 2 to 5 times slower than writing at once).
    pub(crate) fn dispatch(&mut self, writer: Writer) -> bool {
        let mut at = 0;
        while at < self.order.len() {
            let id = self.order[at];
            let Some(job) = self.jobs.get(&id) else {
                self.order.remove(at);
                continue;
            };
            if job.cancelled() || (job.input_done && job.uncut() == 0) {
                self.order.remove(at);
                self.drop_uncut(id);
                continue;
            }
            let next = job
                .next_len(self.processes)
                .filter(|_| job.window_open(self.processes));
            let Some(n) = next else {
                // Waiting for its submitter, or for its first results:
                // later jobs may go first.
                at += 1;
                continue;
            };
            let est = job.estimate(n, &self.recent);
            let cap = job.hold_cap(self.processes);
            let Some(w) = self.pick_worker(est, cap) else {
                break;
            };
            // The next tasks go to the same worker while it has room, up
            // to its share of what the job's window lets out and of the
            // items waiting: their results then come back together and
            // merge into one completion (see `deliver_plain`).
            let share = (job.window.saturating_mul(self.processes))
                .saturating_sub(job.in_flight)
                .min(job.uncut().div_ceil(n))
                .div_ceil(self.processes)
                .max(1);
            self.send(id, w, n, est);
            for _ in 1..share {
                let job = &self.jobs[&id];
                let next = job
                    .next_len(self.processes)
                    .filter(|_| job.window_open(self.processes));
                let Some(n) = next else {
                    break;
                };
                let est = job.estimate(n, &self.recent);
                let cap = job.hold_cap(self.processes);
                let worker = &self.workers[w];
                if !self.usable(worker) || !worker.has_room(est, cap) {
                    break;
                }
                self.send(id, w, n, est);
            }
        }
        let mut pending = false;
        for w in &mut self.workers {
            if !w.out.is_empty() && (writer == Writer::Collector || w.submitter_writes()) {
                pending |= !w.flush();
            }
        }
        pending
    }

    /// Cuts the next `n` items of job `id` into a task for worker `w`.
    fn send(&mut self, id: JobId, w: usize, n: usize, est: Option<f64>) {
        let job = self.jobs.get_mut(&id).expect("dispatch found it");
        let worker = &mut self.workers[w];
        let task_id = self.next_id;
        self.next_id += 1;
        let header = TaskHeader {
            id: task_id,
            ..job.spec.header
        };
        let (first, bytes, fds) = match plain_size(&job.queue, n).filter(|&b| b <= SMALL_TASK) {
            Some(bytes) => {
                // Small and plain: appended to the buffer of the worker's
                // other waiting tasks (one allocation and one write for a
                // batch, not one each).
                let first = cut_small_into(header, &mut job.queue, n, worker.out.tail(TAIL_BYTES));
                (first, bytes, Vec::new())
            }
            None => {
                let Cut {
                    frame,
                    first,
                    bytes,
                    fds,
                } = cut_task(header, &mut job.queue, n);
                if frame.len() > frame::PIPE_DEFAULT && !worker.task_pipe_big {
                    worker.task_pipe_big = true;
                    if let Some(fd) = &worker.task_fd {
                        frame::enlarge_pipe(fd.as_fd());
                    }
                }
                worker.out.push(frame);
                (first, bytes, fds)
            }
        };
        let meta = TaskMeta {
            chunk: job.next_chunk,
            first,
            items: n,
            bytes,
        };
        job.next_chunk += 1;
        job.next_item += n;
        job.in_flight += 1;
        if job.input_done && job.queue.is_empty() {
            // Nothing more will be queued: its memory goes now, not when
            // the last result comes back (20 000 `apply_async` in flight
            // kept 20 000 empty queues).
            job.queue = VecDeque::new();
        }
        // The clock is read only for a task timeout (a clock read per
        // task is a measurable part of a tiny task's cost here).
        if worker.in_flight.is_empty() && self.task_timeout.is_some() {
            worker.head_since = Some(Instant::now());
        }
        // Its buffers' descriptors go first (see `side`); what the socket
        // does not take waits for the collector. A channel that fails
        // otherwise stops the worker: its tasks fail with why.
        let side_failed = match worker.side.send(task_id, fds) {
            Ok(()) => false,
            Err(e) => {
                worker.side_failed(e);
                true
            }
        };
        let est_ns = est.unwrap_or(HOLD_NS);
        worker.held_ns += est_ns;
        worker.in_flight.push_back(InFlight {
            id: task_id,
            job: id,
            meta,
            est_ns,
        });
        worker.unwritten += 1;
        worker.sent += 1;
        if side_failed {
            let pid = worker.pid;
            self.request_kill(pid);
        }
    }

    /// A cancelled or finished job leaves the queue: its uncut items are
    /// dropped (nobody wants them), and it is forgotten once no worker
    /// holds its tasks.
    fn drop_uncut(&mut self, id: JobId) {
        if let Some(job) = self.jobs.get_mut(&id) {
            if job.cancelled() {
                job.queue.clear();
                job.next_item = job.appended;
            }
            if job.finished() {
                self.jobs.remove(&id);
            }
        }
    }

    /// Whether worker `w` may be given a task (room aside).
    fn usable(&self, w: &Worker) -> bool {
        w.ready
            && !w.eof
            && w.failure.is_none()
            && w.task_fd.is_some()
            // With a task timeout a worker holds one task at a time: the
            // clock starts when it is written, and no task waits behind
            // one that is killed.
            && (self.task_timeout.is_none() || w.in_flight.is_empty())
            && self.max_tasks_per_child.is_none_or(|m| w.sent < m)
    }

    /// The worker with room that holds the least estimated work.
    fn pick_worker(&self, est: Option<f64>, cap: f64) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        for (i, w) in self.workers.iter().enumerate() {
            if self.usable(w) && w.has_room(est, cap) && best.is_none_or(|(_, b)| w.held_ns < b) {
                best = Some((i, w.held_ns));
            }
        }
        best.map(|(i, _)| i)
    }

    /// A task of job `id` ended with completion `c` (`busy`: the worker's
    /// time, if it ran): the job learns from it, the completion is queued
    /// for its submitter, and the job is forgotten if that was its last.
    fn task_ended(&mut self, id: JobId, c: Completion, busy: Option<u64>) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        job.in_flight -= 1;
        if let Some(busy) = busy {
            let sample = busy as f64 / c.meta.items.max(1) as f64;
            job.learn(sample);
            let last = self.recent.entry(job.function()).or_insert(sample);
            *last = follow(Some(*last), sample);
        }
        if job.finished() {
            let job = self.jobs.remove(&id).expect("found above");
            deliver(&mut self.done, id, To::Last(job.spec.sink), c);
        } else {
            deliver(&mut self.done, id, To::Job(&job.spec.sink), c);
        }
    }

    /// A result frame from worker `w`: completes the task it answers.
    pub(crate) fn on_result(&mut self, w: usize, result: ResultFrame) -> Result<(), String> {
        let worker = &mut self.workers[w];
        let id = result.id;
        answers_next(&worker.in_flight, id)?;
        let front = worker.pop_front().expect("checked above");
        worker.counters.record(front.meta.items, result.busy_ns);
        if self.task_timeout.is_some() {
            worker.head_since = (!worker.in_flight.is_empty()).then(Instant::now);
        }
        let busy = result.busy_ns;
        let c = Completion {
            meta: front.meta,
            pid: worker.pid,
            outcome: Ok(result),
            parts: Vec::new(),
        };
        self.task_ended(front.job, c, Some(busy));
        self.retire_if_spent(w);
        Ok(())
    }

    /// Takes the small, plain result frames waiting whole in worker `w`'s
    /// read buffer, up to the first that is not one, without copying each
    /// into a buffer of its own: consecutive tasks of a job merge into one
    /// completion (see [`Completion::parts`]). At chunksize 1 a buffer per
    /// result, allocated here and freed by the submitter's thread, was the
    /// largest part of both threads' cost per task.
    pub(crate) fn take_small_results(&mut self, w: usize) -> Result<(), String> {
        let State {
            workers,
            jobs,
            recent,
            done,
            task_timeout,
            ..
        } = self;
        let worker = &mut workers[w];
        if !worker.ready {
            return Ok(());
        }
        while let Some(body) = worker.reader.peek_small(SMALL_RESULT) {
            let Some(result) = ResultFrame::parse_plain(body) else {
                break;
            };
            let (id, busy) = (result.id, result.busy_ns);
            answers_next(&worker.in_flight, id)?;
            let front = pop_held(
                &mut worker.in_flight,
                &mut worker.held_ns,
                &mut worker.unwritten,
            )
            .expect("checked above");
            worker.counters.record(front.meta.items, busy);
            if task_timeout.is_some() {
                worker.head_since = (!worker.in_flight.is_empty()).then(Instant::now);
            }
            if let Some(job) = jobs.get_mut(&front.job) {
                job.in_flight -= 1;
                let sample = busy as f64 / front.meta.items.max(1) as f64;
                job.learn(sample);
                let last = recent.entry(job.function()).or_insert(sample);
                *last = follow(Some(*last), sample);
                let pid = worker.pid;
                if job.finished() {
                    let job = jobs.remove(&front.job).expect("found above");
                    let to = To::Last(job.spec.sink);
                    deliver_plain(done, front.job, to, front.meta, pid, result);
                } else {
                    let to = To::Job(&job.spec.sink);
                    deliver_plain(done, front.job, to, front.meta, pid, result);
                }
            }
            let len = result.len();
            worker.reader.skip(len);
        }
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
            answers_next(&worker.in_flight, id)?;
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

    /// Fails what worker `w`'s in-flight list holds with `err`.
    fn fail_held(&mut self, held: VecDeque<InFlight>, pid: Pid, err: &Error) {
        for f in held {
            self.task_ended(f.job, failed(f.meta, pid, err), None);
        }
    }

    /// Removes a worker that exited and fails what it held with `err`
    /// (`err` names the first item; each task gets its own index).
    pub(crate) fn remove_worker(&mut self, w: usize, err: &Error) -> Worker {
        let mut worker = self.workers.remove(w);
        let held = std::mem::take(&mut worker.in_flight);
        worker.held_ns = 0.0;
        self.fail_held(held, worker.pid, err);
        worker
    }

    /// Fails every item not yet cut into a task with `err` (one completion
    /// per job, covering them all).
    pub(crate) fn fail_queue(&mut self, err: &Error) {
        for id in std::mem::take(&mut self.order) {
            let Some(job) = self.jobs.get_mut(&id) else {
                continue;
            };
            if !job.cancelled() {
                // One completion per contiguous block (an `IMap` numbers its
                // blocks itself).
                for block in &job.queue {
                    let meta = TaskMeta {
                        chunk: job.next_chunk,
                        first: block.next_index(),
                        items: block.len(),
                        bytes: block.bytes(),
                    };
                    job.next_chunk += 1;
                    deliver(
                        &mut self.done,
                        id,
                        To::Job(&job.spec.sink),
                        failed(meta, Pid::from_raw(0), err),
                    );
                }
            }
            job.queue.clear();
            job.next_item = job.appended;
            job.input_done = true;
            if job.finished() {
                self.jobs.remove(&id);
            }
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

    /// Kills the workers whose head task has run longer than the task
    /// timeout (through the zygote, which alone knows the pid is still that
    /// worker's): the task fails with [`Error::TaskTimeout`], the worker is
    /// replaced when its exit is reported. Returns when the next clock
    /// runs out, if any is running.
    pub(crate) fn expire_tasks(&mut self, now: Instant) -> Option<Instant> {
        let limit = self.task_timeout?;
        let mut next: Option<Instant> = None;
        let mut expired = Vec::new();
        for worker in &mut self.workers {
            let Some(since) = worker.head_since else {
                continue;
            };
            if worker.failure.is_some() || worker.in_flight.is_empty() {
                continue;
            }
            let deadline = since + limit;
            if deadline > now {
                next = Some(next.map_or(deadline, |n| n.min(deadline)));
                continue;
            }
            let err = Error::TaskTimeout {
                item: 0,
                pid: worker.pid,
                limit,
                ran: now - since,
            };
            // One task at a time (see `pick_worker`): the head is the task.
            let held = std::mem::take(&mut worker.in_flight);
            worker.held_ns = 0.0;
            expired.push((held, worker.pid, err.clone()));
            worker.drop_out();
            worker.head_since = None;
            worker.eof = true; // its late result, if any, is not wanted
            worker.failure = Some(err);
        }
        for (held, pid, err) in expired {
            self.fail_held(held, pid, &err);
            self.request_kill(pid);
        }
        next
    }

    /// Fails everything: the queue and what every worker holds.
    pub(crate) fn fail_all(&mut self, err: &Error) {
        self.fail_queue(err);
        for w in 0..self.workers.len() {
            let worker = &mut self.workers[w];
            let held = std::mem::take(&mut worker.in_flight);
            worker.held_ns = 0.0;
            worker.drop_out();
            let pid = worker.pid;
            self.fail_held(held, pid, err);
        }
    }

    /// Asks the zygote for a worker in `slot`.
    pub(crate) fn request_spawn(&mut self, slot: u32) -> Result<(), Error> {
        control::send(self.ctrl.as_fd(), &Request::Spawn { slot }, &[])
            .map_err(|e| Error::io("asking the zygote for a worker", e))
    }

    /// Asks the zygote to kill a worker (only the zygote, which reaps it,
    /// knows the pid is still that worker's).
    pub(crate) fn request_kill(&mut self, pid: Pid) {
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

    /// Whether all submitted work is done (a job whose submitter may still
    /// append, an `IMap` not yet at its end, has nothing to do until it does).
    pub(crate) fn idle(&self) -> bool {
        self.queued_items() == 0 && self.workers.iter().all(|w| !w.holds_tasks())
    }

    /// Pids of the workers alive now.
    pub(crate) fn pids(&self) -> Vec<Pid> {
        self.workers.iter().map(|w| w.pid).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::mailbox;
    use nix::fcntl::OFlag;
    use std::os::fd::OwnedFd;

    #[test]
    fn job_ids_opened_one_after_another_were_scattered_over_the_job_table() {
        let hash = |id: JobId| {
            let mut h = IdHasher::default();
            h.write_u64(id);
            h.finish()
        };
        let start: JobId = 1_000_003;
        for id in start..start + 4096 {
            // Neighbours in consecutive buckets, whatever the table's size...
            assert_eq!(hash(id + 1) & 0xfff, (hash(id) + 1) & 0xfff);
            // ...with different tags (the hash's top 7 bits).
            assert_ne!(hash(id + 1) >> 57, hash(id) >> 57);
        }
    }

    /// A state with `n` ready workers behind real, non-blocking pipes;
    /// returns it and, per worker, the read end of its task pipe (what the
    /// worker would read).
    fn state_with_workers(n: usize) -> (State, Vec<OwnedFd>) {
        let (st, task_ends, _) = state_with_pipes(n);
        (st, task_ends)
    }

    /// [`state_with_workers`], also returning the write end of each
    /// worker's result pipe (where the worker would write).
    fn state_with_pipes(n: usize) -> (State, Vec<OwnedFd>, Vec<OwnedFd>) {
        let flags = OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
        let [ctrl, _] = PoolFd::create(|| nix::unistd::pipe2(flags).map(|(r, w)| [r, w])).unwrap();
        let mut st = State::new(ctrl, n, None);
        st.phase = Phase::Running;
        let mut task_ends = Vec::new();
        let mut result_ends = Vec::new();
        for slot in 0..n {
            let (task_r, task_w) = nix::unistd::pipe2(flags).unwrap();
            let (result_r, result_w) = nix::unistd::pipe2(flags).unwrap();
            result_ends.push(result_w);
            let [task_w, result_r, side] = PoolFd::create(|| {
                let (side, _) = nix::unistd::pipe2(flags)?;
                Ok::<_, nix::Error>([task_w, result_r, side])
            })
            .unwrap();
            let mut w = Worker::new(
                slot as u32,
                Pid::from_raw(1000 + slot as i32),
                task_w,
                result_r,
                side,
            );
            w.ready = true;
            st.workers.push(w);
            task_ends.push(task_r);
        }
        (st, task_ends, result_ends)
    }

    const HEADER: TaskHeader = TaskHeader {
        id: 0,
        tramp: 1,
        func: 2,
    };

    /// Submits a job of one item, as `apply_async` does.
    fn one_task_job(st: &mut State) {
        let spec = JobSpec {
            header: HEADER,
            chunking: Chunking::Fixed(1),
            sink: mailbox().0,
        };
        let id = st.open_job(spec).unwrap();
        let mut items = Items::starting_at(0);
        items.push(&7u64, 0).unwrap();
        st.append(id, items, true).unwrap();
    }

    /// Bytes waiting in a pipe.
    fn unread(fd: &OwnedFd) -> usize {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int through the pointer, which
        // points to a live c_int; `fd` is an open pipe.
        let r = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(fd), libc::FIONREAD, &mut n) };
        assert_eq!(r, 0);
        n as usize
    }

    #[test]
    fn one_task_jobs_of_a_function_known_to_be_tiny_are_pipelined() {
        // What broke: a loop of `apply_async` of tiny tasks. Each call is a
        // job of its own that knows nothing yet, and a task of unknown cost
        // went only to a worker that held none: one round trip per task,
        // 5 to 10 times slower than before the scheduler rework.
        let (mut st, _ends) = state_with_workers(2);
        // Unknown function: one task per worker, the rest waits.
        for _ in 0..4 {
            one_task_job(&mut st);
        }
        let held: Vec<usize> = st.workers.iter().map(|w| w.in_flight.len()).collect();
        assert_eq!(held, [1, 1]);
        assert_eq!(st.queued_items(), 2);
        // Once its items are known to take 1 µs, a worker holds up to
        // HOLD_NS of them, whatever job they belong to.
        let (mut st, _ends) = state_with_workers(2);
        st.recent.insert((HEADER.tramp, HEADER.func), 1_000.0);
        for _ in 0..100 {
            one_task_job(&mut st);
        }
        let held: Vec<usize> = st.workers.iter().map(|w| w.in_flight.len()).collect();
        assert_eq!(st.queued_items(), 0, "held {held:?}");
        assert_eq!(held, [50, 50]);
    }

    #[test]
    fn a_submitter_writes_to_a_busy_worker_in_doubling_batches() {
        // What broke: each `apply_async` wrote its task at once, to a worker
        // busy with earlier ones: the write woke it for a single task. And
        // then, writing only to idle workers left a busy one waiting for
        // the collector.
        let (mut st, ends) = state_with_workers(1);
        st.recent.insert((HEADER.tramp, HEADER.func), 1_000.0);
        one_task_job(&mut st);
        let first = unread(&ends[0]);
        assert!(first > 0, "an idle worker gets its task at once");
        // Written when what waits matches what the worker has: after the
        // 2nd, 4th and 8th tasks (4 writes for 8 tasks), not after each.
        let mut written = vec![1];
        for _ in 1..11 {
            one_task_job(&mut st);
            written.push(unread(&ends[0]) / first);
        }
        assert_eq!(written, [1, 2, 2, 4, 4, 4, 4, 8, 8, 8, 8]);
        assert_eq!(st.workers[0].in_flight.len(), 11);
        assert_eq!(st.workers[0].unwritten, 3);
        // The collector, reading the busy worker's results, writes them.
        st.dispatch(Writer::Collector);
        assert_eq!(unread(&ends[0]), 11 * first);
        assert!(st.workers[0].out.is_empty());
        assert_eq!(st.workers[0].unwritten, 0);
    }

    /// A plain result frame answering task `id` with `value`, as a worker
    /// writes it.
    fn result_frame(id: u64, value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let started = ResultFrame::begin(&mut out, id);
        out.push(0); // OK
        crate::codec::encode_into(&value, &mut out).unwrap();
        started.finish(&mut out, 1_000);
        out
    }

    #[test]
    fn consecutive_tiny_tasks_go_to_one_worker_and_their_results_merge_into_one_completion() {
        // What broke: at chunksize 1 tasks were dealt to the workers in
        // turn, each cut into a buffer of its own, and each result copied
        // into a buffer of its own by the collector (freed by the
        // submitter's thread) and handed over as a completion of its own:
        // `map` of 100 000 tiny tasks took 1.5 times as long as before the
        // scheduler rework.
        let (mut st, _tasks, results) = state_with_pipes(2);
        st.recent.insert((HEADER.tramp, HEADER.func), 1_000.0);
        let (sink, mut rx) = mailbox();
        let spec = JobSpec {
            header: HEADER,
            chunking: Chunking::Fixed(1),
            sink,
        };
        let id = st.open_job(spec).unwrap();
        st.jobs.get_mut(&id).unwrap().window = 64;
        let mut items = Items::starting_at(0);
        for i in 0..40u64 {
            items.push(&i, i as usize).unwrap();
        }
        st.append(id, items, true).unwrap();
        // Each worker holds a run of consecutive tasks, half the job each.
        let chunks: Vec<Vec<usize>> = st
            .workers
            .iter()
            .map(|w| w.in_flight.iter().map(|f| f.meta.chunk).collect())
            .collect();
        assert_eq!(chunks, [(0..20).collect::<Vec<_>>(), (20..40).collect()]);
        // Worker 0 answers all of its tasks: one completion covers them.
        let ids: Vec<u64> = st.workers[0].in_flight.iter().map(|f| f.id).collect();
        let wire: Vec<u8> = ids
            .iter()
            .enumerate()
            .flat_map(|(i, &id)| result_frame(id, 100 + i as u64))
            .collect();
        nix::unistd::write(&results[0], &wire).unwrap();
        let fd = st.workers[0].result_fd.clone();
        st.workers[0].reader.fill(fd.as_fd()).unwrap();
        st.take_small_results(0).unwrap();
        assert!(st.workers[0].in_flight.is_empty());
        for d in std::mem::take(&mut st.done) {
            d.post();
        }
        let c = rx.recv(Some(Instant::now())).unwrap();
        assert_eq!((c.meta.chunk, c.meta.first, c.meta.items), (0, 0, 20));
        assert_eq!(c.tasks(), 20);
        assert!(rx.recv(Some(Instant::now())).is_err(), "one completion");
        let mut values = Vec::new();
        let body = c.outcome.unwrap();
        crate::task::decode_outcomes::<u64>(body, 20, 0, &c.parts, c.pid, "u64", |r| {
            values.push(r.unwrap())
        });
        assert_eq!(values, (100..120).collect::<Vec<u64>>());
    }
}
