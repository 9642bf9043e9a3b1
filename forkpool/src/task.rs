//! Functions across the fork: trampolines, and the encoding of a task's
//! items and of their outcomes.
//!
//! A worker is a fork of the same program image, so a `fn(T) -> R` is valid
//! there at the same address. A task carries two addresses: the user's
//! function, and a trampoline monomorphised for `(T, R)` that decodes the
//! items, calls the function on each under `catch_unwind`, and encodes one
//! outcome per item. Only arguments and results are serialised.
//!
//! Everything is in the pool's own wire format ([`codec`](crate::codec)).
//! Task payload: item count (`u64`), then each item. Result payload: per
//! item, a tag byte and then
//!
//! | tag        | followed by                                             |
//! |------------|---------------------------------------------------------|
//! | `OK`       | the result (`R`)                                        |
//! | `PANICKED` | the panic message (`String`)                            |
//! | `ENCODE`   | why the result could not be encoded (`String`)          |
//! | `DECODE`   | why this item's argument could not be decoded, and the byte count (`(String, u64)`); the rest of the task is not run |

use std::any::type_name;
use std::panic::{AssertUnwindSafe, catch_unwind};

use nix::unistd::Pid;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::buffer::{self, Incoming, Outgoing};
use crate::codec::{self, Input, RunAt, Stopped, encode_into};
use crate::error::Error;
use crate::frame::{self, Body, OutFrame, ResultFrame, TaskHeader};
use crate::scheduler::Part;
use crate::worker::panic_message;

const OK: u8 = 0;
const PANICKED: u8 = 1;
const ENCODE: u8 = 2;
const DECODE: u8 = 3;

/// The monomorphised entry point a worker calls for a task:
/// `(function address, frame body, where its payload starts, output)`;
/// returns the largest run of plain numbers it wrote to the output (to
/// travel apart, see [`crate::frame`]).
pub(crate) type Trampoline = fn(usize, Body, usize, &mut Vec<u8>) -> Option<RunAt>;

/// The trampoline for `fn(T) -> R`.
pub(crate) fn trampoline<T: DeserializeOwned, R: Serialize>() -> Trampoline {
    run_task::<T, R>
}

/// Decodes the items of a task, runs `f` on each, encodes the outcomes.
fn run_task<T: DeserializeOwned, R: Serialize>(
    func: usize,
    body: Body,
    at: usize,
    out: &mut Vec<u8>,
) -> Option<RunAt> {
    // SAFETY: `func` was made by `Call::of` from a `fn(T) -> R`, in the
    // program image this worker is a fork of, and travelled with this very
    // trampoline (monomorphised for the same `T` and `R`); a function pointer
    // stays valid at the same address in a forked child.
    let f = unsafe { std::mem::transmute::<usize, fn(T) -> R>(func) };
    run_items(body, at, out, f)
}

/// The body of every trampoline: decodes the items of a task, runs `f` on
/// each under `catch_unwind`, encodes the outcomes; returns the largest run
/// of plain numbers among them.
pub(crate) fn run_items<T: DeserializeOwned, R: Serialize>(
    body: Body,
    at: usize,
    out: &mut Vec<u8>,
    mut f: impl FnMut(T) -> R,
) -> Option<RunAt> {
    // Decode every item first and free the encoded bytes before running any:
    // a big argument is then held once (decoded), not twice.
    let (items, failure) = decode_items::<T>(body.into_input(at));
    // The descriptors of the buffers in the results (see `buffer`), and
    // the largest run of plain numbers among them (see `frame`).
    let mut fds = Vec::new();
    let mut run = None;
    let last = items.len().checked_sub(1);
    buffer::encoding_each(&mut fds, |enc| {
        for (k, item) in items.into_iter().enumerate() {
            let mark = out.len();
            let fd_mark = enc.fds();
            let run_before = run;
            out.push(OK);
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                let r = f(item);
                // The last result, if it is a big `Vec` of plain numbers, is
                // written from its own memory (in a worker; nothing follows
                // it in the frame but a decode failure's bytes).
                let r = match Some(k) == last {
                    true => match frame::lend(r, out, &mut run) {
                        Ok(()) => return Ok(()),
                        Err(r) => r,
                    },
                    false => r,
                };
                let encoded = enc.encode(&r, out, &mut run);
                frame::recycle(r);
                encoded
            }));
            if !matches!(outcome, Ok(Ok(()))) {
                enc.truncate(fd_mark);
                run = run_before;
            }
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    out.truncate(mark);
                    out.push(ENCODE);
                    encode_into(&e.to_string(), out).expect("a String always encodes");
                }
                Err(payload) => {
                    out.truncate(mark);
                    out.push(PANICKED);
                    encode_into(&panic_message(payload.as_ref()), out)
                        .expect("a String always encodes");
                }
            }
        }
    });
    if let Some((e, bytes)) = failure {
        decode_failed(out, e, bytes);
    }
    crate::side::worker_outgoing(&mut fds);
    run
}

/// Decodes a task's items: those that decode, and why the next one did not
/// (with the bytes left), if one did not.
fn decode_items<T: DeserializeOwned>(mut input: Input) -> (Vec<T>, Option<(codec::Error, usize)>) {
    let whole = input.len();
    let count = match input.decode::<u64>() {
        Ok(v) => v,
        Err(e) => return (Vec::new(), Some((e, whole))),
    };
    // The count comes off the wire: do not trust it for the reservation.
    let mut items = Vec::with_capacity(count.min(1 << 16) as usize);
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    let (_, failure) = input.decode_each::<T>(count, |item| items.push(item));
    (items, failure)
}

