//! The result collector: the parent's one helper thread per pool.
//!
//! It polls the control socket (the zygote's reports), every worker's
//! result pipe, the task pipes that have output waiting, and an eventfd
//! that other threads use to wake it. It routes results to whoever
//! submitted the task, hands freed workers more tasks, turns a worker's
//! death into errors for exactly the tasks it held and asks for a
//! replacement, and walks the pool through `close`, `join` and `terminate`
//! until the zygote is reaped.
//!
//! No wait here is without an end: every descriptor it polls belongs to a
//! process that either answers or dies; the zygote's death (or, after
//! `terminate`, [`TERMINATE_GRACE`] of silence, then `SIGKILL`) ends the
//! thread; with a task timeout, the first running task's deadline bounds
//! the poll, and a task past it has its worker killed. `build()` waits for
//! this thread's word at most `start_timeout`. A worker that dies before
//! READY is replaced; [`START_ATTEMPTS`] dying the same way in a row stop
//! the pool, so a broken initializer cannot fork forever.

use std::cell::Cell;
use std::os::fd::AsFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use parking_lot::{Mutex, MutexGuard};

use crate::control::{self, Event, Received};
use crate::error::{Error, ExitCause};
use crate::fds::PoolFd;
use crate::frame::{self, Fill, FillError, FromWorker};
use crate::scheduler::{Delivery, JobSpec, Phase, State, Worker, Writer};
use crate::task::Items;

/// How long `terminate` waits for the zygote to kill its workers and exit
/// before killing it (its workers then die of `PR_SET_PDEATHSIG`).
pub(crate) const TERMINATE_GRACE: Duration = Duration::from_secs(5);
/// Reads from one result pipe per wake-up, at most (fairness).
const READS_PER_WAKE: usize = 8;
/// Workers in a row that may die the same way before reporting ready
/// before the pool stops replacing them.
pub(crate) const START_ATTEMPTS: usize = 3;

/// What the pool's handle and its collector share.
pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    /// Whole jobs submitted while another thread held `state` (see
    /// [`submit_whole`](Self::submit_whole)), oldest first, and whether
    /// there are any.
    incoming: Mutex<Vec<(JobSpec, Items)>>,
    incoming_waiting: AtomicBool,
    /// Whether the pool took new work when the state was last unlocked.
    taking_work: AtomicBool,
    /// An eventfd: writing to it wakes the collector.
    pub(crate) wake: PoolFd,
    pub(crate) zygote: Pid,
    /// The pool was built with an initializer (for the words of errors).
    pub(crate) has_initializer: bool,
}

impl Shared {
    pub(crate) fn new(state: State, wake: PoolFd, zygote: Pid, has_initializer: bool) -> Self {
        Shared {
            state: Mutex::new(state),
            incoming: Mutex::new(Vec::new()),
            incoming_waiting: AtomicBool::new(false),
            taking_work: AtomicBool::new(true),
            wake,
            zygote,
            has_initializer,
        }
    }

    /// Wakes the collector so it looks at the state again.
    pub(crate) fn wake(&self) {
        let _ = nix::unistd::write(self.wake.as_fd(), &1u64.to_ne_bytes());
    }

