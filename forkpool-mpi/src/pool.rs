//! The pool on rank 0: [`Pool::world`], `map`, `imap_unordered`, `apply`.
//!
//! Rank 0 hands tasks to the worker ranks and collects their results; it
//! never blocks in a send (tasks go out with `MPI_Isend`, kept until they
//! complete), so a worker blocked sending a large result to rank 0 is
//! always answered. A worker holds at most about 2 ms of queued work
//! (2 to 16 tasks, by the time the last tasks took): enough to hide a
//! message's latency, little enough that work is committed to a rank late. While it waits, rank 0 checks that the ranks holding its
//! tasks are alive (see [`crate::serve`] and the crate docs on faults).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::iter::Peekable;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::time::{Duration, Instant};

use mpi::ffi;
use mpi::point_to_point::MatchedReceiveVec;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::array::{AllocRequest, NodeArray, NodeElement, Segment};
use crate::error::{Error, Result};
use crate::layout::{RankInfo, alive};
use crate::serve::{self, StopRequest, tag};
use crate::task::{Sendable, decode_outcomes, encode_task, result_id};

/// Fewest and most tasks waiting on one worker rank at once: a worker
/// holds about [`HOLD`] of work, by the time its tasks take (commit work
/// late, but keep a rank busy across a message's latency when tasks are
/// short).
const MIN_DEPTH: usize = 2;
const MAX_DEPTH: usize = 16;
const HOLD: f64 = 0.002;
/// How often rank 0 checks, while it waits, that the ranks holding its
/// tasks are alive.
const LIVENESS_EVERY: Duration = Duration::from_millis(20);

/// A pool whose workers are the MPI ranks of the job; rank 0 holds it.
///
/// Every rank runs the same `main`; [`Pool::world`] returns the pool on
/// rank 0 and serves tasks on every other rank until rank 0 drops the pool.
///
/// # Examples
///
/// ```no_run
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// fn main() -> Result<(), forkpool_mpi::Error> {
///     // every rank runs main; rank 0 gets the pool, the others serve in world()
///     let Some(pool) = forkpool_mpi::Pool::world()? else { return Ok(()) };
///     let squares = pool.map(square, 0..1000u64)?;
///     assert_eq!(squares[999], 999 * 999);
///     println!("{} worker ranks", pool.ranks());
///     Ok(())
/// }
/// ```
pub struct Pool {
    core: RefCell<Core>,
    layout: Vec<RankInfo>,
    // Freed in `Drop`, before MPI is finalized.
    node_comm: ManuallyDrop<SimpleCommunicator>,
    world: ManuallyDrop<SimpleCommunicator>,
    // Dropped last: finalizes MPI (unless a rank died, see `Drop`).
    universe: ManuallyDrop<mpi::environment::Universe>,
}

/// Rank 0's view of the workers and of the tasks out.
struct Core {
    comm: ffi::MPI_Comm,
    workers: Vec<Worker>,
    /// Where the next search for a free rank starts (round robin).
    cursor: usize,
    next_id: u64,
    /// Tasks sent and not answered: task id -> rank.
    pending: HashMap<u64, usize>,
    /// Answers not yet taken by their job.
    inbox: HashMap<u64, Answer>,
    /// Tasks whose job was dropped: their answers are thrown away.
    abandoned: HashSet<u64>,
    /// Sends in progress: the request and the buffer it reads.
    sends: Vec<(ffi::MPI_Request, Vec<u8>)>,
    /// Buffers of sends to ranks that died: never freed (MPI may still
    /// hold them).
    orphans: Vec<Vec<u8>>,
    last_check: Instant,
    /// The time a task takes on a worker, smoothed (seconds).
    service: f64,
    next_array: u64,
    /// The node-shared arrays made so far (for the shutdown).
    arrays: Vec<u64>,
}

struct Worker {
    info: RankInfo,
    alive: bool,
    /// On rank 0's node: its liveness can be checked by pid.
    local: bool,
    in_flight: usize,
}

enum Answer {
    Done { rank: usize, message: Vec<u8> },
    Died { rank: usize },
}