fn decode_failed(out: &mut Vec<u8>, e: codec::Error, bytes: usize) {
    out.push(DECODE);
    encode_into(&(e.to_string(), bytes as u64), out)
        .expect("a tuple of String and u64 always encodes");
}

/// What a task runs: a trampoline, and the address of the user's function
/// it calls (unused by trampolines that know their function by type).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call {
    pub(crate) tramp: Trampoline,
    pub(crate) func: usize,
}

impl Call {
    /// The call of a plain `fn(T) -> R`.
    pub(crate) fn of<T: DeserializeOwned, R: Serialize>(f: fn(T) -> R) -> Call {
        Call {
            tramp: trampoline::<T, R>(),
            func: f as usize,
        }
    }

    /// The header of this call's task frames (the id is the scheduler's).
    pub(crate) fn header(self) -> TaskHeader {
        TaskHeader {
            id: 0,
            tramp: self.tramp as usize as u64,
            func: self.func as u64,
        }
    }
}

/// Items encoded one after another (the pool's codec), with where each ends:
/// the input of a job, cut into task frames when a worker is about to need
/// them (see [`crate::scheduler`]). Each item is encoded once, at submit.
///
/// The bytes start with room for a task frame's head ([`TASK_HEAD`]): a
/// task that takes a whole block, as `apply`'s one item does, becomes a
/// frame in place, without copying a big argument into a second buffer.
#[derive(Debug)]
pub(crate) struct Items {
    /// The job's index of the first item.
    first: usize,
    /// [`TASK_HEAD`] bytes of room, then the items.
    bytes: Vec<u8>,
    /// Where each item ends in `bytes`.
    ends: Ends,
    /// Items in the block (the last one ends where `bytes` ends).
    count: usize,
    /// Items already cut into tasks.
    taken: usize,
    /// The descriptors of the buffers in the items, in order (see
    /// `buffer`), and `fd_ends[i]`, the end of item `i`'s in `fds`: empty
    /// while no item holds a buffer (so plain items pay nothing for it),
    /// as long as `ends` from the first one on.
    fds: Vec<Outgoing>,
    fd_ends: Vec<usize>,
    /// The largest run of plain numbers in `bytes` (see [`RunAt`]).
    run: Option<RunAt>,
    /// The last item, a big `Vec` of plain numbers kept to be written from
    /// its own memory: its bytes belong at the end of `bytes`
    /// ([`push_owned`](Self::push_owned)).
    lent: Option<frame::Lent>,
}

impl Items {
    /// An empty block whose first item will have index `first` in its job.
    pub(crate) fn starting_at(first: usize) -> Self {
        // A big buffer a frame was written from, if one is kept: a big value
        // is then encoded into memory already faulted in.
        // Otherwise room for a few small items (one allocation, not two, for
        // an `apply` of a small argument).
        let mut bytes =
            frame::take_spare().unwrap_or_else(|| Vec::with_capacity(TASK_HEAD + SMALL_ITEMS));
        bytes.resize(TASK_HEAD, 0);
        Items {
            first,
            bytes,
            ends: Ends::Same(0),
            count: 0,
            taken: 0,
            fds: Vec::new(),
            fd_ends: Vec::new(),
            run: None,
            lent: None,
        }
    }

    /// The job's index of the first item.
    pub(crate) fn first_index(&self) -> usize {
        self.first
    }

    /// The job's index of the next item to cut.
    pub(crate) fn next_index(&self) -> usize {
        self.first + self.taken
    }

    /// Keeps only the first `n` items (none of them cut yet).
    pub(crate) fn truncate(&mut self, n: usize) {
        debug_assert_eq!(self.taken, 0);
        if n < self.count {
            let end = n.checked_sub(1).map_or(TASK_HEAD, |i| self.end(i));
            if let Ends::Listed(ends) = &mut self.ends {
                ends.truncate(n.saturating_sub(1));
            }
            self.count = n;
            self.bytes.truncate(end);
            self.fd_ends.truncate(n);
            self.fds
                .truncate(n.checked_sub(1).map_or(0, |i| self.fd_end(i)));
            let end = self.bytes.len();
            self.run = self.run.filter(|r| r.at + r.len <= end);
            self.lent = None; // it was the last item
        }
    }

    /// Bytes of the lent item, if any.
    #[inline]
    fn lent_len(&self) -> usize {
        self.lent.as_ref().map_or(0, |l| l.bytes().len())
    }