    /// Locks the state. Jobs submitted while another thread held it are
    /// opened first; completions produced under the lock are posted when
    /// it is released.
    pub(crate) fn lock(&self) -> Locked<'_> {
        self.locked(self.state.lock())
    }

    /// [`lock`](Self::lock), if no other thread holds the state.
    fn try_lock(&self) -> Option<Locked<'_>> {
        self.state.try_lock().map(|guard| self.locked(guard))
    }

    fn locked<'a>(&'a self, guard: MutexGuard<'a, State>) -> Locked<'a> {
        let mut locked = Locked {
            shared: self,
            guard: Some(guard),
        };
        locked.open_incoming();
        locked
    }

    /// Submits a job whose items are all of `items` (at least one: an
    /// `apply`, a short `map`) without waiting for the state lock. If
    /// another thread holds it (the collector handing out results, most
    /// often), the job waits in `incoming`, and whoever holds the lock
    /// opens it before releasing it, or right after (see [`Locked`]'s
    /// `drop`); this thread goes on. A loop of `apply_async` otherwise
    /// slept on the lock, or spun for it, once in every few calls while
    /// the collector worked: measured on 2 cores, 5 000 sleeps and 2 600
    /// yields in 100 000 calls, and the loop 1.5-1.9x slower than before
    /// the scheduler kept a record per job.
    ///
    /// A thread that locks the state later opens the job first, so what
    /// the same thread does next (`close`, another job) comes after it. If
    /// the pool no longer takes work when a job left waiting is opened,
    /// its handle gets the error.
    ///
    /// # Errors
    ///
    /// Why the pool takes no new work, when that is known at once (the
    /// lock was free).
    pub(crate) fn submit_whole(&self, spec: JobSpec, items: Items) -> Result<(), Error> {
        // A pool that stopped taking work before this call says so now,
        // not through the handle later.
        let st = match self.try_lock() {
            Some(st) => Some(st),
            None if !self.taking_work.load(Ordering::Acquire) => Some(self.lock()),
            None => None,
        };
        if let Some(mut st) = st {
            st.accepting()?;
            let full = st.open_whole(spec, items);
            drop(st);
            if full {
                self.wake();
            }
            return Ok(());
        }
        self.incoming.lock().push((spec, items));
        self.incoming_waiting.store(true, Ordering::SeqCst);
        // Either the holder, once it has unlocked, sees the flag (its
        // fence, in `Locked`'s `drop`, pairs with this one), or this
        // `try_lock` succeeds and opens the job itself.
        fence(Ordering::SeqCst);
        drop(self.try_lock());
        Ok(())
    }
}

/// The locked state; opens the jobs waiting in [`Shared::submit_whole`]'s
/// list and posts pending completions on unlock.
pub(crate) struct Locked<'a> {
    shared: &'a Shared,
    guard: Option<MutexGuard<'a, State>>,
}

impl Locked<'_> {
    /// Opens the jobs submitted while another thread held the lock, in
    /// the order they came, and wakes the collector if a pipe is full.
    fn open_incoming(&mut self) {
        let waiting = &self.shared.incoming_waiting;
        if !waiting.load(Ordering::SeqCst) || !waiting.swap(false, Ordering::SeqCst) {
            return;
        }
        let jobs = std::mem::take(&mut *self.shared.incoming.lock());
        let mut full = false;
        for (spec, items) in jobs {
            full |= self.open_whole(spec, items);
        }
        if full {
            self.shared.wake();
        }
    }
}

impl std::ops::Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        self.guard.as_ref().expect("locked until dropped")
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.guard.as_mut().expect("locked until dropped")
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        while self.guard.is_some() {
            self.open_incoming();
            let mut guard = self.guard.take().expect("checked by the loop");
            let taking = guard.accepting().is_ok();
            self.shared.taking_work.store(taking, Ordering::Release);
            // The state gets this thread's emptied list back, so a wake-up
            // that posts hundreds of one-task jobs' completions (a loop of
            // `apply_async`) does not grow a new list by reallocation each
            // time (moving every `Delivery` again at each doubling).
            // (`try_with`: a pool may be dropped as a thread ends, its
            // thread-locals gone.)
            let done = (!guard.done.is_empty()).then(|| {
                let spare = SPARE_DONE.try_with(Cell::take).unwrap_or_default();
                std::mem::replace(&mut guard.done, spare)
            });
            drop(guard);
            if let Some(mut done) = done {
                for d in done.drain(..) {
                    d.post();
                }
                if done.capacity() <= MAX_SPARE_DONE {
                    let _ = SPARE_DONE.try_with(|spare| spare.set(done));
                }
            }
            // A job submitted while we held the lock, after we last looked
            // (see `Shared::submit_whole`): open it now unless another
            // thread holds the lock, which then opens it.
            fence(Ordering::SeqCst);
            if self.shared.incoming_waiting.load(Ordering::SeqCst) {
                self.guard = self.shared.state.try_lock();
            }
        }
    }
}