impl Pool {
    /// Starts MPI and returns the pool on rank 0; on every other rank,
    /// serves tasks until rank 0 drops its pool, then returns `None`.
    ///
    /// Every rank checks first that all ranks run the same executable
    /// (functions travel as offsets into it).
    ///
    /// # Errors
    ///
    /// [`Error::Mpi`] when MPI was started already, [`Error::NotSameBinary`]
    /// (on every rank) when the ranks run different executables,
    /// [`Error::Image`] when the executable cannot be read.
    pub fn world() -> Result<Option<Pool>> {
        let (universe, _threading) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| {
                Error::Mpi(
                    "MPI is initialized already: call Pool::world once per process".to_owned(),
                )
            })?;
        let world = universe.world();
        // SAFETY: `world` is a valid communicator; MPI_ERRORS_RETURN is a
        // predefined error handler. With it, a send to a rank that died
        // returns an error code instead of aborting the job.
        unsafe {
            ffi::MPI_Comm_set_errhandler(world.as_raw(), ffi::RSMPI_ERRORS_RETURN);
        }
        let size = world.size() as usize;
        let rank = world.rank() as usize;

        // Same binary everywhere, or nobody goes on.
        let me = crate::ImageId::current();
        let mine = match &me {
            Ok(id) => [id.len, id.hash],
            Err(_) => [u64::MAX, 0],
        };
        let mut all = vec![0u64; 2 * size];
        world.all_gather_into(&mine[..], &mut all[..]);
        let ids: Vec<crate::ImageId> = all
            .chunks(2)
            .map(|c| crate::ImageId {
                len: c[0],
                hash: c[1],
            })
            .collect();
        me?;
        if let Some(differing) = crate::image::differing(&ids) {
            return Err(Error::NotSameBinary {
                ours: ids[0],
                differing,
            });
        }