    /// Items not yet cut.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.count - self.taken
    }

    /// Where item `i` ends in `bytes`.
    #[inline]
    fn end(&self, i: usize) -> usize {
        if i + 1 == self.count {
            return self.bytes.len();
        }
        match &self.ends {
            Ends::Same(size) => TASK_HEAD + (i + 1) * size,
            Ends::Listed(ends) => ends[i],
        }
    }

    /// Encoded bytes of the items not yet cut.
    #[inline]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.len() - self.start() + self.lent_len()
    }

    #[inline]
    fn start(&self) -> usize {
        self.taken.checked_sub(1).map_or(TASK_HEAD, |i| self.end(i))
    }

    /// Where the descriptors of item `i` end in `fds`.
    fn fd_end(&self, i: usize) -> usize {
        self.fd_ends.get(i).copied().unwrap_or(0)
    }

    /// Appends `item`; `index` (its place in the job) names it in the error.
    pub(crate) fn push<T: Serialize>(&mut self, item: &T, index: usize) -> Result<(), Error> {
        let before = self.bytes.len();
        if let Err(e) =
            buffer::encode_noting_run(item, &mut self.bytes, &mut self.fds, &mut self.run)
        {
            return Err(self.encode_failed::<T>(before, index, e));
        }
        self.close_item(before);
        Ok(())
    }

    /// Encodes items from `items` until the block holds `max_items` of
    /// them or `max_bytes` bytes, or `items` ends, disposing of each after
    /// ([`frame::recycle`]); the first has the job's index
    /// `first_index() + len()`, which names it in the error.
    pub(crate) fn fill<T: Serialize>(
        &mut self,
        items: &mut impl Iterator<Item = T>,
        max_items: usize,
        max_bytes: usize,
    ) -> Result<(), Error> {
        debug_assert!(self.taken == 0 && self.lent.is_none());
        // (So the block's bytes are its `bytes` after the head.)
        let byte_limit = TASK_HEAD.saturating_add(max_bytes);
        let mut fds = std::mem::take(&mut self.fds);
        let filled = buffer::encoding_each(&mut fds, |enc| {
            while self.count < max_items && self.bytes.len() < byte_limit {
                let Some(item) = items.next() else {
                    break;
                };
                let before = self.bytes.len();
                if let Err(e) = enc.encode(&item, &mut self.bytes, &mut self.run) {
                    let index = self.first + self.count;
                    return Err(self.encode_failed::<T>(before, index, e));
                }
                self.note_end(before, enc.fds());
                frame::recycle(item);
                if self.count == 1 {
                    // Room for the block's items, if they are like the first.
                    let size = self.bytes.len() - before;
                    let more = items.size_hint().0.min(max_items - 1);
                    self.bytes.reserve(more.saturating_mul(size).min(max_bytes));
                }
            }
            Ok(())
        });
        self.fds = fds;
        filled
    }

    /// The error of item `index` (of the job), which did not encode; what
    /// it wrote (from `before` on) is not an item.
    #[cold]
    fn encode_failed<T>(&mut self, before: usize, index: usize, e: codec::Error) -> Error {
        self.bytes.truncate(before);
        self.run = self.run.filter(|r| r.at + r.len <= before);
        Error::Encode {
            item: index,
            what: "argument",
            type_name: type_name::<T>(),
            reason: e.to_string(),
        }
    }

    /// Counts the item whose encoding starts at `before` (and ends at the
    /// end of `bytes`), noting where it ends and where its descriptors end.
    fn close_item(&mut self, before: usize) {
        self.note_end(before, self.fds.len());
    }

    /// [`close_item`](Self::close_item), the descriptors of the items
    /// ending at `fds` (those in `self.fds` may be elsewhere meanwhile).
    #[inline(always)]
    fn note_end(&mut self, before: usize, fds: usize) {
        let size = self.bytes.len() - before;
        match self.ends {
            // Another item of the same size, without buffers: a count.
            Ends::Same(s) if s == size && self.count > 0 && fds == 0 => self.count += 1,
            _ => self.note_end_apart(before, size, fds),
        }
    }

    /// [`note_end`](Self::note_end) of anything but another item of the
    /// same size without buffers.
    fn note_end_apart(&mut self, before: usize, size: usize, fds: usize) {
        match &mut self.ends {
            _ if self.count == 0 => self.ends = Ends::Same(size),
            Ends::Same(s) if *s == size => {}
            Ends::Same(s) => {
                // The first item of another size: from now on, every end.
                let s = *s;
                self.ends = Ends::Listed((1..=self.count).map(|k| TASK_HEAD + k * s).collect());
            }
            Ends::Listed(ends) => ends.push(before),
        }
        self.count += 1;
        if fds > 0 {
            // From the first item with a buffer on, every item has its end.
            self.fd_ends.resize(self.count - 1, 0);
            self.fd_ends.push(fds);
        }
    }

    /// Appends `item`, the block's last (nothing is pushed after it): a big
    /// `Vec` of plain numbers is kept and written from its own memory when
    /// its task goes ([`frame::lend_into`]), anything else is encoded as by
    /// [`push`](Self::push) and disposed of ([`frame::recycle`]).
    pub(crate) fn push_owned<T: Serialize>(&mut self, item: T, index: usize) -> Result<(), Error> {
        debug_assert!(self.lent.is_none());
        let mut lent = Vec::new();
        let before = self.bytes.len();
        match frame::lend_into(item, &mut self.bytes, &mut self.run, &mut lent) {
            Ok(()) => {
                self.lent = lent.pop();
                self.close_item(before);
                Ok(())
            }
            Err(item) => {
                self.push(&item, index)?;
                frame::recycle(item);
                Ok(())
            }
        }
    }

    /// Appends the next `n` items (at most [`len`](Self::len)) to a task
    /// payload, and their descriptors to `fds`; returns their encoded size,
    /// and the block's run if it is among them (at its place in `out`).
    fn take_into(
        &mut self,
        n: usize,
        out: &mut Vec<u8>,
        fds: &mut Vec<Outgoing>,
    ) -> (usize, Option<RunAt>) {
        let from = self.start();
        let to = self.end(self.taken + n - 1);
        // The lent last item, if taken, is copied in after its length.
        let lent = match self.taken + n == self.count {
            true => self.lent.take(),
            false => None,
        };
        let end = to + lent.as_ref().map_or(0, |l| l.bytes().len());
        let run = self
            .run
            .filter(|r| r.at >= from && r.at + r.len <= end)
            .map(|r| RunAt {
                at: out.len() + (r.at - from),
                ..r
            });
        out.extend_from_slice(&self.bytes[from..to]);
        if let Some(lent) = lent {
            out.extend_from_slice(lent.bytes());
            lent.done();
        }
        if !self.fds.is_empty() {
            let fd_from = self.taken.checked_sub(1).map_or(0, |i| self.fd_end(i));
            let fd_to = self.fd_end(self.taken + n - 1);
            fds.extend(self.fds[fd_from..fd_to].iter().cloned());
        }
        self.taken += n;
        (end - from, run)
    }
}