/// Most deliveries a thread's spare list keeps room for (see
/// [`Locked`]'s `drop`): what one wake-up posts in a loop of small
/// `apply_async`, not what a burst once needed.
const MAX_SPARE_DONE: usize = 256;

thread_local! {
    /// An emptied list of completions to post, kept for the next time this
    /// thread unlocks the state.
    static SPARE_DONE: Cell<Vec<Delivery>> = const { Cell::new(Vec::new()) };
}

/// Which descriptor a poll entry is.
#[derive(Clone, Copy)]
enum Source {
    Ctrl,
    Wake,
    Result(Pid),
    Task(Pid),
    Side(Pid),
}

struct Collector {
    shared: Arc<Shared>,
    startup: Option<Sender<Result<(), Error>>>,
    /// When `terminate` gives up on the zygote and kills it.
    deadline: Option<Instant>,
    /// The zygote's exit status, once reaped.
    zygote_reaped: bool,
    /// Workers that died before reporting ready, in a row (reset by any
    /// worker's READY), and how the last of them ended.
    early_deaths: Vec<Pid>,
    early_cause: Option<ExitCause>,
}

/// The collector thread's body.
pub(crate) fn run(shared: Arc<Shared>, startup: Sender<Result<(), Error>>) {
    let mut c = Collector {
        shared,
        startup: Some(startup),
        deadline: None,
        zygote_reaped: false,
        early_deaths: Vec::new(),
        early_cause: None,
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| c.main_loop()));
    if let Err(payload) = outcome {
        // A bug in the collector must not leave callers waiting forever.
        let message = crate::worker::panic_message(payload.as_ref());
        let err = Error::Broken {
            reason: format!("internal error: the collector thread panicked: {message}"),
        };
        c.give_up(err);
    }
}