        let node_comm = node_communicator(&world);
        let layout = serve::exchange_layout(&world, &node_comm);
        if rank != 0 {
            let served = serve::serve(&world, &node_comm, &layout);
            drop((node_comm, world));
            // MPI_Finalize waits (a fence) for every rank, and may wait
            // forever for one that died: after a death, leave MPI without it.
            match served {
                Ok(serve::Stopped { finalize: true }) => drop(universe),
                Ok(serve::Stopped { finalize: false }) | Err(_) => std::mem::forget(universe),
            }
            return served.map(|_| None);
        }
        let workers = layout
            .iter()
            .map(|info| Worker {
                info: info.clone(),
                alive: info.rank != 0,
                local: info.node == layout[0].node,
                in_flight: 0,
            })
            .collect();
        let core = Core {
            comm: world.as_raw(),
            workers,
            cursor: 1,
            next_id: 0,
            pending: HashMap::new(),
            inbox: HashMap::new(),
            abandoned: HashSet::new(),
            sends: Vec::new(),
            orphans: Vec::new(),
            last_check: Instant::now(),
            service: HOLD,
            next_array: 0,
            arrays: Vec::new(),
        };
        Ok(Some(Pool {
            core: RefCell::new(core),
            layout,
            node_comm: ManuallyDrop::new(node_comm),
            world: ManuallyDrop::new(world),
            universe: ManuallyDrop::new(universe),
        }))
    }

    /// The number of worker ranks (the job's ranks but rank 0), alive or
    /// not.
    pub fn ranks(&self) -> usize {
        self.layout.len() - 1
    }

    /// The worker ranks still alive.
    pub fn live_ranks(&self) -> Vec<usize> {
        let core = self.core.borrow();
        core.workers
            .iter()
            .filter(|w| w.alive)
            .map(|w| w.info.rank)
            .collect()
    }

    /// Every rank of the job (rank 0 first): node, pid and host.
    pub fn layout(&self) -> &[RankInfo] {
        &self.layout
    }

    /// The number of nodes (groups of ranks that share memory).
    pub fn nodes(&self) -> usize {
        self.layout
            .iter()
            .map(|r| r.node)
            .max()
            .map_or(0, |n| n + 1)
    }

    /// Applies `f` to every item on the worker ranks and returns the
    /// results in input order. Items go out in chunks of about a quarter
    /// of an even share per worker rank.
    ///
    /// # Errors
    ///
    /// The error of the first item (in input order) that failed: a panic,
    /// a rank that died, a value that would not encode or decode.
    pub fn map<T, R>(&self, f: fn(T) -> R, items: impl IntoIterator<Item = T>) -> Result<Vec<R>>
    where
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let items: Vec<T> = items.into_iter().collect();
        let chunksize = items.len().div_ceil(4 * self.ranks().max(1)).max(1);
        self.map_chunked(f, items, chunksize)
    }

    /// [`map`](Self::map) with `chunksize` items per task.
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map).
    pub fn map_chunked<T, R>(
        &self,
        f: fn(T) -> R,
        items: impl IntoIterator<Item = T>,
        chunksize: usize,
    ) -> Result<Vec<R>>
    where
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let items: Vec<T> = items.into_iter().collect();
        let n = items.len();
        let mut job = self.imap(f, items, chunksize);
        job.slots = Some(Slots {
            values: (0..n).map(|_| None).collect(),
            error: None,
        });
        job.run_to_end();
        let slots = job.slots.take().expect("set above");
        if let Some(e) = slots.error {
            return Err(e);
        }
        Ok(slots
            .values
            .into_iter()
            .map(|v| v.expect("every item has a result or an error"))
            .collect())
    }

    /// A lazy, ordered map: each item's `Result`, in input order, pulling
    /// input only as tasks go out.
    pub fn imap<'a, T, R, I>(&'a self, f: fn(T) -> R, items: I, chunksize: usize) -> IMap<'a, T, R>
    where
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = T>,
        I::IntoIter: 'a,
    {
        IMap::new(
            self,
            f,
            Box::new(items.into_iter().map(|t| (None, t))),
            chunksize,
            true,
        )
    }

    /// As [`imap`](Self::imap), but results come in the order they
    /// complete. [`Error::item`] tells which item an error belongs to.
    pub fn imap_unordered<'a, T, R, I>(
        &'a self,
        f: fn(T) -> R,
        items: I,
        chunksize: usize,
    ) -> IMap<'a, T, R>
    where
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = T>,
        I::IntoIter: 'a,
    {
        IMap::new(
            self,
            f,
            Box::new(items.into_iter().map(|t| (None, t))),
            chunksize,
            false,
        )
    }

    /// As [`imap`](Self::imap) (ordered) or
    /// [`imap_unordered`](Self::imap_unordered), each item run on a rank
    /// of the node given with it: `(node, item)`. For work on the rows of
    /// a [`NodeArray`] that one node holds
    /// ([`NodeArray::rows_of_node`]).
    pub fn imap_on<'a, T, R, I>(
        &'a self,
        f: fn(T) -> R,
        items: I,
        chunksize: usize,
        ordered: bool,
    ) -> IMap<'a, T, R>
    where
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        I: IntoIterator<Item = (usize, T)>,
        I::IntoIter: 'a,
    {
        IMap::new(
            self,
            f,
            Box::new(items.into_iter().map(|(n, t)| (Some(n), t))),
            chunksize,
            ordered,
        )
    }

    /// Runs `f(arg)` on a worker rank and waits for the result.
    ///
    /// # Errors
    ///
    /// The task's error.
    pub fn apply<T, R>(&self, f: fn(T) -> R, arg: T) -> Result<R>
    where
        T: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        self.imap(f, std::iter::once(arg), 1)
            .next()
            .expect("one item gives one result")
    }

    /// A new array of `shape` (rows first), zero-filled, held once per
    /// node in an MPI-3 shared window: each node holds a contiguous block
    /// of rows (in proportion to its worker ranks), shared by all its
    /// ranks. Every rank joins the allocation (it is collective), so this
    /// waits for the tasks out to finish first.
    ///
    /// The array lives until the pool is dropped.
    ///
    /// # Errors
    ///
    /// [`Error::Array`] when a rank died (collective calls need every
    /// rank), the shape is empty or too large, or MPI cannot allocate.
    pub fn node_array<T: NodeElement>(&self, shape: &[usize]) -> Result<NodeArray<T>> {
        let mut core = self.core.borrow_mut();
        if let Some(dead) = core.workers.iter().skip(1).find(|w| !w.alive) {
            return Err(Error::Array(format!(
                "{} died: making a node-shared array needs every rank (MPI collective)",
                dead.info
            )));
        }
        let bytes = shape
            .iter()
            .try_fold(std::mem::size_of::<T>(), |acc, &d| acc.checked_mul(d))
            .filter(|_| !shape.is_empty());
        if bytes.is_none() {
            return Err(Error::Array(format!(
                "the shape {shape:?} of {} is empty or its size overflows",
                T::NAME
            )));
        }
        core.drain(&self.world);
        let nodes = self.nodes();
        let mut weights = vec![0usize; nodes];
        for w in core.workers.iter().skip(1) {
            weights[w.info.node] += 1;
        }
        let request = AllocRequest {
            id: core.next_array,
            elem: T::NAME.to_owned(),
            elem_size: std::mem::size_of::<T>(),
            shape: shape.to_vec(),
            weights,
        };
        core.next_array += 1;
        core.arrays.push(request.id);
        let message = postcard::to_stdvec(&request).expect("a request always encodes");
        for r in 1..self.layout.len() {
            self.world
                .process_at_rank(r as i32)
                .send_with_tag(&message[..], tag::ALLOC);
        }
        drop(core);
        let segment = Segment::allocate(&self.node_comm, self.layout[0].node, &request)?;
        Ok(NodeArray::from_segment(segment))
    }

    /// Waits for the tasks out, then stops the workers and frees the arrays.
    fn stop(&mut self) -> bool {
        let core = self.core.get_mut();
        core.drain(&self.world);
        let dead_nodes: HashSet<usize> = core
            .workers
            .iter()
            .skip(1)
            .filter(|w| !w.alive)
            .map(|w| w.info.node)
            .collect();
        let stop = StopRequest {
            free: core.arrays.clone(),
            dead_nodes: dead_nodes.iter().copied().collect(),
            finalize: dead_nodes.is_empty(),
        };
        let message = postcard::to_stdvec(&stop).expect("a stop always encodes");
        for w in core.workers.iter().skip(1).filter(|w| w.alive) {
            self.world
                .process_at_rank(w.info.rank as i32)
                .send_with_tag(&message[..], tag::STOP);
        }
        serve::free_arrays(&self.node_comm, self.layout[0].node, &stop);
        // Sends still in progress to dead ranks: their buffers are never
        // freed.
        for (_, buf) in core.sends.drain(..) {
            core.orphans.push(buf);
        }
        std::mem::forget(std::mem::take(&mut core.orphans));
        stop.finalize
    }
}