/// Where the items of a block end.
#[derive(Debug)]
enum Ends {
    /// Every item has this encoded size (as numbers and tuples of numbers
    /// have, in the pool's fixed-width format): item `i` ends `(i + 1)`
    /// sizes after [`TASK_HEAD`], and nothing is stored per item.
    Same(usize),
    /// Item `i` ends at `ends[i]` (the last one where the bytes end, so
    /// this holds one fewer).
    Listed(Vec<usize>),
}

/// Bytes a new block of items has room for before it grows.
const SMALL_ITEMS: usize = 64;

/// Bytes of a task frame before its first item: the length prefix, the
/// header, the item count.
const TASK_HEAD: usize = frame::LEN_PREFIX + TaskHeader::PAYLOAD_AT + 8;

/// A task frame cut out of a job's items.
pub(crate) struct Cut {
    pub(crate) frame: OutFrame,
    /// The job's index of its first item.
    pub(crate) first: usize,
    /// Encoded size of its items.
    pub(crate) bytes: usize,
    /// The descriptors of the buffers in its items, to send before it.
    pub(crate) fds: Vec<Outgoing>,
}

/// Builds a task frame out of the next `n` items of `queue` (which holds at
/// least `n`, contiguous), consuming them.
pub(crate) fn cut_task(
    header: TaskHeader,
    queue: &mut std::collections::VecDeque<Items>,
    n: usize,
) -> Cut {
    let first = queue.front().map_or(0, Items::next_index);
    if let Some(block) = queue.front()
        && block.taken == 0
        && n > 0
        && block.len() == n
    {
        // The task is the whole block: write the head into the room left
        // for it, and the block's bytes are the frame.
        let block = queue.pop_front().expect("the front block");
        let lent_len = block.lent_len();
        let bytes = block.bytes.len() - TASK_HEAD + lent_len;
        let fds = block.fds;
        let mut frame = block.bytes;
        let mut head = Vec::with_capacity(TASK_HEAD);
        let started = header.begin(&mut head);
        encode_into(&(n as u64), &mut head).expect("a u64 always encodes");
        assert_eq!(head.len(), TASK_HEAD, "the task head has a fixed size");
        frame[..TASK_HEAD].copy_from_slice(&head);
        if !fds.is_empty() {
            started.mark_fds(&mut frame);
        }
        started.finish_lent(&mut frame, lent_len);
        let frame = match block.run {
            Some(run) => OutFrame::with_run(frame, TASK_HEAD, run),
            None => frame.into(),
        }
        .lending(block.lent);
        return Cut {
            frame,
            first,
            bytes,
            fds,
        };
    }
    let hint: usize = queue.front().map_or(0, |b| {
        let k = n.min(b.len());
        b.end(b.taken + k - 1) - b.start()
    });
    let mut out = Vec::with_capacity(hint + 48);
    let started = header.begin(&mut out);
    encode_into(&(n as u64), &mut out).expect("a u64 always encodes");
    let (mut left, mut bytes) = (n, 0);
    let mut fds = Vec::new();
    let mut run: Option<RunAt> = None;
    while left > 0 {
        let block = queue.front_mut().expect("the queue holds the items cut");
        let k = left.min(block.len());
        let (b, r) = block.take_into(k, &mut out, &mut fds);
        bytes += b;
        if let Some(r) = r
            && run.is_none_or(|old| r.len > old.len)
        {
            run = Some(r);
        }
        left -= k;
        if block.len() == 0 {
            queue.pop_front();
        }
    }
    if !fds.is_empty() {
        started.mark_fds(&mut out);
    }
    started.finish(&mut out);
    let frame = match run {
        Some(run) => OutFrame::with_run(out, TASK_HEAD, run),
        None => out.into(),
    };
    Cut {
        frame,
        first,
        bytes,
        fds,
    }
}

/// The encoded size of the next `n` items of `queue` (which holds at
/// least `n`) if they are plain, so [`cut_small_into`] can cut them: no
/// buffer among them, no block with a run to carry apart, and not a whole
/// block (whose own bytes become its frame without a copy, and go back to
/// be reused for the next items once written: see [`cut_task`]).
pub(crate) fn plain_size(queue: &std::collections::VecDeque<Items>, n: usize) -> Option<usize> {
    if queue.front().is_some_and(|b| b.taken == 0 && b.len() == n) {
        return None;
    }
    let (mut left, mut size) = (n, 0);
    for block in queue {
        if left == 0 {
            break;
        }
        if !block.fds.is_empty() || block.run.is_some() {
            return None;
        }
        let k = left.min(block.len());
        size += block.end(block.taken + k - 1) - block.start();
        left -= k;
    }
    (left == 0).then_some(size)
}