impl Collector {
    fn main_loop(&mut self) {
        {
            let mut st = self.shared.lock();
            for slot in 0..st.processes as u32 {
                if let Err(e) = st.request_spawn(slot) {
                    drop(st);
                    return self.give_up(e);
                }
            }
        }
        let mut entries: Vec<(Source, Arc<PoolFd>)> = Vec::new();
        let mut flags: Vec<PollFlags> = Vec::new();
        let mut ready: Vec<(Source, PollFlags)> = Vec::new();
        loop {
            entries.clear();
            flags.clear();
            let timeout = {
                // One lock per wake-up: what the last poll found is handled
                // and the next poll prepared under it, and the completions
                // are posted when it is released, while this thread polls
                // (locking again right after posting made the woken
                // submitter wait for the lock).
                let shared = self.shared.clone();
                let mut st = shared.lock();
                self.handle(&mut st, &ready);
                if st.phase == Phase::Finished {
                    return;
                }
                // Tasks past their time limit: their workers are killed now;
                // the next clock to run out bounds the wait below.
                let task_deadline = match st.phase {
                    Phase::Running | Phase::Closed => st.expire_tasks(Instant::now()),
                    _ => None,
                };
                entries.push((Source::Ctrl, st.ctrl.clone()));
                flags.push(PollFlags::POLLIN);
                if st.phase != Phase::Terminating {
                    for w in &st.workers {
                        if !w.eof {
                            entries.push((Source::Result(w.pid), w.result_fd.clone()));
                            flags.push(PollFlags::POLLIN);
                        }
                        if let Some(fd) = w.side.poll_fd() {
                            entries.push((Source::Side(w.pid), fd));
                            flags.push(if w.side.wants_write() {
                                PollFlags::POLLIN | PollFlags::POLLOUT
                            } else {
                                PollFlags::POLLIN
                            });
                        }
                        if w.wants_write() {
                            let fd = w.task_fd.clone().expect("wants_write implies a pipe");
                            entries.push((Source::Task(w.pid), fd));
                            flags.push(PollFlags::POLLOUT);
                        }
                    }
                }
                let retry = st
                    .workers
                    .iter()
                    .any(|w| w.side.wants_retry())
                    .then(|| Instant::now() + crate::side::RETRY);
                let deadline = [self.deadline, task_deadline, retry]
                    .into_iter()
                    .flatten()
                    .min();
                match deadline {
                    Some(d) => {
                        let ms = d.saturating_duration_since(Instant::now()).as_millis();
                        PollTimeout::try_from(ms.min(60_000) as i32 + 1).unwrap_or(PollTimeout::MAX)
                    }
                    None => PollTimeout::NONE,
                }
            };
            ready = {
                let wake = self.shared.wake.as_fd();
                let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(entries.len() + 1);
                fds.push(PollFd::new(wake, PollFlags::POLLIN));
                for ((_, fd), f) in entries.iter().zip(&flags) {
                    fds.push(PollFd::new(fd.as_fd(), *f));
                }
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    Err(e) => {
                        return self.give_up(Error::io("polling the pool's pipes", e));
                    }
                }
                let sources = std::iter::once(Source::Wake).chain(entries.iter().map(|(s, _)| *s));
                sources
                    .zip(fds.iter())
                    .filter_map(|(s, p)| p.revents().filter(|r| !r.is_empty()).map(|r| (s, r)))
                    .collect()
            };
        }
    }

    fn handle(&mut self, st: &mut State, ready: &[(Source, PollFlags)]) {
        for &(source, _) in ready {
            match source {
                Source::Wake => {
                    let mut buf = [0u8; 8];
                    let _ = nix::unistd::read(self.shared.wake.as_fd(), &mut buf);
                }
                Source::Ctrl => self.read_ctrl(st),
                Source::Result(pid) => {
                    if let Some(w) = st.workers.iter().position(|w| w.pid == pid) {
                        self.read_worker(st, w, READS_PER_WAKE);
                    }
                }
                Source::Side(pid) => {
                    if let Some(w) = st.workers.iter_mut().find(|w| w.pid == pid) {
                        w.side.drain();
                        if w.side.wants_write() && !w.flush_side() {
                            st.request_kill(pid);
                        }
                    }
                }
                Source::Task(pid) => {
                    if let Some(w) = st.workers.iter_mut().find(|w| w.pid == pid) {
                        w.flush();
                    }
                }
            }
        }
        for i in 0..st.workers.len() {
            if st.workers[i].side.wants_retry() && !st.workers[i].flush_side() {
                let pid = st.workers[i].pid;
                st.request_kill(pid);
            }
        }
        if matches!(st.phase, Phase::Running | Phase::Closed) {
            st.dispatch(Writer::Collector);
        }
        self.advance(st);
    }

    /// Moves the pool along `close` and `terminate`.
    fn advance(&mut self, st: &mut State) {
        match st.phase {
            Phase::Closed if !st.draining && st.idle() => {
                // All work is done: closing the task pipes tells the workers
                // to exit; the zygote reports each one.
                st.draining = true;
                for w in &mut st.workers {
                    w.task_fd = None;
                }
            }
            Phase::Terminating => {
                if self.deadline.is_none() {
                    self.deadline = Some(Instant::now() + TERMINATE_GRACE);
                }
                st.shut_ctrl();
                if self.deadline.is_some_and(|d| Instant::now() >= d) && !self.zygote_reaped {
                    // The zygote did not finish in time: kill it. It is our
                    // unreaped child, so the pid is still its own; its
                    // workers die with it (PR_SET_PDEATHSIG).
                    let _ = kill(self.shared.zygote, Signal::SIGKILL);
                    self.deadline = Some(Instant::now() + TERMINATE_GRACE);
                }
            }
            _ => {}
        }
        if st.draining && st.workers.is_empty() {
            st.shut_ctrl();
        }
    }

    /// Reads the zygote's reports.
    fn read_ctrl(&mut self, st: &mut State) {
        loop {
            match control::recv::<Event>(st.ctrl.as_fd(), true) {
                Ok(Received::Message(event, fds)) => self.on_event(st, event, fds),
                Ok(Received::WouldBlock) => return,
                Ok(Received::Eof) => return self.on_zygote_gone(st),
                Err(e) => {
                    // The channel is unusable: treat as the zygote gone, but
                    // say why (not "the zygote was killed").
                    let err = Error::io("reading the zygote's reports", e);
                    if let Some(tx) = self.startup.take() {
                        let _ = tx.send(Err(err.clone()));
                    }
                    st.fail_all(&err);
                    st.broken.get_or_insert(err);
                    st.shut_ctrl();
                    let _ = kill(self.shared.zygote, Signal::SIGKILL);
                    return self.on_zygote_gone(st);
                }
            }
        }
    }

    fn on_event(&mut self, st: &mut State, event: Event, fds: Vec<PoolFd>) {
        match event {
            Event::Spawned { slot, pid } => {
                let arrived = fds.len();
                let mut fds = fds.into_iter();
                let (Some(task), Some(result), Some(side), None) =
                    (fds.next(), fds.next(), fds.next(), fds.next())
                else {
                    // The kernel could not install both descriptors (the
                    // message came with MSG_CTRUNC): those that did arrive
                    // are dropped here, closed and out of the registry.
                    drop(fds);
                    st.request_kill(pid);
                    let (limit, open) = crate::fds::usage();
                    return self.fail_start_or_break(
                        st,
                        Error::DescriptorLimit {
                            call: "recvmsg",
                            errno: Errno::EMFILE as i32,
                            detail: format!(
                                "receiving worker {pid}'s two pipe ends and side channel \
                                 from the zygote (SCM_RIGHTS): {arrived} of 3 arrived, the \
                                 message was cut short (MSG_CTRUNC)"
                            ),
                            limit,
                            open,
                            process: "parent",
                        },
                    );
                };
                for fd in [&task, &result, &side] {
                    if let Err(e) = set_nonblocking(fd) {
                        st.request_kill(pid);
                        return self.fail_start_or_break(
                            st,
                            Error::io("making a worker's pipe non-blocking", e),
                        );
                    }
                }
                if st.phase == Phase::Terminating {
                    return; // dropping the fds; the zygote is killing it
                }
                st.workers.push(Worker::new(slot, pid, task, result, side));
            }
            Event::SpawnFailed {
                slot,
                call,
                errno,
                limit,
                open,
            } => {
                let e = Errno::from_raw(errno);
                let err = match e {
                    Errno::EMFILE | Errno::ENFILE => Error::DescriptorLimit {
                        call: call.name(),
                        errno,
                        detail: format!("creating the pipes of a worker for slot {slot}"),
                        limit,
                        open: open as usize,
                        process: "zygote",
                    },
                    _ => Error::Broken {
                        reason: format!(
                            "could not fork a worker for slot {slot}: {} failed in the zygote with {} ({e})",
                            call.name(),
                            crate::error::errno_name(errno),
                        ),
                    },
                };
                self.fail_start_or_break(st, err);
            }
            Event::Exited {
                pid,
                cause,
                peak_rss,
            } => self.on_exited(st, pid, cause, peak_rss),
        }
    }

    /// Reads and handles what a worker sent, up to `reads` reads.
    fn read_worker(&mut self, st: &mut State, w: usize, reads: usize) {
        for _ in 0..reads {
            let worker = &mut st.workers[w];
            if worker.eof {
                return;
            }
            let fd = worker.result_fd.clone();
            let fill = worker.reader.fill(fd.as_fd());
            if !worker.result_pipe_big
                && worker
                    .reader
                    .pending_len()
                    .is_some_and(|n| n > frame::PIPE_DEFAULT)
            {
                // A big result is streaming in: let the worker write it in
                // fewer, larger pieces.
                worker.result_pipe_big = true;
                frame::enlarge_pipe(fd.as_fd());
            }
            let mut more = true;
            match fill {
                Ok(Fill::More) => {}
                Ok(Fill::Drained | Fill::WouldBlock) => more = false,
                Ok(Fill::Eof) => {
                    worker.eof = true;
                    more = false;
                }
                Err(FillError::Io(e)) => {
                    let pid = worker.pid;
                    worker.failure = Some(Error::io("reading a worker's results", e));
                    worker.eof = true;
                    st.request_kill(pid);
                    return;
                }
                Err(FillError::Frame(e)) => {
                    return self.protocol_error(st, w, e.to_string());
                }
            }
            loop {
                if let Err(detail) = st.take_small_results(w) {
                    return self.protocol_error(st, w, detail);
                }
                match st.workers[w].reader.next_frame() {
                    Ok(Some(body)) => {
                        if let Err(detail) = self.on_frame(st, w, body) {
                            return self.protocol_error(st, w, detail);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return self.protocol_error(st, w, e.to_string()),
                }
            }
            if let Err(detail) = st.check_pending(w) {
                return self.protocol_error(st, w, detail);
            }
            if !more {
                return;
            }
        }
    }

    fn on_frame(&mut self, st: &mut State, w: usize, body: frame::Body) -> Result<(), String> {
        let worker = &mut st.workers[w];
        match FromWorker::parse(body)? {
            FromWorker::Ready if !worker.ready => {
                worker.ready = true;
                self.early_deaths.clear();
                if st.phase == Phase::Starting
                    && st.workers.len() == st.processes
                    && st.workers.iter().all(|w| w.ready)
                {
                    st.phase = Phase::Running;
                    if let Some(tx) = self.startup.take() {
                        let _ = tx.send(Ok(()));
                    }
                }
                Ok(())
            }
            FromWorker::InitFailed(message) if !worker.ready => {
                let err = Error::Initializer {
                    pid: worker.pid,
                    message,
                };
                worker.failure = Some(err.clone());
                self.fail_start_or_break(st, err);
                Ok(())
            }
            FromWorker::Result(mut result) if worker.ready => {
                if result.has_fds {
                    result.fds = worker.side.take(result.id);
                }
                st.on_result(w, result)
            }
            other => Err(format!(
                "unexpected {} frame {}",
                match other {
                    FromWorker::Ready => "READY",
                    FromWorker::InitFailed(_) => "INIT_FAILED",
                    FromWorker::Result(_) => "RESULT",
                },
                if worker.ready {
                    "after READY"
                } else {
                    "before READY"
                }
            )),
        }
    }

    /// A worker sent something that is not a valid frame: its tasks fail
    /// with that error, and the zygote kills it (a replacement follows).
    fn protocol_error(&mut self, st: &mut State, w: usize, detail: String) {
        let worker = &mut st.workers[w];
        let pid = worker.pid;
        worker.failure = Some(Error::Frame { pid, detail });
        worker.eof = true; // stop reading it
        st.request_kill(pid);
    }

    fn on_exited(&mut self, st: &mut State, pid: Pid, cause: ExitCause, peak_rss: u64) {
        let Some(w) = st.workers.iter().position(|w| w.pid == pid) else {
            return;
        };
        // What it wrote before dying is still in the pipe: those results
        // are good.
        self.read_worker(st, w, usize::MAX);
        let Some(w) = st.workers.iter().position(|w| w.pid == pid) else {
            return;
        };
        let worker = &st.workers[w];
        if !worker.ready && worker.failure.is_none() {
            // It died before READY without reporting a failure (killed,
            // `exit`, `abort`): replaced like any other, unless workers keep
            // dying the same way at start.
            if self.early_cause != Some(cause) {
                self.early_deaths.clear();
            }
            self.early_cause = Some(cause);
            self.early_deaths.push(pid);
            if self.early_deaths.len() >= START_ATTEMPTS {
                let err = self.start_failure(pid, cause);
                st.workers[w].failure = Some(err.clone());
                self.fail_start_or_break(st, err);
            }
        }
        let worker = &st.workers[w];
        let err = match (&worker.failure, worker.reader.partial()) {
            (Some(e), _) => e.clone(),
            // A clean exit in the middle of a frame is a protocol fault,
            // not a crash: say what was cut short.
            (None, Some(cut)) if cause == ExitCause::Exited(0) => Error::Frame {
                pid,
                detail: format!("{cut}, and the worker {cause}"),
            },
            (None, _) => Error::WorkerDied {
                item: 0,
                pid,
                cause,
                peak_rss: (peak_rss > 0).then_some(peak_rss),
            },
        };
        let removed = st.remove_worker(w, &err);
        let stats = removed.counters.stats(pid, peak_rss, false);
        st.exited.push(stats);
        let wanted = match st.phase {
            Phase::Starting | Phase::Running => true,
            Phase::Closed => !st.draining,
            Phase::Terminating | Phase::Finished => false,
        };
        if wanted
            && st.broken.is_none()
            && let Err(e) = st.request_spawn(removed.slot)
        {
            self.fail_start_or_break(st, e);
        }
    }

    /// The error for workers that died the same way before READY
    /// [`START_ATTEMPTS`] times in a row, the last being `pid`.
    fn start_failure(&self, pid: Pid, cause: ExitCause) -> Error {
        let n = self.early_deaths.len();
        let pids = self
            .early_deaths
            .iter()
            .map(Pid::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let what = format!(
            "{n} workers in a row (pids {pids}) {cause} before reporting ready; \
             the pool stopped replacing them"
        );
        if self.shared.has_initializer {
            Error::Initializer {
                pid,
                message: format!("the worker died while running the initializer: {what}"),
            }
        } else {
            Error::Broken { reason: what }
        }
    }

    /// During start-up, `build()` fails with `err` and everything stops;
    /// later, the pool is broken: queued work and later calls get `err`.
    fn fail_start_or_break(&mut self, st: &mut State, err: Error) {
        if st.phase == Phase::Starting {
            if let Some(tx) = self.startup.take() {
                let _ = tx.send(Err(err));
            }
            st.terminate(&Error::Terminated);
            self.advance(st);
        } else if st.broken.is_none() {
            st.fail_queue(&err);
            st.broken = Some(err);
        }
    }

    /// The zygote's end of the control socket closed: reap it. Expected
    /// after `terminate` or a finished `join`; otherwise the pool is broken
    /// (the workers died with the zygote).
    fn on_zygote_gone(&mut self, st: &mut State) {
        let cause = self.reap_zygote();
        // Its workers were re-parented when it exited: to init, or to this
        // process if it is a child subreaper; then reap them here.
        reap_adopted(&st.pids());
        if !st.ctrl_shut {
            let what = match cause {
                Some(c) => format!("the zygote process {} {c}", self.shared.zygote),
                None => format!("the zygote process {} is gone", self.shared.zygote),
            };
            let err = Error::Broken {
                reason: format!("{what}; its workers died with it"),
            };
            if let Some(tx) = self.startup.take() {
                let _ = tx.send(Err(err.clone()));
            }
            st.fail_all(&err);
            st.broken.get_or_insert(err);
        }
        st.fail_all(&Error::Terminated);
        st.workers.clear();
        st.phase = Phase::Finished;
    }

    fn reap_zygote(&mut self) -> Option<ExitCause> {
        if self.zygote_reaped {
            return None;
        }
        self.zygote_reaped = true;
        loop {
            match waitpid(self.shared.zygote, None) {
                Ok(WaitStatus::Exited(_, code)) => return Some(ExitCause::Exited(code)),
                Ok(WaitStatus::Signaled(_, sig, core_dumped)) => {
                    return Some(ExitCause::Signaled {
                        signal: sig as i32,
                        core_dumped,
                    });
                }
                Ok(_) | Err(Errno::EINTR) => continue,
                // Reaped by someone else (SIGCHLD ignored, or a `wait()`
                // elsewhere in the program).
                Err(_) => return None,
            }
        }
    }

    /// Stops everything after an internal failure: fails all work, kills
    /// the zygote (and so its workers), reaps it.
    fn give_up(&mut self, err: Error) {
        let shared = self.shared.clone();
        let mut st = shared.lock();
        if let Some(tx) = self.startup.take() {
            let _ = tx.send(Err(err.clone()));
        }
        st.fail_all(&err);
        st.broken.get_or_insert(err);
        st.shut_ctrl();
        if !self.zygote_reaped {
            let _ = kill(self.shared.zygote, Signal::SIGKILL);
            self.reap_zygote();
        }
        st.workers.clear();
        st.phase = Phase::Finished;
    }
}

/// How long the collector waits for orphaned workers it adopted to die.
const ADOPTED_WAIT: Duration = Duration::from_secs(2);

/// Reaps the workers (of `pids`) that lost their zygote and were adopted
/// by this process, which happens when the program made itself a child
/// subreaper (`PR_SET_CHILD_SUBREAPER`). They die of their death signal
/// (SIGKILL) within moments; a worker adopted by init or by another
/// subreaper is theirs to reap and is left alone. Only a process that
/// `/proc` shows as a `forkpool-worker` whose parent is this process is
/// waited for, so no other child of the program is reaped.
fn reap_adopted(pids: &[Pid]) {
    let me = nix::unistd::getpid();
    let deadline = Instant::now() + ADOPTED_WAIT;
    let mut left: Vec<Pid> = pids.to_vec();
    while !left.is_empty() {
        left.retain(|&pid| {
            if !adopted_worker(pid, me) {
                return false;
            }
            let status = waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
            matches!(status, Ok(WaitStatus::StillAlive) | Err(Errno::EINTR))
        });
        if left.is_empty() || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether `pid` is a pool worker (alive or a zombie) whose parent is `me`.
fn adopted_worker(pid: Pid, me: Pid) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    let comm = &stat[open + 1..close];
    // After the name: state, then the parent's pid.
    let ppid = stat[close + 1..].split_whitespace().nth(1);
    comm == "forkpool-worker" && ppid.and_then(|p| p.parse::<i32>().ok()) == Some(me.as_raw())
}

/// What `build()` is still waiting for, in words: the workers that have
/// not reported ready, and the slots that have no worker yet.
pub(crate) fn waiting_for(st: &State) -> String {
    let mut parts = Vec::new();
    for w in st.workers.iter().filter(|w| !w.ready) {
        parts.push(format!(
            "worker {} (slot {}) had not reported ready (its initializer was still running, or it was stopped)",
            w.pid, w.slot
        ));
    }
    let missing: Vec<String> = (0..st.processes as u32)
        .filter(|slot| !st.workers.iter().any(|w| w.slot == *slot))
        .map(|slot| slot.to_string())
        .collect();
    if !missing.is_empty() {
        parts.push(format!(
            "slot(s) {} had no worker yet (the zygote had not forked one)",
            missing.join(", ")
        ));
    }
    if parts.is_empty() {
        parts.push("every worker was ready, but the collector had not said so".into());
    }
    let ready = st.workers.iter().filter(|w| w.ready).count();
    format!(
        "{ready} of {} workers were ready; {}",
        st.processes,
        parts.join("; ")
    )
}

fn set_nonblocking(fd: &PoolFd) -> nix::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}