/// The variable that splits each node into this many pretend nodes, to
/// test the code for several nodes on one machine (every rank must see the
/// same value: `mpirun -x FORKPOOL_MPI_TEST_NODES=2 ...`).
pub(crate) const TEST_NODES: &str = "FORKPOOL_MPI_TEST_NODES";

/// The ranks this rank shares memory with: `MPI_Comm_split_type(SHARED)`,
/// split further into [`TEST_NODES`] groups by rank when that is set.
fn node_communicator(world: &SimpleCommunicator) -> SimpleCommunicator {
    let rank = world.rank();
    let shared = world.split_shared(rank);
    let parts = std::env::var(TEST_NODES)
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .filter(|&k| k > 1);
    match parts {
        Some(k) => shared
            .split_by_color_with_key(mpi::topology::Color::with_value(rank % k), rank)
            .expect("every rank has a color"),
        None => shared,
    }
}

impl Drop for Pool {
    /// Waits for the tasks out, frees the node-shared arrays, tells every
    /// worker rank to return from [`Pool::world`], and finalizes MPI (not
    /// when a rank died: `MPI_Finalize` could wait for it forever).
    fn drop(&mut self) {
        let finalize = self.stop();
        // SAFETY: each is dropped once, here, and never used after; the
        // communicators before MPI is finalized.
        unsafe {
            ManuallyDrop::drop(&mut self.node_comm);
            ManuallyDrop::drop(&mut self.world);
            if finalize {
                ManuallyDrop::drop(&mut self.universe);
            }
        }
        // Otherwise a rank died: MPI_Finalize would wait for it (its fence
        // may never complete), so MPI is left without finalizing. mpirun
        // accepts that under --enable-recovery.
    }
}

impl Core {
    /// A live worker rank, on `node` if given, with room for a task, or
    /// `None` when all are busy. `Err` when no live rank could ever take
    /// one.
    fn free_rank(&mut self, node: Option<usize>) -> std::result::Result<Option<usize>, String> {
        let n = self.workers.len();
        let depth = self.depth();
        let fits = |w: &Worker| w.alive && node.is_none_or(|k| w.info.node == k);
        if !self.workers.iter().any(fits) {
            return Err(match node {
                Some(k) => format!("no live worker rank on node {k}"),
                None if n <= 1 => {
                    "the job has one rank: launch it with mpirun -n 2 or more".to_owned()
                }
                None => "every worker rank died".to_owned(),
            });
        }
        let mut best: Option<usize> = None;
        for step in 0..n {
            let r = (self.cursor + step) % n;
            let w = &self.workers[r];
            if fits(w)
                && w.in_flight < depth
                && best.is_none_or(|b| w.in_flight < self.workers[b].in_flight)
            {
                best = Some(r);
                if w.in_flight == 0 {
                    break;
                }
            }
        }
        if let Some(r) = best {
            self.cursor = (r + 1) % n;
        }
        Ok(best)
    }