/// Appends the task frame of the next `n` items of `queue` (which holds
/// at least `n`, contiguous and plain: see [`plain_size`]) to `out`, after
/// the frames already there, consuming them; returns the job's index of
/// the first. Many small tasks for one worker thus share one buffer.
pub(crate) fn cut_small_into(
    header: TaskHeader,
    queue: &mut std::collections::VecDeque<Items>,
    n: usize,
    out: &mut Vec<u8>,
) -> usize {
    let first = queue.front().map_or(0, Items::next_index);
    let started = header.begin(out);
    encode_into(&(n as u64), out).expect("a u64 always encodes");
    let mut no_fds = Vec::new();
    let mut left = n;
    while left > 0 {
        let block = queue.front_mut().expect("the queue holds the items cut");
        let k = left.min(block.len());
        block.take_into(k, out, &mut no_fds);
        left -= k;
        if block.len() == 0 {
            queue.pop_front();
        }
    }
    debug_assert!(no_fds.is_empty(), "plain items carry no buffer");
    started.finish(out);
    first
}

/// Decodes the outcomes of a completion of `count` items whose first item
/// has index `first`, passing one `Result` per item, in order, to `each`.
/// `parts` lists the tasks whose results the collector merged into this
/// one, with the bytes of each one's outcomes (empty: one task); each is
/// decoded within its own bytes, as if it had come alone. `arg_type` names
/// the argument type for decode errors reported by the worker.
pub(crate) fn decode_outcomes<R: DeserializeOwned>(
    mut result: ResultFrame,
    count: usize,
    first: usize,
    parts: &[Part],
    pid: Pid,
    arg_type: &'static str,
    mut each: impl FnMut(Result<R, Error>),
) {
    let end = first + count;
    let fds = std::mem::replace(&mut result.fds, Ok(Default::default()));
    let mut incoming = match fds {
        Ok(fds) => Incoming::Ready(fds),
        Err(e) => {
            // The buffers' descriptors did not all arrive: the whole task
            // fails with why.
            (first..end).for_each(|i| each(Err(e.for_item(i))));
            return;
        }
    };
    let mut payload = result.payload();
    buffer::decoding(&mut incoming, || {
        if parts.is_empty() {
            decode_payload(&mut payload, count, first, 0, pid, arg_type, &mut each);
            return;
        }
        let mut first = first;
        let mut lost: Option<Error> = None;
        for part in parts {
            let rest = payload.len().saturating_sub(part.payload);
            match &lost {
                Some(e) => (first..first + part.items).for_each(|i| each(Err(e.for_item(i)))),
                None => {
                    if !decode_payload(
                        &mut payload,
                        part.items,
                        first,
                        rest,
                        pid,
                        arg_type,
                        &mut each,
                    ) {
                        lost = Some(Error::Frame {
                            pid,
                            detail: format!(
                                "the result of the task of items {first} to {} ran past its {} bytes",
                                first + part.items - 1,
                                part.payload
                            ),
                        });
                    }
                }
            }
            first += part.items;
        }
    });
}

/// Decodes `count` outcomes from `payload`, for items from `first` on, up
/// to where `rest` bytes are left (the results merged after this task's):
/// an outcome past that point is an error, as the end of the payload is.
/// Returns whether the payload then stands exactly at that point (bytes
/// this task left unread are skipped).
fn decode_payload<R: DeserializeOwned>(
    payload: &mut Input,
    count: usize,
    first: usize,
    rest: usize,
    pid: Pid,
    arg_type: &'static str,
    each: &mut impl FnMut(Result<R, Error>),
) -> bool {
    let end = first + count;
    let past = |item: usize| Error::Frame {
        pid,
        detail: format!("the outcome of item {item} runs past the end of its task's result"),
    };
    let mut item = first;
    while item < end {
        // Results, in a tight loop, until something else: the common case.
        // (Without results after it, the end is the payload's own.)
        let within = match rest {
            0 => usize::MAX,
            _ => payload.len().saturating_sub(rest),
        };
        let (n, stopped) = payload.decode_tagged::<R>(OK, end - item, within, |v| each(Ok(v)));
        item += n;
        let mut outcome = match stopped {
            None => break,
            Some(Stopped::Past) => Err(past(item)),
            Some(Stopped::Failed(e, bytes)) => Err(result_failed::<R>(item, bytes, e)),
            Some(Stopped::Other) => {
                // One outcome at a time: a failure, the end, a run apart.
                let tag = if rest == 0 || payload.len() > rest {
                    payload.byte()
                } else {
                    None
                };
                match tag {
                    None => Err(Error::Frame {
                        pid,
                        detail: format!(
                            "the result of a {count}-item task ends after {} outcomes",
                            item - first
                        ),
                    }),
                    Some(tag) => decode_one::<R>(payload, tag, item, pid, arg_type),
                }
            }
        };
        if rest > 0 && payload.len() < rest {
            outcome = Err(past(item));
        }
        // After an argument that did not decode, or a result or outcome
        // that did not, the rest of the payload cannot be found: the same
        // error stands for the remaining items.
        let fatal = match &outcome {
            Err(Error::Decode { .. } | Error::Frame { .. }) => outcome.as_ref().err().cloned(),
            _ => None,
        };
        each(outcome);
        if let Some(e) = fatal {
            (item + 1..end).for_each(|j| each(Err(e.for_item(j))));
            break;
        }
        item += 1;
    }
    if rest > 0 {
        while payload.len() > rest && payload.byte().is_some() {}
    }
    payload.len() == rest
}