    /// How many tasks a worker may hold: about [`HOLD`] of work.
    fn depth(&self) -> usize {
        ((HOLD / self.service.max(1e-9)).ceil() as usize).clamp(MIN_DEPTH, MAX_DEPTH)
    }

    /// Sends task `id` to `rank` without blocking.
    fn send(&mut self, rank: usize, id: u64, message: Vec<u8>) {
        let len = i32::try_from(message.len()).expect("a task message is under 2 GiB");
        let mut request = std::mem::MaybeUninit::<ffi::MPI_Request>::uninit();
        // SAFETY: `message` is kept alive (in `sends` or `orphans`) until
        // MPI_Test reports the send complete, or forever; the communicator
        // and datatype are valid; `request` is written by MPI_Isend.
        let request = unsafe {
            ffi::MPI_Isend(
                message.as_ptr().cast(),
                len,
                ffi::RSMPI_UINT8_T,
                rank as i32,
                tag::TASK,
                self.comm,
                request.as_mut_ptr(),
            );
            request.assume_init()
        };
        self.sends.push((request, message));
        self.workers[rank].in_flight += 1;
        self.pending.insert(id, rank);
    }

    /// Receives the answers that have arrived, completes sends, and checks
    /// liveness now and then. Returns whether an answer came.
    fn poll(&mut self, world: &SimpleCommunicator) -> bool {
        let mut got = false;
        while let Some(probe) = world
            .any_process()
            .immediate_matched_probe_with_tag(tag::RESULT)
        {
            let (mut message, status) = probe.matched_receive_vec::<u8>();
            let rank = status.source_rank() as usize;
            got = true;
            // The worker's time for the task trails the message.
            if message.len() >= 8 {
                let at = message.len() - 8;
                let nanos = u64::from_le_bytes(message[at..].try_into().expect("8 bytes"));
                message.truncate(at);
                self.service = 0.8 * self.service + 0.2 * (nanos as f64 * 1e-9);
            }
            match result_id(&message) {
                Ok((id, _)) => self.answer(id, Answer::Done { rank, message }),
                Err(e) => eprintln!("forkpool-mpi: rank 0 dropped a message from rank {rank}: {e}"),
            }
        }
        self.sends.retain_mut(|(request, _)| {
            let mut done = 0;
            // SAFETY: `request` came from MPI_Isend and was not completed
            // yet (completed ones are removed here).
            unsafe { ffi::MPI_Test(request, &mut done, ffi::RSMPI_STATUS_IGNORE) };
            done == 0
        });
        if !got && self.last_check.elapsed() >= LIVENESS_EVERY {
            self.check_liveness();
        }
        got
    }

    fn answer(&mut self, id: u64, answer: Answer) {
        if let Some(rank) = self.pending.remove(&id) {
            let w = &mut self.workers[rank];
            w.in_flight = w.in_flight.saturating_sub(1);
        }
        if !self.abandoned.remove(&id) {
            self.inbox.insert(id, answer);
        }
    }

    /// Marks dead the local ranks holding tasks whose process is gone,
    /// and fails their tasks.
    fn check_liveness(&mut self) {
        self.last_check = Instant::now();
        let dead: Vec<usize> = self
            .workers
            .iter()
            .filter(|w| w.alive && w.local && w.in_flight > 0 && !alive(w.info.pid))
            .map(|w| w.info.rank)
            .collect();
        for rank in dead {
            self.workers[rank].alive = false;
            let lost: Vec<u64> = self
                .pending
                .iter()
                .filter(|(_, r)| **r == rank)
                .map(|(id, _)| *id)
                .collect();
            for id in lost {
                self.answer(id, Answer::Died { rank });
            }
        }
    }

    /// Waits until every task out is answered (or its rank died).
    fn drain(&mut self, world: &SimpleCommunicator) {
        let mut idle = Backoff::new();
        while !self.pending.is_empty() {
            if self.poll(world) {
                idle.reset();
            } else {
                idle.wait();
            }
        }
        self.poll(world);
    }
}

/// Waiting without burning a core the workers need: spin briefly, then
/// yield, then sleep a little. Reading the clock only once waiting
/// starts (a clock read per result cost a quarter of rank 0's time).
pub(crate) struct Backoff {
    since: Option<Instant>,
    spins: u32,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff {
            since: None,
            spins: 0,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.spins = 0;
        self.since = None;
    }

    pub(crate) fn wait(&mut self) {
        self.spins += 1;
        if self.spins < 64 {
            std::hint::spin_loop();
            return;
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        if since.elapsed() < Duration::from_millis(2) {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// `map`'s results: one slot per item, and the error of the lowest item
/// that failed.
struct Slots<R> {
    values: Vec<Option<R>>,
    error: Option<Error>,
}

impl<R> Slots<R> {
    fn put(&mut self, item: usize, r: Result<R>) {
        match r {
            Ok(v) => self.values[item] = Some(v),
            Err(e) => {
                if self
                    .error
                    .as_ref()
                    .and_then(Error::item)
                    .is_none_or(|i| item < i)
                {
                    self.error = Some(e);
                }
            }
        }
    }
}

/// A task out: its id, its first item, its item count.
struct Out {
    id: u64,
    first: usize,
    count: usize,
}

/// The iterator of [`Pool::imap`], [`Pool::imap_unordered`] and
/// [`Pool::imap_on`]: one `Result` per input item. Dropping it early
/// sends no more tasks; answers to those out are thrown away.
#[must_use = "iterators are lazy: nothing runs until the IMap is iterated"]
pub struct IMap<'p, T, R> {
    pool: &'p Pool,
    f: std::result::Result<Sendable, Error>,
    input: Peekable<Box<dyn Iterator<Item = (Option<usize>, T)> + 'p>>,
    chunksize: usize,
    ordered: bool,
    next_item: usize,
    out: Vec<Out>,
    /// Ordered: results by the first item of their task.
    by_first: BTreeMap<usize, VecDeque<Result<R>>>,
    /// Ordered: the results being yielded, of the task whose first item
    /// was next when they were taken.
    current: VecDeque<Result<R>>,
    next_yield: usize,
    /// Unordered (and failures before sending): results as they come.
    ready: VecDeque<Result<R>>,
    /// `map`: every result in its slot, and the first error by item
    /// (no per-item queue: a `Result<R, Error>` is ten times a `u64`).
    slots: Option<Slots<R>>,
    _types: PhantomData<fn(T) -> R>,
}

impl<'p, T, R> IMap<'p, T, R>
where
    T: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    fn new(
        pool: &'p Pool,
        f: fn(T) -> R,
        input: Box<dyn Iterator<Item = (Option<usize>, T)> + 'p>,
        chunksize: usize,
        ordered: bool,
    ) -> Self {
        IMap {
            pool,
            f: Sendable::new(f),
            input: input.peekable(),
            chunksize: chunksize.max(1),
            ordered,
            next_item: 0,
            out: Vec::new(),
            by_first: BTreeMap::new(),
            current: VecDeque::new(),
            next_yield: 0,
            ready: VecDeque::new(),
            slots: None,
            _types: PhantomData,
        }
    }

    /// Results for items that failed before any task went out.
    fn fail(&mut self, first: usize, errors: Vec<Error>) {
        if let Some(slots) = &mut self.slots {
            for (i, e) in errors.into_iter().enumerate() {
                slots.put(first + i, Err(e));
            }
        } else if self.ordered {
            self.by_first
                .insert(first, errors.into_iter().map(Err).collect());
        } else {
            self.ready.extend(errors.into_iter().map(Err));
        }
    }

    /// Sends tasks while ranks have room.
    fn submit(&mut self) {
        let pool = self.pool;
        let mut core = pool.core.borrow_mut();
        while let Some((node, _)) = self.input.peek() {
            let node = *node;
            let first = self.next_item;
            let rank = match (&self.f, core.free_rank(node)) {
                (Err(e), _) => {
                    let e = e.clone();
                    let (_, _item) = self.input.next().expect("peeked");
                    self.next_item += 1;
                    self.fail(first, vec![e]);
                    continue;
                }
                (_, Err(why)) => {
                    let _ = self.input.next();
                    self.next_item += 1;
                    self.fail(first, vec![Error::NoRank { item: first, why }]);
                    continue;
                }
                (_, Ok(None)) => break,
                (Ok(_), Ok(Some(rank))) => rank,
            };
            let mut chunk = Vec::with_capacity(self.chunksize.min(1 << 16));
            while chunk.len() < self.chunksize {
                match self.input.next_if(|(n, _)| *n == node) {
                    Some((_, item)) => chunk.push(item),
                    None => break,
                }
            }
            let count = chunk.len();
            self.next_item += count;
            let id = core.next_id;
            core.next_id += 1;
            let f = *self.f.as_ref().expect("checked above");
            match encode_task(f, id, &mut chunk.into_iter(), first) {
                Ok(message) => {
                    core.send(rank, id, message);
                    self.out.push(Out { id, first, count });
                }
                Err(e) => {
                    let errors = (first..first + count).map(|i| e.for_item(i)).collect();
                    self.fail(first, errors);
                }
            }
        }
    }

    /// Takes the answers of this job's tasks from the inbox.
    fn collect(&mut self) -> bool {
        let pool = self.pool;
        let mut core = pool.core.borrow_mut();
        let mut got = false;
        let mut i = 0;
        while i < self.out.len() {
            let Some(answer) = core.inbox.remove(&self.out[i].id) else {
                i += 1;
                continue;
            };
            got = true;
            let Out { first, count, .. } = self.out.swap_remove(i);
            let mut results = VecDeque::new();
            let slots = &mut self.slots;
            let mut deliver = |item: usize, r: Result<R>| match slots {
                Some(slots) => slots.put(item, r),
                None => results.push_back(r),
            };
            match answer {
                Answer::Done { rank, message } => {
                    let (_, outcomes) = result_id(&message).expect("checked on arrival");
                    decode_outcomes::<R>(outcomes, count, first, rank, &mut deliver);
                }
                Answer::Died { rank } => {
                    let w = &core.workers[rank].info;
                    for item in first..first + count {
                        deliver(
                            item,
                            Err(Error::RankDied {
                                item,
                                rank,
                                pid: w.pid,
                                host: w.host.clone(),
                            }),
                        );
                    }
                }
            }
            if self.slots.is_some() {
                continue;
            }
            if self.ordered {
                self.by_first.insert(first, results);
            } else {
                self.ready.extend(results);
            }
        }
        got
    }

    /// Runs every task and collects every answer (for `slots`).
    fn run_to_end(&mut self) {
        let mut idle: Option<Backoff> = None;
        loop {
            self.submit();
            if self.out.is_empty() && self.input.peek().is_none() {
                return;
            }
            if self.collect() {
                idle = None;
                continue;
            }
            if self.pool.core.borrow_mut().poll(&self.pool.world) {
                idle = None;
            } else {
                idle.get_or_insert_with(Backoff::new).wait();
            }
        }
    }

    fn take_ready(&mut self) -> Option<Result<R>> {
        if !self.ordered {
            return self.ready.pop_front();
        }
        loop {
            if let Some(r) = self.current.pop_front() {
                self.next_yield += 1;
                return Some(r);
            }
            // The next task's results, once they are in.
            let entry = self.by_first.first_entry()?;
            if *entry.key() != self.next_yield {
                return None;
            }
            self.current = entry.remove();
        }
    }
}

impl<T, R> Iterator for IMap<'_, T, R>
where
    T: Serialize + DeserializeOwned,
    R: Serialize + DeserializeOwned,
{
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        if let Some(r) = self.take_ready() {
            return Some(r);
        }
        let mut idle: Option<Backoff> = None;
        loop {
            if let Some(r) = self.take_ready() {
                return Some(r);
            }
            self.submit();
            if let Some(r) = self.take_ready() {
                return Some(r);
            }
            if self.out.is_empty() && self.input.peek().is_none() {
                return None;
            }
            if self.collect() {
                idle = None;
                continue;
            }
            let got = self.pool.core.borrow_mut().poll(&self.pool.world);
            if got {
                idle = None;
            } else {
                idle.get_or_insert_with(Backoff::new).wait();
            }
        }
    }
}

impl<T, R> Drop for IMap<'_, T, R> {
    fn drop(&mut self) {
        let mut core = self.pool.core.borrow_mut();
        for out in self.out.drain(..) {
            if core.inbox.remove(&out.id).is_none() {
                core.abandoned.insert(out.id);
            }
        }
    }
}