/// Decodes one outcome whose tag was `tag`, advancing `payload` (a
/// result here, inlined into the per-item loop; anything else apart).
#[inline]
fn decode_one<R: DeserializeOwned>(
    payload: &mut Input,
    tag: u8,
    item: usize,
    pid: Pid,
    arg_type: &'static str,
) -> Result<R, Error> {
    if tag != OK {
        return decode_failure(payload, tag, item, pid, arg_type);
    }
    let bytes = payload.len();
    payload
        .decode::<R>()
        .map_err(|e| result_failed::<R>(item, bytes, e))
}

/// Why item `item`'s result, `bytes` bytes before the end, did not decode.
#[cold]
fn result_failed<R>(item: usize, bytes: usize, e: codec::Error) -> Error {
    Error::Decode {
        item,
        what: "result",
        type_name: type_name::<R>(),
        bytes,
        reason: e.to_string(),
    }
}

/// Decodes one outcome other than a result (tag `tag`): why item `item`
/// failed.
#[cold]
#[inline(never)]
fn decode_failure<R>(
    payload: &mut Input,
    tag: u8,
    item: usize,
    pid: Pid,
    arg_type: &'static str,
) -> Result<R, Error> {
    let bytes = payload.len();
    let bad = |e: codec::Error| Error::Frame {
        pid,
        detail: format!(
            "the outcome of item {item} (tag {tag}, {bytes} bytes) does not decode: {e}"
        ),
    };
    match tag {
        PANICKED => {
            let message = payload.decode::<String>().map_err(bad)?;
            Err(Error::Panicked { item, pid, message })
        }
        ENCODE => {
            let reason = payload.decode::<String>().map_err(bad)?;
            Err(Error::Encode {
                item,
                what: "result",
                type_name: type_name::<R>(),
                reason,
            })
        }
        DECODE => {
            let (reason, bytes) = payload.decode::<(String, u64)>().map_err(bad)?;
            Err(Error::Decode {
                item,
                what: "argument",
                type_name: arg_type,
                bytes: bytes as usize,
                reason,
            })
        }
        other => Err(Error::Frame {
            pid,
            detail: format!("unknown outcome tag {other} for item {item}"),
        }),
    }
}

#[cfg(test)]
mod cut_tests {
    use super::*;
    use std::collections::VecDeque;

    fn block(first: usize, items: &[Vec<f64>]) -> Items {
        let mut b = Items::starting_at(first);
        for (i, it) in items.iter().enumerate() {
            b.push(it, first + i).unwrap();
        }
        b
    }

    /// The items of a task frame, read from a pipe and decoded as a worker
    /// does; and whether a run travelled apart.
    fn items_of(frame: &OutFrame, id: u64) -> (Vec<Vec<f64>>, bool) {
        let wire = frame.to_vec();
        assert_eq!(wire.len(), frame.len());
        let mut bodies = frame::read_frames(wire).unwrap();
        assert_eq!(bodies.len(), 1);
        let body = bodies.pop().unwrap();
        let (h, _) = TaskHeader::parse(&body.bytes).unwrap();
        assert_eq!(h.id, id);
        let apart = body.run.is_some();
        let (items, failure) = decode_items::<Vec<f64>>(body.into_input(TaskHeader::PAYLOAD_AT));
        assert!(failure.is_none());
        (items, apart)
    }

    #[test]
    fn a_whole_block_becomes_its_frame_in_place_and_parts_are_copied_out() {
        let header = TaskHeader {
            id: 0,
            tramp: 1,
            func: 2,
        };
        let items: Vec<Vec<f64>> = (0..5).map(|i| vec![i as f64; 1000 + i]).collect();
        // Whole block: the frame is the block's own buffer.
        let mut q = VecDeque::from([block(10, &items)]);
        let buffer = q[0].bytes.as_ptr();
        let cut = cut_task(header, &mut q, 5);
        assert!(q.is_empty());
        assert_eq!(cut.frame.bytes_ptr(), buffer, "the whole block was copied");
        assert_eq!((cut.first, items_of(&cut.frame, 0).0), (10, items.clone()));
        assert_eq!(cut.bytes, cut.frame.len() - TASK_HEAD);
        // Parts of blocks, across two blocks: copied, same layout.
        let mut q = VecDeque::from([block(0, &items[..3]), block(3, &items[3..])]);
        let a = cut_task(header, &mut q, 2);
        let b = cut_task(header, &mut q, 2);
        let c = cut_task(header, &mut q, 1);
        assert!(q.is_empty());
        assert_eq!((a.first, items_of(&a.frame, 0).0), (0, items[..2].to_vec()));
        assert_eq!(
            (b.first, items_of(&b.frame, 0).0),
            (2, items[2..4].to_vec())
        );
        assert_eq!((c.first, items_of(&c.frame, 0).0), (4, items[4..].to_vec()));
        // A block truncated before any cut keeps its room for the head.
        let mut t = block(0, &items);
        t.truncate(2);
        assert_eq!(t.len(), 2);
        let mut q = VecDeque::from([t]);
        let d = cut_task(header, &mut q, 2);
        assert_eq!(items_of(&d.frame, 0).0, items[..2].to_vec());
    }

    #[test]
    fn an_owned_big_vec_argument_is_written_from_its_own_memory_whole_or_cut() {
        let header = TaskHeader {
            id: 4,
            tramp: 1,
            func: 2,
        };
        let big: Vec<f64> = (0..20_000).map(|i| i as f64 * 1.5).collect();
        // Whole block: the frame's head and length, then the Vec's own
        // memory; no copy of its numbers in the block.
        let mut b = Items::starting_at(0);
        let mine = big.clone();
        let addr = mine.as_ptr() as usize;
        b.push_owned(mine, 0).unwrap();
        assert_eq!(b.lent.as_ref().unwrap().bytes().as_ptr() as usize, addr);
        assert_eq!(b.bytes.len(), TASK_HEAD + 8, "only its length was encoded");
        assert_eq!(b.bytes(), 8 + big.len() * 8);
        let mut q = VecDeque::from([b]);
        let cut = cut_task(header, &mut q, 1);
        assert_eq!(cut.bytes, 8 + big.len() * 8);
        assert_eq!(items_of(&cut.frame, 4), (vec![big.clone()], true));
        // The same bytes on the wire as the argument encoded by copy.
        let mut q = VecDeque::from([block(0, std::slice::from_ref(&big))]);
        let copied = cut_task(header, &mut q, 1);
        assert_eq!(cut.frame.to_vec(), copied.frame.to_vec());
        // Cut together with an earlier block: its numbers copied in after
        // the other items, the run at its place.
        let small = vec![vec![0.25f64; 3], vec![7.0; 5]];
        let mut last = Items::starting_at(2);
        last.push_owned(big.clone(), 2).unwrap();
        let mut q = VecDeque::from([block(0, &small), last]);
        let cut = cut_task(header, &mut q, 3);
        let mut want = small.clone();
        want.push(big.clone());
        assert_eq!(items_of(&cut.frame, 4), (want, true));
        assert!(q.is_empty());
        // Dropped before it went (truncated, or the block dropped): freed.
        let mut b = Items::starting_at(0);
        b.push_owned(big.clone(), 0).unwrap();
        b.truncate(0);
        assert!(b.lent.is_none());
        assert_eq!(b.bytes(), 0);
        // Not a big Vec of plain numbers: encoded as `push` does.
        let mut b = Items::starting_at(0);
        b.push_owned(vec![1.0f64; 10], 0).unwrap();
        b.push_owned(String::from("x"), 1).unwrap();
        assert!(b.lent.is_none());
    }

    #[test]
    fn the_biggest_array_of_a_task_travels_apart_whole_block_or_cut() {
        let header = TaskHeader {
            id: 3,
            tramp: 1,
            func: 2,
        };
        // Item 1 is the biggest run (over RUN_MIN bytes); the others small
        // or smaller.
        let items: Vec<Vec<f64>> = vec![
            vec![0.5; 10],
            (0..20_000).map(|i| i as f64).collect(),
            vec![2.5; 9_000],
        ];
        let mut q = VecDeque::from([block(0, &items)]);
        let cut = cut_task(header, &mut q, 3);
        assert_eq!(items_of(&cut.frame, 3), (items.clone(), true));
        // Cut in two: the run goes with the task that holds it, at its place
        // in that frame.
        let mut q = VecDeque::from([block(0, &items)]);
        let a = cut_task(header, &mut q, 1);
        let b = cut_task(header, &mut q, 2);
        assert_eq!(items_of(&a.frame, 3), (items[..1].to_vec(), false));
        assert_eq!(items_of(&b.frame, 3), (items[1..].to_vec(), true));
        // Small arrays stay in the frame.
        let mut q = VecDeque::from([block(0, &items[..1])]);
        let c = cut_task(header, &mut q, 1);
        assert_eq!(items_of(&c.frame, 3), (items[..1].to_vec(), false));
    }

    /// The `u64` outcomes of the plain result frame in `out` (length
    /// prefix first) for `items` items from `first` on, in tasks `parts`.
    fn decode_merged(
        out: &[u8],
        items: usize,
        first: usize,
        parts: &[Part],
    ) -> Vec<Result<u64, Error>> {
        let frame = ResultFrame::parse_plain(&out[frame::LEN_PREFIX..])
            .expect("a plain result")
            .to_frame(0);
        let mut got = Vec::new();
        decode_outcomes::<u64>(frame, items, first, parts, Pid::from_raw(1), "u64", |r| {
            got.push(r)
        });
        got
    }

    #[test]
    fn merged_results_decode_each_task_within_its_own_bytes() {
        // The collector appends the outcomes of consecutive tasks into one
        // frame; a task whose argument did not decode (its payload stops
        // early) or whose payload is short must not shift the tasks after
        // it onto the wrong items.
        let mut out = Vec::new();
        let started = ResultFrame::begin(&mut out, 7);
        let at = out.len();
        let mut parts = Vec::new();
        let mut part = |out: &mut Vec<u8>, items: usize, write: &dyn Fn(&mut Vec<u8>)| {
            let from = out.len();
            write(out);
            parts.push(Part {
                items,
                payload: out.len() - from,
            });
        };
        let ok = |out: &mut Vec<u8>, v: u64| {
            out.push(OK);
            encode_into(&v, out).unwrap();
        };
        part(&mut out, 2, &|o| {
            ok(o, 10);
            ok(o, 11);
        });
        // The second item's argument did not decode: the third is not run.
        part(&mut out, 3, &|o| {
            ok(o, 20);
            o.push(DECODE);
            encode_into(&("bad argument".to_string(), 5u64), o).unwrap();
        });
        // Short: one outcome for two items.
        part(&mut out, 2, &|o| ok(o, 30));
        part(&mut out, 1, &|o| ok(o, 40));
        assert!(out.len() > at);
        started.finish(&mut out, 1);
        let got = decode_merged(&out, 8, 100, &parts);
        let ok_at = |i: usize| got[i].as_ref().ok().copied();
        assert_eq!(
            [ok_at(0), ok_at(1), ok_at(2), ok_at(5), ok_at(7)],
            [Some(10), Some(11), Some(20), Some(30), Some(40)]
        );
        for (i, item) in [(3, 103), (4, 104)] {
            assert!(
                matches!(&got[i], Err(Error::Decode { item: it, what: "argument", .. }) if *it == item),
                "{:?}",
                got[i]
            );
        }
        assert!(
            matches!(&got[6], Err(Error::Frame { detail, .. }) if detail.contains("ends after 1 outcomes")),
            "{:?}",
            got[6]
        );
        assert_eq!(got.len(), 8);
    }

    #[test]
    fn items_of_one_size_then_another_are_cut_at_every_item_boundary() {
        let header = TaskHeader {
            id: 0,
            tramp: 1,
            func: 2,
        };
        // Three items of one size (their ends are not stored), then one of
        // another (from then on they are), then two of the first size.
        let items: Vec<Vec<f64>> = [3, 3, 3, 5, 3, 3]
            .iter()
            .enumerate()
            .map(|(i, &n)| vec![i as f64; n])
            .collect();
        let b = block(0, &items[..3]);
        assert!(matches!(b.ends, Ends::Same(32)), "{:?}", b.ends);
        let mut q = VecDeque::from([block(0, &items)]);
        assert!(matches!(q[0].ends, Ends::Listed(_)));
        for (n, want) in [(2, 0..2), (1, 2..3), (2, 3..5), (1, 5..6)] {
            let cut = cut_task(header, &mut q, n);
            assert_eq!(
                (cut.first, items_of(&cut.frame, 0).0),
                (want.start, items[want].to_vec())
            );
        }
        assert!(q.is_empty());
        // `fill` encodes the same bytes as `push`, and truncates alike.
        for keep in [0, 2, 4, 6] {
            let mut pushed = block(0, &items);
            let mut filled = Items::starting_at(0);
            filled.fill(&mut items.iter(), 100, 1 << 20).unwrap();
            pushed.truncate(keep);
            filled.truncate(keep);
            assert_eq!((filled.len(), &filled.bytes), (keep, &pushed.bytes));
            let mut q = VecDeque::from([filled]);
            if keep > 1 {
                let cut = cut_task(header, &mut q, keep - 1);
                assert_eq!(items_of(&cut.frame, 0).0, items[..keep - 1].to_vec());
            }
        }
        // `fill` stops at its limits, in items and in bytes.
        let mut b = Items::starting_at(0);
        let mut it = items.iter();
        b.fill(&mut it, 2, 1 << 20).unwrap();
        assert_eq!((b.len(), it.len()), (2, 4));
        let mut b = Items::starting_at(0);
        b.fill(&mut it, 100, 33).unwrap();
        assert_eq!((b.len(), it.len()), (2, 2));
    }

    #[test]
    fn a_run_of_results_stops_at_a_failure_and_at_its_tasks_end() {
        // Thousands of results in one task, a panic among them; then a
        // task whose last result runs past its bytes: the tasks after it
        // cannot be found.
        let mut out = Vec::new();
        let started = ResultFrame::begin(&mut out, 7);
        let mut parts = Vec::new();
        let from = out.len();
        for v in 0..5000u64 {
            if v == 1234 {
                out.push(PANICKED);
                encode_into(&"boom".to_string(), &mut out).unwrap();
            } else {
                out.push(OK);
                encode_into(&v, &mut out).unwrap();
            }
        }
        parts.push(Part {
            items: 5000,
            payload: out.len() - from,
        });
        for v in [7u64, 8] {
            out.push(OK);
            encode_into(&v, &mut out).unwrap();
        }
        // Its second result (9 bytes) ends 4 bytes past its task's end.
        parts.push(Part {
            items: 2,
            payload: 14,
        });
        parts.push(Part {
            items: 1,
            payload: 4,
        });
        started.finish(&mut out, 1);
        let got = decode_merged(&out, 5003, 0, &parts);
        assert_eq!(got.len(), 5003);
        for (i, r) in got[..5000].iter().enumerate() {
            match r {
                Ok(v) => assert_eq!(*v, i as u64),
                Err(Error::Panicked { item, message, .. }) => {
                    assert_eq!((*item, message.as_str()), (1234, "boom"))
                }
                other => panic!("item {i}: {other:?}"),
            }
        }
        assert_eq!(got[..5000].iter().filter(|r| r.is_err()).count(), 1);
        assert_eq!(got[5000].as_ref().ok(), Some(&7));
        assert!(
            matches!(&got[5001], Err(Error::Frame { detail, .. }) if detail.contains("item 5001 runs past")),
            "{:?}",
            got[5001]
        );
        assert!(
            matches!(&got[5002], Err(Error::Frame { detail, .. }) if detail.contains("ran past its 14 bytes")),
            "{:?}",
            got[5002]
        );
    }
}
